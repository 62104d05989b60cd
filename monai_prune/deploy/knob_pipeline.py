"""The bundle's own pipeline at one knob setting: its inference config, where each knob is set in it, the
preprocessing -> inferer -> postprocessing run on one image (:class:`Pipeline`), the networks it runs, and the
interleaved timed runs of settings with their per-class Dice against the reference labels (:class:`SettingRuns`)."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError, InputError, MonaiPruneError
from .knob_values import INFERER_KNOBS, first_line, value_text

logger = logging.getLogger(__name__)

INFERENCE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
_REFERENCE = re.compile(r"@([A-Za-z0-9_]+(?:#[A-Za-z0-9_]+)*)")


def inference_config(root: str) -> Tuple[str, Dict[str, Any]]:
    """The bundle's inference config: ``(file name, content)``, checked to hold the three pipeline ids."""
    from monai.bundle import ConfigParser

    for name in INFERENCE_CONFIGS:
        path = os.path.join(root, "configs", name)
        if os.path.isfile(path):
            try:
                config = ConfigParser.load_config_file(path)
            except Exception as e:
                raise InputError(f"configs/{name} is not valid JSON/YAML: {first_line(e)}") from e
            if not isinstance(config, dict):
                raise InputError(f"configs/{name} is not a config object")
            for key in ("preprocessing", "inferer", "postprocessing"):
                if key not in config:
                    raise ConfigError(f"configs/{name} has no `{key}` id: tune-pipeline runs the bundle's own "
                                      "preprocessing, inferer and postprocessing")
            return name, config
    raise InputError(f"{os.path.basename(root)} has no configs/inference.json")


def _target(node: Any) -> str:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(node, dict) else ""


def drop_savers(config: Dict[str, Any]) -> int:
    """Take ``SaveImage``/``SaveImaged`` out of the postprocessing (nothing is written anywhere); how many."""
    post = config.get("postprocessing")
    if isinstance(post, dict) and isinstance(post.get("transforms"), list):
        kept = [t for t in post["transforms"] if not _target(t).startswith("SaveImage")]
        dropped = len(post["transforms"]) - len(kept)
        post["transforms"] = kept
        return dropped
    return 0


