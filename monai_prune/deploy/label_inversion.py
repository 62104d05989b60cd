"""Put a segmentation back on the input volume's grid cheaply: argmax (or threshold) first, then a nearest-neighbour
index gather on uint8 labels, instead of resampling float probabilities (the model-zoo ``Activationsd`` ->
``Invertd`` -> ``AsDiscreted`` postprocessing).

A bundle's inference preprocessing reorients (``Orientationd``) and resamples (``Spacingd``) the image; its
postprocessing inverts that on the full-resolution, multi-channel float prediction (for a 512x512x140 CT: two
36-million-voxel float channels, bilinear), then takes the argmax. When the input grid and the network's grid differ
only by axis flips, permutations, scales and shifts (what ``Orientationd`` and ``Spacingd`` produce), every input
voxel's nearest network voxel is found axis by axis, so the inversion is an index gather on one uint8 label map.
The labels differ from the bundle's only where bilinear interpolation of probabilities would move a boundary by less
than a network voxel; the deploy benchmark measures that difference (Dice vs the bundle's own postprocessing).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

def axis_aligned_map(source_affine: np.ndarray, target_affine: np.ndarray,
                     tolerance: float = 1e-4) -> Optional[Tuple[Sequence[int], np.ndarray, np.ndarray]]:
    """How target voxel indices follow from source voxel indices, axis by axis, or None.

    Returns ``(axes, scales, offsets)``: target axis ``axes[c]`` depends only on source axis ``c``, as
    ``target_index = scales[c] * source_index + offsets[c]``. None when the grids are rotated or sheared
    against each other (then only a full resampling can invert)."""
    m = np.linalg.inv(np.asarray(target_affine, np.float64)) @ np.asarray(source_affine, np.float64)
    linear = m[:3, :3]
    big = np.abs(linear) > tolerance * np.abs(linear).max()
    if not (big.sum(0) == 1).all() or not (big.sum(1) == 1).all():
        return None
    axes = [int(np.argmax(big[:, c])) for c in range(3)]
    scales = np.array([linear[axes[c], c] for c in range(3)])
    offsets = np.array([m[axes[c], 3] for c in range(3)])
    return axes, scales, offsets


def nearest_on_grid(labels: np.ndarray, labels_affine: np.ndarray, grid_affine: np.ndarray,
                    grid_shape: Sequence[int]) -> Optional[np.ndarray]:
    """``labels`` (``(C, X, Y, Z)`` integer map on the grid of ``labels_affine``) sampled by nearest neighbour at
    every voxel of the grid ``(grid_affine, grid_shape)``; voxels beyond the labelled volume take the nearest edge
    voxel (as the inverse ``Spacingd`` does with its border padding). None when the grids are not axis-aligned."""
    found = _grid_positions(labels_affine, grid_affine, grid_shape, labels.shape[1:])
    if found is None:
        return None
    axes, positions = found
    moved = np.transpose(labels, (0, *[1 + a for a in axes]))  # the label axes in the order of the grid's axes
    return moved[(slice(None), *np.ix_(*[np.rint(p).astype(np.intp) for p in positions]))]


def _grid_positions(labels_affine, grid_affine, grid_shape, source_shape):
    """``(axes, positions)``: for each grid axis ``c``, the (fractional, edge-clipped) index along source axis
    ``axes[c]`` of every grid voxel; None when the grids are not axis-aligned."""
    found = axis_aligned_map(grid_affine, labels_affine)
    if found is None:
        return None
    axes, scales, offsets = found
    positions = [np.clip(scales[c] * np.arange(int(grid_shape[c])) + offsets[c], 0, source_shape[axes[c]] - 1)
                 for c in range(3)]
    return axes, positions


def linear_on_grid(values, values_affine: np.ndarray, grid_affine: np.ndarray, grid_shape: Sequence[int]):
    """``values`` (``(C, X, Y, Z)`` float tensor on the grid of ``values_affine``) interpolated trilinearly at every
    voxel of the grid ``(grid_affine, grid_shape)``, axis by axis (border values beyond the edges, as the inverse
    ``Spacingd``), as a float32 torch tensor; None when the grids are not axis-aligned.

    Trilinear interpolation is separable: three 1-D interpolations give what ``grid_sample`` gives with
    ``bilinear`` mode in 3-D, at a fraction of the cost for an axis-aligned map. Axes that shrink go first, so the
    intermediate arrays stay small."""
    import torch

    x = torch.as_tensor(values).float()
    found = _grid_positions(values_affine, grid_affine, grid_shape, x.shape[1:])
    if found is None:
        return None
    axes, positions = found
    x = x.permute(0, *[1 + a for a in axes])  # the value axes in the order of the grid's axes
    order = sorted(range(3), key=lambda c: len(positions[c]) / x.shape[1 + c])
    for c in order:
        pos = torch.as_tensor(positions[c], dtype=torch.float64)
        low = pos.floor().long()
        high = (low + 1).clamp(max=x.shape[1 + c] - 1)
        weight = (pos - low).float().view([-1 if d == 1 + c else 1 for d in range(4)])
        lower = x.index_select(1 + c, low)
        x = torch.lerp(lower, x.index_select(1 + c, high), weight) if bool((weight > 0).any()) else lower
    return x


def fast_pattern(transforms: Sequence[Any], key: str = "pred") -> Optional[Tuple[str, Any, Any]]:
    """``(pattern, invert, discretise)`` when ``transforms`` (a bundle's postprocessing, loaders/savers removed) are
    exactly ``[Activationsd] + Invertd + AsDiscreted`` on ``key`` in the zoo's order (or without the activation),
    with an argmax or a scalar threshold; None otherwise (then the bundle's own postprocessing runs)."""
    from monai.transforms import Activationsd, AsDiscreted, Invertd

    items = list(transforms)
    activation = None
    if items and isinstance(items[0], Activationsd):
        activation = items.pop(0)
    if len(items) != 2 or not isinstance(items[0], Invertd) or not isinstance(items[1], AsDiscreted):
        return None
    invert, discretise = items
    if list(invert.keys) != [key] or list(discretise.keys) != [key]:
        return None
    softmax = sigmoid = False
    if activation is not None:
        if list(activation.keys) != [key] or activation.other[0] is not None \
                or getattr(activation.converter, "kwargs", None):
            return None
        softmax, sigmoid = bool(activation.softmax[0]), bool(activation.sigmoid[0])
        if softmax == sigmoid:
            return None
    argmax, threshold = bool(discretise.argmax[0]), discretise.threshold[0]
    if discretise.to_onehot[0] is not None or discretise.rounding[0] is not None \
            or getattr(discretise.converter, "kwargs", None):
        return None
    if argmax and threshold is None and not sigmoid:
        return ("softmax+argmax" if softmax else "argmax"), invert, discretise
    if not argmax and isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and not softmax:
        if sigmoid and not 0 < threshold < 1:
            return None
        return ("sigmoid+threshold" if sigmoid else "threshold"), invert, discretise
    return None


def invert_labels(logits, pattern: str, threshold: Optional[float], nearest: bool, network_affine: np.ndarray,
                  input_affine: np.ndarray, input_shape: Sequence[int]) -> Optional[np.ndarray]:
    """The bundle's ``[Activationsd] -> Invertd -> AsDiscreted`` on ``logits`` (``(C, X, Y, Z)`` on the network's
    grid), done on the input grid with separable interpolation: the same labels (``(1 or C, *input_shape)``
    uint8), computed as the bundle computes them (probabilities interpolated trilinearly, then discretised; or
    discretised, then nearest when the bundle inverts with ``nearest_interp``). None when the grids are not
    axis-aligned (the caller then runs the bundle's own postprocessing)."""
    import torch

    x = torch.as_tensor(logits).detach().float().cpu()
    if nearest:
        return nearest_on_grid(discretise_logits(x, pattern, threshold), network_affine, input_affine, input_shape)
    if pattern == "softmax+argmax":
        probabilities = torch.softmax(x, 0)
        if x.shape[0] == 2:  # p0 = 1 - p1 stays true under linear interpolation: argmax is p1 > 0.5
            p1 = linear_on_grid(probabilities[1:], network_affine, input_affine, input_shape)
            return None if p1 is None else (p1 > 0.5).to(torch.uint8).numpy()
        values = linear_on_grid(probabilities, network_affine, input_affine, input_shape)
        return None if values is None else values.argmax(0, keepdim=True).to(torch.uint8).numpy()
    if pattern == "argmax":
        values = linear_on_grid(x, network_affine, input_affine, input_shape)
        return None if values is None else values.argmax(0, keepdim=True).to(torch.uint8).numpy()
    values = linear_on_grid(torch.sigmoid(x) if pattern == "sigmoid+threshold" else x, network_affine, input_affine,
                            input_shape)
    return None if values is None else (values > float(threshold)).to(torch.uint8).numpy()


def discretise_logits(logits, pattern: str, threshold: Optional[float] = None) -> np.ndarray:
    """The labels the bundle's activation + discretisation would give, computed on the logits: ``(1, X, Y, Z)``
    argmax, or ``(C, X, Y, Z)`` thresholded channels, as uint8."""
    import torch

    x = torch.as_tensor(logits).detach().float().cpu()
    if pattern in ("softmax+argmax", "argmax"):
        return x.argmax(0, keepdim=True).to(torch.uint8).numpy()
    t = float(threshold)
    cut = float(np.log(t / (1.0 - t))) if pattern == "sigmoid+threshold" else t
    return (x > cut).to(torch.uint8).numpy()
