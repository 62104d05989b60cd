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


MULTICLASS_NAMES = ["background", "organ", "lesion"]


def synthetic_multiclass(count: int, size: int = 64, spatial_dims: int = 2, seed: int = 0, noise: float = 0.25,
                         lesion_contrast: float = 0.4, lesions: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """A 3-class segmentation task whose classes differ in size and contrast: ``MULTICLASS_NAMES`` by label index.

    Every image holds one large, bright "organ" (label 1: an ellipse, or ellipsoid when ``spatial_dims=3``, of
    semi-axes ``size/4`` +-20% near the centre, intensity 1 over a background of 0) and ``lesions`` small
    hypodense "lesions" inside it (label 2: discs/balls of radius 3-5 voxels, intensity ``1 - lesion_contrast``,
    drawn over the organ), plus Gaussian noise of standard deviation ``noise`` everywhere. The organ is easy (large,
    contrast 1); a lesion is a few dozen voxels at a contrast-to-noise ratio of 1.6, so its Dice is the one a
    weaker network loses first. Numpy only, reproducible by ``seed``.

    Returns ``(images, labels)``: ``(count, 1, *[size] * spatial_dims)`` float32 and int64 class indices.
    """
    rng = np.random.RandomState(seed)
    shape = (size,) * spatial_dims
    column = (-1,) + (1,) * spatial_dims
    grid = np.stack(np.meshgrid(*[np.arange(size, dtype=np.float32)] * spatial_dims, indexing="ij"))
    images, labels = [], []
    for _ in range(count):
        radii = size / 4 * rng.uniform(0.8, 1.2, spatial_dims)
        centre = size / 2 + rng.uniform(-size / 8, size / 8, spatial_dims)
        d = np.sqrt((((grid - centre.reshape(column)) / radii.reshape(column)) ** 2).sum(0))  # 1 on the organ's rim
        label = np.where(d <= 1.0, 1, 0).astype(np.int64)
        image = label.astype(np.float32)
        for _ in range(lesions):
            r = rng.uniform(3.0, 5.0)
            inside = np.argwhere(d <= 1.0 - (r + 2.0) / radii.min())  # lesion centres that keep it inside the organ
            c = inside[rng.randint(len(inside))] if len(inside) else np.round(centre)
            lesion = ((grid - c.astype(np.float32).reshape(column)) ** 2).sum(0) <= r * r
            label[lesion] = 2
            image[lesion] = 1.0 - lesion_contrast
        image += rng.normal(0.0, noise, shape).astype(np.float32)
        images.append(image[None])
        labels.append(label[None])
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))
