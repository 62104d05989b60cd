"""Structured pruning on MONAI's own networks: runs, keeps the output shape, really cuts MACs, replays."""

import copy

import pytest
import torch
from monai.networks import nets

import monai_prune as mp
from helpers.networks import state_equal

# name -> (constructor, example input shape, is_cnn)
NETWORKS = {
    "UNet-batch": (lambda: nets.UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch"),
                   (1, 1, 32, 32, 32), True),
    "UNet-instance": (lambda: nets.UNet(3, 1, 3, (16, 32, 64, 128), (2, 2, 2), num_res_units=2, norm="instance"),
                      (1, 1, 32, 32, 32), True),
    "BasicUNet": (lambda: nets.BasicUNet(3, 1, 2, features=(16, 16, 32, 64, 128, 16)), (1, 1, 32, 32, 32), True),
    "SegResNet": (lambda: nets.SegResNet(3, 16, 1, 2), (1, 1, 32, 32, 32), True),
    "DynUNet": (lambda: nets.DynUNet(3, 1, 2, [3, 3, 3, 3], [1, 2, 2, 2], [2, 2, 2], res_block=True),
                (1, 1, 32, 32, 32), True),
    "AttentionUnet": (lambda: nets.AttentionUnet(3, 1, 2, (16, 32, 64, 128), (2, 2, 2)), (1, 1, 32, 32, 32), True),
    "UNETR": (lambda: nets.UNETR(1, 2, (32, 32, 32), feature_size=16, hidden_size=96, mlp_dim=192, num_heads=4),
              (1, 1, 32, 32, 32), False),
    "SwinUNETR": (lambda: nets.SwinUNETR(in_channels=1, out_channels=2, feature_size=12), (1, 1, 64, 64, 64), False),
    "DenseNet121": (lambda: nets.DenseNet121(spatial_dims=2, in_channels=3, out_channels=2), (1, 3, 64, 64), True),
    "ResNet18": (lambda: nets.resnet18(spatial_dims=2, n_input_channels=3, num_classes=2), (1, 3, 64, 64), True),
    "EfficientNet-b0": (lambda: nets.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3,
                                                    num_classes=2), (1, 3, 64, 64), True),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_prune_half_of_the_channels(name):
    build, shape, is_cnn = NETWORKS[name]
    model = build().eval()
    original = copy.deepcopy(model)
    x = torch.randn(shape)
    with torch.no_grad():
        y0 = model(x)

    pruned, plan = mp.prune_channels(model, x, ratio=0.5)

    # the caller's model is untouched and still works
    assert state_equal(model, original)
    with torch.no_grad():
        assert torch.equal(model(x), y0)
    # the pruned one runs, keeps shape and dtype, gives finite outputs
    with torch.no_grad():
        y = pruned(x)
    assert y.shape == y0.shape and y.dtype == y0.dtype
    assert torch.isfinite(y).all()
    # channels were physically removed and MACs really fell (counted by our own hook counter)
    macs0, macs1 = mp.count_macs(model, x), mp.count_macs(pruned, x)
    assert mp.count_params(pruned) < mp.count_params(model)
    if is_cnn:
        assert macs1 <= 0.40 * macs0, f"{name}: MACs only fell to {macs1 / macs0:.3f} of the original"
    else:  # transformer blocks stay intact; the convolutional decoder is pruned
        assert macs1 <= 0.75 * macs0, f"{name}: MACs only fell to {macs1 / macs0:.3f} of the original"
    assert plan.stats["macs_after"] == macs1 and plan.num_groups > 0
    # the plan replays on a fresh network and the state dict loads into it with identical outputs
    fresh = mp.apply_plan(build(), plan).eval()
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), y)


def test_transformer_blocks_are_left_intact_and_logged(caplog):
    build, shape, _ = NETWORKS["UNETR"]
    model = build().eval()
    with caplog.at_level("INFO", logger="monai_prune"):
        pruned, plan = mp.prune_channels(model, torch.randn(shape), ratio=0.5)
    assert "left intact" in caplog.text and "TransformerBlock" in caplog.text
    vit0, vit1 = model.vit.state_dict(), pruned.vit.state_dict()
    assert all(torch.equal(vit0[k], vit1[k]) for k in vit0)
    assert any(n.startswith("vit.blocks") for n in plan.kept_layers)


def test_output_head_is_detected_and_kept():
    model = nets.UNet(3, 1, 3, (16, 32, 64), (2, 2), num_res_units=1).eval()
    pruned, plan = mp.prune_channels(model, torch.randn(1, 1, 32, 32, 32), ratio=0.6)
    heads = [n for n, m in pruned.named_modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))
             and n in plan.kept_layers]
    assert heads, "the output head must be recorded in kept_layers"
    assert all(dict(pruned.named_modules())[n].out_channels == 3 for n in heads)
