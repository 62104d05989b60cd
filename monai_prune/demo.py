"""``monai-prune demo``: train a spleen-style 3D UNet on built-in synthetic CT, compress it while fine-tuning
(cubic channel-pruning schedule + distillation from the dense model, in a stock ``SupervisedTrainer``), export it,
quantize the pruned model to int8 (calibrated on training patches, checked against held-out labels, fastest
backend within a Dice tolerance), serve everything through every installed runtime and report dense vs pruned vs
int8, measured.

Everything runs on the CPU in a few minutes; nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from . import apply_plan, count_macs, count_params
from .data import ct_transforms, write_ct_dataset
from .errors import QuantizationError
from .export import export_onnx, export_torchscript
from .handlers import DistillationHandler, PruningHandler
from .measure import file_size, paired_latency, sliding_window_latency
from .pruning import PruningPlan
from .quantization import calibration_data, quantize
from .quantization.ptq import QUANT_BACKENDS
from .report import plot_accuracy_vs_latency, write_demo_report
from .runtime import FILE_SHAPED, Predictor, available_backends
from .schedules import CubicSchedule
from .utils import atomic_path, atomic_write_text
from .workflows import SPLEEN_UNET_DEF, segmentation_dice, spleen_unet, train_segmentation

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (defaults: about 4 minutes on 2 CPU cores).

    The int8 step (``int8=False`` skips it) quantizes the pruned model with ``int8_calibration_samples``
    ``infer_roi`` patches of the training volumes (half centred on the organ) on every int8 backend among
    ``backends`` (``"onnxruntime"``, ``"openvino"``), and keeps the fastest whose foreground Dice against the labels
    of ``int8_validation_patches`` patches per held-out volume drops by at most ``int8_max_dice_drop``.
    """

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
    int8: bool = True
    int8_max_dice_drop: float = 0.02
    int8_calibration_samples: int = 16
    int8_validation_patches: int = 2


def quick_config(out: str) -> DemoConfig:
    """A demo small enough for a test (tens of seconds): fewer, smaller volumes and epochs."""
    return DemoConfig(out=out, train_volumes=4, val_volumes=2, size=64, epochs=3, finetune_epochs=3, schedule_end=2,
                      bench_size=64, bench_roi=(48, 48, 48), infer_roi=(48, 48, 48), repeats=1,
                      int8_calibration_samples=4)


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


