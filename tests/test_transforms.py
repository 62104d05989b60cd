"""Network transforms compose with MONAI's Compose and parse from bundle-style configs."""

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

import monai_prune as mp
from monai_prune.errors import ConfigError
from monai_prune.transforms import ApplyPlan, PruneChannels
from helpers.networks import small_unet


def test_prune_channels_transform_in_compose(tmp_path):
    x = torch.zeros(1, 1, 32, 32, 32)
    prune = PruneChannels(ratio=0.5, example_input=x, importance="l2")
    net = small_unet().eval()
    pruned = Compose([prune])(net)
    assert mp.count_macs(pruned, x) < 0.5 * mp.count_macs(net, x) and prune.plan.config["importance"] == "l2"
    prune.plan.save(tmp_path / "plan.json")
    rebuilt = ApplyPlan(str(tmp_path / "plan.json"))(small_unet())
    rebuilt.load_state_dict(pruned.state_dict())


def test_transform_from_a_bundle_config(tmp_path):
    config = {
        "network_def": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1,
                        "out_channels": 2, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "network": "$PruneChannels(ratio=0.5, example_input=torch.zeros(1, 1, 32, 32, 32))(@network_def)",
        "imports": ["$import torch", "$from monai_prune.transforms import PruneChannels"],
    }
    parser = ConfigParser(config)
    net = parser.get_parsed_content("network")
    dense = parser.get_parsed_content("network_def")
    assert mp.count_params(net) < 0.4 * mp.count_params(dense)


def test_transform_needs_an_example():
    with pytest.raises(ConfigError, match="example_input"):
        PruneChannels(ratio=0.5)


def test_sparsify_transforms_compose_and_leave_the_input_alone():
    from monai_prune.sparsity import measured_sparsity
    from monai_prune.transforms import SparsifyMagnitude, SparsifyNM

    net = small_unet()
    magnitude = SparsifyMagnitude(0.6)
    out = Compose([magnitude])(net)
    assert measured_sparsity(out, magnitude.masks) == pytest.approx(0.6, abs=0.01)
    assert measured_sparsity(net, magnitude.masks) < 0.01
    nm = SparsifyNM(2, 4)
    out = nm(net)
    assert measured_sparsity(out, nm.masks) == pytest.approx(0.5, abs=0.01)
