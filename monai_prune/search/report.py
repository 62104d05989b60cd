"""The search's report, from its output folder: the Pareto chart, per-class bars dense vs chosen, one example
slice, the table of every candidate and ``report.md`` (what ``monai-prune report`` writes). It reads the rows as
``search.json`` has them (plain dicts), so a report can be drawn from a finished search on any machine."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

from .._markdown import markdown_table
from .._plotting import line_handle, new_figure, save_png
from ..utils import atomic_write_text


def _save(fig, path: str) -> str:
    save_png(fig, path)
    return path


def _worst(measured: Dict[str, Any], metric: str) -> Optional[float]:
    values = [m.get(metric) for m in measured["per_class"].values()]
    values = [v for v in values if isinstance(v, (int, float)) and v == v]
    return min(values) if values else None


def pareto_front(points: List[tuple]) -> List[tuple]:
    """The points ``(x, y)`` no other point beats on both (larger x and larger y are better), sorted by x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def plot_pareto(dense: Dict[str, Any], rows: List[Dict[str, Any]], chosen: Optional[Dict[str, Any]], path: str,
                objective: str = "latency") -> str:
    """Two panels: the worst class's metric (Dice, or AUC) against the speed-up over dense torch, and against the
    size relative to dense. Candidates that hold every guardrail are filled, those that break one hollow; the Pareto
    front of the passing ones is drawn, the chosen point starred, the dense model at (1, its value)."""
    metric = rows[0]["metric"] if rows else "dice"
    fig, axes = new_figure(12, 4.8, 1, 2)
    backends = sorted({r["backend"] for r in rows})
    colors = dict(zip(backends, ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]))
    dense_y = _worst(dense["measured"], metric)
    for ax, (xkey, xlabel, better) in zip(axes, (("speedup", "speed-up over dense (torch), higher is better", 1),
                                                 ("size_ratio", "size / dense, lower is better", -1))):
        for row in rows:
            y = _worst(row["measured"], metric)
            if y is None:
                continue
            marker = "^" if row["precision"] == "int8" else "o"
            color = colors[row["backend"]]
            ax.scatter(row[xkey], y, marker=marker, s=50, edgecolors=color,
                       facecolors=color if row["passes"] else "none", linewidths=1.5)
            ax.annotate(f"{row['ratio']:.2f}", (row[xkey], y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        passing = [(better * r[xkey], _worst(r["measured"], metric)) for r in rows
                   if r["passes"] and _worst(r["measured"], metric) is not None]
        front = pareto_front(passing)
        if len(front) > 1:
            ax.plot([better * x for x, _ in front], [y for _, y in front], "--", color="gray", lw=1,
                    label="Pareto front (passing)")
        if dense_y is not None:
            ax.scatter(1.0, dense_y, marker="s", s=70, color="black", label="dense")
        if chosen is not None:
            ax.scatter(chosen[xkey], _worst(chosen["measured"], metric), marker="*", s=320, color="gold",
                       edgecolors="black", zorder=5, label=f"chosen: {chosen['key']}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"worst class {metric}")
        ax.grid(alpha=0.3)
    handles = [line_handle(marker="o", ls="", color=colors[b], label=b) for b in backends]
    handles += [line_handle(marker="o", ls="", color="gray", label="fp32"),
                line_handle(marker="^", ls="", color="gray", label="int8"),
                line_handle(marker="o", ls="", markerfacecolor="none", color="gray", label="breaks a guardrail")]
    axes[0].legend(handles=handles + axes[0].get_legend_handles_labels()[0], fontsize=7, loc="best", framealpha=0.6)
    axes[1].legend(fontsize=7, loc="best", framealpha=0.6)
    fig.suptitle(f"Search: every candidate (labels: channel ratio); objective: {objective}")
    return _save(fig, path)


def plot_per_class(per_class: Dict[str, Dict[str, Dict[str, float]]], path: str, metric: str = "dice",
                   title: str = "dense vs compressed, per class") -> str:
    """Bars of ``metric`` per class, dense (before) vs compressed (after), with the Δ written above."""
    names = [n for n, m in per_class.items() if metric in m]
    fig, ax = new_figure(max(5.0, 1.4 * len(names) + 2), 4.2)
    width = 0.38
    for i, name in enumerate(names):
        before, after = per_class[name][metric]["before"], per_class[name][metric]["after"]
        ax.bar(i - width / 2, before if before is not None else 0, width, color="tab:blue",
               label="dense" if i == 0 else None)
        ax.bar(i + width / 2, after if after is not None else 0, width, color="tab:orange",
               label="compressed" if i == 0 else None)
        if before is not None and after is not None:
            ax.text(i, max(before, after) + 0.01, f"Δ {after - before:+.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    return _save(fig, path)


def plot_overlay(examples: Dict[str, Any], path: str) -> str:
    """One slice: the image, the label, the dense and the compressed segmentation (coloured over the image)."""
    import numpy as np

    panels = [("image", examples["dense_image"], None), ("label", examples["dense_image"], examples["dense_label"]),
              ("dense", examples["dense_image"], examples["dense_pred"])]
    if "chosen_pred" in examples:
        panels.append(("compressed", examples.get("chosen_image", examples["dense_image"]), examples["chosen_pred"]))
        diff = (np.asarray(examples["chosen_pred"]) != np.asarray(examples["dense_pred"])).astype(float)
        panels.append(("differs from dense", examples["dense_image"], diff))
    fig, axes = new_figure(3.2 * len(panels), 3.4, 1, len(panels))
    for ax, (title, image, mask) in zip(axes, panels):
        ax.imshow(np.asarray(image).T, cmap="gray", origin="lower")
        if mask is not None:
            mask = np.asarray(mask, dtype=float)
            ax.imshow(np.ma.masked_where(mask.T == 0, mask.T), cmap="autumn" if title != "differs from dense"
                      else "cool", alpha=0.55, origin="lower", vmin=0, vmax=max(1.0, float(mask.max())))
        ax.set_title(title + (f" ({int((np.asarray(mask) > 0).sum())} px)" if mask is not None else ""), fontsize=9)
        ax.axis("off")
    return _save(fig, path)


def write_search_report(run_dir: str) -> Dict[str, str]:
    """``RUN_DIR/report.md`` and its PNGs from a search folder (``search.json``, ``examples.npz``,
    ``sensitivity.json``): the Pareto chart, per-class bars dense vs chosen, the sensitivity plot and one example
    slice; returns ``{name: path}``."""
    import json

    from ..errors import InputError

    summary_path = os.path.join(run_dir, "search.json")
    if not os.path.isfile(summary_path):
        raise InputError(f"{run_dir} has no search.json: give the output folder of `monai-prune search`")
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{summary_path} is not valid JSON ({getattr(e, 'msg', e)}): not a search summary written by "
                         "`monai-prune search`; run the search again (nothing was written)") from e
    expected = ("dense", "candidates", "chosen", "config", "guardrails", "backends", "reason")
    if not isinstance(summary, dict) or any(key not in summary for key in expected):
        raise InputError(f"{summary_path} is not a search summary written by `monai-prune search` (a JSON object with "
                         f"{', '.join(expected)}); run the search again (nothing was written)")
    dense, rows, chosen = summary["dense"], summary["candidates"], summary["chosen"]
    written: Dict[str, str] = {}
    if rows:
        written["pareto"] = plot_pareto(dense, rows, chosen, os.path.join(run_dir, "pareto.png"),
                                        objective=summary["config"].get("objective", "latency"))
    metric = rows[0]["metric"] if rows else "dice"
    if chosen is not None:
        per_class = {name: {m: {"before": dense["measured"]["per_class"][name].get(m), "after": v}
                            for m, v in metrics.items()} for name, metrics in chosen["measured"]["per_class"].items()}
        written["per_class"] = plot_per_class(per_class, os.path.join(run_dir, "per_class.png"), metric=metric,
                                              title=f"{metric} per class: dense vs {chosen['key']}")
    sensitivity = os.path.join(run_dir, "sensitivity.json")
    if os.path.isfile(sensitivity):
        from ..sensitivity import SensitivityResult

        written["sensitivity"] = SensitivityResult.load(sensitivity).plot(os.path.join(run_dir, "sensitivity.png"),
                                                                         metric="worst_class")
    examples_path = os.path.join(run_dir, "examples.npz")
    if os.path.isfile(examples_path):
        import numpy as np

        with np.load(examples_path) as data:
            examples = {k: data[k] for k in data.files}
        if {"dense_image", "dense_label", "dense_pred"} <= set(examples):
            written["overlay"] = plot_overlay(examples, os.path.join(run_dir, "overlay.png"))
    written["report"] = atomic_write_text(os.path.join(run_dir, "report.md"),
                                          _search_markdown(summary, run_dir, written))
    return written


def _search_markdown(summary: Dict[str, Any], run_dir: str, written: Dict[str, str]) -> str:
    chosen, rows = summary["chosen"], summary["candidates"]
    guard = ", ".join(f"{k} {v}" for k, v in summary["guardrails"].items())
    lines = ["# Compression search report", ""]
    if chosen is None:
        lines += [f"**REFUSED: no model holds the guardrails ({guard}).** {summary['reason']}", ""]
    else:
        lines += [f"**Chosen: `{chosen['key']}`: {chosen['speedup']:.2f}x faster than the dense model (torch), "
                  f"MACs {chosen['macs_ratio']:.3f}x, size {chosen['size_ratio']:.3f}x; worst class "
                  f"{chosen['worst_class']} Δ{chosen['metric']} {chosen['worst_delta']:+.4f}; every guardrail "
                  f"held ({guard}).**", ""]
    config = summary["config"]
    lines += [f"Search: strategy {config['strategy']}, ratios {config['ratios']}, layers {config['layer_modes']}, "
              f"precisions {config['precisions']}, backends {summary['backends']}, objective {config['objective']}; "
              f"{len(rows)} candidates measured.", ""]
    for key, caption in (("pareto", "Worst-class metric vs speed-up and vs size (hollow: breaks a guardrail)"),
                         ("per_class", "Per class, dense vs chosen"), ("overlay", "One slice, dense vs chosen"),
                         ("sensitivity", "Sensitivity: each group pruned alone")):
        if key in written:
            lines += [f"## {caption}", "", f"![{key}]({os.path.relpath(written[key], run_dir)})", ""]
    lines += ["## Every candidate", "", candidates_table(summary["dense"], rows, chosen), ""]
    if summary.get("pipeline"):
        lines += ["## Pipeline knobs of the chosen model", "", knobs_table(summary["pipeline"]), ""]
    card = os.path.join(run_dir, "chosen", "fidelity_card.md")
    if chosen is not None and os.path.isfile(card):
        with open(card, encoding="utf-8") as f:
            lines += ["## Fidelity card of the chosen model", "", f.read()]
    return "\n".join(lines) + "\n"


def candidates_table(dense: Mapping[str, Any], rows: List[Dict[str, Any]], chosen: Optional[Mapping[str, Any]]) -> str:
    """Every candidate, best speed-up first: ratio, layers, precision, backend, per-class metric and Δ, speed-up,
    MACs and size vs dense, guardrails."""
    if not rows:
        return "(no candidates)"
    metric = rows[0]["metric"]
    classes = list(rows[0]["delta"])
    header = (["candidate", "ratio", "layers", "precision", "backend"]
              + [f"{metric} {c} (Δ)" for c in classes] + ["latency s", "speed-up", "same backend", "MACs", "size", "guardrails"])
    table = []
    dense_values = {c: dense["measured"]["per_class"][c].get(metric) for c in classes}
    for row in sorted(rows, key=lambda r: -r["speedup"]):
        cells = [("**" + row["key"] + "** (chosen)") if chosen and row["key"] == chosen["key"] else row["key"],
                 f"{row['ratio']:.3f}", row["mode"], row["precision"], row["backend"]]
        for c in classes:
            value = row["measured"]["per_class"][c].get(metric)
            delta = row["delta"].get(c)
            cells.append("n/a" if value is None else f"{value:.4f} ({delta:+.4f})" if delta is not None
                         else f"{value:.4f}")
        same = row.get("speedup_same_backend")
        confirmed = row.get("latency_confirmed")
        cells += [f"{row['latency_s']:.3f}", f"{row['speedup']:.2f}x" + (" (paired)" if confirmed else ""),
                  "n/a" if same is None else f"{same:.2f}x",
                  f"{row['macs_ratio']:.3f}",
                  f"{row['size_ratio']:.3f}", "held" if row["passes"] else "BROKEN: " + "; ".join(row["broken"])]
        table.append(cells)
    dense_row = (["dense", "0", "-", "fp32", "torch"] + [f"{dense_values[c]:.4f}" if dense_values[c] is not None
                                                         else "n/a" for c in classes]
                 + [f"{dense['latency_s'].get('torch', min(dense['latency_s'].values())):.3f}", "1.00x", "1.00x", "1.000",
                    "1.000", "reference"])
    return (markdown_table(header, [dense_row] + table)
            + "\n\nlatency s: the screening timing of the candidate's workload on its backend; speed-up: dense (torch) "
              "/ candidate, \"(paired)\" for the finalists: median over rounds of dense / candidate timed back to back; "
              "same backend: dense / candidate on the candidate's backend (screening); MACs, size: candidate / dense.")


def knobs_table(pipeline: Mapping[str, Any]) -> str:
    """The pipeline-knob stage (:func:`~monai_prune.search.knobs.knob_stage`): the chosen model at its baseline and
    at each setting: per-class metric and its Δ against the dense model, seconds, saving, speed-up, guardrails; then
    one sentence per setting and what ships."""
    rows = pipeline["rows"]
    metric = rows[0]["metric"]
    classes = list(rows[0]["delta"])
    header = (["setting", "knob"] + [f"{metric} {c} (Δ vs dense)" for c in classes]
              + ["seconds", "saving", "speed-up vs dense", "guardrails"])
    shipped = (pipeline.get("shipped") or {}).get("label")
    table = []
    for row in rows:
        name = row["label"] if row["label"] != shipped else f"**{row['label']}** (shipped)"
        cells = [name, row["knob"]]
        for c in classes:
            value, delta = row["per_class"].get(c, {}).get(metric, {}).get("after"), row["delta"].get(c)
            cells.append("n/a" if value is None else f"{value:.4f} ({delta:+.4f})" if delta is not None
                         else f"{value:.4f}")
        cells += [f"{row['seconds']:.3f}", f"{row['saving_pct']:.0f}%", f"{row['speedup']:.2f}x",
                  "held" if row["passes"] else "BROKEN: " + "; ".join(row["broken"])]
        table.append(cells)
    lines = [f"- {line}" for line in pipeline["lines"]]
    lines.append(f"- shipped: {shipped}" if shipped else
                 f"- shipped: nothing (the baseline is kept: no passing setting saved more than "
                 f"{pipeline['min_saving_pct']:.0f}%)")
    return (markdown_table(header, table) + f"\n\nseconds: median over {pipeline['rounds']} round(s) of the workload "
            "with the chosen model at the setting; speed-up: median over rounds of the dense model at the baseline / "
            "the setting, timed back to back; saving: against the chosen model at the baseline.\n\n" + "\n".join(lines))
