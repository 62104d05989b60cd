"""The search's decision, pure: each measured :class:`~.candidates.Candidate` against the dense reference and the
guardrails (a :class:`Verdict`), then the choice among those that hold every guardrail (a :class:`Decision`). No
file, no model: what :func:`decide` returns depends only on its arguments."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..fidelity import check_guardrails, compare_per_class
from .candidates import Candidate, DenseReference, PairedTiming
from .config import ACCURACY_GUARDRAILS, OBJECTIVES

# the decision's fields of a row of search.json, in their order after the candidate's own
VERDICT_FIELDS = ("broken", "passes", "accuracy_ok", "metric", "delta", "worst_delta", "worst_class", "speedup",
                  "latency_confirmed", "speedup_same_backend", "macs_ratio", "size_ratio")


def accuracy_only(guardrails: Mapping[str, Any]) -> Dict[str, Any]:
    """The guardrails on accuracy (those a model's own measurements decide, whatever its speed)."""
    return {k: v for k, v in guardrails.items() if k in ACCURACY_GUARDRAILS}


def main_metric(measured: Mapping[str, Any]) -> str:
    """Dice for segmentation, AUC else."""
    return "dice" if measured.get("task", "segmentation") == "segmentation" else "auc"


def compare(candidate: Candidate, dense: DenseReference, paired: Optional[PairedTiming] = None) -> Dict[str, Any]:
    """The candidate against the dense model in :func:`~monai_prune.fidelity.check_guardrails`' terms. Latency: the
    confirmation rounds' medians (``paired``) when the candidate was a finalist, else the screening timings."""
    if paired is not None:
        latency = {**paired.to_dict(), "confirmed": True}
    else:
        latency = {"before": dense.torch_latency, "after": candidate.latency_s, "confirmed": False}
    return {"per_class": compare_per_class(dense.measured, candidate.measured), "latency_s": latency,
            "macs": {"before": dense.macs, "after": candidate.macs}}


@dataclass
class Verdict:
    """One candidate as decided: the guardrails it ``broke`` (none: it ``passes``), whether its accuracy alone holds,
    the main metric's Δ per class and the worst class, its speed-up over dense torch (paired when
    ``latency_confirmed``), over dense on its own backend, and its MACs and size relative to dense.
    ``comparison`` is what the guardrails were checked on (the fidelity card's numbers)."""

    candidate: Candidate
    comparison: Dict[str, Any]
    broken: List[str]
    passes: bool
    accuracy_ok: bool
    metric: str
    delta: Dict[str, Any]
    worst_delta: Optional[float]
    worst_class: Optional[str]
    speedup: float
    latency_confirmed: bool
    speedup_same_backend: Optional[float]
    macs_ratio: float
    size_ratio: float

    @property
    def key(self) -> str:
        return self.candidate.key

    def to_row(self) -> Dict[str, Any]:
        """The row of ``search.json`` and :attr:`SearchResult.rows`: the candidate's log line, then the decision."""
        return {**self.candidate.to_record(), **{name: getattr(self, name) for name in VERDICT_FIELDS}}


def assess(candidate: Candidate, dense: DenseReference, guardrails: Mapping[str, Any],
           paired: Optional[PairedTiming] = None) -> Verdict:
    """The candidate's :class:`Verdict` under ``guardrails`` (``paired``: its confirmation timings, if any)."""
    comparison = compare(candidate, dense, paired)
    broken = check_guardrails(guardrails, comparison)
    metric = main_metric(candidate.measured)
    deltas = {name: m[metric]["delta"] for name, m in comparison["per_class"].items() if metric in m}
    finite = {k: v for k, v in deltas.items() if v is not None and math.isfinite(v)}
    latency = comparison["latency_s"]
    same = dense.latency_s.get(candidate.backend)
    return Verdict(
        candidate=candidate, comparison=comparison, broken=broken, passes=not broken,
        accuracy_ok=not check_guardrails(accuracy_only(guardrails), {"per_class": comparison["per_class"]}),
        metric=metric, delta=deltas, worst_delta=min(finite.values()) if finite else None,
        worst_class=min(finite, key=finite.get) if finite else None,
        speedup=latency.get("speedup", latency["before"] / latency["after"]), latency_confirmed=latency["confirmed"],
        speedup_same_backend=same / candidate.latency_s if same else None,
        macs_ratio=candidate.macs / dense.macs, size_ratio=candidate.size_bytes / dense.size_bytes)


def dense_breaks(dense: DenseReference, guardrails: Mapping[str, Any]) -> List[str]:
    """The accuracy guardrails the dense model itself breaks (a floor above its own Dice): then nothing can pass."""
    return check_guardrails(accuracy_only(guardrails), {"per_class": compare_per_class(dense.measured,
                                                                                        dense.measured)})


def score(verdict: Verdict, objective: str) -> Tuple[float, float]:
    """What the choice maximizes: the objective (speed-up, or fewer MACs, or a smaller size), then the worst class's
    Δ (a candidate without one last)."""
    primary = {"latency": verdict.speedup, "macs": -verdict.macs_ratio, "size": -verdict.size_ratio}
    return (primary[objective], verdict.worst_delta if verdict.worst_delta is not None else -1.0)


def refusal(verdicts: Sequence[Verdict]) -> str:
    """Why nothing was chosen: the candidate that broke the fewest guardrails (the largest ratio among equals)."""
    if not verdicts:
        return "no candidate was measured"
    closest = min(verdicts, key=lambda v: (len(v.broken), -v.candidate.ratio))
    return (f"none of the {len(verdicts)} candidates holds every guardrail; the closest ({closest.key}) broke: "
            + "; ".join(closest.broken))


@dataclass
class Decision:
    """Every candidate's :class:`Verdict` (in the order measured), the one ``chosen`` (None: refused) and, when
    refused, the ``reason``."""

    verdicts: List[Verdict]
    chosen: Optional[Verdict]
    reason: str = ""

    @property
    def status(self) -> str:
        return "ok" if self.chosen is not None else "refused"

    def rows(self) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
        """``(rows, chosen_row)`` as ``search.json`` has them; the chosen row is the very dict in ``rows``."""
        rows = [v.to_row() for v in self.verdicts]
        chosen = next((row for v, row in zip(self.verdicts, rows) if v is self.chosen), None)
        return rows, chosen


def decide(candidates: Sequence[Candidate], dense: DenseReference, guardrails: Mapping[str, Any],
           objective: str = "latency", paired: Optional[Mapping[str, PairedTiming]] = None) -> Decision:
    """Choose among the measured ``candidates``: the one that holds every guardrail with the best ``objective``
    (``"latency"``: largest speed-up over dense torch, ``"macs"``: fewest MACs, ``"size"``: smallest), the worst
    class's Δ breaking ties, then the order measured (the first of equals wins).

    ``paired``: the finalists' confirmation timings by key; with the latency objective, when any passing candidate
    has them, the choice is made among those only (paired timings decide speed). Refused (``chosen`` None) when the
    dense model itself breaks the accuracy guardrails, or when no candidate holds them all."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be among {OBJECTIVES}, got {objective!r}")
    paired = paired or {}
    broken = dense_breaks(dense, guardrails)
    verdicts = [assess(c, dense, guardrails, paired.get(c.key)) for c in candidates]
    if broken:
        return Decision(verdicts, None, "the dense model itself breaks the guardrails, so no compressed model can "
                                        "meet them: " + "; ".join(broken))
    passing = [v for v in verdicts if v.passes]
    confirmed = [v for v in passing if v.latency_confirmed]
    pool = confirmed if objective == "latency" and confirmed else passing
    chosen = max(pool, key=lambda v: score(v, objective)) if pool else None
    return Decision(verdicts, chosen, "" if chosen else refusal(verdicts))
