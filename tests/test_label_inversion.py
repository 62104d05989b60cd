"""The fast label postprocessing gives the bundle's own labels: ``[Activationsd] -> Invertd -> AsDiscreted`` (the
model-zoo inference postprocessing) run by MONAI, against :func:`monai_prune.deploy.label_inversion.invert_labels`,
on grids a scanner produces (anisotropic, flipped, permuted axes, offset origins) and for every pattern."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Activationsd, AsDiscreted, Compose, EnsureTyped, Invertd, Orientationd, Spacingd

from monai_prune.deploy.label_inversion import axis_aligned_map, fast_pattern, invert_labels

AFFINES = {
    "axial, 0.78 x 0.78 x 2.5 mm": np.diag([0.78, 0.78, 2.5, 1.0]),
    "LPS-flipped with an origin": np.array([[-0.7, 0, 0, 120.0], [0, -0.7, 0, 80.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]]),
    "sagittal (axes permuted)": np.array([[0, 0, 1.2, 0], [0.9, 0, 0, 0], [0, -0.9, 0, 0], [0, 0, 0, 1.0]]),
}


def _bundle_and_logits(affine, shape, channels, seed=0):
    pre = Compose([Orientationd("image", "RAS"), Spacingd("image", pixdim=[1.5, 1.5, 2.0], mode="bilinear"),
                   EnsureTyped("image")])
    image = MetaTensor(torch.rand(1, *shape), affine=torch.as_tensor(affine))
    data = pre({"image": image})
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in data["image"].shape[1:]], indexing="ij"))
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.4, 0.4, (channels, 3))
    logits = np.stack([6 * (0.5 - np.sqrt(((grid - c.reshape(3, 1, 1, 1)) ** 2).sum(0))) for c in centres])
    logits += rng.normal(0, 0.3, logits.shape)  # ragged boundaries: no help from smooth shapes
    return pre, data, torch.as_tensor(logits, dtype=torch.float32)


def _run_bundle(post, pre, data, logits):
    d = dict(data)
    d["pred"] = MetaTensor(logits.clone(), meta=dict(data["image"].meta))
    d["pred"].applied_operations = list(data["image"].applied_operations)
    return np.asarray(post(d)["pred"])


@pytest.mark.parametrize("name", list(AFFINES))
@pytest.mark.parametrize("pattern,nearest", [("softmax+argmax", False), ("softmax+argmax", True),
                                             ("sigmoid+threshold", False), ("argmax", False)])
def test_fast_labels_equal_the_bundles_postprocessing(name, pattern, nearest):
    affine, shape = AFFINES[name], (40, 36, 12)
    channels = 2 if pattern == "softmax+argmax" and not nearest else 3
    pre, data, logits = _bundle_and_logits(affine, shape, channels)
    if pattern == "sigmoid+threshold":  # the BraTS bundles: overlapping channels, each thresholded
        steps = [Activationsd("pred", sigmoid=True), Invertd("pred", transform=pre, orig_keys="image",
                                                             nearest_interp=nearest, to_tensor=True),
                 AsDiscreted("pred", threshold=0.5)]
    else:
        steps = ([Activationsd("pred", softmax=True)] if pattern == "softmax+argmax" else []) + [
            Invertd("pred", transform=pre, orig_keys="image", nearest_interp=nearest, to_tensor=True),
            AsDiscreted("pred", argmax=True)]
    post = Compose(steps)
    found = fast_pattern(post.transforms)
    assert found is not None and found[0] == pattern
    expected = _run_bundle(post, pre, data, logits)
    ours = invert_labels(logits, pattern, 0.5 if "threshold" in pattern else None, nearest,
                         np.asarray(data["image"].affine, dtype=np.float64), affine, shape)
    assert ours.shape == expected.shape and ours.dtype == np.uint8
    differing = int((ours != expected.astype(np.uint8)).sum())
    # the same labels; float rounding may flip a voxel sitting exactly on a boundary
    assert differing <= max(2, expected.size // 20000), (differing, expected.size)
    assert expected.any() and (expected == 0).any()


def test_unrecognised_postprocessing_and_rotated_grids_fall_back():
    pre = Compose([Spacingd("image", pixdim=[1.5, 1.5, 2.0])])
    invert = Invertd("pred", transform=pre, orig_keys="image")
    assert fast_pattern([Activationsd("pred", softmax=True), AsDiscreted("pred", argmax=True), invert]) is None
    assert fast_pattern([invert, AsDiscreted("pred", argmax=True, to_onehot=2)]) is None  # one-hot output
    assert fast_pattern([Activationsd("pred", softmax=True), invert, AsDiscreted("pred", threshold=0.5)]) is None
    assert fast_pattern([Activationsd("pred", sigmoid=True), invert, AsDiscreted("pred", argmax=True)]) is None
    assert fast_pattern([invert, AsDiscreted("pred", argmax=True)])[0] == "argmax"
    theta = np.deg2rad(10)
    rotated = np.array([[np.cos(theta), -np.sin(theta), 0, 0], [np.sin(theta), np.cos(theta), 0, 0], [0, 0, 2, 0],
                        [0, 0, 0, 1.0]])
    assert axis_aligned_map(rotated, np.diag([1.5, 1.5, 2.0, 1])) is None  # only a full resampling can invert it
    assert invert_labels(torch.zeros(2, 4, 4, 4), "softmax+argmax", None, False, np.diag([1.5, 1.5, 2.0, 1]),
                         rotated, (8, 8, 4)) is None
