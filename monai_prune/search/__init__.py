"""Search: the most compressed model that keeps every guardrail, chosen by measurement.

:func:`search` prunes the trained network at several channel ratios (a grid, or a bisection on the largest ratio
that keeps the accuracy guardrails), optionally with per-layer ratios from a :mod:`~monai_prune.sensitivity`
analysis (less where a group is sensitive), gives each candidate a short distillation fine-tune from the dense model
(the caller's ``finetune``), and measures every candidate the same way: per-class metrics (``evaluate``), latency of
the caller's workload (``latency``, e.g. the whole sliding-window inferer) on every backend, MACs, parameters, size;
with ``"int8"`` among the precisions, the passing candidates are also quantized (ONNX Runtime / OpenVINO) and measured
again. The winner is the candidate with the largest measured speed-up (or the fewest MACs, or the smallest file) among
those that hold **every** guardrail of :func:`monai_prune.fidelity.check_guardrails`, per class.

Every measurement is one JSON line in ``OUT/candidates.jsonl``, written as soon as it is taken: an interrupted search
run again with the same ``OUT`` continues where it stopped (fine-tuned models are kept under ``OUT/candidates/``), and a
search re-run with other guardrails reuses every measurement and only re-decides. A log made by another setup (other
weights, input shape, fine-tuning) is refused, never mixed in.

Outputs in ``OUT``: ``search.json`` (dense, every candidate, the choice or the refusal), ``candidates.md``,
``pareto.png`` (accuracy vs speed-up and vs size, guardrail-breaking points hollow, the choice starred), ``chosen/``
(``model.pt`` + ``plan.json`` + ``model.onnx``, the int8 artifact when int8 won, ``fidelity_card.json``/``.md``) and,
when ``evaluate`` returns an ``"example"`` slice, ``examples.npz`` for ``monai-prune report``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, GuardrailError, InputError
from .fidelity import (FidelityCard, agreement_note, check_guardrails, compare_per_class, json_safe,
                       validate_guardrails)
from .measure import count_macs, count_params, file_size, state_dict_bytes
from .runtime.registry import artifact_size, model_files
from .pruning import PruningPlan, apply_plan, prune_channels
from .pruning.plan import architecture_signature
from .report import candidates_table  # noqa: F401 (a public name of this module)
from .sensitivity import weights_digest
from .utils import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

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

    def validate(self) -> None:
        from .runtime import BACKENDS

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


@dataclass
class SearchResult:
    """What :func:`search` found. ``chosen`` is the winning row of ``rows`` (None when refused); ``model`` is the chosen
    network (``nn.Module`` for fp32, a :class:`~monai_prune.Predictor` for int8)."""

    status: str
    dense: Dict[str, Any]
    rows: List[Dict[str, Any]]
    chosen: Optional[Dict[str, Any]]
    out_dir: str
    reason: str = ""
    model: Any = None
    card: Any = None
    paths: Dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        """The candidates as a Markdown table (best first)."""
        return candidates_table(self.dense, self.rows, self.chosen)


# ------------------------------------------------------------------------------------------------------------ the log
class SearchLog:
    """``candidates.jsonl``: one JSON object per line, appended and flushed as each measurement is taken.

    A last line cut short (a run killed while writing it) is dropped with a warning and the search resumes without
    it; any other line that is not a record is an error that names the line."""

    def __init__(self, path: str, fingerprint: Dict[str, Any]) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.records: Dict[str, Dict[str, Any]] = {}
        if os.path.exists(path):
            lines, whole = read_search_log(path)
            check_fingerprint(path, lines[0]["fingerprint"], fingerprint)
            if whole < os.path.getsize(path):
                logger.warning("%s: dropped its last line, cut short by an interrupted run (%d bytes); that "
                               "measurement is taken again", path, os.path.getsize(path) - whole)
                with open(path, "r+b") as f:
                    f.truncate(whole)
            elif whole and not _ends_with_newline(path):  # killed between a record and its newline
                with open(path, "a", encoding="utf-8") as f:
                    f.write("\n")
            self.records = {r["key"]: r for r in lines[1:]}
            logger.info("resuming the search from %s: %d measurements already taken", path, len(self.records))
        else:
            self._append({"kind": "header", "fingerprint": fingerprint, "format": LOG_FORMAT})

    def _append(self, record: Dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        return self.records.get(key)

    def put(self, record: Dict[str, Any]) -> Dict[str, Any]:
        record = json_safe(record)
        self.records[record["key"]] = record
        self._append(record)
        return record


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_search_log(path: str) -> tuple:
    """``(records, whole)``: the records of a search log (the header first) and the byte length of its whole lines;
    a last line cut short by an interrupted run is left out (``whole`` ends before it). Reads only."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    records: List[Dict[str, Any]] = []
    offset = 0
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            try:
                record = json.loads(raw)
            except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                if number == len(lines):  # no newline after it: its write was cut short
                    return _checked_header(path, records), offset
                raise ConfigError(f"{path} line {number} is not valid JSON ({getattr(e, 'msg', e)}): the search log is "
                                  "damaged; remove that line to measure it again, or give another output folder "
                                  "(nothing was changed)") from e
            if not isinstance(record, dict) or not (record.get("kind") == "header" if number == 1 else "key" in record):
                raise ConfigError(f"{path} line {number} is not a search " + ("log header" if number == 1 else "record")
                                  + ": not a monai-prune search log; give another output folder (nothing was changed)")
            records.append(record)
        offset += len(raw) + (1 if number < len(lines) else 0)
    return _checked_header(path, records), offset


