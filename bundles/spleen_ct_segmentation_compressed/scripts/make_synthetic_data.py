"""Write this bundle's synthetic CT data: labelled volumes for training/validation and unlabelled test volumes.

No download and no patient data: every volume comes from ``monai_prune.data.write_ct_dataset`` (random spheres, the
"organ", brighter than Hounsfield-like soft-tissue noise; 1.5 mm isotropic voxels), written as NIfTI with nibabel.

Layout under ``--output`` (default: the bundle's ``data/``), in the Medical Segmentation Decathlon style the configs
read with ``monai.data.load_decathlon_datalist``::

    dataset.json               {"training": [...], "validation": [...], "test": [...]} (paths relative to data/)
    train/ct_000.nii.gz        image, HU
    train/ct_000_seg.nii.gz    label, 1 = organ
    imagesTs/ct_test_000.nii.gz      what configs/inference.json segments
    labelsTs/ct_test_000_seg.nii.gz  their labels (for checking predictions; inference does not read them)

Usage (from the bundle root): ``python scripts/make_synthetic_data.py [--train 16 --val 4 --test 2 --size 128]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import List, Optional

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_data(output: str, train: int, val: int, test: int, size: int, seed: int) -> dict:
    from monai_prune.data import write_ct_dataset

    if train < 1 or val < 1 or test < 0:
        raise SystemExit("need at least one training and one validation volume (--train, --val >= 1, --test >= 0)")
    for sub in ("train", "imagesTs", "labelsTs", ".test_tmp"):  # only the folders this script writes
        shutil.rmtree(os.path.join(output, sub), ignore_errors=True)
    labelled = write_ct_dataset(os.path.join(output, "train"), train + val, size=size, seed=seed)
    tests = write_ct_dataset(os.path.join(output, ".test_tmp"), test, size=size, seed=seed + 100_000)
    test_items = []
    for folder in ("imagesTs", "labelsTs"):
        os.makedirs(os.path.join(output, folder), exist_ok=True)
    for i, item in enumerate(tests):
        image = os.path.join("imagesTs", f"ct_test_{i:03d}.nii.gz")
        os.replace(item["image"], os.path.join(output, image))
        os.replace(item["label"], os.path.join(output, "labelsTs", f"ct_test_{i:03d}_seg.nii.gz"))
        test_items.append(image)
    shutil.rmtree(os.path.join(output, ".test_tmp"), ignore_errors=True)

    def rel(item):
        return {k: os.path.relpath(v, output) for k, v in item.items()}

    datalist = {
        "name": "synthetic spleen-like CT",
        "description": "synthetic volumes from monai_prune.data.write_ct_dataset; no patient data",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": train,
        "numValidation": val,
        "numTest": test,
        "training": [rel(item) for item in labelled[:train]],
        "validation": [rel(item) for item in labelled[train:]],
        "test": test_items,
    }
    with open(os.path.join(output, "dataset.json"), "w") as f:
        json.dump(datalist, f, indent=2)
    return datalist


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=os.path.join(BUNDLE_ROOT, "data"), help="data folder (default: data/)")
    parser.add_argument("--train", type=int, default=16, help="labelled training volumes")
    parser.add_argument("--val", type=int, default=4, help="labelled validation volumes")
    parser.add_argument("--test", type=int, default=2, help="test volumes for configs/inference.json")
    parser.add_argument("--size", type=int, default=128, help="edge of the cubic volumes in voxels (1.5 mm)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    datalist = make_data(args.output, args.train, args.val, args.test, args.size, args.seed)
    print(f"wrote {datalist['numTraining']} training, {datalist['numValidation']} validation and "
          f"{datalist['numTest']} test volumes of {args.size}^3 to {os.path.abspath(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
