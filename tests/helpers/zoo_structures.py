"""Tiny bundles in the structure of two more real model-zoo bundles (written here, same ids; tests/test_zoo_structures.py).

* ``brats_mri_segmentation``: four MR channels loaded from four files per case through a decathlon datalist in
  ``configs/datalist.json``, labels 1/2/4 turned into three overlapping sigmoid channels (TC, WT, ET) by
  ``ConvertToMultiChannelBasedOnBratsClassesd``, SegResNet, ``DiceLoss(sigmoid)``, sigmoid + threshold
  postprocessing, ``SplitDimd`` per-channel metrics, the zoo's 240x240x160 validation window and ``"8*n"`` spatial
  shapes in the metadata (so the window a user passes with ``--set validate#inferer#roi_size`` is what gets timed).
  One deviation: the training labels are cast to float (see ``brats_train_config``), as a user of MONAI >= 1.5 must.
* ``swin_unetr_btcv_segmentation``: SwinUNETR with the zoo's ``img_size`` argument, which MONAI 1.5 removed: the
  dense config does not build any more, and users pass the network without it (``--set network_def=...``).
"""

import copy
import json
import os

import nibabel as nib
import numpy as np

from .bundle_fixture import zoo_train_config

ROI = [32, 32, 32]
BRATS_LABELS = {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}
BRATS_NETWORK = {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 8,
                 "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2}
SWIN_ZOO_NETWORK = {"_target_": "SwinUNETR", "spatial_dims": 3, "img_size": 32, "in_channels": 1, "out_channels": 2,
                    "feature_size": 12, "use_checkpoint": True}
# the user's override: no img_size; batch norm because the tiny 32^3 windows leave 1x1x1 at the bottleneck, where
# instance norm cannot train (the zoo's 96^3 windows leave 3x3x3)
# (and one block per stage, to keep the test short: the zoo's 2 per stage work the same way)
SWIN_NETWORK = {**{k: v for k, v in SWIN_ZOO_NETWORK.items() if k not in ("img_size", "use_checkpoint")},
                "norm_name": "batch", "depths": [1, 1, 1, 1]}


def _write(path: str, config) -> None:
    with open(path, "w") as f:
        json.dump(config, f, indent=4)


def _ball(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    return ((grid - np.asarray(centre).reshape(3, 1, 1, 1)) ** 2).sum(0) <= radius ** 2


def write_brats_data(folder: str, cases: int = 6, size: int = 32, seed: int = 3) -> dict:
    """BraTS-like cases: t1/t1ce/t2/flair NIfTI files and a label of 2 (oedema) around 4 (enhancing) around 1
    (necrosis), so TC, WT and ET overlap; returns the decathlon datalist (paths relative to ``folder``)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    cases_list = []
    for i in range(cases):
        shape = (size,) * 3
        centre = rng.uniform(size * 0.35, size * 0.65, 3)
        outer = rng.uniform(7, 10)
        label = np.zeros(shape, np.uint8)
        label[_ball(shape, centre, outer)] = 2
        label[_ball(shape, centre, outer * 0.6)] = 4
        label[_ball(shape, centre, outer * 0.3)] = 1
        item = {"image": [], "label": f"case_{i:03d}/seg.nii.gz"}
        os.makedirs(os.path.join(folder, f"case_{i:03d}"), exist_ok=True)
        contrast = {"t1": (0.2, 0.5, 0.4, 0.3), "t1ce": (0.2, 0.3, 0.3, 1.0), "t2": (0.3, 0.9, 0.8, 0.6),
                    "flair": (0.3, 1.0, 0.6, 0.5)}
        for name, (brain, oedema, necrosis, enhancing) in contrast.items():
            image = np.where(_ball(shape, [size / 2] * 3, size * 0.48), brain, 0.0)
            for value, level in ((2, oedema), (1, necrosis), (4, enhancing)):
                image[label == value] = level
            image = (image + rng.normal(0, 0.08, shape)) * 1000
            path = f"case_{i:03d}/{name}.nii.gz"
            nib.save(nib.Nifti1Image(image.astype(np.float32), affine), os.path.join(folder, path))
            item["image"].append(path)
        nib.save(nib.Nifti1Image(label, affine), os.path.join(folder, item["label"]))
        cases_list.append(item)
    return {"training": cases_list[:-2], "validation": cases_list[-2:]}


def brats_train_config(epochs: int = 2) -> dict:
    """``brats_mri_segmentation`` ``configs/train.json``, id for id, tiny: datalist, 4-file images, SegResNet,
    multi-label sigmoid outputs, SplitDimd per-channel metrics, the zoo's 240x240x160 validation window."""
    config = zoo_train_config(epochs)
    for key in ("images", "labels"):
        config.pop(key)
    metric = lambda keys: {"_target_": "MeanDice", "include_background": True,  # noqa: E731
                           "output_transform": f"$monai.handlers.from_engine({keys})"}
    config.update({
        "dataset_dir": "/workspace/data/medical/brats2018challenge",
        "data_list_file_path": "$@bundle_root + '/configs/datalist.json'",
        "train_datalist": "$monai.data.load_decathlon_datalist(@data_list_file_path, data_list_key='training', "
                          "base_dir=@dataset_dir)",
        "val_datalist": "$monai.data.load_decathlon_datalist(@data_list_file_path, data_list_key='validation', "
                        "base_dir=@dataset_dir)",
        "network_def": copy.deepcopy(BRATS_NETWORK),
        "loss": {"_target_": "DiceLoss", "smooth_nr": 0, "smooth_dr": 1e-05, "squared_pred": True,
                 "to_onehot_y": False, "sigmoid": True},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.01,
                      "weight_decay": 1e-05},
    })
    sigmoid = {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}]}
    train = config["train"]
    for key in ("deterministic_transforms", "random_transforms"):
        train.pop(key)
    train["preprocessing_transforms"] = [
        {"_target_": "LoadImaged", "keys": ["image", "label"], "image_only": False},
        {"_target_": "ConvertToMultiChannelBasedOnBratsClassesd", "keys": "label"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]
    train["random_transforms"] = [
        {"_target_": "RandSpatialCropd", "keys": ["image", "label"], "roi_size": [32, 32, 32], "random_size": False},
        {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": 0},
        # the one deviation from the zoo's file: its DiceLoss(squared_pred) fails on the bool labels of
        # ConvertToMultiChannelBasedOnBratsClassesd with MONAI >= 1.5 (linalg.vector_norm on Bool), so training casts
        # them; validation keeps the zoo's bool labels (what crashed our fidelity code)
        {"_target_": "EnsureTyped", "keys": "label", "dtype": "$torch.float32"}]
    train["preprocessing"] = {"_target_": "Compose",
                              "transforms": "$@train#preprocessing_transforms + @train#random_transforms"}
    train["dataset"] = {"_target_": "Dataset", "data": "@train_datalist", "transform": "@train#preprocessing"}
    train["postprocessing"] = copy.deepcopy(sigmoid)
    train["key_metric"] = {"train_mean_dice": metric("['pred', 'label']")}
    validate = config["validate"]
    validate["preprocessing"] = {"_target_": "Compose", "transforms": "$@train#preprocessing_transforms"}
    validate["dataset"] = {"_target_": "Dataset", "data": "@val_datalist", "transform": "@validate#preprocessing"}
    validate["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": [240, 240, 160], "sw_batch_size": 1,
                           "overlap": 0.5}
    validate["postprocessing"] = {"_target_": "Compose", "transforms": copy.deepcopy(sigmoid["transforms"]) + [
        {"_target_": "SplitDimd", "keys": ["pred", "label"], "output_postfixes": ["tc", "wt", "et"]}]}
    validate["key_metric"] = {"val_mean_dice": metric("['pred', 'label']")}
    validate["additional_metrics"] = {f"val_mean_dice_{c}": metric(f"['pred_{c}', 'label_{c}']")
                                      for c in ("tc", "wt", "et")}
    validate["handlers"][1]["metrics"] = ["val_mean_dice"]
    return config


def _metadata(name: str, channels: int, pred_channels: int, labels: dict, spatial) -> dict:
    image = {"type": "image", "format": "magnitude", "modality": "MR" if channels > 1 else "CT",
             "num_channels": channels, "spatial_shape": spatial, "dtype": "float32", "value_range": [],
             "is_patch_data": True}
    pred = {"type": "image", "format": "segmentation", "num_channels": pred_channels, "spatial_shape": spatial,
            "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": labels}
    return {"version": "0.5.3", "monai_version": "1.4.0", "pytorch_version": "2.4.0", "numpy_version": "1.24.4",
            "name": name, "task": name, "description": f"tiny copy of the model-zoo {name} structure",
            "authors": "monai-prune tests", "eval_metrics": {"val_mean_dice": 0.8},
            "network_data_format": {"inputs": {"image": image}, "outputs": {"pred": pred}}}


def write_brats_bundle(root: str, datalist: dict, epochs: int = 2) -> str:
    os.makedirs(os.path.join(root, "configs"))
    os.makedirs(os.path.join(root, "models"))
    _write(os.path.join(root, "configs", "train.json"), brats_train_config(epochs))
    _write(os.path.join(root, "configs", "datalist.json"), datalist)
    _write(os.path.join(root, "configs", "metadata.json"),
           _metadata("brats_mri_segmentation", 4, 3, BRATS_LABELS, ["8*n", "8*n", "8*n"]))
    return root


def swin_train_config(epochs: int = 2) -> dict:
    """``swin_unetr_btcv_segmentation`` ``configs/train.json`` ids on the spleen-like data: SwinUNETR with the zoo's
    ``img_size`` and ``use_checkpoint``, ``DiceCELoss(softmax)``, a 0.25-overlap validation window."""
    config = zoo_train_config(epochs)
    config["network_def"] = copy.deepcopy(SWIN_ZOO_NETWORK)
    config["loss"] = {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True, "squared_pred": True,
                      "batch": True}
    config["validate"]["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": ROI, "sw_batch_size": 2,
                                     "overlap": 0.25}
    return config


def write_swin_bundle(root: str, epochs: int = 2) -> str:
    os.makedirs(os.path.join(root, "configs"))
    os.makedirs(os.path.join(root, "models"))
    _write(os.path.join(root, "configs", "train.json"), swin_train_config(epochs))
    _write(os.path.join(root, "configs", "metadata.json"),
           _metadata("swin_unetr_btcv_segmentation", 1, 2, {"0": "background", "1": "spleen"}, ROI))
    return root
