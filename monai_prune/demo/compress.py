"""The demo's compression: fine-tune a copy of the dense UNet in a stock ``SupervisedTrainer`` while a
:class:`~monai_prune.handlers.PruningHandler` removes channels on a cubic schedule and a
:class:`~monai_prune.handlers.DistillationHandler` distills the dense model into it."""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import torch

from ..handlers import DistillationHandler, PruningHandler
from ..schedules import CubicSchedule
from .config import DemoConfig
from .training import SPLEEN_UNET_DEF, train_segmentation


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
