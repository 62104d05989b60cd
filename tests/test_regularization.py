"""Sparsity regularization: penalties by hand, and BN scales shrinking under bn_l1 in a stock trainer."""

import pytest
import torch
from torch import nn

from monai_prune.errors import ConfigError
from monai_prune.handlers import SparsityRegularizationHandler
from monai_prune.handlers.regularization_handler import sparsity_penalty
from helpers.networks import small_unet
from helpers.engines import make_trainer


def test_penalties_by_hand():
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ConvTranspose2d(2, 3, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([3.0, -4.0]).view(2, 1, 1, 1))
        net[1].weight.copy_(torch.tensor([0.5, -2.0]))
        net[2].weight.copy_(torch.ones(2, 3, 1, 1))
    assert float(sparsity_penalty(net, "l1")) == pytest.approx(7.0 + 6.0)
    assert float(sparsity_penalty(net, "bn_l1")) == pytest.approx(2.5)
    # group lasso: per output channel L2: conv |3| + |-4|; conv-transpose 3 channels of norm sqrt(2)
    assert float(sparsity_penalty(net, "group_lasso")) == pytest.approx(7.0 + 3 * 2 ** 0.5)
    assert float(sparsity_penalty(net, "l1", skip=["2"])) == pytest.approx(7.0)
    with pytest.raises(ConfigError, match="penalty must be one of"):
        sparsity_penalty(net, "l0")


def _bn_scale_sum(net):
    return sum(float(m.weight.abs().sum()) for m in net.modules() if isinstance(m, nn.BatchNorm3d))


def test_bn_l1_shrinks_scales_only_in_its_phase():
    sums = {}
    for weight in (0.0, 0.05):
        torch.manual_seed(0)
        net = small_unet()
        trainer = make_trainer(net, torch.optim.SGD(net.parameters(), lr=0.05), epochs=3)
        handler = SparsityRegularizationHandler(network=net, penalty="bn_l1", weight=weight, start_epoch=1,
                                                end_epoch=2)
        handler.attach(trainer)
        trainer.run()
        sums[weight] = _bn_scale_sum(net)
        assert not handler.active  # epoch 3 is past the warm-up
    assert sums[0.05] < sums[0.0] - 0.05


def test_bad_regularizer_arguments():
    with pytest.raises(ConfigError, match="after end_epoch"):
        SparsityRegularizationHandler(small_unet(), start_epoch=3, end_epoch=2)
    with pytest.raises(ConfigError, match="no layer"):
        SparsityRegularizationHandler(nn.Conv3d(1, 2, 3), penalty="bn_l1")
