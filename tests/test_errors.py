"""Bad input gets a clear error of our family, and the user's model is untouched."""

import copy

import pytest
import torch
from torch import nn

import monai_prune as mp
from monai_prune.errors import ConfigError, InputError, PruningError
from helpers.networks import small_unet, state_equal

X = torch.randn(1, 1, 32, 32, 32)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        mp.prune_channels(small_unet(), X, ratio=ratio)


def test_target_larger_than_the_model():
    with pytest.raises(ConfigError, match="needs no pruning"):
        mp.prune_channels(small_unet(), X, target_macs=1.2)


def test_ratio_and_target_together():
    with pytest.raises(ConfigError, match="exactly one"):
        mp.prune_channels(small_unet(), X, ratio=0.5, target_macs=0.5)


def test_wrong_rank_and_wrong_channels():
    with pytest.raises(TypeError, match="expected a 5-D tensor"):
        mp.prune_channels(small_unet(), torch.randn(1, 1, 32, 32), ratio=0.5)
    with pytest.raises(TypeError, match="expects 1"):
        mp.prune_channels(small_unet(), torch.randn(1, 3, 32, 32, 32), ratio=0.5)
    with pytest.raises(TypeError, match="must be a tensor"):
        mp.prune_channels(small_unet(), "not a tensor", ratio=0.5)


def test_input_the_network_cannot_run():
    model = nn.Sequential(nn.Conv3d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 30 ** 3, 2))
    with pytest.raises(InputError, match="cannot run on an example_input"):
        mp.prune_channels(model, torch.randn(1, 1, 16, 16, 16), ratio=0.5)


def test_model_with_no_prunable_layer():
    with pytest.raises(ConfigError, match="no prunable channel group"):
        mp.prune_channels(nn.Conv3d(1, 2, 3), X, ratio=0.5)


def test_ignored_layer_that_does_not_exist():
    with pytest.raises(ConfigError, match="does_not_exist"):
        mp.prune_channels(small_unet(), X, ratio=0.5, ignore=["does_not_exist"])


def test_unknown_option_and_criterion():
    with pytest.raises(ConfigError, match="unknown pruning option"):
        mp.prune_channels(small_unet(), X, ratio=0.5, sparsity=0.5)
    with pytest.raises(ConfigError, match="importance must be one of"):
        mp.prune_channels(small_unet(), X, ratio=0.5, importance="magic")


def test_taylor_needs_data():
    with pytest.raises(ConfigError, match="batches"):
        mp.prune_channels(small_unet(), X, ratio=0.5, importance="taylor")


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        mp.prune_channels({"weights": 1}, X, ratio=0.5)


def test_a_pruned_head_is_caught_and_the_model_is_untouched():
    """A head the detector cannot see is caught by the output check; naming it in ``ignore`` fixes it."""

    class TwoHeads(nn.Module):  # the head has as many channels as the body, so head detection cannot tell them apart
        def __init__(self):
            super().__init__()
            self.body = nn.Conv3d(1, 4, 3, padding=1)
            self.head = nn.Conv3d(4, 4, 1)

        def forward(self, x):
            return self.head(torch.relu(self.body(x))).flatten(2).mean(-1)[:, :3]

    model = TwoHeads().eval()
    before = copy.deepcopy(model)
    with pytest.raises(PruningError, match="changed the output"):
        mp.prune_channels(model, torch.randn(1, 1, 8, 8, 8), ratio=0.5)
    assert state_equal(model, before)
    # naming the head keeps it whole, and then pruning works
    pruned, plan = mp.prune_channels(model, torch.randn(1, 1, 8, 8, 8), ratio=0.5, ignore=["head"])
    assert pruned(torch.randn(1, 1, 8, 8, 8)).shape == (1, 3) and "head" in plan.kept_layers
