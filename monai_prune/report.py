"""Reports people read: Markdown tables and PNG plots of dense vs compressed, from measured results."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

from ._markdown import markdown_table
from ._plotting import line_handle, new_figure, save_png
from .runtime.registry import model_files
from .utils import atomic_write_text


def plot_accuracy_vs_latency(results: Dict[str, Any], path: str) -> str:
    """Scatter of mean Dice against sliding-window latency, one point per model and backend."""
    fig, ax = new_figure(6.5, 4.5)
    markers = ["o", "s", "^", "D", "v", "P"]
    backends = list(results["dense"]["latency_s"])
    for name, color in (("dense", "tab:blue"), ("pruned", "tab:orange")):
        model = results[name]
        for i, backend in enumerate(backends):
            ax.scatter(model["latency_s"][backend], model["mean_dice"], marker=markers[i % len(markers)], color=color,
                       s=60, label=f"{name} / {backend}")
    int8 = _int8_ok(results)
    if int8:
        ax.scatter(int8["latency_s"], int8["mean_dice"], marker="*", color="tab:green", s=160,
                   label=f"pruned int8 / {int8['backend']}")
    ax.legend(fontsize=8, loc="lower right", ncol=2)
    ax.set_xlabel("sliding-window latency (s, lower is better)")
    ax.set_ylabel("mean Dice on held-out volumes")
    ax.set_title("Dense vs pruned" + (" vs int8" if int8 else "") + " spleen-style UNet")
    ax.grid(alpha=0.3)
    lo = min([results["dense"]["mean_dice"], results["pruned"]["mean_dice"]] + ([int8["mean_dice"]] if int8 else []))
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    save_png(fig, path)
    return path


def _int8_ok(results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The results' int8 entry when an int8 model was made and measured, else None."""
    int8 = results.get("int8") or {}
    return int8 if int8.get("status") == "ok" else None


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _ratio(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _int8_warnings(results: Dict[str, Any]) -> str:
    """Warnings (int8 slower than fp32, whole-volume Dice drop over the tolerance) or the refusal, as a block to put
    near the top of the report."""
    int8 = results.get("int8") or {}
    if int8.get("status") == "refused":
        return (f"\n> **int8 refused:** no int8 backend kept the Dice drop within {int8['max_delta']['dice']} "
                "(see *int8* below); the tolerance guardrail worked and only fp32 models are served.\n")
    lines = [f"> **Warning:** {w}" for w in int8.get("warnings", [])]
    return ("\n" + "\n>\n".join(lines) + "\n") if lines else ""


def _int8_section(results: Dict[str, Any]) -> str:
    """The report's ``## int8`` section: what was made and measured, what stayed fp32 and why, every backend."""
    int8 = results.get("int8")
    if not int8 or int8.get("status") == "skipped":
        reason = (int8 or {}).get("reason", "not run")
        return f"## int8\nSkipped: {reason}.\n"
    tol = int8["max_delta"]["dice"]
    cal, val = int8["calibration"], int8["validation"]
    how = (f"Calibrated on {cal['samples']} patches {tuple(cal['shape'][2:])} of the {cal['source_items']} training "
           f"volumes (inference preprocessing, {cal['foreground_patches']} centred on the organ; sha256 "
           f"`{cal['sha256'][:16]}…`). Checked on {val['patches']} labelled patches of the {val['volumes']} held-out "
           f"volumes ({val['patches_with_foreground']} containing organ): the foreground Dice against their labels may "
           f"drop by at most **{tol}** (`max_delta={{\"dice\": {tol}}}`).")
    if int8["status"] == "refused":
        return f"""## int8: refused
`quantize(pruned, ..., backend="{int8['requested_backend']}", max_delta={{"dice": {tol}}})`. {how}

**No int8 model was made**: no backend met the tolerance, even with its most sensitive layers (measured one by one)
kept in fp32. This is the guardrail working: an int8 model that loses more Dice than allowed is refused, not served.
The demo went on with the fp32 models above. What `quantize` said:

> {int8['reason']}
"""
    d, p = results["dense"], results["pruned"]
    f = int8["fidelity"]
    best = p["best_backend"]
    eager = d["latency_s"]["torch"]
    name = " + ".join(os.path.basename(p) for p in model_files(int8["artifact"]))
    rows = [
        ["dense fp32", "torch", f"{d['mean_dice']:.4f}", f"{eager:.3f}", "1.00x", "dense/model.onnx",
         _mb(d["onnx_size_bytes"]), "1.00x"],
        ["pruned fp32", best, f"{p['dice_best_backend']:.4f}", f"{p['latency_s'][best]:.3f}",
         f"{eager / p['latency_s'][best]:.2f}x", "pruned/model.onnx", _mb(p["onnx_size_bytes"]),
         f"{d['onnx_size_bytes'] / p['onnx_size_bytes']:.2f}x"],
        [f"pruned int8 ({int8['backend']})", int8["backend"], f"{int8['mean_dice']:.4f}", f"{int8['latency_s']:.3f}",
         f"{int8['speedup_vs_dense_torch']:.2f}x", f"pruned_int8/{name}", _mb(int8["size_bytes"]["int8"]),
         f"{d['onnx_size_bytes'] / int8['size_bytes']['int8']:.2f}x"],
    ]
    table = markdown_table(["model", "served through", "mean Dice (held-out volumes)", "sliding-window latency (s)",
                            "speed-up vs dense torch eager", "file", "size", "smaller than dense by"], rows)
    layers = len(int8["int8_layers"]) + len(int8["fp32_layers"])
    fallback = int8["fallback_layers"]
    if fallback:
        why = (f"Kept in fp32 by the fallback: {', '.join(f'`{n}`' for n in fallback)}. With every layer int8 the "
               f"Dice drop was over {tol}, so each layer was quantized alone and its damage measured; the most "
               "sensitive went back to fp32, one at a time, until the drop held.")
    else:
        why = (f"Kept in fp32 by the fallback: **none**. With every layer int8 the Dice drop already held (at most "
               f"{tol}), so no layer had to go back to fp32 (the sensitivity search only runs when the tolerance is "
               "missed).")
    own = [n for n in int8["fp32_layers"] if n not in set(fallback)]
    if own:
        types = int8.get("layer_types", {})
        named = ", ".join(f"`{n}`" + (f" ({types[n]})" if n in types else "") for n in own)
        why += (f" Left in fp32 by {int8['backend']} itself (its quantization scheme's choice, not a measured "
                f"fallback): {named}.")
    cand_rows, refusals = [], []
    for backend, c in int8["candidates"].items():
        if "error" in c:
            cand_rows.append([backend, "—", "—", "—", "—", "—", "—", "refused (below)"])
            refusals.append(f"- {backend}: {c['error']}")
            continue
        lat, cf = c["latency_s"], c["fidelity"]
        outcome = "**chosen**: fastest int8 within the tolerance" if c["chosen"] else "within the tolerance, slower"
        if lat["int8"] > lat["fp32"]:
            outcome += "; **int8 SLOWER than fp32**"
        cand_rows.append([backend, f"{lat['fp32']:.3f}", f"{lat['int8']:.3f}", f"{lat['fp32'] / lat['int8']:.2f}x",
                          f"{cf.get('dice_drop', float('nan')):+.4f}", f"{cf['agreement']:.4f}",
                          _mb(c["size_bytes"]["int8"]), outcome])
    cand_table = markdown_table(["backend", "fp32 (s)", "int8 (s)", "int8 speed-up vs fp32", "Dice drop (patches)",
                                 "voxel agreement with fp32", "int8 size", "outcome"], cand_rows)
    warnings = " **Warnings: see the top of this report.**" if int8["warnings"] else ""
    gain = ""
    if int8["dice_change_vs_pruned"] > tol:
        gain = (f" int8 scored *higher* than fp32 here: it changed the label of {1 - f['agreement']:.2%} of the "
                "voxels; quantization does not promise a gain, it was only allowed to lose "
                f"at most {tol}.")
    return f"""## int8: the pruned model quantized after training
`quantize(pruned, calibration_data(...), backend="{int8['requested_backend']}", max_delta={{"dice": {tol}}},
timing_fn=<the sliding-window benchmark>)`: post-training static int8 on every int8 backend the demo serves
through, the fastest that meets the tolerance kept: **{int8['backend']}**. {how}

{table}

Dense and pruned fp32 as measured above (pruned through its fastest backend); int8 measured the same way: mean Dice
over the held-out volumes through the same sliding-window inferer (`result.predictor("int8")`), the same
sliding-window benchmark, file size on disk. int8 vs the pruned fp32 model: mean Dice
{int8['dice_change_vs_pruned']:+.4f} (vs torch); speed {_ratio(int8['speedup_vs_pruned_same_backend'])} on
{int8['backend']} in the benchmark above (> 1: int8 faster; the table below times the two back to back).{gain}{warnings}

**Fidelity on the held-out patches**: foreground Dice against the labels fp32 {f['dice_fp32']['1']:.4f}, int8
{f['dice_int8']['1']:.4f} (drop {f['dice_drop']:+.4f}, allowed {tol}); int8 and fp32 agree on {f['agreement']:.4%} of
the voxels; max |logit difference| {f['max_abs_logit']:.3g}.

**Layers**: {len(int8['int8_layers'])} of {layers} weighted layers (Conv/ConvTranspose) run int8. {why}

**Every backend tried** (fp32 and int8 timed back to back on the same sliding-window benchmark, median of
{results['config']['repeats']}; Dice drop against the labels of the held-out patches):

{cand_table}
{chr(10).join(refusals)}
"""


def write_demo_report(results: Dict[str, Any], path: str) -> str:
    """``report.md`` of the demo from its measured ``results``: what was lost, speed per backend, int8, artifacts."""
    d, p = results["dense"], results["pruned"]
    backends = list(d["latency_s"])
    rows = [[b, f"{d['latency_s'][b]:.3f}", f"{p['latency_s'][b]:.3f}",
             f"{results['speedup_vs_dense_same_backend'][b]:.2f}x", f"{results['speedup_vs_dense_torch'][b]:.2f}x"]
            for b in backends]
    int8 = _int8_ok(results)
    lost_int8 = intro_int8 = per_case_int8 = speed_int8 = artifact_int8 = ""
    if int8:
        b = int8["backend"]
        rows.append([f"pruned int8 ({b})", f"{d['latency_s'][b]:.3f}" if b in d["latency_s"] else "n/a",
                     f"{int8['latency_s']:.3f}", _ratio(int8["speedup_vs_dense_same_backend"]),
                     f"{int8['speedup_vs_dense_torch']:.2f}x"])
        name = os.path.basename(int8["artifact"])
        lost_int8 = (f"\n| mean Dice through pruned int8 ({b}) | | {int8['mean_dice']:.4f} | "
                     f"{int8['mean_dice'] - d['mean_dice']:+.4f} |"
                     f"\n| model.onnx size | {_mb(d['onnx_size_bytes'])} | {_mb(p['onnx_size_bytes'])} | "
                     f"{p['onnx_size_bytes'] / d['onnx_size_bytes']:.2f}x |"
                     f"\n| pruned int8 file size ({name}) | | {_mb(int8['size_bytes']['int8'])} | "
                     f"{int8['size_bytes']['int8'] / d['onnx_size_bytes']:.2f}x of dense model.onnx |")
        intro_int8 = "The pruned model was then quantized to int8 (post-training, see *int8*). "
        per_case_int8 = "; pruned int8: " + ", ".join(f"{x:.3f}" for x in int8["per_case_dice"])
        speed_int8 = (" The int8 row: the pruned model quantized to int8, served through its backend (its time in the "
                      "pruned column, measured after the others).")
        artifact_int8 = (f"- `pruned_int8/` (`{name}`, the int8 model; `model_fp32.onnx`; `quantization.json`, what "
                         f"quantize measured): serve with `monai_prune.Predictor(path, backend={b!r})`.\n")
    per_case = (f"dense: {', '.join(f'{x:.3f}' for x in d['per_case_dice'])}; pruned: "
                f"{', '.join(f'{x:.3f}' for x in p['per_case_dice'])}{per_case_int8}")
    model_pt = (f"| model.pt size | {d['size_bytes'] / 1e6:.1f} MB | {p['size_bytes'] / 1e6:.1f} MB | "
                f"{p['size_bytes'] / d['size_bytes']:.2f}x |")
    cfg = results["config"]
    text = f"""# monai-prune demo: dense vs pruned spleen-style 3D UNet

Synthetic CT (spheres at organ-like HU), {cfg['train_volumes']} training and {cfg['val_volumes']} held-out volumes of
{cfg['size']}^3. Dense UNet trained {cfg['epochs']} epochs. Then a copy was fine-tuned {cfg['finetune_epochs']} epochs in a
stock MONAI `SupervisedTrainer` while `PruningHandler` removed channels on a cubic schedule
(`schedule.png`; output head kept) and `DistillationHandler` distilled the dense model into it:
{p['method']}. {intro_int8}Measured in
one process on this machine. The pruned model trained {cfg['finetune_epochs']} epochs more than the dense one: a Dice
gain here comes from that extra training, not from pruning; what matters is whether compression lost accuracy.
{_int8_warnings(results)}
## What was lost
| | dense | pruned | change |
|---|---|---|---|
| mean Dice (held-out, torch) | {d['mean_dice']:.4f} | {p['mean_dice']:.4f} | {p['mean_dice'] - d['mean_dice']:+.4f} |
| channel sparsity (target {cfg['ratio']}, measured) | | {p['sparsity_measured']:.4f} | |
| teacher-student agreement (last epoch, voxels) | | {p['kd_agreement']:.4f} | |
| mean Dice through {p['best_backend']} | | {p['dice_best_backend']:.4f} | |
| MACs per {tuple(cfg['bench_roi'])} window | {d['macs'] / 1e9:.2f} G | {p['macs'] / 1e9:.2f} G | {p['macs'] / d['macs']:.2f}x |
| parameters | {d['params'] / 1e6:.2f} M | {p['params'] / 1e6:.2f} M | {p['params'] / d['params']:.2f}x |
{model_pt}{lost_int8}

Per-case Dice, {per_case}.

## Speed: sliding_window_inference over a {cfg['bench_size']}^3 volume, roi {tuple(cfg['bench_roi'])}, sw_batch_size 1
Median of {cfg['repeats']} runs, seconds.{speed_int8}

{markdown_table(['backend', 'dense (s)', 'pruned (s)', 'pruned vs dense, same backend', 'pruned vs dense torch eager'], rows)}

Fastest for the pruned model here: **{p['best_backend']}**. Eager PyTorch at batch 1 gains little from pruning;
serve the pruned model through ONNX Runtime or OpenVINO (`monai_prune.Predictor(..., backend="auto")`).

{_int8_section(results)}
## Artifacts
- `pruned/plan.json` (checksum `{p['plan_checksum'][:16]}…`, {p['groups_pruned']} groups) + `pruned/model.pt`: rebuild with
  `apply_plan(UNet(...), PruningPlan.load("plan.json"))` then `load_state_dict(torch.load("model.pt", weights_only=True))`
  (checked here: max |diff| {p['replay_max_abs_diff']:.2g}).
- `pruned/model.ts` (TorchScript, what MONAI Deploy loads), `pruned/model.onnx`; the same for `dense/`.
{artifact_int8}- `accuracy_vs_latency.png`, `schedule.png`, `results.json`.

Demo wall time: {results.get('elapsed_s', 0):.0f} s.
"""
    return atomic_write_text(path, text)


# ------------------------------------------------------------------------------------------------ search report
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

    from .errors import InputError

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
        from .sensitivity import SensitivityResult

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
