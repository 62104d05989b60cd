"""The demo job, step by step: synthetic CT, the dense UNet trained, compressed while fine-tuning, exported, timed on
every backend, quantized to int8, reported (:func:`run_demo`)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from typing import Any, Dict, List

import torch

from ..export import export_onnx, export_torchscript
from ..measure import count_macs, count_params, file_size, paired_latency, sliding_window_latency
from ..pruning import PruningPlan, apply_plan
from ..runtime import FILE_SHAPED, Predictor
from ..utils import atomic_path, atomic_write_text
from .compress import compress_while_training
from .config import DemoConfig
from .data import write_ct_dataset
from .int8 import int8_step
from .report import plot_accuracy_vs_latency, write_demo_report
from .training import SPLEEN_UNET_DEF, segmentation_dice, spleen_unet, train_segmentation

logger = logging.getLogger("monai_prune.demo")  # the name the demo's log lines have always carried


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


def _export(out: str, dense: torch.nn.Module, pruned: torch.nn.Module, plan, example: torch.Tensor):
    """Step 4: ``model.pt``, ``model.ts``, ``model.onnx`` of both models and the pruned one's ``plan.json``; returns
    ``(artifacts, max |diff| of the pruned net rebuilt from them)``."""
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
    return art, _check_replay(art["pruned"]["plan.json"], art["pruned"]["model.pt"], pruned, example)


def _benchmark(config: DemoConfig, models: Dict[str, torch.nn.Module], art: Dict[str, Dict[str, str]],
               volume: torch.Tensor, bench_example: torch.Tensor):
    """Step 5: dense and pruned timed in pairs, round by round, on every backend; returns ``(latency, predictors)``,
    both ``{"dense": {backend: ...}, "pruned": {backend: ...}}``."""
    latency: Dict[str, Dict[str, float]] = {"dense": {}, "pruned": {}}
    predictors: Dict[str, Dict[str, Predictor]] = {"dense": {}, "pruned": {}}
    for backend in config.backends:  # dense and pruned interleaved, round by round, on each backend
        for name, net in models.items():
            source = art[name]["model.onnx"] if backend in FILE_SHAPED else net
            predictors[name][backend] = Predictor(source, bench_example, backend=backend,
                                                  work_dir=os.path.join(config.out, name))
        timed = paired_latency({name: (lambda p=predictors[name][backend]: sliding_window_latency(
            p, volume, config.bench_roi, sw_batch_size=1, repeats=1, warmup=0)) for name in ("dense", "pruned")},
            rounds=config.repeats)
        for name in ("dense", "pruned"):
            latency[name][backend] = timed[name]["median_s"]
        time.sleep(0.5)
    return latency, predictors


def _int8(pruned, train, val, config: DemoConfig, volume, latency, pruned_dice: float) -> Dict[str, Any]:
    """Step 6: the int8 entry of the results (``{"status": "skipped"}`` with ``int8=False``)."""
    if config.int8:
        logger.info("6/7 int8: calibrating on %d training patches, tolerance: Dice drop <= %s on held-out patches",
                    config.int8_calibration_samples, config.int8_max_dice_drop)
        return int8_step(pruned, train, val, config, volume, latency, pruned_dice)
    logger.info("6/7 int8 skipped (int8=False)")
    return {"status": "skipped", "reason": "int8=False"}


def _model_entry(net: torch.nn.Module, dice: Dict[str, Any], art: Dict[str, str], latency: Dict[str, float],
                 losses: List[float], bench_example: torch.Tensor) -> Dict[str, Any]:
    return {"mean_dice": dice["mean_dice"], "per_case_dice": dice["per_case"],
            "macs": count_macs(net, bench_example), "params": count_params(net),
            "size_bytes": file_size(art["model.pt"]), "latency_s": latency,
            "onnx_size_bytes": file_size(art["model.onnx"]),
            "final_loss": losses[-1] if losses else None}


def _pruned_entry(config: DemoConfig, pruned: torch.nn.Module, dice: Dict[str, Any], compression: Dict[str, Any],
                  schedule_png: str, art: Dict[str, str], latency: Dict[str, float], bench_example: torch.Tensor,
                  best: Dict[str, Any], replay_diff: float) -> Dict[str, Any]:
    plan = compression["pruner"].plan
    losses = compression["losses"]
    return {"mean_dice": dice["mean_dice"], "per_case_dice": dice["per_case"],
            "method": f"cubic channel schedule to {config.ratio} (epochs 1-{config.schedule_end} of "
                      f"{config.finetune_epochs}) + distillation (alpha {config.kd_alpha}, T {config.kd_temperature})",
            "schedule": {str(k): v for k, v in compression["targets"].items()},
            "kd_agreement": compression["metrics"].get("kd_agreement"),
            "sparsity_measured": compression["metrics"].get("prune_sparsity"),
            "schedule_plot": schedule_png, "macs": count_macs(pruned, bench_example),
            "params": count_params(pruned), "size_bytes": file_size(art["model.pt"]),
            "onnx_size_bytes": file_size(art["model.onnx"]),
            "latency_s": latency, "final_loss": losses[-1] if losses else None,
            "best_backend": best["backend"], "dice_best_backend": best["dice"], "plan_checksum": plan.checksum,
            "replay_max_abs_diff": replay_diff, "groups_pruned": plan.num_groups}


def _write_data(config: DemoConfig):
    """Step 1: the synthetic CT volumes, NIfTI; returns ``(train, val)`` items."""
    logger.info("1/7 writing %d synthetic CT volumes (%d^3, NIfTI) to %s/data",
                config.train_volumes + config.val_volumes, config.size, config.out)
    train = write_ct_dataset(os.path.join(config.out, "data", "train"), config.train_volumes, config.size,
                             seed=config.seed)
    val = write_ct_dataset(os.path.join(config.out, "data", "val"), config.val_volumes, config.size,
                           seed=config.seed + 1000)
    return train, val


def _compress(dense: torch.nn.Module, train, config: DemoConfig, example: torch.Tensor):
    """Step 3: compressed while fine-tuning; returns ``(pruned, compression, schedule plot)``."""
    logger.info("3/7 compressing while fine-tuning %d epochs: cubic schedule to %.0f%% of the channels of every group "
                "(epochs 1-%d), distilled from the dense model", config.finetune_epochs, 100 * config.ratio,
                config.schedule_end)
    pruned, compression = compress_while_training(dense, train, config, example)
    schedule_png = compression["pruner"].schedule.plot(os.path.join(config.out, "schedule.png"),
                                                       title="channel sparsity during fine-tuning (cubic)")
    return pruned, compression, schedule_png


def run_demo(config: DemoConfig) -> Dict[str, Any]:
    """Run the whole demo; returns the results that ``report.md`` and ``results.json`` show."""
    start = time.time()
    out = config.out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(config.seed)
    train, val = _write_data(config)

    logger.info("2/7 training the dense spleen-style UNet for %d epochs", config.epochs)
    dense = spleen_unet()
    losses = train_segmentation(dense, train, config.epochs, roi=config.train_roi, seed=config.seed)
    dense_dice = segmentation_dice(dense, val, roi=config.infer_roi)
    logger.info("dense UNet: mean Dice %.4f on %d held-out volumes", dense_dice["mean_dice"], len(val))

    example = torch.zeros(1, 1, *config.train_roi)
    pruned, compression, schedule_png = _compress(dense, train, config, example)
    pruned_dice = segmentation_dice(pruned, val, roi=config.infer_roi)

    logger.info("4/7 exporting model.pt, plan.json, model.ts, model.onnx")
    art, replay_diff = _export(out, dense, pruned, compression["pruner"].plan, example)

    logger.info("5/7 timing sliding_window_inference over a %d^3 volume (roi %s, sw_batch_size 1) on %s",
                config.bench_size, tuple(config.bench_roi), ", ".join(config.backends))
    volume = torch.rand(1, 1, config.bench_size, config.bench_size, config.bench_size)
    bench_example = torch.zeros(1, 1, *config.bench_roi)
    latency, predictors = _benchmark(config, {"dense": dense, "pruned": pruned}, art, volume, bench_example)
    fastest = min(latency["pruned"], key=latency["pruned"].get)
    best = {"backend": fastest,
            "dice": segmentation_dice(predictors["pruned"][fastest], val, roi=config.infer_roi)["mean_dice"]}
    eager = latency["dense"]["torch"]
    int8 = _int8(pruned, train, val, config, volume, latency, pruned_dice["mean_dice"])

    results = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "dense": _model_entry(dense, dense_dice, art["dense"], latency["dense"], losses, bench_example),
        "pruned": _pruned_entry(config, pruned, pruned_dice, compression, schedule_png, art["pruned"],
                                latency["pruned"], bench_example, best, replay_diff),
        "speedup_vs_dense_torch": {b: eager / t for b, t in latency["pruned"].items()},
        "speedup_vs_dense_same_backend": {b: latency["dense"][b] / t for b, t in latency["pruned"].items()},
        "int8": int8,
        "artifacts": art,
    }
    logger.info("7/7 writing report")
    results["plot"] = plot_accuracy_vs_latency(results, os.path.join(out, "accuracy_vs_latency.png"))
    results["elapsed_s"] = time.time() - start
    atomic_write_text(os.path.join(out, "results.json"), json.dumps(results, indent=1))
    results["report"] = write_demo_report(results, os.path.join(out, "report.md"))
    return results
