"""The small networks the tests train and prune."""

from typing import Any, Sequence

import torch
from monai.networks.nets import UNet


def small_unet(spatial_dims: int = 3, out_channels: int = 2, channels: Sequence[int] = (8, 16, 32, 64),
               num_res_units: int = 2, norm: Any = "batch") -> UNet:
    """A small MONAI UNet, one input channel; 3D with two residual units by default (the 3-class 2D task uses
    ``small_unet(2, 3, num_res_units=1)``)."""
    return UNet(spatial_dims=spatial_dims, in_channels=1, out_channels=out_channels, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=num_res_units, norm=norm)


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
