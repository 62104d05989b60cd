"""The demo's sizes and budgets: :class:`DemoConfig`, and :func:`quick_config` for tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

from ..runtime import available_backends


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
