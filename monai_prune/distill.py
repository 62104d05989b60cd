"""Knowledge distillation from a dense teacher to a compressed student.

``DistillationLoss`` wraps the task loss: task + alpha * T^2 * KL(teacher_T || student_T) (or, with
``direction="student_teacher"``, KL(student_T || teacher_T)), where ``x_T`` is
the softmax of the logits divided by the temperature T, computed per voxel (over the class channel) for
segmentation and per sample for classification, then averaged. The teacher's logits for the current batch are
set on the loss (``loss.teacher_output``) by :class:`monai_prune.handlers.DistillationHandler`.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from .errors import ConfigError, InputError

Schedulable = Union[float, Callable[[int], float]]


DIRECTIONS = ("teacher_student", "student_teacher")


def kd_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                  direction: str = "teacher_student") -> torch.Tensor:
    """Mean over samples (and voxels) of KL along dim 1 between the tempered softmaxes, times T^2.

    ``direction="teacher_student"``: KL(softmax(teacher/T) || softmax(student/T)), Hinton et al.'s distillation
    loss (the student covers every class the teacher gives mass to). ``"student_teacher"``: KL(student || teacher).
    """
    if student.shape != teacher.shape:
        raise InputError(f"student output {tuple(student.shape)} and teacher output {tuple(teacher.shape)} differ")
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    log_student = F.log_softmax(student / temperature, dim=1)
    log_teacher = F.log_softmax(teacher / temperature, dim=1)
    p, log_p, log_q = ((log_teacher.exp(), log_teacher, log_student) if direction == "teacher_student"
                       else (log_student.exp(), log_student, log_teacher))
    kl = (p * (log_p - log_q)).sum(dim=1)
    return kl.mean() * temperature ** 2


class DistillationLoss(torch.nn.Module):
    """``task_loss(pred, target) + alpha * kd_divergence(pred, teacher_output, T)``.

    Args:
        task_loss: the trainer's own loss (e.g. ``DiceCELoss``).
        alpha: weight of the distillation term, a float or ``alpha(epoch) -> float``.
        temperature: softening temperature T > 0, a float or ``T(epoch) -> float``.
    """

    def __init__(self, task_loss: Callable, alpha: Schedulable = 0.5, temperature: Schedulable = 2.0,
                 direction: str = "teacher_student") -> None:
        super().__init__()
        if not callable(task_loss):
            raise ConfigError("task_loss must be the trainer's loss function")
        self.validate(alpha, temperature, direction)
        self.task_loss, self.alpha, self.temperature, self.direction = task_loss, alpha, temperature, direction
        self.epoch = 0
        self.teacher_output: Optional[torch.Tensor] = None
        self.last_kd: Optional[float] = None

    @classmethod
    def validate(cls, alpha: Schedulable, temperature: Schedulable, direction: str = "teacher_student") -> None:
        """Raise ``ConfigError`` for arguments that would fail mid-training (values checked at epoch 0)."""
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        at_start = [float(v(0)) if callable(v) else float(v) for v in (alpha, temperature)]
        cls._check(*at_start)

    @staticmethod
    def _check(alpha: float, temperature: float) -> None:
        if alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")

    def current(self, value: Schedulable) -> float:
        return float(value(self.epoch)) if callable(value) else float(value)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.task_loss(pred, target)
        teacher, self.teacher_output = self.teacher_output, None  # one teacher output per batch, never reused
        if teacher is None:
            return loss
        alpha, temperature = self.current(self.alpha), self.current(self.temperature)
        self._check(alpha, temperature)
        kd = kd_divergence(pred, teacher.to(pred.device), temperature, self.direction)
        self.last_kd = float(kd.detach())
        return loss + alpha * kd
