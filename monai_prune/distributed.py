"""Multi-process (DDP) support: one decision taken on rank 0 and shared, and a DDP wrapper kept valid after pruning.

Under ``torchrun`` every rank must remove the same channels and hold the same masks, or the ranks' networks
diverge and DDP's gradient all-reduce fails on mismatched shapes. Decisions (pruning plans, masks) are computed
on rank 0 and broadcast; an error on rank 0 is broadcast too, so every rank raises instead of hanging.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Optional

import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import PruningError

logger = logging.getLogger(__name__)
_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def unwrap_ddp(network: nn.Module) -> nn.Module:
    """The module a ``DistributedDataParallel`` (or ``DataParallel``) wrapper holds; ``network`` otherwise."""
    if isinstance(network, (DistributedDataParallel, nn.DataParallel)):
        return network.module
    return network


def broadcast_from_rank0(compute: Callable[[], Any]) -> Any:
    """Run ``compute()`` on rank 0 only and return its (picklable) result on every rank.

    Without an initialised process group (or with one process) this is just ``compute()``.
    """
    if not is_distributed():
        return compute()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", compute())
        except Exception as e:  # shared with the other ranks so that they raise too, then re-raised here
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        if isinstance(value, Exception):
            raise value
        raise PruningError(f"rank 0 failed: {value}")
    return value


def refresh_ddp(wrapper: Optional[nn.Module]) -> None:
    """Rebuild a ``DistributedDataParallel`` wrapper in place after its module's parameters were replaced.

    DDP registers its gradient buckets on the parameter tensors it saw at construction; pruning replaces them.
    Re-initialising the same wrapper object (same arguments) keeps every reference to it (trainer, evaluator,
    checkpoint saver) valid. Forward hooks registered on the wrapper itself are lost: hook the inner module.
    """
    if not isinstance(wrapper, DistributedDataParallel):
        return
    module = wrapper.module
    sync_key = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_ARGS else "broadcast_buffers"  # torch >= 2.13
    kwargs = dict(
        device_ids=wrapper.device_ids, output_device=wrapper.output_device, dim=wrapper.dim,
        process_group=wrapper.process_group, **{sync_key: wrapper.broadcast_buffers},
        find_unused_parameters=wrapper.find_unused_parameters,
        gradient_as_bucket_view=wrapper.gradient_as_bucket_view, static_graph=getattr(wrapper, "static_graph", False),
    )
    DistributedDataParallel.__init__(wrapper, module, **kwargs)
    logger.debug("DistributedDataParallel wrapper rebuilt for the pruned parameters")
