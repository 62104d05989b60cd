"""The pipeline-knob stage: after the model is chosen, the workload's own settings (the sliding-window ``overlap``,
``sw_batch_size``, the window size, ...: whatever keywords the caller's ``evaluate`` and ``latency`` take) are searched
under the same per-class guardrails, against the same dense reference.

:attr:`SearchConfig.pipeline_knobs` names the values to try (``{"overlap": [0.1, 0.0], "sw_batch_size": [2, 4]}``)
and :attr:`SearchConfig.pipeline_baseline` the setting ``evaluate``/``latency`` use when called without keywords (the
one every candidate was measured at). The chosen model is measured at each value, one knob changed at a time:

* accuracy: ``evaluate(model, **setting)``, judged by :func:`~.decide.assess` against the dense model at the baseline
  (so a knob's cost adds to the compression's: both count against the guardrails);
* speed: in ``confirm_rounds`` rounds (at least one), the dense model at the baseline, then the chosen model at the
  baseline, then at each setting, back to back (:func:`~monai_prune.measure.paired_latency`); per setting the median
  over rounds of dense / setting (the speed-up the user gets) and of 1 - setting / chosen baseline (the saving).

Then the passing values that save most, one per knob, are combined and measured the same way. The shipped setting is
the fastest passing setting that saves more than ``pipeline_min_saving`` (default 5%: less is within the timing noise
of a shared machine), combined or single; none when no knob value passes and saves that much. Every
measurement is a line of the search log (``kind`` ``knob`` / ``knob-timing``), so a resumed search re-decides without
measuring again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ..measure import paired_latency
from .build import CandidateBuilder
from .candidates import DenseReference, PairedTiming
from .config import same_value as _same
from .confirm import candidate_runner
from .context import SearchContext
from .decide import Verdict, assess
from .measure import Meter, split_example

logger = logging.getLogger(__package__)  # "monai_prune.search": the name the command line prints

BASELINE = "baseline"
COMBINED = "combined"


def label(overrides: Mapping[str, Any]) -> str:
    """``overlap=0.1, sw_batch_size=4`` (``baseline`` for none)."""
    return ", ".join(f"{k}={_text(v)}" for k, v in overrides.items()) or BASELINE


def _text(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def settings_text(values: Mapping[str, Any]) -> str:
    """``overlap 0.1, roi_size 64,64,64`` (the card's wording of a setting)."""
    return ", ".join(f"{k} {_text(v)}" for k, v in values.items())


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class KnobStage:
    """Measures the chosen model at knob settings; every measurement logged (see the module docstring)."""

    def __init__(self, ctx: SearchContext, meter: Meter, builder: CandidateBuilder, dense: DenseReference,
                 chosen: Verdict) -> None:
        self.ctx, self.meter, self.dense, self.chosen = ctx, meter, dense, chosen
        self.baseline = {k: _plain(v) for k, v in ctx.config.pipeline_baseline.items()}
        self.rounds = max(1, int(ctx.config.confirm_rounds))
        self._builder = builder
        self._runner = None

    @property
    def runner(self):
        if self._runner is None:
            self._runner = candidate_runner(self.ctx, self.meter, self._builder, self.chosen.candidate)
        return self._runner

    def setting(self, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        return {**self.baseline, **{k: _plain(v) for k, v in overrides.items()}}

    def measured(self, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        """``evaluate`` of the chosen model at the setting (the candidate's own metrics at the baseline)."""
        if not overrides:
            return self.chosen.candidate.measured
        key = f"knob:{self.chosen.key}:{json.dumps(overrides, sort_keys=True)}"
        record = self.ctx.log.get(key)
        if record is None:
            logger.info("pipeline knob %s: evaluating %s", label(overrides), self.chosen.key)
            with torch.no_grad():
                measured, _ = split_example(self.meter.evaluate(self.runner, **self.setting(overrides)))
            record = self.ctx.log.put({"kind": "knob", "key": key, "candidate": self.chosen.key,
                                       "overrides": overrides, "measured": measured})
        return record["measured"]

    def timings(self, settings: Sequence[Mapping[str, Any]]) -> Dict[str, List[List[float]]]:
        """``rounds`` triples ``[dense at baseline, chosen at baseline, chosen at the setting]`` per setting label
        (the baseline's own: ``[dense, chosen, chosen]``), all from the same rounds."""
        labels = [label(s) for s in settings]
        key = f"knob-timing:{self.chosen.key}:{json.dumps(labels)}:{self.rounds}"
        record = self.ctx.log.get(key)
        if record is None:
            logger.info("pipeline knobs: timing %s against the dense model and the chosen model at the baseline, "
                        "%d round(s)", "; ".join(labels) or "the baseline", self.rounds)
            seconds: Dict[str, List[float]] = {}
            calls = {}
            for name, model, setting in ([("dense", self.ctx.model, self.baseline), (BASELINE, self.runner,
                                                                                      self.baseline)]
                                         + [(lab, self.runner, self.setting(s)) for lab, s in zip(labels, settings)]):
                seconds[name] = []
                calls[name] = (lambda into=seconds[name], model=model, setting=setting:
                               into.append(self._seconds(model, setting)))
            paired_latency(calls, rounds=self.rounds, warmup=0)
            record = self.ctx.log.put({"kind": "knob-timing", "key": key, "rounds": self.rounds, "seconds": seconds})
        s = record["seconds"]
        return {lab: [[d, b, c] for d, b, c in zip(s["dense"], s[BASELINE], s[lab])] for lab in [BASELINE, *labels]}

    def _seconds(self, model, setting: Mapping[str, Any]) -> float:
        with torch.no_grad():
            return float(self.meter.latency(model, **setting))

    def row(self, knob: str, overrides: Mapping[str, Any], triples: Sequence[Sequence[float]]) -> Dict[str, Any]:
        """One setting, decided: its guardrail verdict against dense, seconds, speed-up and saving."""
        seconds = statistics.median(c for _, _, c in triples)
        paired = PairedTiming(before=statistics.median(d for d, _, _ in triples), after=seconds,
                              speedup=statistics.median(d / c for d, _, c in triples))
        candidate = dataclasses.replace(self.chosen.candidate, key=f"{self.chosen.key} [{label(overrides)}]",
                                        measured=self.measured(overrides), latency_s=seconds)
        verdict = assess(candidate, self.dense, self.ctx.guardrails, paired)
        return {"label": label(overrides), "knob": knob, "overrides": dict(overrides),
                "from": {k: self.baseline[k] for k in overrides}, "setting": self.setting(overrides),
                "per_class": verdict.comparison["per_class"], "metric": verdict.metric, "delta": verdict.delta,
                "worst_delta": verdict.worst_delta, "worst_class": verdict.worst_class,
                "delta_vs_chosen": self._delta_vs_chosen(verdict),
                "seconds": seconds, "speedup": paired.speedup,
                "saving_pct": 100.0 * statistics.median(1.0 - c / b for _, b, c in triples),
                "passes": verdict.passes, "broken": verdict.broken}

    def _delta_vs_chosen(self, verdict: Verdict) -> Dict[str, Optional[float]]:
        """The knob's own cost: the main metric's change per class against the chosen model at the baseline."""
        base = self.chosen.delta
        return {c: (None if d is None or base.get(c) is None else d - base[c]) for c, d in verdict.delta.items()}


def knob_stage(ctx: SearchContext, meter: Meter, builder: CandidateBuilder, dense: DenseReference,
               chosen: Optional[Verdict]) -> Optional[Dict[str, Any]]:
    """The knob settings of the chosen model measured and decided; None when no knob was asked or nothing was
    chosen. Returns ``{"baseline", "rows", "shipped", "lines"}``: ``rows`` the baseline, every single setting and the
    combined one (when two or more knobs passed and saved), ``shipped`` the row to ship (or None), ``lines`` one
    sentence per setting ("overlap 0.25 -> 0.1 costs ... and saves ...")."""
    knobs = ctx.config.pipeline_knobs
    if not knobs or chosen is None:
        return None
    stage = KnobStage(ctx, meter, builder, dense, chosen)
    singles = [(knob, {knob: _plain(v)}) for knob, values in knobs.items() for v in values
               if not _same(_plain(v), stage.baseline[knob])]
    for _, overrides in singles:  # accuracy first: evaluations are the long part and are logged one by one
        stage.measured(overrides)
    triples = stage.timings([o for _, o in singles])
    rows = [stage.row(k, o, triples[label(o)]) for k, o in singles]
    floor = 100.0 * float(ctx.config.pipeline_min_saving)
    best: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        if row["passes"] and row["saving_pct"] > max(floor, best.get(row["knob"], {}).get("saving_pct", 0.0)):
            best[row["knob"]] = row
    if len(best) >= 2:
        combined = {k: v for row in best.values() for k, v in row["overrides"].items()}
        stage.measured(combined)
        rows.append(stage.row(COMBINED, combined, stage.timings([combined])[label(combined)]))
    base_row = stage.row(BASELINE, {}, triples[BASELINE])
    shipping = [r for r in rows if r["passes"] and r["saving_pct"] > floor]
    shipped = max(shipping, key=lambda r: r["speedup"], default=None)
    result = {"baseline": stage.baseline, "candidate": chosen.key, "rounds": stage.rounds, "min_saving_pct": floor,
              "rows": [base_row] + rows, "shipped": shipped,
              "lines": [sentence(r) for r in rows]}
    for line in result["lines"]:
        logger.info("pipeline knob: %s", line)
    if shipped is not None:
        logger.info("pipeline setting shipped: %s (%.2fx faster than the dense model at the baseline)",
                    shipped["label"], shipped["speedup"])
    else:
        logger.info("pipeline setting: the baseline is kept (no knob value held every guardrail and saved more than "
                    "%.0f%%)", floor)
    return result


def sentence(row: Mapping[str, Any]) -> str:
    """``overlap 0.25 -> 0.1 costs 0.0012 Dice (spleen) and saves 31% of the chosen model's time (3.50x vs dense):
    held every guardrail``; the cost is the knob's own (against the chosen model at the baseline)."""
    change = "; ".join(f"{k} {_text(row['from'][k])} -> {_text(v)}" for k, v in row["overrides"].items())
    metric = "AUC" if row["metric"] == "auc" else "Dice"
    own = {c: d for c, d in row["delta_vs_chosen"].items() if d is not None}
    worst = min(own, key=own.get) if own else None
    if worst is None:
        cost = f"{metric} cost unknown"
    elif own[worst] < 0:
        cost = (f"costs {-own[worst]:.4f} {metric} ({worst})" if own[worst] <= -5e-5
                else f"costs less than 0.0001 {metric} ({worst}: {own[worst]:+.1e})")
    else:
        cost = f"costs no {metric} (every class {'+' if own[worst] > 0 else ''}{own[worst]:.4f} or better)"
    saving = row["saving_pct"]
    time_text = ((f"saves {saving:.0f}%" if saving >= 0 else f"takes {-saving:.0f}% longer")
                 + " of the chosen model's time")
    verdict = "held every guardrail" if row["passes"] else "BROKE: " + "; ".join(row["broken"])
    return f"{change} {cost} and {time_text} ({row['speedup']:.2f}x vs dense): {verdict}"
