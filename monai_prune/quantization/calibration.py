"""Calibration data for int8 post-training quantization, drawn from MONAI data the way the network sees it.

:func:`calibration_data` takes a MONAI ``Dataset`` (with the bundle's own preprocessing as its transform), a
``DataLoader`` or a list of tensors/dicts, and returns a :class:`CalibrationSet` of network-input-shaped patches:
3D (or 2D) images larger than ``roi_size`` are cut into roi-sized patches, a share ``foreground_ratio`` of them
centred on labelled foreground (as ``RandCropByPosNegLabeld`` does in training), the rest anywhere; smaller
images are zero-padded as ``sliding_window_inference`` pads them. The set is identified by a sha256 of its
content, never by file names (they can carry patient identifiers), and adapts to each backend's protocol:
ONNX Runtime's ``CalibrationDataReader`` and ``nncf.Dataset``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ConfigError, InputError

logger = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    """Network-input-shaped float32 samples ``(1, C, *spatial)`` plus where they came from, in numbers only."""

    samples: List[torch.Tensor]
    sha256: str
    foreground_patches: int = 0
    source_items: int = 0
    notes: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.samples[0].shape)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.samples)

    def describe(self) -> dict:
        """What a report may say about the set: counts, shape and the content hash — no file names."""
        return {"samples": len(self.samples), "shape": list(self.shape), "sha256": self.sha256,
                "foreground_patches": self.foreground_patches, "source_items": self.source_items}

    def onnxruntime_reader(self, input_name: str):
        """An ``onnxruntime.quantization.CalibrationDataReader`` over the samples (a fresh one per call)."""
        from onnxruntime.quantization import CalibrationDataReader

        samples = self.samples

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(samples)

            def get_next(self):
                sample = next(self._it, None)
                return None if sample is None else {input_name: sample.numpy()}

            def rewind(self) -> None:
                self._it = iter(samples)

        return _Reader()

    def nncf_dataset(self):
        """An ``nncf.Dataset`` yielding numpy arrays (for OpenVINO models)."""
        import nncf

        return nncf.Dataset([s.numpy() for s in self.samples])


def _content_hash(samples: Sequence[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for s in samples:
        digest.update(str(tuple(s.shape)).encode())
        digest.update(np.ascontiguousarray(s.numpy(), dtype=np.float32).tobytes())
    return digest.hexdigest()


def _items(data: Any) -> Iterable[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(image, label or None) pairs, channel-first without batch dim, from datasets, loaders or lists."""
    for item in data:
        if isinstance(item, dict):
            if "image" not in item:
                raise InputError(f"calibration items are dicts without an 'image' key (keys: {sorted(item)[:8]})")
            image, label = item["image"], item.get("label")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            image, label = item
        else:
            image, label = item, None
        if isinstance(image, (list, tuple)):  # RandCropByPosNegLabeld with num_samples > 1 returns lists of dicts
            raise InputError("calibration items are lists (several crops per item?): give a dataset of single items")
        image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
        label = None if label is None else torch.as_tensor(
            np.asarray(label) if not isinstance(label, torch.Tensor) else label)
        if image.dim() >= 4 and getattr(data, "batch_size", None):  # a DataLoader batch: split it
            for i in range(image.shape[0]):
                yield image[i], None if label is None else label[i]
        else:
            yield image, label


def _pad_to(image: torch.Tensor, roi: Sequence[int]) -> torch.Tensor:
    spatial = image.shape[1:]
    pads = []
    for size, want in zip(reversed(spatial), reversed(roi)):
        extra = max(0, want - size)
        pads += [extra // 2, extra - extra // 2]
    return torch.nn.functional.pad(image, pads) if any(pads) else image


def _crop(image: torch.Tensor, center: Sequence[int], roi: Sequence[int]) -> torch.Tensor:
    slices = [slice(None)]
    for c, size, want in zip(center, image.shape[1:], roi):
        start = int(min(max(c - want // 2, 0), size - want))
        slices.append(slice(start, start + want))
    return image[tuple(slices)]


def calibration_data(
    data: Any,
    num_samples: int,
    roi_size: Optional[Sequence[int]] = None,
    foreground_ratio: float = 0.5,
    seed: int = 0,
) -> CalibrationSet:
    """Draw ``num_samples`` calibration inputs from ``data``.

    Args:
        data: a MONAI ``Dataset`` (its transform = the preprocessing the network sees at inference), a
            ``DataLoader``, or a list of tensors ``(C, *spatial)`` / dicts with ``"image"`` (and ``"label"``).
        num_samples: how many patches to return (drawn round-robin over the items).
        roi_size: the network's input window (e.g. the sliding-window roi, ``(96, 96, 96)``); None: whole images,
            which must then all have the same shape.
        foreground_ratio: share of patches centred on a labelled foreground voxel (items with a ``"label"``).
        seed: the patch positions are reproducible for a given seed.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not 0.0 <= foreground_ratio <= 1.0:
        raise ConfigError(f"foreground_ratio must be in [0, 1], got {foreground_ratio}")
    if data is None:
        raise ConfigError("no calibration data given")
    rng = np.random.default_rng(seed)
    items = list(_items(data))
    if not items:
        raise ConfigError("the calibration data is empty: give at least one image")
    samples: List[torch.Tensor] = []
    foreground = 0
    for k in range(num_samples):
        image, label = items[k % len(items)]
        image = image.float()
        if not torch.isfinite(image).all():
            raise InputError(f"calibration item {k % len(items)} contains NaN or Inf values; fix the preprocessing")
        if roi_size is None:
            patch = image
        else:
            roi = [int(r) for r in roi_size]
            if len(roi) != image.dim() - 1:
                raise InputError(f"roi_size {tuple(roi)} has {len(roi)} dimensions but the images are "
                                 f"{tuple(image.shape)} (channel first, {image.dim() - 1} spatial dimensions)")
            image = _pad_to(image, roi)
            center = None
            if label is not None and rng.random() < foreground_ratio:
                fg = torch.nonzero(_pad_to(label.reshape(-1, *label.shape[-len(roi):]).float(), roi)[0] > 0)
                if len(fg):
                    center = fg[int(rng.integers(len(fg)))].tolist()
                    foreground += 1
            if center is None:
                center = [int(rng.integers(want // 2, max(want // 2, size - (want - want // 2)) + 1))
                          for size, want in zip(image.shape[1:], roi)]
            patch = _crop(image, center, roi)
        samples.append(patch.unsqueeze(0).contiguous())
    shapes = {tuple(s.shape) for s in samples}
    if len(shapes) > 1:
        raise InputError(f"calibration images have different shapes {sorted(shapes)[:4]}: give roi_size= to cut "
                         "network-input-sized patches")
    notes = []
    if roi_size is not None and foreground_ratio > 0 and all(label is None for _, label in items):
        notes.append("no labels: every patch placed at random (foreground_ratio not applied)")
    result = CalibrationSet(samples, _content_hash(samples), foreground, len(items), notes)
    logger.info("calibration set: %d patches of %s from %d items (%d on foreground), sha256 %s…", len(samples),
                result.shape, len(items), foreground, result.sha256[:12])
    return result
