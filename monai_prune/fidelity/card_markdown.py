"""The fidelity card for people: :meth:`FidelityCard.to_markdown <monai_prune.fidelity.card.FidelityCard.to_markdown>`
renders through :func:`card_markdown`, and the number formats it uses."""

from __future__ import annotations

import json
import math
from typing import Any, List, Mapping, Optional

from .._markdown import markdown_table
from .agreement import agreement_value

METRIC_LABELS = {"dice": "Dice", "auc": "AUC", "sensitivity": "sensitivity", "volume_error_pct": "volume error (%)"}
SUMMARY_LABELS = {"ece": "expected calibration error (lower is better)", "accuracy": "accuracy"}


def card_markdown(card: Any, heading_level: int = 2) -> str:
    """A :class:`~monai_prune.fidelity.card.FidelityCard` as Markdown: its headline in bold as the first line, then
    per-class before/after/Δ of every metric measured, whole-model metrics, cost (parameters, MACs, size, latency
    with ratios), backend agreement, worst cases, each guardrail held or broken, and the notes. ``heading_level``
    sets the section headings (``3`` to embed the card under a ``##`` section)."""
    h = "#" * heading_level
    lines = [f"**{card.headline()}**", "",
             f"{card.title}: {card.task}"
             + (" (multi-label: every output channel is its own class, channels may overlap)"
                if card.label_mode == "multi_label" else "")
             + (f", {card.cases} validation case{'s' if card.cases != 1 else ''}" if card.cases is not None else "")
             + ". Before = dense, after = compressed; Δ = after - before.", ""]
    rows = [[name, metric_label(metric, card.units), fmt4(v.get("before")), fmt4(v.get("after")),
             fmt4(delta(v), "{:+.4f}")]
            for name, metrics in card.per_class.items() for metric, v in metrics.items()]
    lines += [f"{h} Per class", ""]
    lines += [markdown_table(["class", "metric", "before", "after", "Δ"], rows) if rows
              else "No per-class metrics were measured.", ""]
    if card.summary:
        rows = [[SUMMARY_LABELS.get(k, k), fmt4(v.get("before")), fmt4(v.get("after")),
                 fmt4(delta(v), "{:+.4f}")] for k, v in card.summary.items()]
        lines += [f"{h} Whole model", "", markdown_table(["metric", "before", "after", "Δ"], rows), ""]
    cost = _cost_rows(card)
    if cost:
        lines += [f"{h} Cost", "", markdown_table(["", "before", "after", "after / before"], cost), ""]
    if card.pipeline_s:
        lines += [f"{h} End to end: {card.pipeline_s.get('what', 'the deployed pipeline')}", "",
                  markdown_table(["seconds", "before (dense)", "after (compressed)", "after / before", "speed-up"],
                                 pipeline_rows(card.pipeline_s)), ""]
    lines += _agreement_section(card.backend_agreement, h)
    if card.worst_cases:
        rows = [[w.get("case"), fmt4(w.get("dice_before")), fmt4(w.get("dice_after")), fmt4(w.get("drop"))]
                for w in card.worst_cases]
        lines += [f"{h} Worst validation cases (by position in the validation list)", "",
                  markdown_table(["case", "mean foreground Dice before", "after", "drop"], rows), ""]
    lines += _guardrail_section(card, h)
    if card.notes:
        lines += [f"{h} Notes", ""] + [f"- {note}" for note in card.notes] + [""]
    return "\n".join(lines)


def _cost_rows(card: Any) -> List[List[str]]:
    cost = []
    if card.params:
        cost.append(["parameters", *pair(card.params, "{:,.0f}")])
    if card.macs:
        cost.append(["MACs per input", *pair(card.macs, *prefixed(card.macs, ""))])
    if card.size_bytes:
        cost.append(["weights size", *pair(card.size_bytes, *prefixed(card.size_bytes, "B"))])
    for timed in (card.latency_s, card.network_latency_s):
        if timed:
            row = [f"latency: {timed.get('what', 'unspecified')}", *pair(timed, "{:.4f} s")]
            speedup = ratio(timed.get("before"), timed.get("after"))
            if speedup is not None:
                row[-1] += f" ({speedup:.2f}x faster)"
            cost.append(row)
    return cost