def _checked_header(path: str, records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    if not records or records[0].get("kind") != "header" or not isinstance(records[0].get("fingerprint"), dict):
        raise ConfigError(f"{path} is not a monai-prune search log; give another output folder")
    return records


def check_fingerprint(path: str, stored: Mapping[str, Any], fingerprint: Mapping[str, Any],
                      ignore: Sequence[str] = ()) -> None:
    """A log written by another setup (other weights, input, fine-tuning, ...) is refused, never mixed in."""
    changed = sorted(k for k in set(fingerprint) | set(stored)
                     if k not in ignore and fingerprint.get(k) != stored.get(k))
    if changed:
        raise ConfigError(f"{path} was written by a different setup ({', '.join(changed)} changed); its "
                          "measurements do not apply: give another output folder (nothing was changed)")


def search_fingerprint(model: nn.Module, example_input: torch.Tensor, setup_id: str, config: "SearchConfig",
                       finetune: Optional[Callable[[nn.Module, nn.Module], None]]) -> Dict[str, Any]:
    """What makes two searches' measurements comparable: the log's header."""
    return {"architecture": architecture_signature(model), "weights": weights_digest(model),
            "input": list(example_input.shape), "setup": setup_id, "importance": config.importance,
            "seed": config.seed, "sensitivity_ratios": sorted(float(r) for r in config.sensitivity_ratios),
            "finetune": getattr(finetune, "__qualname__", None) if finetune is not None else None}


def check_resumable(out_dir: str, fingerprint: Mapping[str, Any], ignore: Sequence[str] = ()) -> None:
    """Refuse, before any work, an ``out_dir`` that a search cannot write to or resume: a file, a damaged
    ``search.json`` or ``candidates.jsonl``, a log of another setup. Reads only."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"output {out_dir} exists and is not a directory: give a folder (nothing was written)")
    summary = os.path.join(out_dir, "search.json")
    if os.path.exists(summary):
        try:
            with open(summary, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as e:
            raise ConfigError(f"{summary} is not valid JSON ({getattr(e, 'msg', e)}): not the summary of a monai-prune "
                              "search; remove it or give another output folder (nothing was changed)") from e
        if not isinstance(data, dict) or "fingerprint" not in data:
            raise ConfigError(f"{summary} is not the summary of a monai-prune search (a JSON object with "
                              "'fingerprint'); remove it or give another output folder (nothing was changed)")
    log = os.path.join(out_dir, "candidates.jsonl")
    if os.path.exists(log):
        records, _ = read_search_log(log)
        check_fingerprint(log, records[0]["fingerprint"], fingerprint, ignore)


def check_search_arguments(guardrails: Mapping[str, Any], config: "SearchConfig", calibration_given: bool) -> List[str]:
    """Every argument of :func:`search` that can be checked before any work; returns the backends to time."""
    from .runtime import available_backends

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
        from .quantization.ptq import QUANT_BACKENDS

        if not calibration_given:
            raise ConfigError("precision int8 needs calibration= (monai_prune.calibration_data(...))")
        if not [b for b in backends if b in QUANT_BACKENDS]:
            raise ConfigError(f"precision int8 needs one of the int8 backends {QUANT_BACKENDS} among {backends}")
    return backends


# ---------------------------------------------------------------------------------------------------------- helpers
def _ratio_key(ratio: float) -> str:
    return f"{ratio:.4f}"


def _key(ratio: float, mode: str, precision: str = "fp32", backend: Optional[str] = None) -> str:
    return f"r{_ratio_key(ratio)}-{mode}-{precision}" + (f"-{backend}" if backend else "")


def _split_example(measured: Dict[str, Any]) -> tuple:
    measured = dict(measured)
    example = measured.pop("example", None)
    if "per_class" not in measured:
        raise InputError("evaluate(model) must return PerClassMetrics.compute()-style results with a 'per_class' "
                         f"entry; got keys {sorted(measured)}")
    return measured, example


def _flat_metrics(measured: Mapping[str, Any]) -> Dict[str, float]:
    """``{"worst_class": min over classes, "<metric>/<class>": ...}`` of the main metric (Dice for segmentation,
    AUC else), higher is better (sensitivity analysis needs one number per model)."""
    metric = "dice" if measured.get("task", "segmentation") == "segmentation" else "auc"
    values = {f"{metric}/{name}": m.get(metric) for name, m in measured["per_class"].items()}
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    return {"worst_class": min(finite) if finite else math.nan, **values}


def _accuracy_only(guardrails: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in guardrails.items() if k in ACCURACY_GUARDRAILS}


def _main_metric(measured: Mapping[str, Any]) -> str:
    return "dice" if measured.get("task", "segmentation") == "segmentation" else "auc"


def _worst_class(row_per_class: Mapping[str, Any], metric: str) -> Optional[float]:
    values = [m.get(metric) for m in row_per_class.values()]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return min(values) if values else None


# ------------------------------------------------------------------------------------------------------------ search
def search(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    evaluate: Evaluate,
    latency: Callable[[Any], float],
    guardrails: Mapping[str, Any],
    out_dir: str,
    finetune: Optional[Callable[[nn.Module, nn.Module], None]] = None,
    config: Optional[SearchConfig] = None,
    calibration=None,
    agreement_inputs: Optional[Sequence[torch.Tensor]] = None,
    network_def: Optional[Dict[str, Any]] = None,
    setup_id: str = "",
    title: str = "search",
) -> SearchResult:
    """Find the most compressed model that holds every guardrail; see the module docstring.

    Args:
        model: the trained dense network (not modified).
        example_input: a tensor shaped like one network input (tracing, MACs, exports).
        evaluate: ``evaluate(model_or_predictor) -> PerClassMetrics.compute()``-style dict (``per_class`` ...), the
            same held-out data and inferer for every model; it may add ``"example": {"image", "label", "pred"}`` 2D
            arrays (one slice) for the report's overlay.
        latency: ``latency(model_or_predictor) -> seconds`` of the workload to speed up (e.g. the whole sliding-window
            inferer over a volume).
        guardrails: floors and budgets (:data:`monai_prune.fidelity.GUARDRAIL_KEYS`), e.g. ``{"max_delta_dice": 0.02}``.
        out_dir: where the log, the models and the report go; an existing search log there is resumed.
        finetune: ``finetune(student, teacher)`` trains the pruned ``student`` in place for a short while with
            distillation from ``teacher`` (e.g. a ``SupervisedTrainer`` with a ``DistillationHandler``); None: none.
        config: a :class:`SearchConfig`.
        calibration: a :class:`~monai_prune.quantization.CalibrationSet`, needed for ``"int8"``.
        agreement_inputs: inputs on which the chosen model is compared across backends
            (:func:`~monai_prune.fidelity.backend_agreement`); default ``[example_input]``.
        network_def: the network's constructor config, stored in the plans.
        setup_id: names what ``evaluate``/``latency``/``finetune`` do (data, epochs, volume); part of the log's
            fingerprint, so a changed setup is never mixed with old measurements.
        title: the fidelity card's title.

    Raises :class:`SearchError` (after writing ``search.json`` and the plots) when nothing holds the guardrails.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"search expects a torch.nn.Module, got {type(model).__name__}")
    for name, fn in (("evaluate", evaluate), ("latency", latency)):
        if not callable(fn):
            raise InputError(f"{name} must be callable, got {type(fn).__name__}")
    config = copy.deepcopy(config) if config is not None else SearchConfig()
    guardrails = dict(guardrails or {})
    backends = check_search_arguments(guardrails, config, calibration is not None)
    model = copy.deepcopy(model).eval()
    fingerprint = search_fingerprint(model, example_input, setup_id, config, finetune)
    check_resumable(out_dir, fingerprint)
    os.makedirs(out_dir, exist_ok=True)
    log = SearchLog(os.path.join(out_dir, "candidates.jsonl"), fingerprint)
    run = _Run(model, example_input, evaluate, latency, guardrails, out_dir, finetune, config, calibration, log,
               backends, network_def)
    run.agreement_inputs = list(agreement_inputs) if agreement_inputs else [example_input]
    run.title = title

    dense = run.dense()
    broken = check_guardrails(_accuracy_only(guardrails), {"per_class": compare_per_class(dense["measured"],
                                                                                       dense["measured"])})
    if broken:
        reason = ("the dense model itself breaks the guardrails, so no compressed model can meet them: "
                  + "; ".join(broken))
        return run.finish(run.rows(), None, reason)
    if "sensitivity" in config.layer_modes:
        run.sensitivity()
    for mode in config.layer_modes:
        if config.strategy == "grid":
            for ratio in sorted(float(r) for r in config.ratios):
                run.fp32(ratio, mode)
        else:
            run.bisect(mode)
    if "int8" in config.precisions:
        run.int8_pass()
    run.confirm()
    rows = run.rows()
    passing = [r for r in rows if r["passes"]]
    confirmed = [r for r in passing if r["latency_confirmed"]]
    pool = confirmed if config.objective == "latency" and confirmed else passing  # paired timings decide speed
    chosen = max(pool, key=run.score) if pool else None
    reason = "" if chosen else _refusal(rows)
    return run.finish(rows, chosen, reason)


