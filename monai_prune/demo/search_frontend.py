"""``monai-prune search`` on the built-in synthetic CT: the demo's spleen-style UNet, searched for the most compressed
model that keeps every per-class guardrail.

The dense UNet is trained once (kept in ``OUT/dense/`` and reused by a resumed search), then :func:`monai_prune.search.
search` prunes it at each candidate ratio, fine-tunes each candidate for a few epochs in a stock ``SupervisedTrainer``
with a :class:`~monai_prune.handlers.DistillationHandler` (teacher: the dense UNet), and measures per-class Dice, HD95
and volume error over the held-out volumes through MONAI's sliding-window inferer, and the latency of the whole
sliding-window inferer over a volume on every backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ..errors import ConfigError
from ..measure import sliding_window_latency
from ..search import SearchConfig, SearchResult, check_resumable, check_search_arguments, search, search_fingerprint
from ..utils import atomic_path, atomic_write_text
from .data import SPACING_MM, ct_transforms, write_ct_dataset
from .training import SPLEEN_UNET_DEF, spleen_unet, train_segmentation

logger = logging.getLogger("monai_prune.search_workflow")  # the name its log lines have always carried

CLASS_NAMES = ["background", "spleen"]
# the pipeline knobs the demo's evaluate and latency take, at the values every candidate is measured at; roi_size
# "default" is each workload's own window (evaluation: infer_roi; timing: bench_roi)
PIPELINE_BASELINE = {"overlap": 0.25, "sw_batch_size": 1, "roi_size": "default"}
WHOLE = "whole"  # roi_size knob value: one window over the whole volume (its own size), no overlap, no blending


def window(roi_size: Any, own: Sequence[int], volume_shape: Sequence[int]) -> tuple:
    """The sliding window of a ``roi_size`` knob value: ``"default"`` -> ``own``, ``"whole"`` -> the volume's spatial
    shape, N -> an N-cube, ``[x, y, z]`` as given."""
    if roi_size == "default":
        return tuple(own)
    if roi_size == WHOLE:
        return tuple(int(v) for v in volume_shape[-3:])
    if isinstance(roi_size, (list, tuple)) and len(roi_size) == 3:
        return tuple(int(v) for v in roi_size)
    if isinstance(roi_size, int) and not isinstance(roi_size, bool) and roi_size > 0:
        return (roi_size,) * 3
    raise ConfigError(f"roi_size knob: 'default', 'whole', a positive integer or [x, y, z]; got {roi_size!r}")


def with_pipeline_baseline(search_config: SearchConfig) -> SearchConfig:
    """``search_config`` with the demo's :data:`PIPELINE_BASELINE` as its ``pipeline_baseline`` when it searches
    pipeline knobs and names no baseline of its own."""
    if search_config.pipeline_knobs and not search_config.pipeline_baseline:
        search_config = dataclasses.replace(search_config, pipeline_baseline=dict(PIPELINE_BASELINE))
    return search_config


@dataclass
class SearchDemoConfig:
    """Sizes of the synthetic-CT search (defaults: several minutes on 2 CPU cores; :func:`quick_search_config` for
    tests)."""

    train_volumes: int = 16
    val_volumes: int = 4
    size: int = 96
    train_roi: Sequence[int] = (48, 48, 48)
    infer_roi: Sequence[int] = (64, 64, 64)
    epochs: int = 25
    finetune_epochs: int = 4
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    bench_size: int = 128
    bench_roi: Sequence[int] = (96, 96, 96)
    repeats: int = 3
    calibration_samples: int = 16
    seed: int = 0

    def digest(self) -> str:
        text = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                           if k != "repeats"}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def quick_search_config() -> SearchDemoConfig:
    """Small enough for a test: few small volumes, few epochs."""
    return SearchDemoConfig(train_volumes=4, val_volumes=2, size=64, epochs=3, finetune_epochs=1, bench_size=64,
                            bench_roi=(48, 48, 48), infer_roi=(48, 48, 48), repeats=1, calibration_samples=4)


def per_class_evaluator(items: List[Dict[str, str]], roi: Sequence[int], names: Sequence[str] = CLASS_NAMES,
                        sw_batch_size: int = 2, overlap: float = 0.25, roi_size: Any = "default"):
    """``evaluate(model_or_predictor, overlap=overlap, sw_batch_size=sw_batch_size, roi_size=roi_size)`` for
    :func:`~monai_prune.search.search`: per-class Dice, HD95 (mm) and volume error over ``items`` through MONAI's
    sliding-window inferer, and the first case's slice with the most foreground (image, label, prediction) for the
    report's overlay. The keywords are the search's pipeline knobs."""
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference

    from ..fidelity import PerClassMetrics

    transform = ct_transforms(roi, train=False)
    data = [transform(item) for item in items]
    affine = torch.diag(torch.tensor([SPACING_MM, SPACING_MM, SPACING_MM, 1.0], dtype=torch.float64))

    def evaluate(predictor, overlap: float = overlap, sw_batch_size: int = sw_batch_size,
                 roi_size: Any = roi_size) -> Dict[str, Any]:
        metrics = PerClassMetrics(names)
        example = None
        for i, sample in enumerate(data):
            image, label = sample["image"][None], sample["label"]
            logits = sliding_window_inference(image, window(roi_size, roi, image.shape), sw_batch_size, predictor,
                                              overlap=overlap, mode="gaussian")
            pred = logits[0].argmax(0, keepdim=True)
            metrics.update(MetaTensor(pred, affine=affine), MetaTensor(label.long(), affine=affine))
            if i == 0:
                z = int(label[0].sum(dim=(0, 1)).argmax())
                example = {"image": image[0, 0, :, :, z].numpy(), "label": label[0, :, :, z].numpy(),
                           "pred": pred[0, :, :, z].numpy()}
        return {**metrics.compute(), "example": example}

    return evaluate


def latency_workload(volume: torch.Tensor, roi: Sequence[int], repeats: int, overlap: float = 0.25,
                     sw_batch_size: int = 1, roi_size: Any = "default"):
    """``latency(predictor, overlap=overlap, sw_batch_size=sw_batch_size, roi_size=roi_size) -> seconds``: the
    median of the whole ``sliding_window_inference`` over ``volume`` (the keywords are the search's pipeline knobs;
    ``roi_size``: see :func:`window`)."""
    def latency(predictor, overlap: float = overlap, sw_batch_size: int = sw_batch_size,
                roi_size: Any = roi_size) -> float:
        return sliding_window_latency(predictor, volume, window(roi_size, roi, volume.shape),
                                      sw_batch_size=sw_batch_size, overlap=overlap, repeats=repeats)["median_s"]

    return latency


def distillation_finetune(items: List[Dict[str, str]], config: SearchDemoConfig, progress: bool = True):
    """``finetune(student, teacher)``: ``config.finetune_epochs`` epochs of the demo's ``SupervisedTrainer`` with a
    :class:`~monai_prune.handlers.DistillationHandler` from ``teacher``."""
    from ..handlers import DistillationHandler

    def finetune(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        train_segmentation(student, items, config.finetune_epochs, roi=config.train_roi, lr=5e-4,
                           seed=config.seed + 1, progress=progress,
                           handlers=lambda net, opt: [DistillationHandler(network=net, teacher=teacher,
                                                                          alpha=config.kd_alpha,
                                                                          temperature=config.kd_temperature)])

    finetune.__qualname__ = f"distillation_finetune[{config.finetune_epochs} epochs]"
    return finetune


def _dense_model(out: str, train: List[Dict[str, str]], config: SearchDemoConfig) -> torch.nn.Module:
    """Train the dense UNet, or load it from ``OUT/dense/`` when the same config trained it before."""
    folder = os.path.join(out, "dense")
    weights, stamp = os.path.join(folder, "model.pt"), os.path.join(folder, "config.json")
    net = spleen_unet()
    if os.path.isfile(weights) and os.path.isfile(stamp):
        try:
            with open(stamp, encoding="utf-8") as f:
                same = json.load(f).get("digest") == config.digest()
            if same:
                net.load_state_dict(torch.load(weights, weights_only=True))
        except Exception as e:  # a damaged or foreign file where this search keeps its dense model
            raise ConfigError(f"{folder} holds a dense model this search cannot read ({(str(e).strip().splitlines() or [type(e).__name__])[0]}): "
                              f"remove {folder} to train it again, or give another output folder") from e
        if same:
            logger.info("dense UNet loaded from %s (trained by an earlier run with the same config)", weights)
            return net.eval()
    logger.info("training the dense spleen-style UNet for %d epochs", config.epochs)
    train_segmentation(net, train, config.epochs, roi=config.train_roi, seed=config.seed)
    os.makedirs(folder, exist_ok=True)
    with atomic_path(weights) as tmp:
        torch.save(net.state_dict(), tmp)
    atomic_write_text(stamp, json.dumps({"digest": config.digest(), "network_def": SPLEEN_UNET_DEF}))
    return net.eval()


def check_search_demo(out: str, guardrails: Mapping[str, Any], search_config: SearchConfig,
                      config: SearchDemoConfig) -> None:
    """Everything :func:`run_search_demo` can refuse, checked before it writes or trains anything: the search's
    arguments, the guardrails' class names, and an earlier search in ``out`` (a damaged log or summary, another
    setup; the dense weights are compared once trained or reloaded)."""
    if not isinstance(config.finetune_epochs, int) or config.finetune_epochs < 0:
        raise ConfigError(f"finetune_epochs must be a non-negative integer, got {config.finetune_epochs!r}")
    search_config = with_pipeline_baseline(search_config)
    check_search_arguments(dict(guardrails), search_config, calibration_given=True)  # calibration: made here
    floors = guardrails.get("min_dice")
    if isinstance(floors, Mapping):
        unknown = sorted(set(floors) - set(CLASS_NAMES))
        if unknown:
            raise ConfigError(f"min_dice names classes {unknown} that this search does not have; its classes: "
                              f"{CLASS_NAMES}")
    fingerprint = search_fingerprint(spleen_unet(), torch.zeros(1, 1, *config.bench_roi), _setup_id(config),
                                     search_config, distillation_finetune([], config))
    check_resumable(out, fingerprint, ignore=("weights",))


def _setup_id(config: SearchDemoConfig) -> str:
    return f"synthetic-ct:{config.digest()}"


def run_search_demo(out: str, guardrails: Mapping[str, Any], search_config: Optional[SearchConfig] = None,
                    config: Optional[SearchDemoConfig] = None) -> SearchResult:
    """Write the synthetic CT, train (or reload) the dense UNet, and search; see the module docstring."""
    from monai.data import Dataset

    from ..quantization import calibration_data

    config = config or SearchDemoConfig()
    search_config = with_pipeline_baseline(search_config or SearchConfig(precisions=("fp32", "int8")))
    check_search_demo(out, guardrails, search_config, config)
    torch.manual_seed(config.seed)
    data = os.path.join(out, "data")
    train = write_ct_dataset(os.path.join(data, "train"), config.train_volumes, config.size, seed=config.seed)
    val = write_ct_dataset(os.path.join(data, "val"), config.val_volumes, config.size, seed=config.seed + 1000)
    dense = _dense_model(out, train, config)
    generator = torch.Generator().manual_seed(config.seed)
    volume = torch.rand(1, 1, *(config.bench_size,) * 3, generator=generator)
    roi = tuple(config.infer_roi)
    calibration = None
    if "int8" in search_config.precisions:
        calibration = calibration_data(Dataset(train, ct_transforms(roi, train=False)), config.calibration_samples,
                                       roi_size=roi, foreground_ratio=0.5, seed=config.seed)
    val_inputs = [ct_transforms(roi, train=False)(item)["image"][None][..., :roi[0], :roi[1], :roi[2]]
                  for item in val[:2]]
    return search(dense, torch.zeros(1, 1, *config.bench_roi),
                  evaluate=per_class_evaluator(val, roi, **PIPELINE_BASELINE),
                  latency=latency_workload(volume, config.bench_roi, config.repeats, **PIPELINE_BASELINE),
                  guardrails=guardrails, out_dir=out, finetune=distillation_finetune(train, config), config=search_config,
                  calibration=calibration, agreement_inputs=val_inputs, network_def=SPLEEN_UNET_DEF,
                  setup_id=_setup_id(config), title="spleen-style UNet (synthetic CT)")