def _follow(config: Dict[str, Any], path: str) -> str:
    """The id a knob is set at: ``path``, or the id its value refers to (``"@roi_size"`` -> ``roi_size``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    for _ in range(8):
        try:
            value = parser[path]
        except (KeyError, IndexError, ValueError):
            return path
        match = _REFERENCE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            return path
        path = match.group(1)
    return path


def _plain(value: Any) -> Any:
    """A config value as plain JSON numbers/lists (numpy arrays, tuples, tensors made plain)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def locate(name: str, config: Dict[str, Any], wanted: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """For each wanted knob: the id it is set at and its baseline value; ConfigError where the config has no place
    for it."""
    from monai.bundle import ConfigParser
    from monai.inferers import SlidingWindowInferer

    parser = ConfigParser(copy.deepcopy(config))
    found: Dict[str, Dict[str, Any]] = {}
    inferer_knobs = [k for k in wanted if k in INFERER_KNOBS]
    if inferer_knobs:
        try:
            inferer = parser.get_parsed_content("inferer")
        except Exception as e:
            raise ConfigError(f"configs/{name}: could not build `inferer`: {first_line(e)}") from e
        if not isinstance(inferer, SlidingWindowInferer) or not isinstance(config.get("inferer"), dict):
            flags = ", ".join("--" + k.replace("_", "-") for k in inferer_knobs)
            raise ConfigError(f"configs/{name}: `inferer` is {type(inferer).__name__}, not a SlidingWindowInferer "
                              f"configured in place: the {', '.join(inferer_knobs)} knob(s) need one (drop {flags})")
        for knob in inferer_knobs:
            argument = INFERER_KNOBS[knob]
            baseline = _plain(getattr(inferer, argument))
            if knob == "roi" and isinstance(baseline, list):
                baseline = [int(v) for v in baseline]
            found[knob] = {"key": _follow(config, f"inferer#{argument}"), "baseline": baseline}
    if "pixdim" in wanted:
        transforms = config["preprocessing"].get("transforms") if isinstance(config["preprocessing"], dict) else None
        index = next((i for i, t in enumerate(transforms or []) if _target(t) == "Spacingd"), None)
        if index is None:
            raise ConfigError(f"configs/{name}: `preprocessing` has no Spacingd transform: the pixdim knob (inference "
                              "resolution) needs one (drop --pixdim)")
        path = f"preprocessing#transforms#{index}#pixdim"
        try:
            baseline = _plain(parser.get_parsed_content(path))
        except Exception as e:
            raise ConfigError(f"configs/{name}: could not read {path}: {first_line(e)}") from e
        found["pixdim"] = {"key": _follow(config, path), "baseline": baseline}
    return found


class Pipeline:
    """The bundle's preprocessing, inferer and postprocessing for one setting (built by one parser, so that the
    postprocessing's ``Invertd`` inverts this very preprocessing)."""

    def __init__(self, name: str, config: Dict[str, Any], overrides: Dict[str, Any]) -> None:
        from monai.bundle import ConfigParser
        from monai.transforms import Compose

        parser = ConfigParser(copy.deepcopy(config))
        for key, value in overrides.items():
            parser[key] = copy.deepcopy(value)
        parts = {}
        for key in ("preprocessing", "inferer", "postprocessing"):
            try:
                parts[key] = parser.get_parsed_content(key)
            except Exception as e:
                with_ = f" with {json.dumps(overrides)}" if overrides else ""
                raise ConfigError(f"configs/{name}: could not build `{key}`{with_}: {first_line(e)}") from e
        self.pre, self.inferer, self.post = parts["preprocessing"], parts["inferer"], parts["postprocessing"]
        if isinstance(self.post, Compose):  # a saver defined outside the postprocessing's own list
            self.post.transforms = [t for t in self.post.transforms if not type(t).__name__.startswith("SaveImage")]

    def __call__(self, image: str, network) -> Tuple[float, Any]:
        """(seconds, labels) of one image end to end: the label map as the postprocessing leaves it."""
        import torch

        start = time.perf_counter()
        try:
            data = self.pre({"image": image})
        except Exception as e:
            raise InputError(f"cannot read or preprocess image {image}: {first_line(e)}") from e
        if isinstance(data, list):  # a preprocessing that crops several samples: not an inference pipeline
            raise ConfigError("the bundle's preprocessing returns several samples per image: not an inference "
                              "pipeline")
        with torch.no_grad():
            pred = self.inferer(inputs=torch.as_tensor(data["image"])[None].float(), network=network)
        data["pred"] = pred[0]
        out = self.post(data)
        seconds = time.perf_counter() - start
        labels = out["pred"] if isinstance(out, dict) else out
        return seconds, torch.as_tensor(labels).detach().cpu()


# ---------------------------------------------------------------------------------------------------- metrics
def label_masks(labels, classes: int):
    """Per-class boolean masks of a label map: one channel of class indices, or one channel per class."""
    if labels.shape[0] == 1:
        index = labels[0].float().round().long()
        return [index == c for c in range(classes)]
    return [labels[c] > 0.5 for c in range(min(classes, labels.shape[0]))]


def foreground_classes(metadata: Dict[str, Any], labels) -> Tuple[int, List[Tuple[int, str]]]:
    """The number of classes and (channel, name) of the foreground ones, from the metadata's ``channel_def``
    (background names left out), else from the labels."""
    from ..fidelity import BACKGROUND_NAMES, class_names

    pred = (metadata.get("network_data_format") or {}).get("outputs", {}).get("pred", {})
    channel_def = pred.get("channel_def") or {}
    count = pred.get("num_channels") or (max(int(k) for k in channel_def) + 1 if channel_def else 0)
    if not count:
        count = int(labels.shape[0]) if labels.shape[0] > 1 else max(2, int(labels.max()) + 1)
    names = class_names(channel_def, int(count))
    return int(count), [(c, n) for c, n in enumerate(names) if n.lower() not in BACKGROUND_NAMES]


# ---------------------------------------------------------------------------------------------------- networks
def load_network(path: str, backend: str):
    """A model file loaded by the runtime of ``backend``."""
    from ..runtime import Predictor

    return Predictor(path, backend=backend)


def dense_network(dense: str):
    """The dense reference (a TorchScript file or a bundle folder) loaded: ``(network, name)``."""
    from .models import select_model

    if not os.path.exists(dense):
        raise InputError(f"dense model {dense} does not exist")
    if os.path.isdir(dense):
        choice = select_model(dense, backend="torchscript", precision="fp32")
        return load_network(choice.path, "torchscript"), f"{choice.name} (dense, {os.path.basename(choice.path)})"
    if not dense.endswith(".ts"):
        raise InputError(f"dense model {dense} is not a TorchScript file (.ts) or a bundle folder")
    logger.warning("%s: dense reference not verified against a recorded checksum", dense)
    return load_network(dense, "torchscript"), os.path.basename(dense)



# ---------------------------------------------------------------------------------------------------- measuring
class SettingRuns:
    """Runs settings (``{"knob", "value", "overrides"}`` dicts) of one bundle's pipeline on the images, interleaved,
    and records in each its seconds per image and repeat (``_times``) and its per-class Dice against the reference
    labels (``_dice``; a class absent from both label maps scores 1.0: they agree).

    ``references`` holds the reference labels per image: the dense model's, or, left empty, the labels of the first
    setting measured (the baseline) fill it on its first run.
    """

    def __init__(self, name: str, config: Dict[str, Any], choice: Any, images: Sequence[str],
                 metadata: Dict[str, Any], network: Any, baseline: Pipeline, references: List[Any], warmup: int,
                 repeats: int) -> None:
        self.name, self.config, self.choice, self.images = name, config, choice, list(images)
        self.metadata, self.network, self.baseline, self.references = metadata, network, baseline, references
        self.warmup, self.repeats = warmup, repeats
        self.classes: Optional[Tuple[int, List[Tuple[int, str]]]] = None

    def measure(self, group: List[Dict[str, Any]]) -> None:
        pipelines = [self.baseline if not s["overrides"] else Pipeline(self.name, self.config, s["overrides"])
                     for s in group]
        # TorchScript specializes (and fuses) for the input shapes it sees: one loaded copy per setting, as in a
        # deployed process that runs one setting, so that interleaving does not make every setting re-specialize
        choice = self.choice
        networks = [load_network(choice.path, choice.backend) for _ in group] if choice.backend == "torchscript" \
            else [self.network] * len(group)
        for s in group:
            s["_times"] = [[] for _ in self.images]
            s["_dice"] = []
        for _ in range(self.warmup):
            for s, pipeline, net in zip(group, pipelines, networks):
                self.run(s, pipeline, self.images[0], net)
        for r in range(self.repeats):
            for i, image in enumerate(self.images):
                shift = (r + i) % len(group)  # interleaved: every setting runs first as often as the others
                order = list(range(len(group)))[shift:] + list(range(len(group)))[:shift]
                if r == 0:
                    order = list(range(len(group)))  # the baseline first: its labels may be the reference
                for k in order:
                    seconds, labels = self.run(group[k], pipelines[k], image, networks[k])
                    group[k]["_times"][i].append(seconds)
                    if not r:
                        self._score(group[k], i, image, labels)

    def _score(self, s: Dict[str, Any], i: int, image: str, labels: Any) -> None:
        from ..fidelity.metrics import dice

        if len(self.references) <= i:
            self.references.append(labels)
        ref = self.references[i]
        if tuple(labels.shape) != tuple(ref.shape):
            raise ConfigError(f"{setting_label(s)}: the labels of {os.path.basename(image)} are "
                              f"{tuple(labels.shape)} but the reference's are {tuple(ref.shape)}: the "
                              "bundle's postprocessing does not bring predictions back to the image grid "
                              "(Invertd), so they cannot be compared")
        if self.classes is None:
            self.classes = foreground_classes(self.metadata, ref)
        count, foreground = self.classes
        ref_masks, masks = label_masks(ref, count), label_masks(labels, count)
        s["_dice"].append({n: dice(masks[c], ref_masks[c], empty=1.0) for c, n in foreground  # absent in both: agree
                           if c < len(masks) and c < len(ref_masks)})

    def run(self, s: Dict[str, Any], pipeline: Pipeline, image: str, net: Any) -> Tuple[float, Any]:
        """One setting on one image: ``(seconds, labels)``; its failure names the setting."""
        try:
            return pipeline(image, net)
        except MonaiPruneError as e:
            if s["knob"] == "baseline":
                raise
            raise type(e)(f"{setting_label(s)}: {e}") from e
        except Exception as e:
            raise InputError(f"{setting_label(s)} failed on {os.path.basename(image)}: {first_line(e)}") from e


def setting_label(s: Dict[str, Any]) -> str:
    """How a setting is named in messages: ``baseline``, ``overlap 0.1``, ``combined overlap 0.1, roi 64x64x64``."""
    if s["knob"] == "baseline":
        return "baseline"
    if s["knob"] == "combined":
        return "combined " + ", ".join(f"{k} {value_text(v)}" for k, v in s["value"].items())
    return f"{s['knob']} {value_text(s['value'])}"
