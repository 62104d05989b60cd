"""Reports people read: Markdown tables and PNG plots of dense vs compressed, from measured results."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from .utils import atomic_path, atomic_write_text


def markdown_table(header: Sequence[str], rows: List[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_accuracy_vs_latency(results: Dict[str, Any], path: str) -> str:
    """Scatter of mean Dice against sliding-window latency, one point per model and backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
    markers = ["o", "s", "^", "D", "v", "P"]
    backends = list(results["dense"]["latency_s"])
    for name, color in (("dense", "tab:blue"), ("pruned", "tab:orange")):
        model = results[name]
        for i, backend in enumerate(backends):
            ax.scatter(model["latency_s"][backend], model["mean_dice"], marker=markers[i % len(markers)], color=color,
                       s=60, label=f"{name} / {backend}")
    ax.legend(fontsize=8, loc="lower right", ncol=2)
    ax.set_xlabel("sliding-window latency (s, lower is better)")
    ax.set_ylabel("mean Dice on held-out volumes")
    ax.set_title("Dense vs pruned spleen-style UNet")
    ax.grid(alpha=0.3)
    lo = min(results["dense"]["mean_dice"], results["pruned"]["mean_dice"])
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_demo_report(results: Dict[str, Any], path: str) -> str:
    d, p = results["dense"], results["pruned"]
    backends = list(d["latency_s"])
    rows = [[b, f"{d['latency_s'][b]:.3f}", f"{p['latency_s'][b]:.3f}",
             f"{results['speedup_vs_dense_same_backend'][b]:.2f}x", f"{results['speedup_vs_dense_torch'][b]:.2f}x"]
            for b in backends]
    cfg = results["config"]
    text = f"""# monai-prune demo: dense vs pruned spleen-style 3D UNet

Synthetic CT (spheres at organ-like HU), {cfg['train_volumes']} training and {cfg['val_volumes']} held-out volumes of
{cfg['size']}^3. Dense UNet trained {cfg['epochs']} epochs. Then a copy was fine-tuned {cfg['finetune_epochs']} epochs in a
stock MONAI `SupervisedTrainer` while `PruningHandler` removed channels on a cubic schedule
(`schedule.png`; output head kept) and `DistillationHandler` distilled the dense model into it:
{p['method']}. Measured in one process on this machine. The pruned model trained {cfg['finetune_epochs']} epochs more
than the dense one: a Dice gain here comes from that extra training, not from pruning; what matters is whether
compression lost accuracy.

## What was lost
| | dense | pruned | change |
|---|---|---|---|
| mean Dice (held-out, torch) | {d['mean_dice']:.4f} | {p['mean_dice']:.4f} | {p['mean_dice'] - d['mean_dice']:+.4f} |
| channel sparsity (target {cfg['ratio']}, measured) | | {p['sparsity_measured']:.4f} | |
| teacher-student agreement (last epoch, voxels) | | {p['kd_agreement']:.4f} | |
| mean Dice through {p['best_backend']} | | {p['dice_best_backend']:.4f} | |
| MACs per {tuple(cfg['bench_roi'])} window | {d['macs'] / 1e9:.2f} G | {p['macs'] / 1e9:.2f} G | {p['macs'] / d['macs']:.2f}x |
| parameters | {d['params'] / 1e6:.2f} M | {p['params'] / 1e6:.2f} M | {p['params'] / d['params']:.2f}x |
| model.pt size | {d['size_bytes'] / 1e6:.1f} MB | {p['size_bytes'] / 1e6:.1f} MB | {p['size_bytes'] / d['size_bytes']:.2f}x |

Per-case Dice, dense: {', '.join(f'{x:.3f}' for x in d['per_case_dice'])}; pruned: {', '.join(f'{x:.3f}' for x in p['per_case_dice'])}.

## Speed: sliding_window_inference over a {cfg['bench_size']}^3 volume, roi {tuple(cfg['bench_roi'])}, sw_batch_size 1
Median of {cfg['repeats']} runs, seconds.

{markdown_table(['backend', 'dense (s)', 'pruned (s)', 'pruned vs dense, same backend', 'pruned vs dense torch eager'], rows)}

Fastest for the pruned model here: **{p['best_backend']}**. Eager PyTorch at batch 1 gains little from pruning;
serve the pruned model through ONNX Runtime or OpenVINO (`monai_prune.Predictor(..., backend="auto")`).

## Artifacts
- `pruned/plan.json` (checksum `{p['plan_checksum'][:16]}…`, {p['groups_pruned']} groups) + `pruned/model.pt`: rebuild with
  `apply_plan(UNet(...), PruningPlan.load("plan.json"))` then `load_state_dict(torch.load("model.pt", weights_only=True))`
  (checked here: max |diff| {p['replay_max_abs_diff']:.2g}).
- `pruned/model.ts` (TorchScript, what MONAI Deploy loads), `pruned/model.onnx`; the same for `dense/`.
- `accuracy_vs_latency.png`, `schedule.png`, `results.json`.

Demo wall time: {results.get('elapsed_s', 0):.0f} s.
"""
    return atomic_write_text(path, text)
