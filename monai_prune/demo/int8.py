"""The demo's int8 step: quantize the pruned model (calibrated on training patches, checked against the labels of
held-out patches, the fastest backend within a Dice tolerance kept) and measure it like the fp32 models."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import QuantizationError
from ..measure import sliding_window_latency
from ..quantization import calibration_data, quantize
from ..quantization.ptq import QUANT_BACKENDS
from .config import DemoConfig
from .data import ct_transforms
from .training import segmentation_dice

logger = logging.getLogger("monai_prune.demo")  # the name the demo's log lines have always carried


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


def _inputs(train: List[Dict[str, str]], val: List[Dict[str, str]], config: DemoConfig, backend: str):
    """The calibration data, the labelled validation patches and what the entry says about both."""
    from monai.data import Dataset

    roi = tuple(config.infer_roi)
    calibration = calibration_data(Dataset(train, ct_transforms(roi, train=False)), config.int8_calibration_samples,
                                   roi_size=roi, foreground_ratio=0.5, seed=config.seed)
    validation = labelled_patches(val, roi, config.int8_validation_patches, seed=config.seed)
    base = {"max_delta": {"dice": config.int8_max_dice_drop}, "requested_backend": backend,
            "calibration": calibration.describe(),
            "validation": {"patches": len(validation), "roi": list(roi), "volumes": len(val),
                           "patches_with_foreground": sum(int(lab.any()) for _, lab in validation)}}
    return calibration, validation, base


def _measured_warnings(result, config: DemoConfig, seconds: float, drop: float,
                       latency: Dict[str, Dict[str, float]]) -> List[str]:
    """What the demo's own measurements add to ``quantize``'s warnings: a whole-volume Dice drop over the
    tolerance, int8 slower than the fastest pruned fp32, a backend not chosen whose int8 is slower than its fp32."""
    warnings_ = []
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
    for message in warnings_:
        logger.warning(message)
    return warnings_


def _entry(result, pruned: torch.nn.Module, dice: Dict[str, Any], seconds: float, drop: float,
           latency: Dict[str, Dict[str, float]], warnings_: List[str]) -> Dict[str, Any]:
    """The measured part of the results' ``"int8"`` entry of an int8 model that was made."""
    dense, fp32 = latency["dense"], latency["pruned"]
    return {
        "status": "ok", "backend": result.backend, "artifact": result.path, "fp32_artifact": result.fp32_path,
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
    backend = _int8_backend(config.backends)
    if backend is None:
        logger.info("int8 skipped: no int8 backend (%s) among %s", ", ".join(QUANT_BACKENDS), config.backends)
        return {"status": "skipped", "reason": f"no int8 backend ({', '.join(QUANT_BACKENDS)}) among the demo's "
                                                f"backends {list(config.backends)}"}
    calibration, validation, base = _inputs(train, val, config, backend)
    out_dir = os.path.join(config.out, "pruned_int8")
    try:
        result = quantize(pruned, calibration, backend=backend, max_delta=base["max_delta"], out_dir=out_dir,
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
    drop = pruned_dice - dice["mean_dice"]
    warnings_ = list(result.warnings) + _measured_warnings(result, config, seconds, drop, latency)
    return {**base, **_entry(result, pruned, dice, seconds, drop, latency, warnings_)}
