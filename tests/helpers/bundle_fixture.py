"""A tiny bundle in the shape of the MONAI model-zoo ``spleen_ct_segmentation`` bundle, on synthetic NIfTI CT.

Same ids as the model-zoo ``configs/train.json`` (``network_def``, ``network``, ``optimizer``, ``train#handlers``,
``train#trainer``, ``validate#evaluator``, ``validate#handlers`` with a key-metric ``CheckpointSaver`` writing
``@ckpt_dir/model.pt``, sliding-window validation), only smaller: 32^3 volumes, a (8, 16, 32) UNet, few epochs.
"""

import copy
import json
import os

from monai_prune.data import write_ct_dataset

ROI = [32, 32, 32]

NETWORK_DEF = {
    "_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32],
    "strides": [2, 2], "num_res_units": 2, "norm": "batch",
}



def _labelled_split(section: str, images: str, batch_size: int, shuffle: bool, **cache) -> dict:
    """``dataset`` + ``dataloader`` of the train/validate section: ``images`` slices @images/@labels."""
    return {
        "dataset": {"_target_": "CacheDataset",
                    "data": f"$[{{'image': i, 'label': l}} for i, l in zip(@images{images}, @labels{images})]",
                    "transform": f"@{section}#preprocessing", "cache_rate": 1.0, **cache},
        "dataloader": {"_target_": "DataLoader", "dataset": f"@{section}#dataset", "batch_size": batch_size,
                       "shuffle": shuffle, "num_workers": 0},
    }


# softmax, then argmax predictions and one-hot labels (the spleen bundle's train/validate postprocessing)
SOFTMAX_ARGMAX = {"_target_": "Compose", "transforms": [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2}]}

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
            **_labelled_split("train", "[:-2]", 2, True, num_workers=0),
            "inferer": {"_target_": "SimpleInferer"},
            "postprocessing": copy.deepcopy(SOFTMAX_ARGMAX),
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
            **_labelled_split("validate", "[-2:]", 1, False, num_workers=0),
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


# ---------------------------------------------------------------------------------------------------- model-zoo copy
ZOO_DATASET_DIR = "/workspace/data/Task09_Spleen"  # the zoo's default: not on this machine, as for most users
ZOO_NETWORK_DEF = dict(NETWORK_DEF)


def _zoo_deterministic():
    keys = ["image", "label"]
    return [
        {"_target_": "LoadImaged", "keys": keys},
        {"_target_": "EnsureChannelFirstd", "keys": keys},
        {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": keys, "pixdim": [1.5, 1.5, 2.0], "mode": ["bilinear", "nearest"]},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
         "clip": True},
        {"_target_": "EnsureTyped", "keys": keys},
    ]


