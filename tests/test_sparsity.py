"""Unstructured and N:M sparsity: exact counts, masks that survive training, clear errors."""

import pytest
import torch
from torch import nn

from monai_prune.errors import ConfigError
from monai_prune.sparsity import MaskKeeper, apply_masks, magnitude_masks, measured_sparsity, nm_masks
from helpers.networks import small_unet


def test_local_magnitude_zeroes_the_smallest_in_each_layer():
    model = small_unet()
    masks = magnitude_masks(model, 0.7)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        w = params[name].detach().abs()
        kept = w[mask]
        assert abs((~mask).float().mean().item() - 0.7) < 1.0 / w.numel() + 1e-6
        if (~mask).any() and mask.any():
            assert w[~mask].max() <= kept.min()  # w' = w * 1{|w| >= tau}
    apply_masks(model, masks)
    assert measured_sparsity(model, masks) == pytest.approx(0.7, abs=0.01)


def test_global_magnitude_uses_one_threshold():
    model = small_unet()
    masks = magnitude_masks(model, 0.5, scope="global")
    params = dict(model.named_parameters())
    tau = max(params[k].detach().abs()[~m].max() for k, m in masks.items() if (~m).any())
    assert all(params[k].detach().abs()[m].min() >= tau for k, m in masks.items() if m.any())
    per_layer = [(~m).float().mean().item() for m in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.1  # layers differ, unlike local


def test_nm_two_of_four_along_input_channels():
    model = nn.Sequential(nn.Conv3d(1, 8, 3), nn.Conv3d(8, 8, 3), nn.ConvTranspose3d(8, 4, 2, stride=2))
    masks = nm_masks(model, 2, 4)
    assert "0.weight" not in masks  # 1 input channel: skipped
    mask = masks["1.weight"]  # (out, in, k, k, k): every 4 input channels hold exactly 2
    assert (mask.reshape(8, 2, 4, 27).sum(2) == 2).all()
    masks_t = masks["2.weight"]  # ConvTranspose: input channels are dim 0
    assert (masks_t.reshape(2, 4, 4, 8).sum(1) == 2).all()
    with pytest.raises(ConfigError, match="does not divide"):
        nm_masks(nn.Sequential(nn.Conv3d(6, 6, 1)), 2, 4)
    with pytest.raises(ConfigError, match="0 < N < M"):
        nm_masks(model, 4, 4)


def test_masks_stay_applied_through_training():
    model = small_unet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    masks = magnitude_masks(model, 0.6)
    keeper = MaskKeeper(model, opt, masks)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 1, 32, 32, 32)).mean().backward()
        opt.step()
    assert measured_sparsity(model, masks) >= 0.6 - 0.01
    keeper.remove()
    opt.zero_grad()
    model(torch.randn(2, 1, 32, 32, 32)).mean().backward()
    opt.step()
    assert measured_sparsity(model, masks) < 0.6  # once removed, training may regrow weights


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 1.0}, r"in \[0, 1\)"),
    ({"sparsity": 0.5, "scope": "row"}, "scope"),
    ({"sparsity": 0.5, "layers": ["nope"]}, "not found"),
])
def test_bad_sparsity_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        magnitude_masks(small_unet(), **kwargs)
