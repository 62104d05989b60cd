"""Pruning options: importance criteria, round_to, per-layer ratios, global ranking, MAC/param targets."""

import pytest
import torch
from monai.losses import DiceCELoss

import monai_prune as mp
from helpers.networks import small_unet

X = torch.randn(1, 1, 32, 32, 32)


def _widths(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))}


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "random"])
def test_importance_criteria_prune_the_same_amount(importance):
    pruned, plan = mp.prune_channels(small_unet(), X, ratio=0.5, importance=importance)
    assert plan.config["importance"] == importance
    assert plan.stats["params_after"] < 0.35 * plan.stats["params_before"]


def test_criteria_choose_different_channels():
    _, l1 = mp.prune_channels(small_unet(), X, ratio=0.5, importance="l1")
    _, rnd = mp.prune_channels(small_unet(), X, ratio=0.5, importance="random", seed=3)
    assert [s["kept"] for s in l1.steps] != [s["kept"] for s in rnd.steps]


def test_taylor_uses_gradients_from_real_batches():
    model = small_unet()
    batches = [(torch.randn(2, 1, 32, 32, 32), torch.randint(0, 2, (2, 1, 32, 32, 32))) for _ in range(2)]
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    pruned, plan = mp.prune_channels(model, X, ratio=0.5, importance="taylor", batches=batches, loss_fn=loss)
    _, l1 = mp.prune_channels(model, X, ratio=0.5, importance="l1")
    assert [s["kept"] for s in plan.steps] != [s["kept"] for s in l1.steps]
    assert all(p.grad is None for p in model.parameters())  # gradients were taken on the copy only
    assert all(p.grad is None for p in pruned.parameters())


def test_round_to_keeps_channel_multiples():
    from monai.networks.nets import UNet

    model = UNet(3, 1, 2, (24, 48, 96), (2, 2), num_res_units=1)
    pruned, _ = mp.prune_channels(model, X, ratio=0.4, round_to=8)
    widths = [w for w in _widths(pruned).values() if w != 2]
    assert widths and all(w % 8 == 0 for w in widths), widths


def test_per_layer_ratio_overrides_the_default():
    model = small_unet()
    root = "model.0.conv.unit0.conv"
    pruned, _ = mp.prune_channels(model, X, ratio=0.5, layer_ratios={root: 0.0})
    assert dict(pruned.named_modules())[root].out_channels == 8
    pruned, _ = mp.prune_channels(model, X, ratio=0.0, layer_ratios={root: 0.75})
    assert dict(pruned.named_modules())[root].out_channels == 2
    with pytest.raises(ValueError, match="Conv/Linear"):
        mp.prune_channels(model, X, ratio=0.5, layer_ratios={"model.0.conv": 0.5})


def test_ignored_layers_keep_their_width():
    model = small_unet()
    name = "model.1.submodule.0.conv.unit0.conv"
    pruned, plan = mp.prune_channels(model, X, ratio=0.5, ignore=[name])
    assert dict(pruned.named_modules())[name].out_channels == dict(model.named_modules())[name].out_channels
    assert name in plan.kept_layers


def test_global_pruning_is_uneven_across_groups():
    pruned, plan = mp.prune_channels(small_unet(), X, ratio=0.5, global_pruning=True, max_layer_ratio=0.8)
    fractions = {round(len(s["kept"]) / s["channels_before"], 2) for s in plan.steps}
    assert len(fractions) > 1
    assert min(fractions) >= 0.2 - 1e-6


@pytest.mark.parametrize("key", ["target_macs", "target_params"])
def test_targets_are_met_by_search(key):
    model = small_unet()
    pruned, plan = mp.prune_channels(model, X, **{key: 0.4})
    if key == "target_macs":
        fraction = mp.count_macs(pruned, X) / mp.count_macs(model, X)
    else:
        fraction = mp.count_params(pruned) / mp.count_params(model)
    assert 0.3 <= fraction <= 0.4
    assert plan.config[f"{key}_reached"] == pytest.approx(fraction)


def test_unreachable_target():
    with pytest.raises(ValueError, match="cannot be reached"):
        mp.prune_channels(small_unet(), X, target_macs=0.0001)


def test_pruning_leaves_the_callers_random_state_alone():
    net = small_unet()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    mp.prune_channels(net, torch.zeros(1, 1, 32, 32, 32), ratio=0.5, importance="random")
    assert torch.equal(torch.rand(3), expected)  # a training run's shuffling/augmentation is not reseeded
