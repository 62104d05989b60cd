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
from ..errors import ConfigError, InputError, PlanMismatchError
from ..pruning.plan import architecture_signature
from ..utils import first_output
from .dense_weights import state_checksum

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

    The default teacher is the dense network as it is when training starts: the copy is refreshed at
    ``Events.STARTED``, after any ``CheckpointLoader`` listed before this handler has loaded the trained weights
    (so an overlay on a bundle that loads its checkpoint distils from the trained model, not from the random
    init; the packaged recipes load ``models/model.pt`` even earlier, in the bundle's ``initialize`` step, see
    :func:`~monai_prune.handlers.load_dense_weights`). The snapshot's log line ends with the teacher's
    :func:`~monai_prune.handlers.state_checksum` (16 hex digits; also ``teacher_checksum``), to compare with the
    file's. ``state_dict()`` holds the teacher's weights: save the handler in the checkpoint
    (``{"distiller": handler}``) so that a resumed, already pruned run keeps the same dense teacher.

    Args:
        network: the student (the network the trainer trains; a DDP wrapper is unwrapped).
        teacher: a trained teacher; default: a frozen copy of ``network`` (see above).
        alpha, temperature: floats or ``f(epoch) -> float``.
        direction: ``"teacher_student"`` (default, Hinton et al.: KL(p_teacher || p_student)) or
            ``"student_teacher"`` (KL(p_student || p_teacher), mode-seeking).
        name: logger name; default: the engine's logger.
    """

    def __init__(self, network: nn.Module, teacher: Optional[nn.Module] = None, alpha: Schedulable = 0.5,
                 temperature: Schedulable = 2.0, direction: str = "teacher_student", name: Optional[str] = None) -> None:
        if not isinstance(network, nn.Module):
            raise InputError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise InputError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        self.network = unwrap_ddp(network)  # hooks go on the module: a DDP wrapper is rebuilt after pruning
        self.teacher = copy.deepcopy(unwrap_ddp(teacher) if teacher is not None else self.network).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature, self.direction = alpha, temperature, direction
        self.logger = logging.getLogger(name) if name else None
        DistillationLoss.validate(alpha, temperature, direction)  # bad arguments fail here, not mid-training
        self.loss: Optional[DistillationLoss] = None  # set by attach()
        self._snapshot_pending = teacher is None  # refresh the copy when training starts
        self.teacher_checksum: Optional[str] = None  # state_checksum() of the teacher, set when the snapshot is taken
        self._agree = self._total = 0

    def attach(self, engine: Engine) -> None:
        """Hook the network and wrap the trainer's loss: now if the trainer is built (Python), else when it
        starts (a trainer built from a bundle config attaches its handlers before it sets its loss)."""
        if self.logger is None:
            self.logger = engine.logger
        if hasattr(engine, "loss_function"):
            self._install(engine)
        else:
            engine.add_event_handler(Events.STARTED, self._install)
        engine.add_event_handler(Events.STARTED, self._snapshot)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _install(self, engine: Engine) -> None:
        if self.loss is not None and engine.loss_function is self.loss:  # a second run() of the same trainer
            return
        task_loss = getattr(engine, "loss_function", None)
        if task_loss is None:
            raise ConfigError("DistillationHandler needs a trainer with a loss_function (a MONAI SupervisedTrainer)")
        if unwrap_ddp(getattr(engine, "network", self.network)) is not self.network:
            raise ConfigError("the trainer trains a different network than the one given to DistillationHandler")
        self.loss = DistillationLoss(task_loss, self.alpha, self.temperature, self.direction)
        engine.loss_function = self.loss
        self.network.register_forward_hook(self._teach)

    def _snapshot(self, engine: Engine) -> None:
        """Take the teacher from the network as training starts (after checkpoint loaders have run), once."""
        if not self._snapshot_pending:
            return
        if architecture_signature(self.network) != architecture_signature(self.teacher):
            raise PlanMismatchError(
                "the network was already compressed when training started (a resumed run) and the dense teacher's "
                "weights are not known: save the DistillationHandler in the checkpoint ({'distiller': handler}) "
                "and load it back, or pass teacher=")
        self.teacher.load_state_dict(self.network.state_dict())
        self._snapshot_pending = False
        self.teacher_checksum = state_checksum(self.teacher)
        self.logger.info("distillation teacher: the network as training starts (%d parameters, frozen, sha256 %s)",
                         sum(p.numel() for p in self.teacher.parameters()), self.teacher_checksum[:16])

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "snapshot_pending": self._snapshot_pending}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self._snapshot_pending = bool(state.get("snapshot_pending", False))

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
