"""Our MAC counter against hand counts; torch-pruning's counter over-counts ConvTranspose."""

import pytest
import torch
import torch_pruning as tp
from torch import nn

import monai_prune as mp
from monai_prune.errors import InputError


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv3d(2, 4, kernel_size=3, stride=2, padding=1)          # 16^3 -> 8^3
        self.up = nn.ConvTranspose3d(4, 3, kernel_size=2, stride=2)               # 8^3 -> 16^3
        self.grouped = nn.Conv3d(3, 6, kernel_size=1, groups=3)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = self.grouped(self.up(self.down(x)))
        return self.fc(y.mean(dim=(2, 3, 4)))


def test_hand_count_with_conv_transpose():
    x = torch.randn(1, 2, 16, 16, 16)
    conv = (8 ** 3 * 4) * 2 * 27            # output elements x in_channels x kernel
    convt = (8 ** 3 * 4) * 3 * 8            # input elements x out_channels x kernel
    grouped = (16 ** 3 * 6) * 1 * 1          # in_channels/groups = 1
    linear = 6 * 5
    total, per_layer = mp.count_macs(Tiny(), x, per_layer=True)
    assert per_layer == {"down": conv, "up": convt, "grouped": grouped, "fc": linear}
    assert total == conv + convt + grouped + linear
    # torch-pruning counts the transposed conv over its output: 8x too many MACs for stride 2 in 3D
    tp_macs, _ = tp.utils.count_ops_and_params(Tiny(), x)
    assert tp_macs > total


class Attention(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):                     # x: (B, N, dim)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = (q @ k.transpose(-2, -1)).softmax(-1)
        return torch.einsum("bnm,bmd->bnd", att, v)


def test_attention_products_are_counted():
    x = torch.randn(2, 10, 8)
    qkv = 2 * 10 * 8 * 24
    scores = 2 * 10 * 8 * 10
    values = 2 * 10 * 10 * 8
    assert mp.count_macs(Attention(), x) == qkv + scores + values


def test_spleen_unet_macs_match_the_known_figure():
    from monai_prune.workflows import spleen_unet

    macs = mp.count_macs(spleen_unet(), torch.zeros(1, 1, 96, 96, 96))
    assert abs(macs / 1e9 - 5.12) < 0.01  # torch-pruning reports 11.52 G for the same network


def test_sizes_and_latency(tmp_path):
    model = nn.Conv3d(1, 2, 3, padding=1)
    assert mp.count_params(model) == 2 * 27 + 2
    assert mp.state_dict_bytes(model) > 4 * 56
    torch.save(model.state_dict(), tmp_path / "m.pt")
    # the zip archive name inside the file differs, the payload is the same
    assert abs(mp.file_size(tmp_path / "m.pt") - mp.state_dict_bytes(model)) < 512
    stats = mp.sliding_window_latency(model, torch.rand(1, 1, 24, 24, 24), (16, 16, 16), repeats=2)
    assert len(stats["times_s"]) == 2 and stats["median_s"] > 0


def test_paired_latency_runs_every_call_once_per_round_in_order():
    import time as _time

    from monai_prune.measure import paired_latency

    order = []

    def slow():
        order.append("slow")
        _time.sleep(0.02)

    def fast():
        order.append("fast")

    timed = paired_latency({"slow": slow, "fast": fast}, rounds=3, warmup=1)
    assert order == ["slow", "fast"] * 4  # one warm-up pass, then three interleaved rounds
    assert len(timed["slow"]["times_s"]) == len(timed["fast"]["times_s"]) == 3
    assert timed["slow"]["min_s"] >= 0.02 > timed["fast"]["max_s"]
    assert timed["slow"]["median_s"] == sorted(timed["slow"]["times_s"])[1]
    with pytest.raises(InputError, match="rounds must be at least 1"):
        paired_latency({"fast": fast}, rounds=0)
    with pytest.raises(InputError, match="nothing to time"):
        paired_latency({})
