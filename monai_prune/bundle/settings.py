"""What a ``compress_bundle`` run is configured with (:class:`CompressSettings`, checked once) and what its
fine-tuning produced (:class:`TrainedModels`), handed from stage to stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch

from ..errors import ConfigError
from .checks import INT8_BACKENDS

if TYPE_CHECKING:
    from ..pruning import PruningPlan


@dataclass(frozen=True)
class CompressSettings:
    """What :func:`compress_bundle`'s arguments configure, checked when built (:class:`ConfigError` otherwise);
    ``src`` and ``out`` absolute. Whether ``input_shape`` fits the bundle is checked with the bundle."""

    src: str
    recipe: str
    out: str
    epochs: Optional[int] = None
    overrides: Dict[str, Any] = field(default_factory=dict)
    int8: Optional[str] = None
    calibration_samples: int = 8
    target_device: str = "cpu"
    dry_run: bool = False
    repeats: int = 5
    input_shape: Optional[List[int]] = None
    allow_degraded: bool = False

    def __post_init__(self) -> None:
        if self.int8 is not None and self.int8 not in INT8_BACKENDS:
            raise ConfigError(f"int8 must be one of {INT8_BACKENDS}, got {self.int8!r}")
        cuda = torch.cuda.is_available()
        if self.target_device not in ("cpu", "cuda") or (self.target_device == "cuda" and not cuda):
            raise ConfigError(f"target device {self.target_device!r} is not available here "
                              f"(cpu{', cuda' if cuda else ''})")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}")

    @property
    def device(self) -> torch.device:
        return torch.device(self.target_device)


@dataclass
class TrainedModels:
    """The dense model and the fine-tuned one of a run, each with the bundle's validate#evaluator metrics and our
    per-class metrics, and the pruning plan the recipe recorded (None when it prunes nothing)."""

    dense_def: Dict[str, Any]
    dense: torch.nn.Module
    network: torch.nn.Module
    plan: Optional[PruningPlan]
    epochs: int
    before: Dict[str, float]
    before_classes: Dict[str, Any]
    after: Dict[str, float]
    after_classes: Dict[str, Any]