def labelled_patches(items: List[Dict[str, str]], roi: Sequence[int], per_volume: int,
                     seed: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``(input (1, 1, *roi), label (1, *roi))`` patches of ``items`` after the inference preprocessing, cut as in
    training by MONAI's ``RandCropByPosNegLabeld`` (foreground-centred with probability 1/2), reproducibly."""
    transform = ct_transforms(roi, train=True, num_samples=per_volume)
    transform.set_random_state(seed=seed)
    pairs = []
    for item in items:
        for crop in transform(item):
            pairs.append((torch.as_tensor(crop["image"])[None].float(), torch.as_tensor(crop["label"]).long()))
    return pairs


def _has_submodule(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _int8_backend(backends: Sequence[str]) -> Optional[str]:
    """``"auto"`` when every int8 backend is among the demo's backends, else the one that is, else None."""
    chosen = [b for b in QUANT_BACKENDS if b in backends]
    if not chosen:
        return None
    return "auto" if len(chosen) > 1 else chosen[0]


def int8_step(pruned: torch.nn.Module, train: List[Dict[str, str]], val: List[Dict[str, str]], config: DemoConfig,
              volume: torch.Tensor, latency: Dict[str, Dict[str, float]], pruned_dice: float) -> Dict[str, Any]:
    """Quantize ``pruned`` to int8 and measure it like the other models; returns the results' ``"int8"`` entry.

    Calibration: ``config.int8_calibration_samples`` ``infer_roi`` patches of the training volumes (the inference
    preprocessing, half centred on foreground). Fidelity: labelled patches of the held-out volumes, the Dice drop
    against their labels bounded by ``config.int8_max_dice_drop``. Speed: whole ``sliding_window_inference`` over
    ``volume`` (``bench_roi``). Then mean Dice over the held-out volumes through the same sliding-window inferer,
    latency and file size. ``latency`` holds the dense and pruned fp32 seconds per backend (``{"dense": {...},
    "pruned": {...}}``), ``pruned_dice`` the pruned model's mean Dice. A tolerance no backend meets is a refusal
    (``status: "refused"``), not a crash.
    """
    from monai.data import Dataset

    tolerance = {"dice": config.int8_max_dice_drop}
    backend = _int8_backend(config.backends)
    if backend is None:
        logger.info("int8 skipped: no int8 backend (%s) among %s", ", ".join(QUANT_BACKENDS), config.backends)
        return {"status": "skipped", "reason": f"no int8 backend ({', '.join(QUANT_BACKENDS)}) among the demo's "
                                                f"backends {list(config.backends)}"}
    roi = tuple(config.infer_roi)
    calibration = calibration_data(Dataset(train, ct_transforms(roi, train=False)), config.int8_calibration_samples,
                                   roi_size=roi, foreground_ratio=0.5, seed=config.seed)
    validation = labelled_patches(val, roi, config.int8_validation_patches, seed=config.seed)
    base = {"max_delta": tolerance, "requested_backend": backend, "calibration": calibration.describe(),
            "validation": {"patches": len(validation), "roi": list(roi), "volumes": len(val),
                           "patches_with_foreground": sum(int(lab.any()) for _, lab in validation)}}
    out_dir = os.path.join(config.out, "pruned_int8")
    try:
        result = quantize(pruned, calibration, backend=backend, max_delta=tolerance, out_dir=out_dir,
                          timing_fn=lambda p: sliding_window_latency(p, volume, config.bench_roi, sw_batch_size=1,
                                                                     repeats=1, warmup=0),
                          repeats=config.repeats,
                          validation=validation)
    except QuantizationError as e:
        logger.warning("int8 REFUSED (the tolerance guardrail): %s", e)
        return {**base, "status": "refused", "reason": str(e)}
    predictor = result.predictor("int8")
    dice = segmentation_dice(predictor, val, roi=config.infer_roi)
    seconds = sliding_window_latency(predictor, volume, config.bench_roi, sw_batch_size=1,
                                     repeats=config.repeats)["median_s"]
    warnings_ = list(result.warnings)
    drop = pruned_dice - dice["mean_dice"]
    if drop > config.int8_max_dice_drop:
        warnings_.append(f"on the whole held-out volumes int8 lost {drop:.4f} mean Dice against the pruned fp32 "
                         f"model, more than the {config.int8_max_dice_drop} the patch-level check allowed")
    fastest = min(latency["pruned"], key=latency["pruned"].get)
    if seconds > latency["pruned"][fastest]:
        message = (f"int8 on {result.backend} ({seconds:.3f} s) measured slower in the sliding-window benchmark than "
                   f"the pruned fp32 model through {fastest} ({latency['pruned'][fastest]:.3f} s)")
        if fastest == result.backend and not result.slower_than_fp32:
            message += (f"; timed back to back by quantize, int8 was {result.speedup:.2f}x faster than fp32 there: "
                        "the two timings disagree by this machine's timing noise")
        else:
            message += f": serve the pruned fp32 model through {fastest} for speed"
        warnings_.append(message)
    for name, cand in result.candidates.items():
        lat = cand.get("latency_s")
        if name != result.backend and lat and lat["int8"] > lat["fp32"]:
            warnings_.append(f"int8 on {name} (not chosen) is SLOWER than fp32 there ({lat['int8']:.3f} s vs "
                             f"{lat['fp32']:.3f} s)")
    for message in warnings_[len(result.warnings):]:
        logger.warning(message)
    dense, fp32 = latency["dense"], latency["pruned"]
    return {
        **base, "status": "ok", "backend": result.backend, "artifact": result.path, "fp32_artifact": result.fp32_path,
        "quantization_json": result.report_path, "mean_dice": dice["mean_dice"], "per_case_dice": dice["per_case"],
        "dice_change_vs_pruned": -drop, "latency_s": seconds, "speedup_vs_dense_torch": dense["torch"] / seconds,
        "speedup_vs_dense_same_backend": dense[result.backend] / seconds if result.backend in dense else None,
        "speedup_vs_pruned_same_backend": fp32[result.backend] / seconds if result.backend in fp32 else None,
        "quantize_latency_s": result.latency_s, "speedup_vs_fp32_same_backend": result.speedup,
        "slower_than_fp32": result.slower_than_fp32, "size_bytes": result.size_bytes, "fidelity": result.fidelity,
        "int8_layers": result.int8_layers, "fp32_layers": result.fp32_layers,
        "layer_types": {name: type(pruned.get_submodule(name)).__name__ for name in result.fp32_layers
                        if _has_submodule(pruned, name)},
        "fallback_layers": result.fallback_layers, "warnings": warnings_,
        "candidates": {name: {**cand, "chosen": name == result.backend} for name, cand in result.candidates.items()},
    }


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
    logger.info("1/7 writing %d synthetic CT volumes (%d^3, NIfTI) to %s/data", config.train_volumes + config.val_volumes,
                config.size, out)
    train = write_ct_dataset(os.path.join(out, "data", "train"), config.train_volumes, config.size, seed=config.seed)
    val = write_ct_dataset(os.path.join(out, "data", "val"), config.val_volumes, config.size, seed=config.seed + 1000)

    logger.info("2/7 training the dense spleen-style UNet for %d epochs", config.epochs)
    dense = spleen_unet()
    losses = train_segmentation(dense, train, config.epochs, roi=config.train_roi, seed=config.seed)
    dense_dice = segmentation_dice(dense, val, roi=config.infer_roi)
    logger.info("dense UNet: mean Dice %.4f on %d held-out volumes", dense_dice["mean_dice"], len(val))

    logger.info("3/7 compressing while fine-tuning %d epochs: cubic schedule to %.0f%% of the channels of every group "
                "(epochs 1-%d), distilled from the dense model", config.finetune_epochs, 100 * config.ratio,
                config.schedule_end)
    example = torch.zeros(1, 1, *config.train_roi)
    pruned, compression = compress_while_training(dense, train, config, example)
    plan = compression["pruner"].plan
    schedule_png = compression["pruner"].schedule.plot(os.path.join(out, "schedule.png"),
                                                       title="channel sparsity during fine-tuning (cubic)")
    ft_losses = compression["losses"]
    pruned_dice = segmentation_dice(pruned, val, roi=config.infer_roi)

    logger.info("4/7 exporting model.pt, plan.json, model.ts, model.onnx")
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

    logger.info("5/7 timing sliding_window_inference over a %d^3 volume (roi %s, sw_batch_size 1) on %s",
                config.bench_size, tuple(config.bench_roi), ", ".join(config.backends))
    volume = torch.rand(1, 1, config.bench_size, config.bench_size, config.bench_size)
    bench_example = torch.zeros(1, 1, *config.bench_roi)
    latency: Dict[str, Dict[str, float]] = {"dense": {}, "pruned": {}}
    predictors: Dict[str, Dict[str, Predictor]] = {"dense": {}, "pruned": {}}
    for backend in config.backends:  # dense and pruned interleaved, round by round, on each backend
        for name, net in (("dense", dense), ("pruned", pruned)):
            source = art[name]["model.onnx"] if backend in FILE_SHAPED else net
            predictors[name][backend] = Predictor(source, bench_example, backend=backend,
                                                  work_dir=os.path.join(out, name))
        timed = paired_latency({name: (lambda p=predictors[name][backend]: sliding_window_latency(
            p, volume, config.bench_roi, sw_batch_size=1, repeats=1, warmup=0)) for name in ("dense", "pruned")},
            rounds=config.repeats)
        for name in ("dense", "pruned"):
            latency[name][backend] = timed[name]["median_s"]
        time.sleep(0.5)
    best = min(latency["pruned"], key=latency["pruned"].get)
    best_dice = segmentation_dice(predictors["pruned"][best], val, roi=config.infer_roi)["mean_dice"]
    eager = latency["dense"]["torch"]

    if config.int8:
        logger.info("6/7 int8: calibrating on %d training patches, tolerance: Dice drop <= %s on held-out patches",
                    config.int8_calibration_samples, config.int8_max_dice_drop)
        int8 = int8_step(pruned, train, val, config, volume, latency, pruned_dice["mean_dice"])
    else:
        logger.info("6/7 int8 skipped (int8=False)")
        int8 = {"status": "skipped", "reason": "int8=False"}

    results = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "dense": {"mean_dice": dense_dice["mean_dice"], "per_case_dice": dense_dice["per_case"],
                  "macs": count_macs(dense, bench_example), "params": count_params(dense),
                  "size_bytes": file_size(art["dense"]["model.pt"]), "latency_s": latency["dense"],
                  "onnx_size_bytes": file_size(art["dense"]["model.onnx"]),
                  "final_loss": losses[-1] if losses else None},
        "pruned": {"mean_dice": pruned_dice["mean_dice"], "per_case_dice": pruned_dice["per_case"],
                   "method": f"cubic channel schedule to {config.ratio} (epochs 1-{config.schedule_end} of "
                             f"{config.finetune_epochs}) + distillation (alpha {config.kd_alpha}, T {config.kd_temperature})",
                   "schedule": {str(k): v for k, v in compression["targets"].items()},
                   "kd_agreement": compression["metrics"].get("kd_agreement"),
                   "sparsity_measured": compression["metrics"].get("prune_sparsity"),
                   "schedule_plot": schedule_png, "macs": count_macs(pruned, bench_example),
                   "params": count_params(pruned), "size_bytes": file_size(art["pruned"]["model.pt"]),
                   "onnx_size_bytes": file_size(art["pruned"]["model.onnx"]),
                   "latency_s": latency["pruned"], "final_loss": ft_losses[-1] if ft_losses else None,
                   "best_backend": best, "dice_best_backend": best_dice, "plan_checksum": plan.checksum,
                   "replay_max_abs_diff": replay_diff, "groups_pruned": plan.num_groups},
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
