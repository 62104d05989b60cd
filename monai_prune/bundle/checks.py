"""Recipes, and the checks compress-bundle makes before anything runs (nothing written when they fail)."""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ConfigError, InputError
from ..runtime.registry import INT8_BACKENDS as QUANT_BACKENDS
from ..fidelity import validate_guardrails

logger = logging.getLogger(__name__)

CONFIG_EXTS = (".json", ".yaml", ".yml")
RECIPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")
SKIPPED = ("models", "data", "eval", "__pycache__")  # not copied from the source bundle
RUN_SKIPPED = ("configs", "models", "eval", "__pycache__")  # not mirrored into the private run folder
COPY_LIMIT = 1 << 20  # source files up to this size are copied into the private run folder, larger ones linked
OWNER_FILE = "owner.json"  # in a run's work folder: the host whose process (pid in the folder name) owns it
INT8_BACKENDS = QUANT_BACKENDS + ("auto",)


# ---------------------------------------------------------------------------------------------------- recipes
def list_recipes() -> List[Dict[str, str]]:
    """The packaged recipes: name, full path, one-line description."""
    found = []
    for path in sorted(glob.glob(os.path.join(RECIPES_DIR, "*.json"))):
        with open(path, encoding="utf-8") as f:
            info = json.load(f).get("recipe", {})
        found.append({"name": info.get("name", os.path.splitext(os.path.basename(path))[0]), "path": path,
                      "description": info.get("description", "")})
    return found


def recipe_path(recipe: str) -> str:
    """A packaged recipe's name (``channel_pruning_kd``) or a path to a recipe file."""
    if os.path.isfile(recipe):
        return os.path.abspath(recipe)
    for item in list_recipes():
        if recipe in (item["name"], os.path.basename(item["path"])):
            return item["path"]
    names = ", ".join(r["name"] for r in list_recipes())
    raise InputError(f"unknown recipe {recipe!r}: give a file path or one of the packaged recipes ({names})")


def config_get(config: Dict[str, Any], key: str) -> Tuple[bool, Any]:
    node: Any = config
    for part in key.split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


# ---------------------------------------------------------------------------------------------------- checks
def refuse_nested(src: str, out: str) -> None:
    """``out`` may be neither the source bundle nor inside it (the work folder beside ``out`` would be copied into
    itself without end), and must not contain it."""
    real_src, real_out = (os.path.normcase(os.path.realpath(p)) for p in (src, out))
    common = os.path.commonpath([real_src, real_out])
    if real_out == real_src:
        raise ConfigError(f"--out {out} is the source bundle itself: choose a folder outside it (nothing was written)")
    if common == real_src:
        raise ConfigError(f"--out {out} lies inside the source bundle {src}: choose a folder outside it (nothing was "
                          "written)")
    if common == real_out:
        raise ConfigError(f"the source bundle {src} lies inside --out {out}: choose an --out folder that does not "
                          "contain the source (nothing was written)")


def load_config(path: str) -> Dict[str, Any]:
    from monai.bundle import ConfigParser

    try:
        return ConfigParser.load_config_file(path)
    except Exception as e:
        raise InputError(f"cannot read {path}: {e}") from e


def config_file(src: str, name: str) -> Optional[str]:
    for ext in (".json", ".yaml", ".yml"):
        path = os.path.join(src, "configs", name + ext)
        if os.path.isfile(path):
            return path
    return None


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in value)


def _example_shape(metadata: Dict[str, Any], train: Dict[str, Any],
                   overrides: Optional[Dict[str, Any]] = None) -> Tuple[List[int], str]:
    """``((1, C, *spatial), where it came from)`` of one network input, for MACs, exports and the network-call
    latency. In order: ``--set prune#input_shape``; ``--set validate#inferer#roi_size`` (the window the network
    really sees when the user shrinks a zoo window such as BraTS' 240x240x160); ``network_data_format``
    inputs.image spatial_shape when it is numbers; the bundle's ``validate#inferer#roi_size``."""
    overrides = overrides or {}
    image = metadata["network_data_format"]["inputs"]["image"]
    channels = int(image.get("num_channels", 1))
    given = overrides.get("prune#input_shape")
    if given is not None:
        if not _int_list(given) or len(given) < 3 or given[1] != channels:
            raise ConfigError(f"--set prune#input_shape={given!r} must be a list (1, {channels}, *spatial) of "
                              f"integers: the bundle's input has {channels} channel(s)")
        return [int(v) for v in given], "--set prune#input_shape"
    roi = overrides.get("validate#inferer#roi_size")
    if roi is not None:
        if not _int_list(roi):
            raise ConfigError(f"--set validate#inferer#roi_size={roi!r} must be a list of integers")
        return [1, channels, *roi], "--set validate#inferer#roi_size"
    spatial = image.get("spatial_shape")
    if _int_list(spatial):
        return [1, channels, *spatial], "metadata network_data_format inputs.image"
    found, roi = config_get(train, "validate#inferer#roi_size")
    if not found or not _int_list(roi):
        raise InputError("metadata network_data_format inputs.image.spatial_shape is not a list of numbers and "
                         "train.json has no validate#inferer#roi_size to use instead (or pass --input-shape)")
    return [1, channels, *roi], "the train config's validate#inferer#roi_size"


