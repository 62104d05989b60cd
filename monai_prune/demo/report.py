"""The demo's ``report.md`` and ``accuracy_vs_latency.png``: dense vs pruned vs int8, from the measured results of
:func:`monai_prune.demo.run_demo` (``results.json``)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from .._markdown import markdown_table
from .._plotting import new_figure, save_png
from ..runtime.registry import model_files
from ..utils import atomic_write_text


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


def _int8_how(int8: Dict[str, Any]) -> str:
    """How the int8 model was calibrated and checked, one paragraph."""
    tol = int8["max_delta"]["dice"]
    cal, val = int8["calibration"], int8["validation"]
    return (f"Calibrated on {cal['samples']} patches {tuple(cal['shape'][2:])} of the {cal['source_items']} training "
            f"volumes (inference preprocessing, {cal['foreground_patches']} centred on the organ; sha256 "
            f"`{cal['sha256'][:16]}…`). Checked on {val['patches']} labelled patches of the {val['volumes']} held-out "
            f"volumes ({val['patches_with_foreground']} containing organ): the foreground Dice against their labels "
            f"may drop by at most **{tol}** (`max_delta={{\"dice\": {tol}}}`).")


def _int8_refused_section(int8: Dict[str, Any], how: str) -> str:
    tol = int8["max_delta"]["dice"]
    return f"""## int8: refused
`quantize(pruned, ..., backend="{int8['requested_backend']}", max_delta={{"dice": {tol}}})`. {how}

**No int8 model was made**: no backend met the tolerance, even with its most sensitive layers (measured one by one)
kept in fp32. This is the guardrail working: an int8 model that loses more Dice than allowed is refused, not served.
The demo went on with the fp32 models above. What `quantize` said:

> {int8['reason']}
"""


def _int8_models_table(results: Dict[str, Any], int8: Dict[str, Any]) -> str:
    """Dense fp32, pruned fp32 (its fastest backend) and pruned int8: Dice, latency, speed-up, file and size."""
    d, p = results["dense"], results["pruned"]
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
    return markdown_table(["model", "served through", "mean Dice (held-out volumes)", "sliding-window latency (s)",
                           "speed-up vs dense torch eager", "file", "size", "smaller than dense by"], rows)


def _int8_layers_why(int8: Dict[str, Any]) -> str:
    """Which layers stayed fp32 and why: the measured fallback, or the backend's own choice."""
    tol = int8["max_delta"]["dice"]
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
    return why


def _int8_candidates(int8: Dict[str, Any]) -> Tuple[str, List[str]]:
    """The table of every int8 backend tried, and one line per backend that refused."""
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
    table = markdown_table(["backend", "fp32 (s)", "int8 (s)", "int8 speed-up vs fp32", "Dice drop (patches)",
                            "voxel agreement with fp32", "int8 size", "outcome"], cand_rows)
    return table, refusals


def _int8_section(results: Dict[str, Any]) -> str:
    """The report's ``## int8`` section: what was made and measured, what stayed fp32 and why, every backend."""
    int8 = results.get("int8")
    if not int8 or int8.get("status") == "skipped":
        reason = (int8 or {}).get("reason", "not run")
        return f"## int8\nSkipped: {reason}.\n"
    how = _int8_how(int8)
    if int8["status"] == "refused":
        return _int8_refused_section(int8, how)
    tol = int8["max_delta"]["dice"]
    f = int8["fidelity"]
    layers = len(int8["int8_layers"]) + len(int8["fp32_layers"])
    why = _int8_layers_why(int8)
    cand_table, refusals = _int8_candidates(int8)
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

{_int8_models_table(results, int8)}

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


