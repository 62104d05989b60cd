"""``monai-prune demo``: train a spleen-style 3D UNet on built-in synthetic CT, compress it while fine-tuning
(cubic channel-pruning schedule + distillation from the dense model, in a stock ``SupervisedTrainer``), export it,
serve it through every installed runtime and report dense vs pruned, measured.

Everything runs on the CPU in a few minutes; nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Sequence

import torch

from . import apply_plan, count_macs, count_params
from .data import write_ct_dataset
from .export import export_onnx, export_torchscript
from .handlers import DistillationHandler, PruningHandler
from .measure import file_size, sliding_window_latency
from .pruning import PruningPlan
from .report import plot_accuracy_vs_latency, write_demo_report
from .runtime import Predictor, available_backends
from .schedules import CubicSchedule
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
    schedule_end: int = 6
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    bench_size: int = 128
    bench_roi: Sequence[int] = (96, 96, 96)
    repeats: int = 3
    backends: List[str] = field(default_factory=available_backends)
    seed: int = 0


def quick_config(out: str) -> DemoConfig:
    """A demo small enough for a test (tens of seconds): fewer, smaller volumes and epochs."""
    return DemoConfig(out=out, train_volumes=4, val_volumes=2, size=64, epochs=3, finetune_epochs=3, schedule_end=2,
                      bench_size=64, bench_roi=(48, 48, 48), infer_roi=(48, 48, 48), repeats=1)


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


def compress_while_training(dense: torch.nn.Module, train: List[Dict[str, str]], config: DemoConfig,
                            example: torch.Tensor, distill: bool = True, seed_offset: int = 1):
    """Fine-tune a copy of ``dense`` in a stock ``SupervisedTrainer`` with a cubic channel-pruning schedule and (by
    default) distillation from ``dense``; returns ``(compressed, {"pruner", "losses", "metrics", "targets"})``."""
    student = copy.deepcopy(dense)
    schedule = CubicSchedule(final=config.ratio, start_epoch=1, end_epoch=config.schedule_end)
    found: Dict[str, Any] = {"targets": {e: schedule(e) for e in range(1, config.finetune_epochs + 1)}}

    def handlers(network, optimizer):
        found["pruner"] = PruningHandler(network=network, optimizer=optimizer, method="channel", schedule=schedule,
                                         example_input=example, network_def=SPLEEN_UNET_DEF)
        chosen = [found["pruner"]]
        if distill:
            chosen.append(DistillationHandler(network=network, teacher=dense, alpha=config.kd_alpha,
                                              temperature=config.kd_temperature))
        return chosen + [_MetricsKeeper(found)]

    found["losses"] = train_segmentation(student, train, config.finetune_epochs, roi=config.train_roi, lr=5e-4,
                                         seed=config.seed + seed_offset, handlers=handlers)
    return student, found


class _MetricsKeeper:
    """Keeps the trainer's final ``engine.state.metrics`` (prune_*, kd_*) in ``found["metrics"]``."""

    def __init__(self, found: Dict[str, Any]) -> None:
        self.found = found

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, lambda e: self.found.update(metrics=dict(e.state.metrics)))


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

    logger.info("3/6 compressing while fine-tuning %d epochs: cubic schedule to %.0f%% of the channels of every group "
                "(epochs 1-%d), distilled from the dense model", config.finetune_epochs, 100 * config.ratio,
                config.schedule_end)
    example = torch.zeros(1, 1, *config.train_roi)
    pruned, compression = compress_while_training(dense, train, config, example)
    plan = compression["pruner"].plan
    schedule_png = compression["pruner"].schedule.plot(os.path.join(out, "schedule.png"),
                                                       title="channel sparsity during fine-tuning (cubic)")
    ft_losses = compression["losses"]
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
                   "method": f"cubic channel schedule to {config.ratio} (epochs 1-{config.schedule_end} of "
                             f"{config.finetune_epochs}) + distillation (alpha {config.kd_alpha}, T {config.kd_temperature})",
                   "schedule": {str(k): v for k, v in compression["targets"].items()},
                   "kd_agreement": compression["metrics"].get("kd_agreement"),
                   "sparsity_measured": compression["metrics"].get("prune_sparsity"),
                   "schedule_plot": schedule_png, "macs": count_macs(pruned, bench_example),
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
