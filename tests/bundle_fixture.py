"""A tiny bundle in the shape of the MONAI model-zoo ``spleen_ct_segmentation`` bundle, on synthetic NIfTI CT.

Same ids as the model-zoo ``configs/train.json`` (``network_def``, ``network``, ``optimizer``, ``train#handlers``,
``train#trainer``, ``validate#evaluator``, ``validate#handlers`` with a key-metric ``CheckpointSaver`` writing
``@ckpt_dir/model.pt``, sliding-window validation), only smaller: 32^3 volumes, a (8, 16, 32) UNet, few epochs.
"""

import json
import os

from monai_prune.data import write_ct_dataset

ROI = [32, 32, 32]

NETWORK_DEF = {
    "_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32],
    "strides": [2, 2], "num_res_units": 2, "norm": "batch",
}


def _transforms(random: bool):
    deterministic = [
        {"_target_": "LoadImaged", "keys": ["image", "label"]},
        {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
        {"_target_": "Orientationd", "keys": ["image", "label"], "axcodes": "RAS"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
         "clip": True},
        {"_target_": "EnsureTyped", "keys": ["image", "label"]},
    ]
    if not random:
        return deterministic
    return deterministic + [
        {"_target_": "RandCropByPosNegLabeld", "keys": ["image", "label"], "label_key": "label",
         "spatial_size": ROI, "pos": 1, "neg": 1, "num_samples": 2, "image_key": "image", "image_threshold": 0},
        {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": 0},
    ]


def train_config(max_epochs: int = 4):
    return {
        "imports": ["$import glob", "$import os", "$import ignite"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "dataset_dir": "$@bundle_root + '/data'",
        "images": "$list(sorted(glob.glob(@dataset_dir + '/ct_*[0-9].nii.gz')))",
        "labels": "$list(sorted(glob.glob(@dataset_dir + '/ct_*_seg.nii.gz')))",
        "val_interval": 1,
        "device": "$torch.device('cpu')",
        "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.002},
        "train": {
            "preprocessing": {"_target_": "Compose", "transforms": _transforms(random=True)},
            "dataset": {"_target_": "CacheDataset",
                        "data": "$[{'image': i, 'label': l} for i, l in zip(@images[:-2], @labels[:-2])]",
                        "transform": "@train#preprocessing", "cache_rate": 1.0, "num_workers": 0},
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 2, "shuffle": True,
                           "num_workers": 0},
            "inferer": {"_target_": "SimpleInferer"},
            "postprocessing": {"_target_": "Compose", "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2},
            ]},
            "handlers": [
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
                 "interval": "@val_interval"},
                {"_target_": "StatsHandler", "tag_name": "train_loss",
                 "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            ],
            "trainer": {"_target_": "SupervisedTrainer", "max_epochs": max_epochs, "device": "@device",
                        "train_data_loader": "@train#dataloader", "network": "@network", "loss_function": "@loss",
                        "optimizer": "@optimizer", "inferer": "@train#inferer",
                        "postprocessing": "@train#postprocessing", "train_handlers": "@train#handlers",
                        "amp": False},
        },
        "validate": {
            "preprocessing": {"_target_": "Compose", "transforms": _transforms(random=False)},
            "dataset": {"_target_": "CacheDataset",
                        "data": "$[{'image': i, 'label': l} for i, l in zip(@images[-2:], @labels[-2:])]",
                        "transform": "@validate#preprocessing", "cache_rate": 1.0, "num_workers": 0},
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1,
                           "shuffle": False, "num_workers": 0},
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI, "sw_batch_size": 2, "overlap": 0.25},
            "postprocessing": "%train#postprocessing",
            "handlers": [
                {"_target_": "StatsHandler", "iteration_log": False},
                {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": {"model": "@network"},
                 "save_key_metric": True, "key_metric_filename": "model.pt"},
            ],
            "key_metric": {"val_mean_dice": {"_target_": "MeanDice", "include_background": False,
                                             "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}},
            "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device",
                          "val_data_loader": "@validate#dataloader", "network": "@network",
                          "inferer": "@validate#inferer", "postprocessing": "@validate#postprocessing",
                          "key_val_metric": "@validate#key_metric", "val_handlers": "@validate#handlers",
                          "amp": False},
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@train#trainer.run()"],
    }


def inference_config():
    """Model-zoo style inference.json: the dense weights loaded by a CheckpointLoader, sliding-window inference,
    argmax, NIfTI predictions written by SaveImaged."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/ct_*[0-9].nii.gz')))[-2:]",
        "device": "$torch.device('cpu')",
        "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0,
             "b_max": 1, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI, "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "resample": False,
             "separate_folder": False},
        ]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', False)"],
        "run": ["$@evaluator.run()"],
    }


LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def write_bundle(root: str, volumes: int = 6, max_epochs: int = 4) -> str:
    """Write the bundle (configs + synthetic NIfTI data) under ``root``; returns ``root``."""
    os.makedirs(os.path.join(root, "configs"), exist_ok=True)
    os.makedirs(os.path.join(root, "models"), exist_ok=True)
    write_ct_dataset(os.path.join(root, "data"), volumes, size=48, seed=7)
    with open(os.path.join(root, "configs", "train.json"), "w") as f:
        json.dump(train_config(max_epochs), f, indent=2)
    with open(os.path.join(root, "configs", "inference.json"), "w") as f:
        json.dump(inference_config(), f, indent=2)
    metadata = {"version": "0.1.0", "changelog": {"0.1.0": "synthetic test bundle"}, "monai_version": "1.5.0",
                "name": "tiny spleen-shaped bundle", "task": "segmentation",
                "network_data_format": {"inputs": {"image": {"type": "image", "num_channels": 1,
                                                              "spatial_shape": ROI}},
                                        "outputs": {"pred": {"type": "image", "num_channels": 2,
                                                             "spatial_shape": ROI,
                                                             "channel_def": {"0": "background", "1": "spleen"}}}}}
    with open(os.path.join(root, "configs", "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2)
    with open(os.path.join(root, "configs", "logging.conf"), "w") as f:  # as model-zoo bundles ship it
        f.write(LOGGING_CONF)
    return root


def write_untrained_weights(root: str, seed: int = 0) -> str:
    """``models/model.pt`` of the freshly initialized network: enough for tests of compress-bundle's plumbing, which do
    not need a trained model (a dense training run costs a minute)."""
    import torch
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    network = ConfigParser({"network_def": NETWORK_DEF}).get_parsed_content("network_def")
    path = os.path.join(root, "models", "model.pt")
    torch.save(network.state_dict(), path)
    return path