def _int8_parts(results: Dict[str, Any], rows: List[List[str]]) -> Dict[str, str]:
    """The int8 pieces of the top of the report (empty strings without an int8 model); appends its speed row."""
    parts = dict.fromkeys(("lost", "intro", "per_case", "speed", "artifact"), "")
    int8 = _int8_ok(results)
    if not int8:
        return parts
    d, p = results["dense"], results["pruned"]
    b = int8["backend"]
    rows.append([f"pruned int8 ({b})", f"{d['latency_s'][b]:.3f}" if b in d["latency_s"] else "n/a",
                 f"{int8['latency_s']:.3f}", _ratio(int8["speedup_vs_dense_same_backend"]),
                 f"{int8['speedup_vs_dense_torch']:.2f}x"])
    name = os.path.basename(int8["artifact"])
    parts["lost"] = (f"\n| mean Dice through pruned int8 ({b}) | | {int8['mean_dice']:.4f} | "
                     f"{int8['mean_dice'] - d['mean_dice']:+.4f} |"
                     f"\n| model.onnx size | {_mb(d['onnx_size_bytes'])} | {_mb(p['onnx_size_bytes'])} | "
                     f"{p['onnx_size_bytes'] / d['onnx_size_bytes']:.2f}x |"
                     f"\n| pruned int8 file size ({name}) | | {_mb(int8['size_bytes']['int8'])} | "
                     f"{int8['size_bytes']['int8'] / d['onnx_size_bytes']:.2f}x of dense model.onnx |")
    parts["intro"] = "The pruned model was then quantized to int8 (post-training, see *int8*). "
    parts["per_case"] = "; pruned int8: " + ", ".join(f"{x:.3f}" for x in int8["per_case_dice"])
    parts["speed"] = (" The int8 row: the pruned model quantized to int8, served through its backend (its time in the "
                      "pruned column, measured after the others).")
    parts["artifact"] = (f"- `pruned_int8/` (`{name}`, the int8 model; `model_fp32.onnx`; `quantization.json`, what "
                         f"quantize measured): serve with `monai_prune.Predictor(path, backend={b!r})`.\n")
    return parts


def write_demo_report(results: Dict[str, Any], path: str) -> str:
    """``report.md`` of the demo from its measured ``results``: what was lost, speed per backend, int8, artifacts."""
    d, p = results["dense"], results["pruned"]
    rows = [[b, f"{d['latency_s'][b]:.3f}", f"{p['latency_s'][b]:.3f}",
             f"{results['speedup_vs_dense_same_backend'][b]:.2f}x", f"{results['speedup_vs_dense_torch'][b]:.2f}x"]
            for b in d["latency_s"]]
    int8 = _int8_parts(results, rows)
    per_case = (f"dense: {', '.join(f'{x:.3f}' for x in d['per_case_dice'])}; pruned: "
                f"{', '.join(f'{x:.3f}' for x in p['per_case_dice'])}{int8['per_case']}")
    model_pt = (f"| model.pt size | {d['size_bytes'] / 1e6:.1f} MB | {p['size_bytes'] / 1e6:.1f} MB | "
                f"{p['size_bytes'] / d['size_bytes']:.2f}x |")
    cfg = results["config"]
    text = f"""# monai-prune demo: dense vs pruned spleen-style 3D UNet

Synthetic CT (spheres at organ-like HU), {cfg['train_volumes']} training and {cfg['val_volumes']} held-out volumes of
{cfg['size']}^3. Dense UNet trained {cfg['epochs']} epochs. Then a copy was fine-tuned {cfg['finetune_epochs']} epochs in a
stock MONAI `SupervisedTrainer` while `PruningHandler` removed channels on a cubic schedule
(`schedule.png`; output head kept) and `DistillationHandler` distilled the dense model into it:
{p['method']}. {int8['intro']}Measured in
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
{model_pt}{int8['lost']}

Per-case Dice, {per_case}.

## Speed: sliding_window_inference over a {cfg['bench_size']}^3 volume, roi {tuple(cfg['bench_roi'])}, sw_batch_size 1
Median of {cfg['repeats']} runs, seconds.{int8['speed']}

{markdown_table(['backend', 'dense (s)', 'pruned (s)', 'pruned vs dense, same backend', 'pruned vs dense torch eager'], rows)}

Fastest for the pruned model here: **{p['best_backend']}**. Eager PyTorch at batch 1 gains little from pruning;
serve the pruned model through ONNX Runtime or OpenVINO (`monai_prune.Predictor(..., backend="auto")`).

{_int8_section(results)}
## Artifacts
- `pruned/plan.json` (checksum `{p['plan_checksum'][:16]}…`, {p['groups_pruned']} groups) + `pruned/model.pt`: rebuild with
  `apply_plan(UNet(...), PruningPlan.load("plan.json"))` then `load_state_dict(torch.load("model.pt", weights_only=True))`
  (checked here: max |diff| {p['replay_max_abs_diff']:.2g}).
- `pruned/model.ts` (TorchScript, what MONAI Deploy loads), `pruned/model.onnx`; the same for `dense/`.
{int8['artifact']}- `accuracy_vs_latency.png`, `schedule.png`, `results.json`.

Demo wall time: {results.get('elapsed_s', 0):.0f} s.
"""
    return atomic_write_text(path, text)