def _refusal(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return "no candidate was measured"
    closest = min(rows, key=lambda r: (len(r["broken"]), -(r["ratio"])))
    return (f"none of the {len(rows)} candidates holds every guardrail; the closest ({closest['key']}) broke: "
            + "; ".join(closest["broken"]))


class _Run:
    """One search's state: the log, the dense measurements, the candidates' models."""

    def __init__(self, model, example, evaluate, latency, guardrails, out_dir, finetune, config, calibration, log,
                 backends, network_def) -> None:
        self.model, self.example, self.evaluate, self.latency = model, example, evaluate, latency
        self.guardrails, self.out_dir, self.finetune, self.config = guardrails, out_dir, finetune, config
        self.calibration, self.log, self.backends, self.network_def = calibration, log, backends, network_def
        self.examples: Dict[str, Any] = {}
        self.sensitivity_result = None
        self.models: Dict[str, nn.Module] = {}
        self._dense: Optional[Dict[str, Any]] = None
        self.agreement_inputs: List[torch.Tensor] = [example]
        self.confirmed: Dict[str, Dict[str, float]] = {}
        self.vs_dense: Optional[Dict[str, Any]] = None
        self.title = "search"

    # ---- measurement
    def _measure(self, net) -> tuple:
        with torch.no_grad():
            measured, example = _split_example(self.evaluate(net))
        return measured, example

    def _latency(self, predictor) -> float:
        with torch.no_grad():
            return float(self.latency(predictor))

    def _predictor(self, net: nn.Module, backend: str, folder: str):
        from .runtime import Predictor

        if backend == "torch":
            return net
        return Predictor(net, self.example, backend=backend, work_dir=folder)

    def dense(self) -> Dict[str, Any]:
        record = self.log.get("dense")
        if record is None:
            logger.info("measuring the dense model (%s)", ", ".join(self.backends))
            measured, example = self._measure(self.model)
            folder = os.path.join(self.out_dir, "candidates", "dense")
            os.makedirs(folder, exist_ok=True)
            seconds = {b: self._latency(self._predictor(self.model, b, folder)) for b in self.backends}
            record = self.log.put({"kind": "dense", "key": "dense", "measured": measured, "latency_s": seconds,
                                   "macs": count_macs(self.model, self.example), "params": count_params(self.model),
                                   "size_bytes": state_dict_bytes(self.model),
                                   "example": _store_example(example, os.path.join(folder, "example.npz"))})
        self._dense = record
        if record.get("example") is not None:
            self.examples["dense"] = record["example"]
        return record

    def sensitivity(self) -> None:
        from .sensitivity import sensitivity_analysis

        result = sensitivity_analysis(self.model, self.example, lambda net: _flat_metrics(self._measure(net)[0]),
                                      ratios=self.config.sensitivity_ratios,
                                      cache=os.path.join(self.out_dir, "sensitivity_cache.json"),
                                      evaluate_id=f"search:{self.log.fingerprint['setup']}")
        result.to_json(os.path.join(self.out_dir, "sensitivity.json"))
        try:
            result.plot(os.path.join(self.out_dir, "sensitivity.png"), metric="worst_class")
        except Exception as e:  # a plot is a convenience; the table is the result
            logger.warning("sensitivity plot not written: %s", e)
        self.sensitivity_result = result

    def _tolerance(self) -> float:
        if self.config.sensitivity_max_delta is not None:
            return float(self.config.sensitivity_max_delta)
        for key in ("max_delta_dice", "max_delta_auc"):
            if key in self.guardrails:
                return float(self.guardrails[key])
        return 0.02

    def build(self, ratio: float, mode: str) -> nn.Module:
        """The pruned and fine-tuned model of ``(ratio, mode)``: from ``OUT/candidates/`` when the log says it was
        made, else pruned, fine-tuned and saved (atomically) now."""
        key = _key(ratio, mode)
        if key in self.models:
            return self.models[key]
        folder = os.path.join(self.out_dir, "candidates", key)
        record = self.log.get(f"{key}/model")
        if record is not None and os.path.exists(os.path.join(folder, "model.pt")):
            net = apply_plan(copy.deepcopy(self.model), PruningPlan.load(os.path.join(folder, "plan.json")))
            net.load_state_dict(torch.load(os.path.join(folder, "model.pt"), weights_only=True))
            self.models[key] = net.eval()
            return self.models[key]
        options: Dict[str, Any] = {"importance": self.config.importance, "seed": self.config.seed}
        if mode == "sensitivity":
            layer_ratios = self.sensitivity_result.suggest_layer_ratios(ratio, self._tolerance(), metric="worst_class")
            options["layer_ratios"] = {k: v for k, v in layer_ratios.items() if v > 0}
            ratio_arg = 0.0  # groups without a suggested ratio (too sensitive) stay whole
        else:
            ratio_arg = ratio
        start = time.time()
        logger.info("candidate %s: pruning%s", key, " + fine-tuning with distillation" if self.finetune else "")
        net, plan = prune_channels(self.model, self.example, ratio_arg, network_def=self.network_def, **options)
        if self.finetune is not None:
            net.train()
            self.finetune(net, self.model)
        net.eval()
        os.makedirs(folder, exist_ok=True)
        plan.save(os.path.join(folder, "plan.json"))
        with atomic_path(os.path.join(folder, "model.pt")) as tmp:
            torch.save(net.state_dict(), tmp)
        self.log.put({"kind": "model", "key": f"{key}/model", "ratio": ratio, "mode": mode,
                      "layer_ratios": options.get("layer_ratios"), "build_s": time.time() - start})
        self.models[key] = net
        return net

    def fp32(self, ratio: float, mode: str) -> List[Dict[str, Any]]:
        """Measure the fp32 candidate on every backend (accuracy once: fp32 runtimes agree; the chosen model's
        agreement across runtimes is measured at the end)."""
        keys = [_key(ratio, mode, "fp32", b) for b in self.backends]
        if all(self.log.get(k) for k in keys):
            return [self.log.get(k) for k in keys]
        net = self.build(ratio, mode)
        first = self.log.get(keys[0])
        folder = os.path.join(self.out_dir, "candidates", _key(ratio, mode))
        if first:
            measured, example_path = first["measured"], first.get("example")
        else:
            measured, example = self._measure(net)
            example_path = _store_example(example, os.path.join(folder, "example.npz"))
        common = {"kind": "candidate", "ratio": ratio, "mode": mode, "precision": "fp32", "measured": measured,
                  "macs": count_macs(net, self.example), "params": count_params(net), "size_bytes": state_dict_bytes(net),
                  "artifact": os.path.join(folder, "model.pt"), "example": example_path}
        rows = []
        for backend, key in zip(self.backends, keys):
            rows.append(self.log.get(key) or self.log.put({**common, "key": key, "backend": backend,
                                                           "latency_s": self._latency(
                                                               self._predictor(net, backend, folder))}))
        return rows

    def bisect(self, mode: str) -> None:
        """Largest ratio in (0, max(ratios)] whose fp32 model keeps the accuracy guardrails."""
        hi = max(float(r) for r in self.config.ratios)
        if self._accuracy_ok(self.fp32(hi, mode)[0]):
            return
        lo = 0.0
        for _ in range(self.config.bisect_steps):
            mid = round((lo + hi) / 2, 4)
            if self._accuracy_ok(self.fp32(mid, mode)[0]):
                lo = mid
            else:
                hi = mid

    def int8_pass(self) -> None:
        """Quantize passing fp32 candidates, largest ratio first, on every int8 backend, until an int8 one passes."""
        from .quantization.ptq import QUANT_BACKENDS

        int8_backends = [b for b in self.backends if b in QUANT_BACKENDS]
        fp32 = {(r["ratio"], r["mode"]): r for r in self.rows() if r["precision"] == "fp32" and r["accuracy_ok"]}
        for ratio, mode in sorted(fp32, key=lambda k: -k[0]):
            rows = [self.int8(ratio, mode, b) for b in int8_backends]
            if any(self.decide(r)["passes"] for r in rows if r is not None):
                return

    def int8(self, ratio: float, mode: str, backend: str) -> Optional[Dict[str, Any]]:
        from .errors import QuantizationError
        from .quantization import quantize

        guided = self.config.int8_keep_fp32 == "sensitivity"
        key = _key(ratio, mode, "int8-sens" if guided else "int8", backend)
        if self.log.get(key):
            return self.log.get(key)
        net = self.build(ratio, mode)
        folder = os.path.join(self.out_dir, "candidates", _key(ratio, mode), f"int8_{backend}" + ("_sens" if guided
                                                                                                   else ""))
        keep: List[str] = []
        if guided:
            keep = self._int8_sensitive_layers(net, ratio, mode, backend)
        try:
            result = quantize(net, self.calibration, backend=backend, out_dir=folder, repeats=1, keep_fp32=keep)
        except QuantizationError as e:
            logger.warning("candidate %s: int8 failed: %s", key, e)
            return self.log.put({"kind": "failed", "key": key, "ratio": ratio, "mode": mode, "precision": "int8",
                                 "backend": backend, "error": str(e)})
        predictor = result.predictor("int8")
        measured, example = self._measure(predictor)
        return self.log.put({"kind": "candidate", "key": key, "ratio": ratio, "mode": mode, "precision": "int8",
                             "backend": backend, "measured": measured, "latency_s": self._latency(predictor),
                             "macs": count_macs(net, self.example), "params": count_params(net),
                             "size_bytes": _artifact_bytes(result.path), "artifact": result.path,
                             "fp32_layers": result.fp32_layers, "kept_fp32_by_sensitivity": keep,
                             "example": _store_example(example, os.path.join(folder, "example.npz"))})

    def _int8_sensitive_layers(self, net: nn.Module, ratio: float, mode: str, backend: str) -> List[str]:
        """Layers whose int8 alone costs the worst class more than the tolerance (:func:`~monai_prune.quantization.
        quantization_sensitivity` on this candidate and backend, cached), to keep fp32."""
        from .quantization import quantization_sensitivity

        name = f"quant_sensitivity_{_key(ratio, mode)}_{backend}"
        result = quantization_sensitivity(net, self.calibration, lambda p: _flat_metrics(self._measure(p)[0]),
                                          backend=backend, cache=os.path.join(self.out_dir, "quant_sensitivity_cache"
                                                                                            ".json"),
                                          evaluate_id=f"search:{self.log.fingerprint['setup']}")
        result.to_json(os.path.join(self.out_dir, name + ".json"))
        tolerance = self._tolerance()
        try:
            result.plot(os.path.join(self.out_dir, name + ".png"), metric="worst_class", max_delta=tolerance)
        except Exception as e:  # a plot is a convenience; the table is the result
            logger.warning("int8 sensitivity plot not written: %s", e)
        keep = result.suggest_keep_fp32(tolerance, metric="worst_class")
        logger.info("candidate %s on %s: int8 sensitivity keeps %s fp32", _key(ratio, mode), backend, keep or "nothing")
        return keep

    # ---- decisions
    def compression(self, row: Mapping[str, Any]) -> Dict[str, Any]:
        """The row against the dense model in :func:`check_guardrails`' terms. Latency: the confirmation rounds'
        medians of back-to-back pairs (dense torch, then the candidate) when the row was a finalist, else the screening
        timings."""
        dense = self._dense
        if row["key"] in self.confirmed:
            latency = {**self.confirmed[row["key"]], "confirmed": True}
        else:
            latency = {"before": dense["latency_s"].get("torch", min(dense["latency_s"].values())),
                       "after": row["latency_s"], "confirmed": False}
        return {"per_class": compare_per_class(dense["measured"], row["measured"]), "latency_s": latency,
                "macs": {"before": dense["macs"], "after": row["macs"]}}

    def _runner(self, row: Mapping[str, Any]):
        """The row's model behind its backend, for timing again."""
        from .runtime import Predictor

        if row["precision"] == "int8":
            return Predictor(row["artifact"], backend=row["backend"])
        folder = os.path.join(self.out_dir, "candidates", _key(row["ratio"], row["mode"]))
        return self._predictor(self.build(row["ratio"], row["mode"]), row["backend"], folder)

    def confirm(self) -> None:
        """Time the finalists again, each right after the dense model (torch), in ``confirm_rounds`` rounds: each
        pair gives one speed-up, and the median over rounds decides. Screening timings are taken minutes apart on a
        machine whose load changes (on a shared CPU they drift by several x); adjacent pairs see the same load."""
        import statistics

        rounds, top = self.config.confirm_rounds, self.config.confirm_top
        passing = [r for r in self.rows() if r["passes"]]
        groups = {(r["backend"], r["precision"]) for r in passing}
        picked: Dict[str, Dict[str, Any]] = {}  # per (backend, precision): the fastest at screening, the fewest MACs
        for group in groups:
            members = [r for r in passing if (r["backend"], r["precision"]) == group]
            for row in (max(members, key=lambda r: r["speedup"]), min(members, key=lambda r: r["macs_ratio"])):
                picked[row["key"]] = row
        finalists = sorted(picked.values(), key=lambda r: -r["speedup"])[:top]
        if not finalists or rounds < 1:
            return
        key = "confirm:" + ",".join(sorted(r["key"] for r in finalists)) + f":{rounds}"
        record = self.log.get(key)
        if record is None:
            logger.info("confirming the speed-up of %s: %d rounds, each timed right after the dense model",
                        ", ".join(r["key"] for r in finalists), rounds)
            runners = {r["key"]: self._runner(r) for r in finalists}
            pairs: Dict[str, List[List[float]]] = {k: [] for k in runners}
            for _ in range(rounds):
                for name, runner in runners.items():
                    pairs[name].append([self._latency(self.model), self._latency(runner)])
            record = self.log.put({
                "kind": "confirm", "key": key, "rounds": rounds, "pairs_s": pairs,
                "speedup": {k: statistics.median(d / c for d, c in v) for k, v in pairs.items()},
                "latency_s": {k: statistics.median(c for _, c in v) for k, v in pairs.items()},
                "dense_s": {k: statistics.median(d for d, _ in v) for k, v in pairs.items()}})
        self.confirmed = {k: {"before": record["dense_s"][k], "after": record["latency_s"][k],
                              "speedup": record["speedup"][k]} for k in record["speedup"]}

    def _accuracy_ok(self, row: Mapping[str, Any]) -> bool:
        return not check_guardrails(_accuracy_only(self.guardrails), {"per_class": self.compression(row)["per_class"]})

    def decide(self, row: Mapping[str, Any]) -> Dict[str, Any]:
        """The row with what the search decides: ``broken`` guardrails, ``passes``, speed-up and ratios vs dense."""
        dense = self._dense
        comp = self.compression(row)
        broken = check_guardrails(self.guardrails, comp)
        metric = _main_metric(row["measured"])
        deltas = {name: m[metric]["delta"] for name, m in comp["per_class"].items() if metric in m}
        finite = {k: v for k, v in deltas.items() if v is not None and math.isfinite(v)}
        same = dense["latency_s"].get(row["backend"])
        return {**row, "broken": broken, "passes": not broken,
                "accuracy_ok": not check_guardrails(_accuracy_only(self.guardrails), {"per_class": comp["per_class"]}),
                "metric": metric, "delta": deltas,
                "worst_delta": min(finite.values()) if finite else None,
                "worst_class": min(finite, key=finite.get) if finite else None,
                "speedup": comp["latency_s"].get("speedup", comp["latency_s"]["before"] / comp["latency_s"]["after"]),
                "latency_confirmed": comp["latency_s"]["confirmed"],
                "speedup_same_backend": same / row["latency_s"] if same else None,
                "macs_ratio": row["macs"] / dense["macs"], "size_ratio": row["size_bytes"] / dense["size_bytes"]}

    def rows(self) -> List[Dict[str, Any]]:
        return [self.decide(r) for r in self.log.records.values() if r.get("kind") == "candidate"]

    def score(self, row: Mapping[str, Any]) -> tuple:
        primary = {"latency": row["speedup"], "macs": -row["macs_ratio"], "size": -row["size_ratio"]}
        return (primary[self.config.objective], row["worst_delta"] if row["worst_delta"] is not None else -1.0)

    # ---- outputs
    def finish(self, rows: List[Dict[str, Any]], chosen: Optional[Dict[str, Any]], reason: str) -> SearchResult:
        from .report import plot_pareto

        dense = self._dense
        paths: Dict[str, str] = {}
        result = SearchResult(status="ok" if chosen else "refused", dense=dense, rows=rows, chosen=chosen,
                              out_dir=self.out_dir, reason=reason, paths=paths)
        if chosen is not None:
            result.model, result.card, chosen_paths = self._export_chosen(chosen)
            paths.update(chosen_paths)
            if chosen.get("example") is not None:
                self.examples["chosen"] = chosen["example"]
        if rows:
            paths["pareto"] = plot_pareto(dense, rows, chosen, os.path.join(self.out_dir, "pareto.png"),
                                          objective=self.config.objective)
        if self.examples.get("dense") is not None:
            paths["examples"] = _save_examples(self.examples, os.path.join(self.out_dir, "examples.npz"))
        for name in ("sensitivity.json", "sensitivity.png"):
            if os.path.exists(os.path.join(self.out_dir, name)):
                paths[name.replace(".", "_")] = os.path.join(self.out_dir, name)
        summary = {"status": result.status, "reason": reason, "guardrails": self.guardrails,
                   "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()},
                   "backends": self.backends, "fingerprint": self.log.fingerprint,
                   "dense": dense, "candidates": rows, "chosen": chosen, "paths": paths}
        if result.card is not None:
            summary["card"] = result.card.to_dict()
            summary["agreement_vs_dense"] = self.vs_dense
        paths["candidates_md"] = atomic_write_text(os.path.join(self.out_dir, "candidates.md"),
                                                   candidates_table(dense, rows, chosen) + "\n")
        paths["search_json"] = atomic_write_text(os.path.join(self.out_dir, "search.json"),
                                                 json.dumps(json_safe(summary), indent=1))
        if chosen is None:
            if os.path.isdir(os.path.join(self.out_dir, "chosen")):
                logger.warning("%s is the choice of an earlier search of this folder under other guardrails; this "
                               "search chose nothing", os.path.join(self.out_dir, "chosen"))
            logger.error("search refused: %s", reason)
            raise SearchError(reason)
        logger.info("chosen: %s (%.2fx faster than dense torch, MACs %.3f, worst class %s %+.4f)", chosen["key"],
                    chosen["speedup"], chosen["macs_ratio"], chosen["worst_class"], chosen["worst_delta"] or 0.0)
        return result

    def _export_chosen(self, chosen: Dict[str, Any]) -> tuple:
        from .export import export_onnx
        from .fidelity import backend_agreement, prediction_agreement

        folder = os.path.join(self.out_dir, "chosen")
        staging = folder + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        key = _key(chosen["ratio"], chosen["mode"])
        net = self.build(chosen["ratio"], chosen["mode"])
        source = os.path.join(self.out_dir, "candidates", key)
        for name in ("model.pt", "plan.json"):
            shutil.copy2(os.path.join(source, name), os.path.join(staging, name))
        onnx = export_onnx(net, self.example, os.path.join(staging, "model.onnx")).path
        model: Any = net
        if chosen["precision"] == "int8":
            from .runtime import Predictor

            artifact = chosen["artifact"]
            target = os.path.join(staging, "int8_" + os.path.basename(artifact.rstrip(os.sep)))
            (shutil.copytree if os.path.isdir(artifact) else shutil.copy2)(artifact, target)
            for companion, copied in zip(model_files(artifact)[1:], model_files(target)[1:]):  # OpenVINO's .bin
                shutil.copy2(companion, copied)
            model = Predictor(artifact, backend=chosen["backend"])
        agreement = None
        others = [b for b in self.backends if b in ("onnxruntime", "openvino")]
        if others:
            agreement = backend_agreement(net, self.agreement_inputs, onnx_path=onnx, backends=others)
        self.vs_dense = prediction_agreement(self.model, model, self.agreement_inputs)
        card = _card(self, chosen, agreement)
        card.to_json(os.path.join(staging, "fidelity_card.json"))
        atomic_write_text(os.path.join(staging, "fidelity_card.md"), card.to_markdown())
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
        paths = {"chosen": folder, "fidelity_card": os.path.join(folder, "fidelity_card.md")}
        return model, card, paths


def _card(run: _Run, chosen: Mapping[str, Any], agreement: Optional[Dict[str, Any]]):
    """The chosen model's :class:`~monai_prune.fidelity.FidelityCard`."""
    comp = run.compression(chosen)
    dense = run._dense
    data = {"title": f"{run.title}: {chosen['key']}", "task": chosen["measured"].get("task", "segmentation"),
            "per_class": comp["per_class"],
            "latency_s": {"before": comp["latency_s"]["before"], "after": comp["latency_s"]["after"],
                          "what": f"the search's latency workload (dense: torch; candidate: {chosen['backend']}"
                                  + ("; median over rounds of dense and candidate timed back to back)"
                                     if comp["latency_s"]["confirmed"] else ")")},
            "macs": comp["macs"], "params": {"before": dense["params"], "after": chosen["params"]},
            "size_bytes": {"before": dense["size_bytes"], "after": chosen["size_bytes"]},
            "backend_agreement": agreement, "guardrails": run.guardrails, "broken": chosen["broken"],
            "cases": chosen["measured"].get("cases"), "notes": []}
    if run.vs_dense is not None:
        data["notes"].append(agreement_note(run.vs_dense, f"{len(run.agreement_inputs)} held-out input(s)"))
    return FidelityCard(**data)


def _artifact_bytes(path: str) -> int:
    """Bytes of a model file; an OpenVINO IR counts its ``.xml`` and its ``.bin``."""
    return artifact_size(path) if os.path.isfile(path) else file_size(path)


def _store_example(example: Optional[Mapping[str, Any]], path: str) -> Optional[str]:
    """Save an ``evaluate`` example slice (``{"image", "label", "pred"}`` 2D arrays) as ``.npz``; returns the path."""
    if example is None:
        return None
    arrays = {name: np.asarray(value) for name, value in example.items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return path


def _save_examples(examples: Mapping[str, Optional[str]], path: str) -> str:
    """One ``examples.npz`` with ``<who>_<array>`` entries (``dense_image``, ``chosen_pred`` ...) for the report."""
    arrays = {}
    for who, stored in examples.items():
        if stored and os.path.exists(stored):
            with np.load(stored) as data:
                arrays.update({f"{who}_{name}": data[name] for name in data.files})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return path