def zoo_train_config(epochs: int = 3):
    """Model-zoo ``spleen_ct_segmentation`` ``configs/train.json``, id for id, on a tiny network and data: the
    literal ``dataset_dir`` with ``imagesTr``/``labelsTr``, ``epochs``, Novograd + StepLR, the trainer's key metric,
    validation with ``additional_metrics``, a ``CheckpointSaver`` to ``@ckpt_dir/model.pt`` and handlers writing to
    ``@output_dir`` (``MetricsSaver``: TensorBoard is not installed here), ``amp`` on (a no-op on the CPU)."""
    metric = {"output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}
    return {
        "imports": ["$import glob", "$import os", "$import ignite"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": ZOO_DATASET_DIR,
        "images": "$list(sorted(glob.glob(@dataset_dir + '/imagesTr/*.nii.gz')))",
        "labels": "$list(sorted(glob.glob(@dataset_dir + '/labelsTr/*.nii.gz')))",
        "val_interval": 1,
        "epochs": epochs,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": ZOO_NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "loss": {"_target_": "DiceCELoss", "include_background": True, "to_onehot_y": True, "softmax": True,
                 "squared_pred": True, "batch": True, "smooth_nr": 1e-05, "smooth_dr": 1e-05, "lambda_dice": 0.5,
                 "lambda_ce": 0.5},
        "optimizer": {"_target_": "Novograd", "params": "$@network.parameters()", "lr": 0.002},
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "optimizer": "@optimizer", "step_size": 5000,
                         "gamma": 0.1},
        "train": {
            "deterministic_transforms": _zoo_deterministic(),
            "random_transforms": [
                {"_target_": "RandCropByPosNegLabeld", "keys": ["image", "label"], "label_key": "label",
                 "spatial_size": ROI, "pos": 1, "neg": 1, "num_samples": 2, "image_key": "image",
                 "image_threshold": 0}],
            "preprocessing": {"_target_": "Compose",
                              "transforms": "$@train#deterministic_transforms + @train#random_transforms"},
            **_labelled_split("train", "[:-2]", 2, True, num_workers=0),
            "inferer": {"_target_": "SimpleInferer"},
            "postprocessing": copy.deepcopy(SOFTMAX_ARGMAX),
            "handlers": [
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": True},
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
                 "interval": "@val_interval"},
                {"_target_": "StatsHandler", "tag_name": "train_loss",
                 "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            ],
            "key_metric": {"train_accuracy": {"_target_": "ignite.metrics.Accuracy", **metric}},
            "trainer": {"_target_": "SupervisedTrainer", "max_epochs": "@epochs", "device": "@device",
                        "train_data_loader": "@train#dataloader", "network": "@network", "loss_function": "@loss",
                        "optimizer": "@optimizer", "inferer": "@train#inferer",
                        "postprocessing": "@train#postprocessing", "key_train_metric": "@train#key_metric",
                        "train_handlers": "@train#handlers", "amp": True},
        },
        "validate": {
            "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
            **_labelled_split("validate", "[-2:]", 1, False),
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI, "sw_batch_size": 4, "overlap": 0.5},
            "postprocessing": "%train#postprocessing",
            "handlers": [
                {"_target_": "StatsHandler", "iteration_log": False},
                {"_target_": "MetricsSaver", "save_dir": "@output_dir", "metrics": ["val_mean_dice"]},
                {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": {"model": "@network"},
                 "save_key_metric": True, "key_metric_filename": "model.pt"},
            ],
            "key_metric": {"val_mean_dice": {"_target_": "MeanDice", "include_background": False, **metric}},
            "additional_metrics": {"val_accuracy": {"_target_": "ignite.metrics.Accuracy", **metric}},
            "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device",
                          "val_data_loader": "@validate#dataloader", "network": "@network",
                          "inferer": "@validate#inferer", "postprocessing": "@validate#postprocessing",
                          "key_val_metric": "@validate#key_metric",
                          "additional_metrics": "@validate#additional_metrics", "val_handlers": "@validate#handlers",
                          "amp": True},
        },
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@train#trainer.run()"],
    }


def zoo_evaluate_config():
    """``configs/evaluate.json``: overlays train.json; loads ``@ckpt_dir/model.pt`` with its own CheckpointLoader,
    inverts the preprocessing (``Invertd``), ``MetricsSaver`` to ``@output_dir``."""
    return {
        "validate#dataset#cache_rate": 0,
        "validate#postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": ["pred", "label"], "transform": "@validate#preprocessing",
             "orig_keys": "image", "nearest_interp": [False, True], "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2},
            {"_target_": "SaveImaged", "_disabled_": True, "keys": "pred", "output_dir": "@output_dir",
             "resample": False, "squeeze_end_dims": True}]},
        "validate#handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@ckpt_dir + '/model.pt'", "load_dict": {"model": "@network"}},
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "MetricsSaver", "save_dir": "@output_dir", "metrics": ["val_mean_dice", "val_acc"],
             "metric_details": ["val_mean_dice"], "batch_transform": "$lambda x: [xx['image'].meta for xx in x]",
             "summary_ops": "*"}],
        "run": ["$@validate#evaluator.run()"],
    }


