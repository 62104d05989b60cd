"""A real (tiny) train -> prune -> fine-tune loop on synthetic CT, with the accuracy change measured."""

import pytest
import torch

import monai_prune as mp
from monai_prune.data import write_ct_dataset
from monai_prune.workflows import segmentation_dice, spleen_unet, train_segmentation


@pytest.mark.slow
def test_train_prune_finetune_keeps_dice(tmp_path):
    train = write_ct_dataset(str(tmp_path / "train"), 8, size=64, seed=0)
    val = write_ct_dataset(str(tmp_path / "val"), 2, size=64, seed=100)
    net = spleen_unet(channels=(8, 16, 32, 64, 128))
    losses = train_segmentation(net, train, epochs=12, roi=(48, 48, 48), progress=False)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    dense = segmentation_dice(net, val, roi=(48, 48, 48))["mean_dice"]
    assert dense > 0.6, f"the dense model did not learn (Dice {dense:.3f})"

    pruned, plan = mp.prune_channels(net, torch.zeros(1, 1, 48, 48, 48), ratio=0.5)
    train_segmentation(pruned, train, epochs=8, roi=(48, 48, 48), lr=1e-3, progress=False, seed=1)
    after = segmentation_dice(pruned, val, roi=(48, 48, 48))["mean_dice"]
    assert plan.stats["macs_after"] < 0.35 * plan.stats["macs_before"]
    assert after > dense - 0.1, f"pruning + fine-tuning lost too much: Dice {dense:.3f} -> {after:.3f}"
