""":func:`search`: the stages in order. Measure the dense model; build and measure the fp32 candidates (a grid of
ratios, or a bisection); quantize the passing ones when int8 is asked; decide; time the finalists again in pairs
with the dense model; decide again on those timings; search the pipeline knobs of the chosen model (when asked);
write the outputs."""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import InputError
from .build import CandidateBuilder
from .candidates import Candidate, DenseReference
from .config import Evaluate, SearchConfig, check_pipeline_knobs, check_search_arguments
from .confirm import confirm
from .context import SearchContext
from .decide import assess, decide, dense_breaks
from .knobs import knob_stage
from .log import SearchLog, check_resumable, search_fingerprint
from .measure import Meter
from .outputs import SearchResult, finish


def logged_candidates(log: SearchLog) -> List[Candidate]:
    """Every candidate the log holds, in the order measured (this search's and earlier ones')."""
    return [Candidate.from_record(r) for r in log.records.values() if r.get("kind") == "candidate"]


def bisect(ctx: SearchContext, meter: Meter, builder: CandidateBuilder, dense: DenseReference, mode: str) -> None:
    """Largest ratio in (0, max(ratios)] whose fp32 model keeps the accuracy guardrails."""
    def accuracy_ok(ratio: float) -> bool:
        return assess(meter.fp32(ratio, mode, builder)[0], dense, ctx.guardrails).accuracy_ok

    hi = max(float(r) for r in ctx.config.ratios)
    if accuracy_ok(hi):
        return
    lo = 0.0
    for _ in range(ctx.config.bisect_steps):
        mid = round((lo + hi) / 2, 4)
        if accuracy_ok(mid):
            lo = mid
        else:
            hi = mid


def int8_pass(ctx: SearchContext, meter: Meter, builder: CandidateBuilder, dense: DenseReference) -> None:
    """Quantize passing fp32 candidates, largest ratio first, on every int8 backend, until an int8 one passes."""
    from ..quantization.ptq import QUANT_BACKENDS

    int8_backends = [b for b in ctx.backends if b in QUANT_BACKENDS]
    verdicts = [assess(c, dense, ctx.guardrails) for c in logged_candidates(ctx.log)]
    fp32 = {(v.candidate.ratio, v.candidate.mode): v for v in verdicts
            if v.candidate.precision == "fp32" and v.accuracy_ok}
    for ratio, mode in sorted(fp32, key=lambda k: -k[0]):
        made = [meter.int8(ratio, mode, b, builder) for b in int8_backends]
        if any(assess(c, dense, ctx.guardrails).passes for c in made if c is not None):
            return


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
    """Find the most compressed model that holds every guardrail; see :mod:`monai_prune.search`.

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
    check_pipeline_knobs(config.pipeline_knobs, config.pipeline_baseline, {"evaluate": evaluate, "latency": latency})
    model = copy.deepcopy(model).eval()
    fingerprint = search_fingerprint(model, example_input, setup_id, config, finetune)
    check_resumable(out_dir, fingerprint)
    os.makedirs(out_dir, exist_ok=True)
    log = SearchLog(os.path.join(out_dir, "candidates.jsonl"), fingerprint)
    ctx = SearchContext(model, example_input, guardrails, config, backends, out_dir, log,
                        list(agreement_inputs) if agreement_inputs else [example_input], title)
    builder, meter = CandidateBuilder(ctx, finetune, network_def, calibration), Meter(ctx, evaluate, latency)

    dense = meter.dense()
    if dense_breaks(dense, guardrails):  # no compressed model can meet them: refused before any candidate is built
        return finish(ctx, builder, dense, decide(logged_candidates(log), dense, guardrails, config.objective))
    if "sensitivity" in config.layer_modes:
        builder.analyse_sensitivity(meter.flat)
    for mode in config.layer_modes:
        if config.strategy == "grid":
            for ratio in sorted(float(r) for r in config.ratios):
                meter.fp32(ratio, mode, builder)
        else:
            bisect(ctx, meter, builder, dense, mode)
    if "int8" in config.precisions:
        int8_pass(ctx, meter, builder, dense)
    screening = decide(logged_candidates(log), dense, guardrails, config.objective)
    paired = confirm(ctx, meter, builder, screening.verdicts)
    decision = decide(logged_candidates(log), dense, guardrails, config.objective, paired)
    return finish(ctx, builder, dense, decision, knob_stage(ctx, meter, builder, dense, decision.chosen))