# --set prefixes that never reach the fine-tuning run: guardrails#<name> (the recipe's accuracy guardrails) and
# inference#<id> (a deployment knob written only into the compressed configs/inference.json, e.g.
# inference#inferer#overlap=0.25 measured by monai-prune tune-pipeline)
NOT_FOR_TRAINING = ("guardrails#", "inference#")


def check_inference_overrides(src: str, overrides: Dict[str, Any]) -> None:
    keys = [k for k in overrides if k.startswith("inference#")]
    if not keys:
        return
    path = config_file(src, "inference")
    if path is None:
        raise ConfigError(f"--set {keys[0]}: {src} has no configs/inference.json to write it into")
    inference = load_config(path)
    for key in keys:
        if not config_get(inference, key.split("#", 1)[1])[0]:
            raise ConfigError(f"--set {key}: {os.path.basename(path)} has no id {key.split('#', 1)[1]!r} "
                              "(inference#<id> changes an existing id of the inference config only)")


def check_bundle(src: str, recipe: str, out: str, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Everything that can be wrong before any work starts, as one clear error."""
    if not os.path.isdir(src):
        raise InputError(f"source bundle {src} is not a folder")
    refuse_nested(src, out)
    meta_path = os.path.join(src, "configs", "metadata.json")
    if not os.path.isfile(meta_path):
        raise InputError(f"{src} has no configs/metadata.json: not a MONAI bundle")
    train_path = config_file(src, "train")
    if train_path is None:
        raise InputError(f"{src} has no configs/train.json (or .yaml): compression fine-tunes with the bundle's "
                         "own trainer")
    metadata, train = load_config(meta_path), load_config(train_path)
    if isinstance(metadata.get("compression"), dict):
        raise InputError(f"{src} is a bundle compressed by monai-prune already: compress its dense source bundle "
                         "(with a stronger recipe) instead")
    if not isinstance(train.get("network_def"), dict):
        raise InputError(f"{train_path} has no network_def (the network's constructor config)")
    fmt = metadata.get("network_data_format", {})
    if "image" not in fmt.get("inputs", {}) or "pred" not in fmt.get("outputs", {}):
        raise InputError("metadata.json network_data_format must describe inputs.image and outputs.pred")
    for key in ("train#trainer", "train#handlers", "validate#evaluator"):
        if not config_get(train, key)[0]:
            raise InputError(f"{train_path} has no {key} (model-zoo ids are expected)")
    weights = os.path.join(src, "models", "model.pt")
    if not os.path.isfile(weights):
        raise InputError(f"{src} has no models/model.pt: train the bundle first (compression starts from the trained "
                         "dense weights)")
    path = recipe_path(recipe)
    recipe_config = load_config(path)
    if recipe_config.get("recipe", {}).get("quantize") == "qat":
        raise ConfigError("the qat recipe runs with the stock bundle CLI (python -m monai.bundle run --config_file "
                          "\"['configs/train.json','<qat.json>']\"); compress-bundle makes int8 by post-training "
                          "quantization: --int8 openvino|onnxruntime|auto")
    check_inference_overrides(src, overrides)
    unknown = [k for k in overrides if not config_get(recipe_config, k)[0] and not config_get(train, k)[0]
               and not k.startswith(NOT_FOR_TRAINING)]
    if unknown:
        raise ConfigError(f"unknown keys {unknown}: neither {os.path.basename(path)} "
                          f"({sorted(k for k in recipe_config if not k.startswith(('+', 'recipe')))}) nor "
                          f"{os.path.basename(train_path)} has them")
    if os.path.exists(out):
        raise InputError(f"output {out} already exists: choose a new folder (nothing was written)")
    shape, shape_source = _example_shape(metadata, train, overrides)
    guardrails = dict(recipe_config.get("guardrails") or {})
    guardrails.update({k.split("#", 1)[1]: v for k, v in overrides.items() if k.startswith("guardrails#")})
    validate_guardrails(guardrails)
    return {"metadata": metadata, "train": train, "train_path": train_path, "recipe": recipe_config,
            "recipe_path": path, "weights": weights, "shape": shape, "shape_source": shape_source,
            "guardrails": guardrails}
