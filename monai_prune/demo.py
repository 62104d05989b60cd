"""``monai-prune demo``: train a spleen-style 3D UNet on built-in synthetic CT, prune it, fine-tune it, export it,
serve it through every installed runtime and report dense vs pruned, measured.

Everything runs on the CPU in a few minutes; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Sequence

import torch

from . import apply_plan, count_macs, count_params, prune_channels
from .data import write_ct_dataset
from .export import export_onnx, export_torchscript
from .measure import file_size, sliding_window_latency
from .pruning import PruningPlan
from .report import plot_accuracy_vs_latency, write_demo_report
from .runtime import Predictor, available_backends
from .utils import atomic_path, atomic_write_text
from .workflows import SPLEEN_UNET_DEF, segmentation_dice, spleen_unet, train_segmentation

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (defaults: about 4 minutes on 2 CPU cores)."""

    out: str = "demo_output"
    train_volumes: int = 16
    val_volumes: int = 4
    size: int = 96
    train_roi: Sequence[int] = (48, 48, 48)
    infer_roi: Sequence[int] = (64, 64, 64)
    epochs: int = 25
    finetune_epochs: int = 10
    ratio: float = 0.5
    bench_size: int = 128
    bench_roi: Sequence[int] = (96, 96, 96)
    repeats: int = 3
    backends: List[str] = field(default_factory=available_backends)
    seed: int = 0


def quick_config(out: str) -> DemoConfig:
    """A demo small enough for a test (tens of seconds): fewer, smaller volumes and epochs."""
    return DemoConfig(out=out, train_volumes=4, val_volumes=2, size=64, epochs=3, finetune_epochs=1, bench_size=64,
                      bench_roi=(48, 48, 48), infer_roi=(48, 48, 48), repeats=1)


def _save_state_dict(model: torch.nn.Module, path: str) -> str:
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return path


def _check_replay(plan_path: str, weights_path: str, pruned: torch.nn.Module, example: torch.Tensor) -> float:
    """Rebuild the pruned net from the plan + a weights_only state dict; max |diff| against the in-memory one."""
    fresh = apply_plan(spleen_unet(), PruningPlan.load(plan_path))
    fresh.load_state_dict(torch.load(weights_path, weights_only=True))
    fresh.eval()
    with torch.no_grad():
        return float((fresh(example) - pruned.eval()(example)).abs().max())


