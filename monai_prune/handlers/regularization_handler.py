"""``SparsityRegularizationHandler``: push weights toward prunable structure during a warm-up phase."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, List, Optional

import torch
from monai.utils import optional_import
from torch import nn

from ..errors import ConfigError, InputError
from ..layers import CONV_TRANSPOSE_TYPES, PRUNABLE_TYPES

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

PENALTIES = ("l1", "bn_l1", "group_lasso")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
          nn.GroupNorm)


def sparsity_penalty(network: nn.Module, kind: str, skip: Optional[List[str]] = None) -> torch.Tensor:
    """The regularization term of ``kind`` for ``network``'s current weights.

    ``"l1"``: sum of |w| over Conv/Linear weights. ``"bn_l1"``: sum of |gamma| over affine normalisation layers
    (network slimming). ``"group_lasso"``: sum over Conv/Linear output channels of the L2 norm of that channel's
    weights, which drives whole channels to zero. Layers named in ``skip`` (e.g. the output head) are left out.
    """
    if kind not in PENALTIES:
        raise ConfigError(f"penalty must be one of {PENALTIES}, got {kind!r}")
    skip = set(skip or [])
    terms = []
    for name, module in network.named_modules():
        if name in skip:
            continue
        if kind == "bn_l1" and isinstance(module, _NORMS) and getattr(module, "weight", None) is not None:
            terms.append(module.weight.abs().sum())
        elif kind != "bn_l1" and isinstance(module, PRUNABLE_TYPES):
            w = module.weight
            if kind == "l1":
                terms.append(w.abs().sum())
            else:
                out_dim = 1 if isinstance(module, CONV_TRANSPOSE_TYPES) else 0
                terms.append(w.movedim(out_dim, 0).flatten(1).norm(dim=1).sum())
    if not terms:
        raise ConfigError(f"the network has no layer for the {kind!r} penalty")
    return torch.stack(terms).sum()


class _RegularizedLoss(nn.Module):
    def __init__(self, task_loss: Callable, handler: "SparsityRegularizationHandler") -> None:
        super().__init__()
        self.task_loss, self.handler = task_loss, handler

    def forward(self, pred, target):
        loss = self.task_loss(pred, target)
        if not self.handler.active:
            return loss
        penalty = sparsity_penalty(self.handler.network, self.handler.penalty, self.handler.skip)
        self.handler.last_penalty = float(penalty.detach())
        return loss + self.handler.weight * penalty


class SparsityRegularizationHandler:
    """Add ``weight * penalty`` to a stock trainer's loss from ``start_epoch`` to ``end_epoch`` (inclusive).

    Attach it before pruning starts so the later pruning steps remove channels the network has learned to do
    without. Composes with :class:`DistillationHandler` (each wraps the loss it finds). Publishes
    ``reg_penalty`` in ``engine.state.metrics``.

    Args:
        network: the network the trainer trains.
        penalty: ``"l1"``, ``"bn_l1"`` or ``"group_lasso"`` (see :func:`sparsity_penalty`).
        weight: the regularization strength (e.g. 1e-4 for ``"bn_l1"``).
        start_epoch, end_epoch: the warm-up phase; ``end_epoch=None`` keeps it on to the end.
        skip: layer names left out (e.g. the output head).
        name: logger name; default: the engine's logger.
    """

    def __init__(self, network: nn.Module, penalty: str = "bn_l1", weight: float = 1e-4, start_epoch: int = 1,
                 end_epoch: Optional[int] = None, skip: Optional[List[str]] = None, name: Optional[str] = None):
        if not isinstance(network, nn.Module):
            raise InputError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        if weight < 0:
            raise ConfigError(f"weight must be >= 0, got {weight}")
        if end_epoch is not None and end_epoch < start_epoch:
            raise ConfigError(f"start_epoch={start_epoch} is after end_epoch={end_epoch}")
        sparsity_penalty(network, penalty, skip)  # fail now, not mid-training
        self.network, self.penalty, self.weight, self.skip = network, penalty, weight, list(skip or [])
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        self.logger = logging.getLogger(name) if name else None
        self.active = False
        self.last_penalty: Optional[float] = None

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        if getattr(engine, "loss_function", None) is None:
            raise ConfigError("SparsityRegularizationHandler needs a trainer with a loss_function")
        engine.loss_function = _RegularizedLoss(engine.loss_function, self)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _epoch_started(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        self.active = epoch >= self.start_epoch and (self.end_epoch is None or epoch <= self.end_epoch)

    def __call__(self, engine: Engine) -> None:
        if self.active and self.last_penalty is not None:
            engine.state.metrics["reg_penalty"] = self.last_penalty
            self.logger.info("%s penalty %.4g (weight %.2g)", self.penalty, self.last_penalty, self.weight)
