"""Built-in synthetic data: CT-like volumes with labelled spheres, and 2D images whose class is visible.

Nothing is downloaded. Volumes come from ``monai.data.create_test_image_3d`` scaled to Hounsfield-like values
(soft tissue around 40 HU, the "organ" brighter, noise), written as NIfTI with nibabel and a 1.5 mm spacing,
the way a spleen-CT bundle expects its inputs.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import nibabel as nib
import numpy as np
import torch
from monai.data import create_test_image_2d, create_test_image_3d

SPACING_MM = 1.5


def synthetic_ct(size: int = 96, num_objs: int = 4, rad_max: int = 16, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """One CT-like volume (float32, HU) and its binary label (uint8), both ``(size, size, size)``."""
    rng = np.random.RandomState(seed)
    image, label = create_test_image_3d(
        size, size, size, num_objs=num_objs, rad_max=rad_max, rad_min=max(4, rad_max // 3), noise_max=0.0,
        num_seg_classes=1, channel_dim=None, random_state=rng,
    )
    hu = 40.0 + 80.0 * image + rng.normal(0.0, 20.0, size=image.shape)  # organ ~120 HU over ~40 HU tissue
    return hu.astype(np.float32), (label > 0).astype(np.uint8)


def write_nifti(array: np.ndarray, path: str, spacing: float = SPACING_MM) -> str:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def write_ct_dataset(folder: str, count: int, size: int = 96, seed: int = 0) -> List[Dict[str, str]]:
    """Write ``count`` image/label NIfTI pairs; returns MONAI-style ``[{"image": ..., "label": ...}]``."""
    os.makedirs(folder, exist_ok=True)
    items = []
    for i in range(count):
        image, label = synthetic_ct(size=size, seed=seed + i)
        items.append({
            "image": write_nifti(image, os.path.join(folder, f"ct_{i:03d}.nii.gz")),
            "label": write_nifti(label, os.path.join(folder, f"ct_{i:03d}_seg.nii.gz")),
        })
    return items


def synthetic_2d_classification(count: int, size: int = 64, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, size, size) whose class is whether they hold one blob (0) or several (1)."""
    rng = np.random.RandomState(seed)
    images, labels = [], []
    for i in range(count):
        cls = i % 2
        image, _ = create_test_image_2d(size, size, num_objs=1 if cls == 0 else 5, rad_max=8, rad_min=4,
                                        noise_max=0.2, random_state=rng)
        images.append(image[None])
        labels.append(cls)
    return torch.as_tensor(np.stack(images), dtype=torch.float32), torch.as_tensor(labels)


def ct_transforms(roi: Sequence[int], train: bool, num_samples: int = 2):
    """The spleen bundle's preprocessing (HU window -57..164 -> 0..1), with pos/neg patch sampling for training."""
    from monai import transforms as T

    steps = [
        T.LoadImaged(keys=["image", "label"], image_only=True),
        T.EnsureChannelFirstd(keys=["image", "label"]),
        T.ScaleIntensityRanged(keys="image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
        T.EnsureTyped(keys=["image", "label"], track_meta=False),
    ]
    if train:
        steps.append(T.RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=list(roi),
                                              pos=1, neg=1, num_samples=num_samples, image_key="image"))
    return T.Compose(steps)
