"""The layer types monai-prune counts, prunes and sparsifies, and how wide their output is."""

from __future__ import annotations

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
