"""``DistillationHandler``: distil a frozen dense teacher into the network a MONAI trainer trains."""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Optional

import torch
from monai.utils import optional_import
from torch import nn

from ..distill import DistillationLoss, Schedulable
from ..distributed import unwrap_ddp
from ..errors import ConfigError, InputError
from ..utils import first_output

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")


class DistillationHandler:
    """Add knowledge distillation to a stock ``SupervisedTrainer`` without touching its configuration.

    ``attach(trainer)`` wraps the trainer's loss in :class:`~monai_prune.distill.DistillationLoss` and hooks the
    network so that, on every training forward pass, the teacher runs on the same input (no gradients) and its
    logits reach the loss. Works alongside :class:`PruningHandler` (which prunes the same module objects).
    At each epoch end ``engine.state.metrics`` gets ``kd_loss`` (last distillation term) and ``kd_agreement``
    (fraction of voxels/samples where teacher and student argmax agree, over the epoch).

    Args:
        network: the student (the network the trainer trains).
        teacher: a trained teacher; default: a frozen copy of ``network`` taken now (before compression).
        alpha, temperature: floats or ``f(epoch) -> float``.
        name: logger name; default: the engine's logger.
    """

    def __init__(self, network: nn.Module, teacher: Optional[nn.Module] = None, alpha: Schedulable = 0.5,
                 temperature: Schedulable = 2.0, name: Optional[str] = None) -> None:
        if not isinstance(network, nn.Module):
            raise InputError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        self.network = unwrap_ddp(network)  # hooks go on the module: a DDP wrapper is rebuilt after pruning
        self.teacher = copy.deepcopy(unwrap_ddp(teacher) if teacher is not None else self.network).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature
        self.logger = logging.getLogger(name) if name else None
        self.loss: Optional[DistillationLoss] = None
        self._agree = self._total = 0

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        task_loss = getattr(engine, "loss_function", None)
        if task_loss is None:
            raise ConfigError("DistillationHandler needs a trainer with a loss_function (a MONAI SupervisedTrainer)")
        if unwrap_ddp(getattr(engine, "network", self.network)) is not self.network:
            raise ConfigError("the trainer trains a different network than the one given to DistillationHandler")
        self.loss = DistillationLoss(task_loss, self.alpha, self.temperature)
        engine.loss_function = self.loss
        self.network.register_forward_hook(self._teach)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _teach(self, module, inputs, output) -> None:
        if not module.training or self.loss is None or not torch.is_grad_enabled():
            return
        with torch.no_grad():
            teacher_out = self.teacher.to(inputs[0].device)(inputs[0])
            self._agree += int((teacher_out.argmax(1) == first_output(output).argmax(1)).sum())
            self._total += teacher_out.argmax(1).numel()
        self.loss.teacher_output = teacher_out

    def _epoch_started(self, engine: Engine) -> None:
        self.loss.epoch = engine.state.epoch
        self._agree = self._total = 0

    def __call__(self, engine: Engine) -> None:
        agreement = self._agree / self._total if self._total else float("nan")
        engine.state.metrics["kd_agreement"] = agreement
        engine.state.metrics["kd_loss"] = self.loss.last_kd if self.loss.last_kd is not None else float("nan")
        self.logger.info("distillation: teacher-student agreement %.4f, KD term %.4g", agreement,
                         engine.state.metrics["kd_loss"])
