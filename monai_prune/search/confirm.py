"""The confirm stage: the finalists timed again, each right after the dense model, round after round. Screening
timings are taken minutes apart on a machine whose load changes (on a shared CPU they drift by several x); adjacent
pairs see the same load, and the median over rounds of each pair's ratio decides speed."""

from __future__ import annotations

import logging
import statistics
from typing import Any, Callable, Dict, List, Mapping, Sequence

from ..measure import paired_latency
from .build import CandidateBuilder
from .candidates import Candidate, PairedTiming
from .context import SearchContext
from .decide import Verdict
from .measure import Meter

logger = logging.getLogger(__package__)  # "monai_prune.search": the name the command line prints


def finalists(verdicts: Sequence[Verdict], top: int) -> List[Verdict]:
    """Per (backend, precision), among the candidates that hold every guardrail: the fastest at screening and the
    one with the fewest MACs; at most ``top`` in all, fastest first."""
    passing = [v for v in verdicts if v.passes]
    picked: Dict[str, Verdict] = {}
    for group in dict.fromkeys((v.candidate.backend, v.candidate.precision) for v in passing):
        members = [v for v in passing if (v.candidate.backend, v.candidate.precision) == group]
        for verdict in (max(members, key=lambda v: v.speedup), min(members, key=lambda v: v.macs_ratio)):
            picked[verdict.key] = verdict
    return sorted(picked.values(), key=lambda v: -v.speedup)[:top]


def candidate_runner(ctx: SearchContext, meter: Meter, builder: CandidateBuilder, candidate: Candidate):
    """The candidate's model behind its backend, for timing again."""
    from ..runtime import Predictor

    if candidate.precision == "int8":
        return Predictor(candidate.artifact, backend=candidate.backend)
    return meter.runner(builder.build(candidate.ratio, candidate.mode), candidate.backend,
                        ctx.folder(candidate.model_key))


def time_pairs(meter: Meter, dense_model: Any, runners: Mapping[str, Any], rounds: int) -> Dict[str, List[List[float]]]:
    """Per runner, ``rounds`` pairs ``[dense seconds, its seconds]``. :func:`~monai_prune.measure.paired_latency`
    runs the rounds (no warm-up; in each round, for each runner in order, the dense model then the runner, back to
    back); the seconds kept are those ``latency`` reports for its workload, as at screening, not the wall time of the
    call (which would add the workload's own warm-up and repeats)."""
    reported: Dict[str, List[float]] = {}
    calls: Dict[str, Callable[[], None]] = {}
    for key, runner in runners.items():
        for name, model in ((f"dense|{key}", dense_model), (key, runner)):
            reported[name] = []
            calls[name] = lambda into=reported[name], model=model: into.append(meter.seconds(model))
    paired_latency(calls, rounds=rounds, warmup=0)
    return {key: [[d, c] for d, c in zip(reported[f"dense|{key}"], reported[key])] for key in runners}


def confirm(ctx: SearchContext, meter: Meter, builder: CandidateBuilder,
            verdicts: Sequence[Verdict]) -> Dict[str, PairedTiming]:
    """The finalists' (:func:`finalists` of the screening ``verdicts``) paired timings by key, measured in
    ``confirm_rounds`` rounds (once: from the log when it has them); empty with 0 rounds or no passing candidate."""
    rounds = ctx.config.confirm_rounds
    chosen = finalists(verdicts, ctx.config.confirm_top)
    if not chosen or rounds < 1:
        return {}
    key = "confirm:" + ",".join(sorted(v.key for v in chosen)) + f":{rounds}"
    record = ctx.log.get(key)
    if record is None:
        logger.info("confirming the speed-up of %s: %d rounds, each timed right after the dense model",
                    ", ".join(v.key for v in chosen), rounds)
        runners = {v.key: candidate_runner(ctx, meter, builder, v.candidate) for v in chosen}
        pairs = time_pairs(meter, ctx.model, runners, rounds)
        record = ctx.log.put({
            "kind": "confirm", "key": key, "rounds": rounds, "pairs_s": pairs,
            "speedup": {k: statistics.median(d / c for d, c in v) for k, v in pairs.items()},
            "latency_s": {k: statistics.median(c for _, c in v) for k, v in pairs.items()},
            "dense_s": {k: statistics.median(d for d, _ in v) for k, v in pairs.items()}})
    return {k: PairedTiming(before=record["dense_s"][k], after=record["latency_s"][k], speedup=record["speedup"][k])
            for k in record["speedup"]}