def zoo_inference_config():
    """``configs/inference.json``: ``imagesTs``, Spacingd + Invertd, SaveImaged to ``@output_dir``, and the dense
    weights loaded by an ``initialize`` step: ``$@checkpointloader(@evaluator) if @load_pretrain else None``."""
    key = "@image_key"
    return {
        "imports": ["$import glob", "$import numpy", "$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.float32",
        "output_postfix": "trans",
        "separate_folder": True,
        "load_pretrain": True,
        "dataset_dir": ZOO_DATASET_DIR,
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": ZOO_NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": key},
            {"_target_": "EnsureChannelFirstd", "keys": key},
            {"_target_": "Orientationd", "keys": key, "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": key, "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": key, "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
             "clip": True},
            {"_target_": "EnsureTyped", "keys": key}]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI, "sw_batch_size": 4, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": key,
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": "@output_ext",
             "output_dtype": "@output_dtype", "output_postfix": "@output_postfix",
             "separate_folder": "@separate_folder"}]},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                             "load_dict": {"model": "@network"}},
        "initialize": ["$monai.utils.set_determinism(seed=123)",
                       "$@checkpointloader(@evaluator) if @load_pretrain else None"],
        "run": ["$@evaluator.run()"],
    }


ZOO_INFERENCE_TRT = {
    "imports": ["$import glob", "$import os", "$import torch_tensorrt"],
    "network_def": "$torch.jit.load(@bundle_root + '/models/model_trt.ts')",
    "evaluator#amp": False,
    "initialize": ["$monai.utils.set_determinism(seed=123)"],
}

_DDP_NETWORK = {"_target_": "torch.nn.parallel.DistributedDataParallel", "module": "$@network_def.to(@device)",
                "device_ids": ["@device"]}
ZOO_MULTI_GPU_TRAIN = {
    "device": "$torch.device('cuda:' + os.environ['LOCAL_RANK'])",
    "network": _DDP_NETWORK,
    "train#sampler": {"_target_": "DistributedSampler", "dataset": "@train#dataset", "even_divisible": True,
                      "shuffle": True},
    "train#dataloader#sampler": "@train#sampler",
    "train#dataloader#shuffle": False,
    "train#trainer#train_handlers": "$@train#handlers[: -2 if dist.get_rank() > 0 else None]",
    "validate#sampler": {"_target_": "DistributedSampler", "dataset": "@validate#dataset", "even_divisible": False,
                         "shuffle": False},
    "validate#dataloader#sampler": "@validate#sampler",
    "validate#evaluator#val_handlers": "$None if dist.get_rank() > 0 else @validate#handlers",
    "initialize": ["$import torch.distributed as dist",
                   "$dist.is_initialized() or dist.init_process_group(backend='nccl')",
                   "$torch.cuda.set_device(@device)", "$monai.utils.set_determinism(seed=123)", "$import logging",
                   "$@train#trainer.logger.setLevel(logging.WARNING if dist.get_rank() > 0 else logging.INFO)",
                   "$@validate#evaluator.logger.setLevel(logging.WARNING if dist.get_rank() > 0 else logging.INFO)"],
    "run": ["$@train#trainer.run()"],
    "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
}
ZOO_MULTI_GPU_EVALUATE = {
    "device": "$torch.device('cuda:' + os.environ['LOCAL_RANK'])",
    "network": _DDP_NETWORK,
    "validate#sampler": {"_target_": "DistributedSampler", "dataset": "@validate#dataset", "even_divisible": False,
                         "shuffle": False},
    "validate#dataloader#sampler": "@validate#sampler",
    "validate#handlers#1#_disabled_": "$dist.get_rank() > 0",
    "initialize": ["$import torch.distributed as dist",
                   "$dist.is_initialized() or dist.init_process_group(backend='nccl')",
                   "$torch.cuda.set_device(@device)", "$import logging",
                   "$@validate#evaluator.logger.setLevel(logging.WARNING if dist.get_rank() > 0 else logging.INFO)"],
    "run": ["$@validate#evaluator.run()"],
    "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
}

ZOO_LARGE_FILES = """large_files:
- path: "models/model.pt"
  url: "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/model_spleen_ct_segmentation_v1.pt"
  hash_val: "be4fa95e236df91766147c112ee6fafd"
  hash_type: "md5"
- path: "models/model.ts"
  url: "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/model_spleen_ct_segmentation_v1.ts"
  hash_val: "3e163505054a1623956de555033b23db"
  hash_type: "md5"
"""


