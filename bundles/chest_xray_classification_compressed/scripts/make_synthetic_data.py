"""Write this bundle's synthetic chest radiographs: 8-bit grayscale PNGs, half of them with a lesion.

No download and no patient data. Each image is a frontal-chest-like phantom drawn with numpy (a bright body ellipse,
two dark lung fields, a brighter mediastinum, a few rib-like bands, smooth bias and noise, random pose and size);
class 1 ("lesion") adds a bright round blob inside a lung field, placed and sized by
``monai.data.create_test_image_2d``. Labels go into a JSON datalist, never into file names.

Layout under ``--output`` (default: the bundle's ``data/``), read with ``monai.data.load_decathlon_datalist``::

    dataset.json             {"labels": {...}, "training": [{"image": "images/cxr_000.png", "label": 0}, ...],
                              "validation": [...], "test": [{"image": "imagesTs/cxr_test_000.png", "label": 1}]}
    images/cxr_000.png       training and validation images
    imagesTs/cxr_test_000.png  what configs/inference.json classifies (labels only in dataset.json)

Usage (from the bundle root): ``python scripts/make_synthetic_data.py [--train 96 --val 32 --test 8 --size 256]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import List, Optional

import numpy as np

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASS_NAMES = ["no_lesion", "lesion"]


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _smooth(image: np.ndarray, passes: int = 2) -> np.ndarray:
    """A cheap separable box blur (keeps numpy the only dependency)."""
    out = image
    for _ in range(passes):
        padded = np.pad(out, 1, mode="edge")
        out = sum(padded[dy:dy + out.shape[0], dx:dx + out.shape[1]] for dy in range(3) for dx in range(3)) / 9.0
    return out


def synthetic_radiograph(size: int, lesion: bool, rng: np.random.RandomState) -> np.ndarray:
    """One ``(size, size)`` uint8 chest-like phantom; with ``lesion`` a bright blob lies inside a lung field."""
    from monai.data import create_test_image_2d

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    s = size * rng.uniform(0.92, 1.05)
    cx, cy = size / 2 + rng.uniform(-0.03, 0.03) * size, size / 2 + rng.uniform(-0.03, 0.03) * size
    image = np.full((size, size), 0.08, np.float32)
    image[_ellipse(yy, xx, cy + 0.05 * s, cx, 0.47 * s, 0.44 * s)] = 0.55  # body
    lungs = np.zeros((size, size), bool)
    for side in (-1, 1):
        lungs |= _ellipse(yy, xx, cy - 0.02 * s, cx + side * 0.19 * s, 0.30 * s, 0.14 * s)
    image[lungs] = 0.22
    image[_ellipse(yy, xx, cy + 0.06 * s, cx, 0.26 * s, 0.07 * s)] = 0.62  # mediastinum / heart
    for k in range(5):  # rib-like bands over the lungs
        band = np.abs(yy - (cy - 0.25 * s + k * 0.11 * s) - 0.08 * np.abs(xx - cx)) < 0.012 * s
        image[band & lungs] += 0.10
    image += 0.08 * (yy / size) + 0.05 * np.sin(xx / size * np.pi * rng.uniform(0.5, 1.5))  # exposure bias
    if lesion:
        rad_max = max(4, int(0.11 * size))
        rad_min = max(2, int(0.06 * size))
        for _ in range(100):  # a blob that lies (mostly) inside a lung field
            blob, _ = create_test_image_2d(size, size, num_objs=1, rad_max=rad_max, rad_min=rad_min, noise_max=0.0,
                                           num_seg_classes=1, random_state=rng)
            mask = blob > 0
            if mask.any() and (mask & lungs).sum() >= 0.8 * mask.sum():
                break
        image[mask] += rng.uniform(0.35, 0.5)
    image = _smooth(image) + rng.normal(0.0, 0.03, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def make_data(output: str, train: int, val: int, test: int, size: int, seed: int) -> dict:
    from PIL import Image

    if train < 2 or val < 2 or test < 0:
        raise SystemExit("need at least two training and two validation images (--train, --val >= 2, --test >= 0)")
    if size < 32:
        raise SystemExit("--size must be at least 32 (DenseNet121 downsamples 32x)")
    for sub in ("images", "imagesTs"):  # only the folders this script writes
        shutil.rmtree(os.path.join(output, sub), ignore_errors=True)
        os.makedirs(os.path.join(output, sub))
    rng = np.random.RandomState(seed)

    def write(folder, stem, count):
        items = []
        for i in range(count):
            label = i % 2  # balanced classes
            path = os.path.join(folder, f"{stem}_{i:03d}.png")
            Image.fromarray(synthetic_radiograph(size, bool(label), rng)).save(os.path.join(output, path))
            items.append({"image": path, "label": label})
        return items

    labelled = write("images", "cxr", train + val)
    datalist = {
        "name": "synthetic chest radiographs",
        "description": "synthetic phantoms from scripts/make_synthetic_data.py; no patient data",
        "tensorImageSize": "2D",
        "modality": {"0": "XR"},
        "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "numTraining": train,
        "numValidation": val,
        "numTest": test,
        "training": labelled[:train],
        "validation": labelled[train:],
        "test": write("imagesTs", "cxr_test", test),
    }
    with open(os.path.join(output, "dataset.json"), "w") as f:
        json.dump(datalist, f, indent=2)
    return datalist


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=os.path.join(BUNDLE_ROOT, "data"), help="data folder (default: data/)")
    parser.add_argument("--train", type=int, default=96, help="labelled training images")
    parser.add_argument("--val", type=int, default=32, help="labelled validation images")
    parser.add_argument("--test", type=int, default=8, help="test images for configs/inference.json")
    parser.add_argument("--size", type=int, default=256, help="image edge in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    datalist = make_data(args.output, args.train, args.val, args.test, args.size, args.seed)
    print(f"wrote {datalist['numTraining']} training, {datalist['numValidation']} validation and "
          f"{datalist['numTest']} test images of {args.size}^2 to {os.path.abspath(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