def run_demo(config: DemoConfig) -> Dict[str, Any]:
    """Run the whole demo; returns the results that ``report.md`` and ``results.json`` show."""
    start = time.time()
    out = config.out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(config.seed)
    logger.info("1/6 writing %d synthetic CT volumes (%d^3, NIfTI) to %s/data", config.train_volumes + config.val_volumes,
                config.size, out)
    train = write_ct_dataset(os.path.join(out, "data", "train"), config.train_volumes, config.size, seed=config.seed)
    val = write_ct_dataset(os.path.join(out, "data", "val"), config.val_volumes, config.size, seed=config.seed + 1000)

    logger.info("2/6 training the dense spleen-style UNet for %d epochs", config.epochs)
    dense = spleen_unet()
    losses = train_segmentation(dense, train, config.epochs, roi=config.train_roi, seed=config.seed)
    dense_dice = segmentation_dice(dense, val, roi=config.infer_roi)
    logger.info("dense UNet: mean Dice %.4f on %d held-out volumes", dense_dice["mean_dice"], len(val))

    logger.info("3/6 pruning %.0f%% of the channels of every group, then fine-tuning %d epochs", 100 * config.ratio,
                config.finetune_epochs)
    example = torch.zeros(1, 1, *config.train_roi)
    pruned, plan = prune_channels(dense, example, ratio=config.ratio, network_def=SPLEEN_UNET_DEF)
    dice_after_prune = segmentation_dice(pruned, val, roi=config.infer_roi)["mean_dice"]
    ft_losses = train_segmentation(pruned, train, config.finetune_epochs, roi=config.train_roi, lr=5e-4,
                                   seed=config.seed + 1) if config.finetune_epochs else []
    pruned_dice = segmentation_dice(pruned, val, roi=config.infer_roi)

    logger.info("4/6 exporting model.pt, plan.json, model.ts, model.onnx")
    art = {}
    for name, net in (("dense", dense), ("pruned", pruned)):
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        art[name] = {
            "model.pt": _save_state_dict(net, os.path.join(folder, "model.pt")),
            "model.ts": export_torchscript(net, example, os.path.join(folder, "model.ts"),
                                           extra_files={"metadata.json": {"network_def": SPLEEN_UNET_DEF}}).path,
            "model.onnx": export_onnx(net, example, os.path.join(folder, "model.onnx")).path,
        }
    art["pruned"]["plan.json"] = plan.save(os.path.join(out, "pruned", "plan.json"))
    replay_diff = _check_replay(art["pruned"]["plan.json"], art["pruned"]["model.pt"], pruned, example)

    logger.info("5/6 timing sliding_window_inference over a %d^3 volume (roi %s, sw_batch_size 1) on %s",
                config.bench_size, tuple(config.bench_roi), ", ".join(config.backends))
    volume = torch.rand(1, 1, config.bench_size, config.bench_size, config.bench_size)
    bench_example = torch.zeros(1, 1, *config.bench_roi)
    latency: Dict[str, Dict[str, float]] = {"dense": {}, "pruned": {}}
    predictors: Dict[str, Dict[str, Predictor]] = {"dense": {}, "pruned": {}}
    for backend in config.backends:  # interleaved: dense then pruned on each backend
        for name, net in (("dense", dense), ("pruned", pruned)):
            source = art[name]["model.onnx"] if backend in ("onnxruntime", "openvino") else net
            predictor = Predictor(source, bench_example, backend=backend, work_dir=os.path.join(out, name))
            predictors[name][backend] = predictor
            latency[name][backend] = sliding_window_latency(predictor, volume, config.bench_roi, sw_batch_size=1,
                                                            repeats=config.repeats)["median_s"]
            time.sleep(0.5)
    best = min(latency["pruned"], key=latency["pruned"].get)
    best_dice = segmentation_dice(predictors["pruned"][best], val, roi=config.infer_roi)["mean_dice"]
    eager = latency["dense"]["torch"]

    results = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "dense": {"mean_dice": dense_dice["mean_dice"], "per_case_dice": dense_dice["per_case"],
                  "macs": count_macs(dense, bench_example), "params": count_params(dense),
                  "size_bytes": file_size(art["dense"]["model.pt"]), "latency_s": latency["dense"],
                  "final_loss": losses[-1] if losses else None},
        "pruned": {"mean_dice": pruned_dice["mean_dice"], "per_case_dice": pruned_dice["per_case"],
                   "dice_before_finetune": dice_after_prune, "macs": count_macs(pruned, bench_example),
                   "params": count_params(pruned), "size_bytes": file_size(art["pruned"]["model.pt"]),
                   "latency_s": latency["pruned"], "final_loss": ft_losses[-1] if ft_losses else None,
                   "best_backend": best, "dice_best_backend": best_dice, "plan_checksum": plan.checksum,
                   "replay_max_abs_diff": replay_diff, "groups_pruned": plan.num_groups},
        "speedup_vs_dense_torch": {b: eager / t for b, t in latency["pruned"].items()},
        "speedup_vs_dense_same_backend": {b: latency["dense"][b] / t for b, t in latency["pruned"].items()},
        "artifacts": art,
    }
    logger.info("6/6 writing report")
    results["plot"] = plot_accuracy_vs_latency(results, os.path.join(out, "accuracy_vs_latency.png"))
    results["elapsed_s"] = time.time() - start
    atomic_write_text(os.path.join(out, "results.json"), json.dumps(results, indent=1))
    results["report"] = write_demo_report(results, os.path.join(out, "report.md"))
    return results
