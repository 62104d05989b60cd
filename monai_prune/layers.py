"""The layer types monai-prune counts, prunes and sparsifies, and how wide their output is."""

from __future__ import annotations

from typing import Dict, Iterable

from torch import nn

CONV_TRANSPOSE_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear) + CONV_TRANSPOSE_TYPES


def layer_out_dim(module: nn.Module) -> int | None:
    """Output channels/features of a Conv/ConvTranspose/Linear layer, None for anything else."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, PRUNABLE_TYPES):
        return module.out_channels
    return None


def layer_widths(model: nn.Module) -> Dict[str, int]:
    """Output width of every Conv/ConvTranspose/Linear layer of ``model``, by module name."""
    return {n: layer_out_dim(m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def channel_sparsity(before: Dict[str, int], after: Dict[str, int], kept: Iterable[str] = ()) -> float:
    """Fraction of output channels removed, over the layers of ``before`` not in ``kept`` (head, ignored)."""
    kept = set(kept)
    names = [n for n in before if n not in kept]
    total = sum(before[n] for n in names)
    return 1.0 - sum(after[n] for n in names) / total if total else 0.0