def zoo_metadata():
    """``configs/metadata.json`` as the zoo publishes it: its own ``eval_metrics`` (mean_dice 0.961) and versions."""
    image = {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1, "spatial_shape": ROI,
             "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": {"0": "image"}}
    pred = {"type": "image", "format": "segmentation", "num_channels": 2, "spatial_shape": ROI, "dtype": "float32",
            "value_range": [0, 1], "is_patch_data": True, "channel_def": {"0": "background", "1": "spleen"}}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.5.9",
        "changelog": {"0.5.9": "use monai 1.4 and update large files", "0.5.6": "add load_pretrain flag for infer"},
        "monai_version": "1.4.0", "pytorch_version": "2.4.0", "numpy_version": "1.24.4",
        "optional_packages_version": {"nibabel": "5.2.1", "pytorch-ignite": "0.4.11"},
        "name": "Spleen CT segmentation", "task": "Decathlon spleen segmentation",
        "description": "A pre-trained model for volumetric (3D) segmentation of the spleen from CT image",
        "authors": "MONAI team", "copyright": "Copyright (c) MONAI Consortium",
        "data_source": "Task09_Spleen.tar from http://medicaldecathlon.com/", "data_type": "nibabel",
        "image_classes": "single channel data, intensity scaled to [0, 1]",
        "label_classes": "single channel data, 1 is spleen, 0 is everything else",
        "pred_classes": "2 channels OneHot data, channel 1 is spleen, channel 0 is background",
        "eval_metrics": {"mean_dice": 0.961},
        "intended_use": "This is an example, not to be used for diagnostic purposes",
        "network_data_format": {"inputs": {"image": image}, "outputs": {"pred": pred}},
    }


def write_zoo_data(folder: str, volumes: int = 6, tests: int = 2) -> str:
    """A ``Task09_Spleen``-shaped folder: ``imagesTr``, ``labelsTr``, ``imagesTs`` (synthetic 48^3 CT, 1.5 mm)."""
    import shutil

    staging = os.path.join(folder, ".staging")
    items = write_ct_dataset(staging, volumes + tests, size=48, seed=11)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for i, item in enumerate(items):
        name = f"spleen_{i:03d}.nii.gz"
        if i < volumes:
            shutil.move(item["image"], os.path.join(folder, "imagesTr", name))
            shutil.move(item["label"], os.path.join(folder, "labelsTr", name))
        else:
            shutil.move(item["image"], os.path.join(folder, "imagesTs", name))
    shutil.rmtree(staging)
    return folder


def write_zoo_bundle(root: str, epochs: int = 3) -> str:
    """The model-zoo ``spleen_ct_segmentation`` bundle's structure under ``root`` (every config, metadata, logging.conf,
    large_files.yml, docs/README.md), tiny; its data lies elsewhere (:func:`write_zoo_data`, ``--dataset_dir``)."""
    for sub in ("configs", "models", "docs"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    configs = {"train.json": zoo_train_config(epochs), "evaluate.json": zoo_evaluate_config(),
               "inference.json": zoo_inference_config(), "inference_trt.json": ZOO_INFERENCE_TRT,
               "multi_gpu_train.json": ZOO_MULTI_GPU_TRAIN, "multi_gpu_evaluate.json": ZOO_MULTI_GPU_EVALUATE,
               "metadata.json": zoo_metadata()}
    for name, config in configs.items():
        with open(os.path.join(root, "configs", name), "w") as f:
            json.dump(config, f, indent=4)
    with open(os.path.join(root, "configs", "logging.conf"), "w") as f:
        f.write(LOGGING_CONF)
    with open(os.path.join(root, "large_files.yml"), "w") as f:
        f.write(ZOO_LARGE_FILES)
    with open(os.path.join(root, "docs", "README.md"), "w") as f:
        f.write("# Spleen CT segmentation (tiny copy of the model-zoo bundle's structure)\n")
    return root
