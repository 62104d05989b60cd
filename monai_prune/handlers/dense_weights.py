"""Load a bundle's trained dense weights (``models/model.pt``) into its network before compression starts.

A model-zoo ``configs/train.json`` never loads ``models/model.pt`` (it trains from scratch), so a recipe overlaid on it
must: the packaged recipes call :func:`load_dense_weights` from the bundle's ``initialize`` step
(``"+initialize": ["$@dense_weights#load"]``), which ``python -m monai.bundle run`` evaluates before ``run`` builds
the trainer and its handlers. The network is built (and cached by the config parser) at that point, so the trainer,
the optimizer, the pruning handler and the distillation teacher all see the trained weights, whatever the order of
the handlers in ``train#handlers``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from typing import Optional, Union

import torch
from torch import nn

from ..distributed import unwrap_ddp
from ..errors import ConfigError, InputError
from ..weights import read_state_dict, weights_state  # noqa: F401 (weights_state: public here since before)

logger = logging.getLogger(__name__)

__all__ = ["load_dense_weights", "state_checksum", "weights_state"]


def state_checksum(state: Union[nn.Module, Mapping]) -> str:
    """sha256 over a state dict (or a module's): names, dtypes, shapes and bytes of every tensor, in name order.
    Equal checksums mean bit-identical weights and buffers (e.g. a distillation teacher and ``models/model.pt``)."""
    if isinstance(state, nn.Module):
        state = unwrap_ddp(state).state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_dense_weights(network: nn.Module, path: Optional[str], purpose: str = "pruning",
                       strict: bool = True) -> nn.Module:
    """Load the trained weights at ``path`` into ``network`` (a DDP wrapper is unwrapped) and return ``network``.

    The file is read with ``torch.load(weights_only=True)`` (no pickled code runs, as MONAI 1.6's ``CheckpointLoader``
    does) onto the CPU; a plain state dict and a checkpoint dict ``{"model": state, ...}`` both work. One INFO line
    names the file loaded (and the weights' :func:`state_checksum`). When ``path`` does not exist, a WARNING says so
    and the network keeps its initial weights (``purpose`` names what then starts from them); ``path=None`` skips
    loading on purpose (``--dense_weights#path None``). A file that does not fit the network raises
    :class:`~monai_prune.errors.ConfigError`.
    """
    if not isinstance(network, nn.Module):
        raise InputError(f"network must be a torch.nn.Module, got {type(network).__name__}")
    if path is None:
        logger.info("dense weights: none given (dense_weights#path is null): %s starts from the network's initial "
                    "weights", purpose)
        return network
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        logger.warning("no trained weights at %s: %s starts from the network's initial weights", path, purpose)
        return network
    state = read_state_dict(path)
    module = unwrap_ddp(network)
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ConfigError(f"{path} does not fit the bundle's network ({type(module).__name__} from network_def): "
                          f"{str(e).splitlines()[0]} ... (is it the dense model.pt of this bundle?)") from e
    logger.info("loaded the trained dense weights from %s (%d tensors, sha256 %s)", path, len(state),
                state_checksum(state)[:16])
    return network
