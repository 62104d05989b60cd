"""What a search tries and the checks of its arguments: :class:`SearchConfig`, the guardrails, the backends."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ..errors import ConfigError, GuardrailError
from ..fidelity import validate_guardrails

LOG_FORMAT = 1
STRATEGIES = ("grid", "bisect")
LAYER_MODES = ("uniform", "sensitivity")
PRECISIONS = ("fp32", "int8")
OBJECTIVES = ("latency", "macs", "size")
ACCURACY_GUARDRAILS = ("min_dice", "max_delta_dice", "max_delta_auc", "max_delta_sensitivity", "max_hd95_increase_mm")

Evaluate = Callable[[Any], Dict[str, Any]]


class SearchError(GuardrailError):
    """No candidate (or not even the dense model) meets the guardrails; ``search.json`` says what each one broke."""


@dataclass
class SearchConfig:
    """What the search tries.

    Args:
        ratios: channel ratios (fraction of every prunable group's channels removed) of the grid; with
            ``strategy="bisect"`` their maximum is the upper end of the bisection.
        strategy: ``"grid"`` (every ratio) or ``"bisect"`` (the largest ratio in ``[0, max(ratios)]`` whose fp32 model
            keeps the accuracy guardrails, ``bisect_steps`` halvings, assuming accuracy falls as the ratio grows).
        layer_modes: ``"uniform"`` (the same ratio in every group) and/or ``"sensitivity"`` (per-layer ratios from a
            sensitivity analysis: each group gets the largest ratio up to the target whose solo Δ of the worst class's
            metric stays within ``sensitivity_max_delta``).
        precisions: ``"fp32"`` and/or ``"int8"`` (needs ``calibration``; tried on passing fp32 candidates, largest ratio
            first, until one int8 candidate passes).
        backends: runtimes timed for every candidate (default: every installed one).
        objective: ``"latency"`` (largest speed-up over the dense model in torch), ``"macs"`` or ``"size"``.
        sensitivity_ratios, sensitivity_max_delta: the analysis' ratios and tolerance (default: the guardrails'
            ``max_delta_dice``/``max_delta_auc``, else 0.02).
        importance: channel importance for pruning (``"l1"``, ``"l2"``, ``"bn_scale"``, ...).
        seed: seed of pruning tie-breaks.
        confirm_top, confirm_rounds: per (backend, precision) the fastest passing candidate at screening and the
            passing one with the fewest MACs (at most ``confirm_top`` in all, fastest first) are timed again, each
            right after the dense model, in ``confirm_rounds`` rounds; the choice is made among them on the median
            paired speed-up (0 rounds: the screening timings decide).
        int8_keep_fp32: ``"none"``, or ``"sensitivity"``: before quantizing a candidate, quantize each of its layers
            alone on the backend (:func:`~monai_prune.quantization.quantization_sensitivity`) and keep fp32 the
            layers whose solo int8 costs the worst class more than ``sensitivity_max_delta`` (slow: one evaluation
            per layer; cached).
        pipeline_knobs: workload settings to search for the chosen model, ``{knob: [values]}`` (e.g.
            ``{"overlap": [0.1, 0.0], "sw_batch_size": [2, 4]}``): each is passed to ``evaluate`` and ``latency`` as a
            keyword argument, one knob changed at a time, then the passing ones combined; judged by the same
            guardrails against the dense model at the baseline (:mod:`~monai_prune.search.knobs`). Empty: none.
        pipeline_baseline: the value of every knob that ``evaluate`` and ``latency`` use when called without it (the
            setting every candidate is measured at), e.g. ``{"overlap": 0.25, "sw_batch_size": 1}``.
        pipeline_min_saving: the smallest saving (a fraction of the chosen model's time at the baseline) a knob
            setting must show to be combined or shipped: below it, the difference is within the timing noise of a
            shared machine and the baseline is kept.
    """

    ratios: Sequence[float] = (0.25, 0.5, 0.625, 0.75)
    strategy: str = "grid"
    bisect_steps: int = 3
    layer_modes: Sequence[str] = ("uniform",)
    precisions: Sequence[str] = ("fp32",)
    backends: Optional[Sequence[str]] = None
    objective: str = "latency"
    sensitivity_ratios: Sequence[float] = (0.25, 0.5, 0.75)
    sensitivity_max_delta: Optional[float] = None
    importance: str = "l1"
    seed: int = 0
    confirm_top: int = 6
    confirm_rounds: int = 3
    int8_keep_fp32: str = "none"
    pipeline_knobs: Dict[str, Sequence[Any]] = field(default_factory=dict)
    pipeline_baseline: Dict[str, Any] = field(default_factory=dict)
    pipeline_min_saving: float = 0.05

    def validate(self) -> None:
        from ..runtime import BACKENDS

        ratios = [float(r) for r in self.ratios]
        if not ratios or any(not (0.0 < r < 1.0) for r in ratios):
            raise ConfigError(f"ratios are fractions of channels removed, each in (0, 1); got {list(self.ratios)}")
        for name, value, allowed in (("strategy", [self.strategy], STRATEGIES), ("layer_modes", self.layer_modes,
                                     LAYER_MODES), ("precisions", self.precisions, PRECISIONS),
                                     ("objective", [self.objective], OBJECTIVES)):
            bad = [v for v in value if v not in allowed]
            if bad or not value:
                raise ConfigError(f"{name} must be among {allowed}, got {list(value)}")
        if self.backends is not None:
            bad = [b for b in self.backends if b not in BACKENDS]
            if bad or not self.backends:
                raise ConfigError(f"backends must be among {BACKENDS}, got {list(self.backends)}")
        if self.int8_keep_fp32 not in ("none", "sensitivity"):
            raise ConfigError(f"int8_keep_fp32 must be 'none' or 'sensitivity', got {self.int8_keep_fp32!r}")
        if self.strategy == "bisect" and not (isinstance(self.bisect_steps, int) and 1 <= self.bisect_steps <= 8):
            raise ConfigError(f"bisect_steps must be an integer in 1..8, got {self.bisect_steps!r}")
        check_pipeline_knobs(self.pipeline_knobs, self.pipeline_baseline, {})
        if not (isinstance(self.pipeline_min_saving, (int, float)) and 0.0 <= self.pipeline_min_saving < 1.0):
            raise ConfigError(f"pipeline_min_saving is a fraction in [0, 1), got {self.pipeline_min_saving!r}")


def check_pipeline_knobs(knobs: Mapping[str, Sequence[Any]], baseline: Mapping[str, Any],
                         callables: Mapping[str, Callable]) -> None:
    """Refuse, before any work, knobs the search cannot try: a knob without a baseline value, no values, and a
    ``evaluate``/``latency`` that does not take every knob as a keyword, or whose default for it is not the baseline
    (then the candidates and the knob settings would not be measured at the same setting)."""
    if not knobs:
        return
    if not isinstance(knobs, Mapping) or not isinstance(baseline, Mapping):
        raise ConfigError("pipeline_knobs and pipeline_baseline are mappings, e.g. pipeline_knobs={'overlap': [0.1]}, "
                          "pipeline_baseline={'overlap': 0.25}")
    for knob, values in knobs.items():
        if knob not in baseline:
            raise ConfigError(f"pipeline knob {knob!r} has no baseline value: give pipeline_baseline[{knob!r}], the "
                              "value evaluate and latency use when called without it")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"pipeline knob {knob!r}: give a non-empty list of values to try, got {values!r}")
    for name, fn in callables.items():
        try:
            parameters = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # a builtin or C callable: nothing to check before calling it
            continue
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        for knob in knobs:
            p = parameters.get(knob)
            if p is None or p.kind not in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                if takes_any:
                    continue
                raise ConfigError(f"pipeline knob {knob!r}: {name}(model, {knob}=...) must take it as a keyword "
                                  f"argument; {name} takes {list(parameters)}")
            if p.default is not inspect.Parameter.empty and not same_value(p.default, baseline[knob]):
                raise ConfigError(f"pipeline knob {knob!r}: {name}'s default {p.default!r} is not the baseline "
                                  f"{baseline[knob]!r}; every candidate is measured at the default, so they must match")


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def sensitivity_tolerance(config: SearchConfig, guardrails: Mapping[str, Any]) -> float:
    """How much a layer alone may cost the worst class: ``sensitivity_max_delta``, else the guardrails'
    ``max_delta_dice``/``max_delta_auc``, else 0.02."""
    if config.sensitivity_max_delta is not None:
        return float(config.sensitivity_max_delta)
    for key in ("max_delta_dice", "max_delta_auc"):
        if key in guardrails:
            return float(guardrails[key])
    return 0.02


def check_search_arguments(guardrails: Mapping[str, Any], config: SearchConfig, calibration_given: bool) -> List[str]:
    """Every argument of :func:`~monai_prune.search.search` that can be checked before any work; returns the
    backends to time."""
    from ..runtime import available_backends

    config.validate()
    validate_guardrails(guardrails)
    if not guardrails:
        raise ConfigError("search needs at least one guardrail (e.g. max_delta_dice 0.02): without one the most "
                          "compressed candidate would win whatever it lost")
    backends = list(config.backends or available_backends())
    missing = [b for b in backends if b not in available_backends()]
    if missing:
        raise ConfigError(f"backends {missing} are not installed here; available: {available_backends()}")
    if "int8" in config.precisions:
        from ..quantization.ptq import QUANT_BACKENDS

        if not calibration_given:
            raise ConfigError("precision int8 needs calibration= (monai_prune.calibration_data(...))")
        if not [b for b in backends if b in QUANT_BACKENDS]:
            raise ConfigError(f"precision int8 needs one of the int8 backends {QUANT_BACKENDS} among {backends}")
    return backends