def _agreement_section(backend_agreement: Optional[Mapping[str, Any]], h: str) -> List[str]:
    if not backend_agreement:
        return []
    rows = [[backend, "**cannot run this model**", "—", v["error"]] if "error" in v else
            [backend, fmt4(agreement_value(v), "{:.5f}"), fmt4(v.get("max_abs_diff"), "{:.2g}"),
             ", ".join(f"{c}: {fmt4(d)}" for c, d in (v.get("dice_vs_torch") or {}).items()) or "n/a"]
            for backend, v in backend_agreement.items()]
    masks = any(v.get("label_mode") == "multi_label" for v in backend_agreement.values())
    agreement = "channel mask agreement" if masks else "argmax agreement"
    return [f"{h} Runtimes vs PyTorch (the compressed model)", "",
            markdown_table(["runtime", agreement, "max abs diff", "Dice vs torch by channel"], rows), ""]


def _guardrail_section(card: Any, h: str) -> List[str]:
    lines = [f"{h} Guardrails", ""]
    if not card.guardrails:
        return lines + ["None declared (a recipe's `guardrails` section, or `--set guardrails#<name>=<limit>`, "
                        "declares per-class floors and budgets that compress-bundle then enforces).", ""]
    rows = []
    for r in card.guardrail_results():
        verdict = {True: "held", False: "broken", None: "not re-checked"}[r["held"]]
        detail = "; ".join(r["broken"]) if r["broken"] else (r["error"] or "")
        rows.append([r["guardrail"], json.dumps(r["limit"]), verdict, r["meaning"], detail])
    lines += [markdown_table(["guardrail", "limit", "result", "meaning", "detail"], rows), ""]
    if card.broken and card.allowed_degraded:
        lines += ["Written only because of --allow-degraded.", ""]
    return lines


def metric_label(metric: str, units: Mapping[str, str]) -> str:
    """How a per-class metric is named in the table (HD95 and volume error with their units)."""
    if metric == "hd95":
        return f"HD95 ({units.get('hd95', 'mm')})"
    if metric == "volume_error_ml":
        return f"volume error ({units.get('volume', 'ml')})"
    return METRIC_LABELS.get(metric, metric)


def fmt4(value: Optional[float], spec: str = "{:.4f}") -> str:
    """``value`` formatted by ``spec``, ``n/a`` when it is None or not finite."""
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else spec.format(value)


def delta(v: Mapping[str, Any]) -> Optional[float]:
    """A ``{"before", "after", "delta"}`` entry's change (its ``delta``, else after - before; None if unknown)."""
    if v.get("delta") is not None:
        return v["delta"]
    before, after = v.get("before"), v.get("after")
    return None if before is None or after is None else after - before


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def pipeline_rows(pipeline: Mapping[str, Any]) -> List[List[str]]:
    """End to end, first study, then each stage: before, after, after / before, speed-up."""
    timed = [("end to end (steady state)", pipeline.get("end_to_end")), ("first study", pipeline.get("first_study"))]
    timed += [(f"stage: {name}", v) for name, v in (pipeline.get("stages") or {}).items()]
    rows = []
    for label, v in timed:
        if v:
            speedup = ratio(v.get("before"), v.get("after"))
            rows.append([label, *pair(v, "{:.2f}"), "n/a" if speedup is None else f"{speedup:.2f}x"])
    return rows


def pair(v: Mapping[str, Any], spec: str, scale: float = 1.0) -> List[str]:
    """before, after, after / before of a ``{"before", "after"}`` quantity."""
    before, after = v.get("before"), v.get("after")
    share = ratio(after, before)
    return [fmt4(None if before is None else before / scale, spec),
            fmt4(None if after is None else after / scale, spec), fmt4(share, "{:.3f}")]


def prefixed(v: Mapping[str, Any], unit: str) -> tuple:
    """A format and scale for a ``{"before", "after"}`` count: G/M/k by the larger of the two."""
    largest = max(abs(x) for x in (v.get("before") or 0, v.get("after") or 0))
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if largest >= scale:
            return "{:.3f} " + prefix + unit, scale
    return "{:,.0f}" + (" " + unit if unit else ""), 1.0
