"""A tiny compressed-bundle-like folder in the shape ``compress-bundle`` writes: a spleen-style
``configs/inference.json`` (16^3 window, ``"pixdim": "@pixdim"``, Invertd), ``metadata.json`` with ``channel_def``,
``model_files`` and ``config_files`` sha256, ``models/model.ts``. The network thresholds intensity (so the labels have
real foreground) plus a small convolution stack (so every window costs time). Used by ``tune-pipeline`` and
``time-pipeline`` tests: no training, a bundle in a fraction of a second."""

import json
import os

import torch
from torch import nn

from monai_prune.bundle import config_digests, sha256

PREPROCESSING = {"_target_": "Compose", "transforms": [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
    {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
     "clip": True},
    {"_target_": "EnsureTyped", "keys": "image"}]}


def inference_config(inferer=None, preprocessing=None):
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "roi_size": [16, 16, 16],
        "pixdim": [1.5, 1.5, 1.5],
        "sw_batch_size": 4,
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                        "channels": [4, 8], "strides": [2]},
        "preprocessing": preprocessing or PREPROCESSING,
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "inferer": inferer or {"_target_": "SlidingWindowInferer", "roi_size": "@roi_size",
                               "sw_batch_size": "@sw_batch_size", "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "resample": False, "separate_folder": False, "print_log": False}]},
    }


class ThresholdNet(nn.Module):
    """Organ where the scaled intensity is above 0.6 (about 75 HU), nudged by a small random convolution stack."""

    def __init__(self, threshold: float = 0.6) -> None:
        super().__init__()
        self.threshold = threshold
        self.body = nn.Sequential(nn.Conv3d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv3d(16, 16, 3, padding=1),
                                  nn.ReLU(), nn.Conv3d(16, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        organ = (x - self.threshold) * 20.0
        return torch.cat([-organ, organ], 1) + 0.05 * self.body(x)


def make_bundle(root, config=None, train=True):
    """A compressed-bundle-like folder: configs verified by sha256, models/model.ts verified by sha256."""
    os.makedirs(os.path.join(root, "configs"))
    os.makedirs(os.path.join(root, "models"))
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(ThresholdNet().eval()), os.path.join(root, "models", "model.ts"))
    with open(os.path.join(root, "configs", "inference.json"), "w") as f:
        json.dump(config or inference_config(), f)
    if train:  # the top-level ids compress-bundle --set can carry into inference.json
        with open(os.path.join(root, "configs", "train.json"), "w") as f:
            json.dump({"roi_size": [16, 16, 16], "pixdim": [1.5, 1.5, 1.5], "sw_batch_size": 4}, f)
    metadata = {"name": "tiny_organ_compressed", "version": "0.2.0",
                "network_data_format": {"inputs": {"image": {"type": "image", "num_channels": 1,
                                                             "spatial_shape": [16, 16, 16]}},
                                        "outputs": {"pred": {"type": "image", "num_channels": 2,
                                                             "channel_def": {"0": "background", "1": "organ"}}}},
                "model_files": {"model.ts": sha256(os.path.join(root, "models", "model.ts"))},
                "config_files": config_digests(str(root))}
    with open(os.path.join(root, "configs", "metadata.json"), "w") as f:
        json.dump(metadata, f)
    return str(root)
