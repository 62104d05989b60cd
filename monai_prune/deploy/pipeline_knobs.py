"""Pipeline knobs of a compressed bundle, measured end to end under the per-class guardrail.

Compression makes the network faster; in the clinic the rest of the pipeline matters as much: the sliding-window
``overlap``, ``sw_batch_size``, the window size (``roi``) and the inference resolution (``Spacingd``'s ``pixdim``).
:func:`tune_pipeline` runs the bundle's own ``preprocessing`` -> ``inferer`` -> ``postprocessing`` (from its verified
``configs/inference.json``, ``SaveImage`` left out) around its verified model on the given images, once at the
bundle's own setting (the baseline) and once per knob value, one knob changed at a time, then all the individually
passing knobs combined, and measures for each setting:

* end-to-end seconds per image (preprocessing + inferer + postprocessing: median over ``repeats``, the settings
  interleaved, after an untimed warm-up run of each setting), and the saving against the baseline;
* per-class Dice of its labels against reference labels: the dense model's (``dense=``) or else the compressed
  model's, at the baseline setting; a class absent from both label maps counts as Dice 1.0 (they agree);
* per-class ΔDice against the compressed baseline's Dice-vs-reference; a setting passes when every foreground class
  (``channel_def``) keeps ``ΔDice >= -max_delta``.

For every passing setting it prints the ``--set KEY=VALUE`` overrides that select it: the top-level id the config
refers to (``pixdim``, ``roi_size`` ...) or the id path (``inferer#overlap``). ``monai-prune compress-bundle`` carries
``--set`` values of top-level ids that both ``train.json`` and ``inference.json`` hold into the compressed bundle's
``configs/inference.json`` (and fine-tunes with them: ``pixdim``/``roi_size`` then also change training); a nested id
such as ``inferer#overlap`` is not carried, which the report says next to the line.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .._markdown import markdown_table
from ..errors import ConfigError, InputError, MonaiPruneError
from .dicom import dice  # per class: 1.0 when both label maps agree the class is absent

logger = logging.getLogger(__name__)

KNOBS = ("overlap", "sw_batch_size", "roi", "pixdim")
INFERER_KNOBS = {"overlap": "overlap", "sw_batch_size": "sw_batch_size", "roi": "roi_size"}  # knob -> argument
INFERENCE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
_REFERENCE = re.compile(r"@([A-Za-z0-9_]+(?:#[A-Za-z0-9_]+)*)")


def _first_line(error: BaseException) -> str:
    cause = error
    while cause.__cause__ is not None:  # MONAI wraps a transform's or constructor's error
        cause = cause.__cause__
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


# ---------------------------------------------------------------------------------------------------- knob values
def _numbers(knob: str, value: Any, kind: type) -> List[Any]:
    """``value`` (a sequence, or text like ``96,96,96`` / ``96x96x96``) as a list of ``kind``."""
    if isinstance(value, str):
        text = value.strip().strip("[]()").strip()
        parts = re.split(r"\s*[,x]\s*|\s+", text) if text else []
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    out = []
    for part in parts:
        try:
            if isinstance(part, bool):
                raise ValueError
            number = float(part)
            if kind is int:
                if not number.is_integer():
                    raise ValueError
                number = int(number)
        except (TypeError, ValueError):
            raise ConfigError(f"{knob} {_show(value)}: expected {'integers' if kind is int else 'numbers'} "
                              f"separated by commas (e.g. {'96,96,96' if kind is int else '1.5,1.5,2'}), got "
                              f"{part!r}") from None
        out.append(number)
    return out


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value if value.strip() else repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _overlap(value: Any) -> float:
    numbers = _numbers("overlap", value, float)
    if len(numbers) != 1 or not (0.0 <= numbers[0] < 1.0):
        raise ConfigError(f"overlap {_show(value)} is not one number in [0, 1) (the fraction by which sliding "
                          "windows overlap)")
    return numbers[0]


def _sw_batch_size(value: Any) -> int:
    numbers = _numbers("sw_batch_size", value, int)
    if len(numbers) != 1 or numbers[0] < 1:
        raise ConfigError(f"sw_batch_size {_show(value)} is not one positive integer (windows per network call)")
    return numbers[0]


def _roi(value: Any) -> List[int]:
    numbers = _numbers("roi", value, int)
    if not numbers or any(n < 1 for n in numbers):
        raise ConfigError(f"roi {_show(value)} is not a list of positive integers like 96,96,96 (the window size)")
    return numbers


def _pixdim(value: Any) -> List[float]:
    numbers = _numbers("pixdim", value, float)
    if len(numbers) != 3 or any(not math.isfinite(n) or n <= 0 for n in numbers):
        raise ConfigError(f"pixdim {_show(value)} is not 3 positive numbers like 1.5,1.5,2 (the voxel spacing in mm "
                          "images are resampled to)")
    return numbers


CHECKS = {"overlap": _overlap, "sw_batch_size": _sw_batch_size, "roi": _roi, "pixdim": _pixdim}


def check_knob_values(overlaps: Optional[Sequence[Any]] = None, sw_batch_sizes: Optional[Sequence[Any]] = None,
                      roi_sizes: Optional[Sequence[Any]] = None,
                      pixdims: Optional[Sequence[Any]] = None) -> Dict[str, List[Any]]:
    """The knob values as numbers (text such as ``"96,96,96"`` accepted), duplicates dropped, in the given order;
    :class:`ConfigError` for the first invalid one."""
    given = {"overlap": overlaps, "sw_batch_size": sw_batch_sizes, "roi": roi_sizes, "pixdim": pixdims}
    values: Dict[str, List[Any]] = {}
    for knob, items in given.items():
        if items is None:
            continue
        if isinstance(items, (str, int, float)):
            items = [items]
        elif knob in ("roi", "pixdim") and all(isinstance(v, (int, float)) for v in items):
            items = [items]  # one size given as a flat list of numbers: [96, 96, 96]
        checked: List[Any] = []
        for item in items:
            value = CHECKS[knob](item)
            if value not in checked:
                checked.append(value)
        if checked:
            values[knob] = checked
    if not values:
        raise ConfigError("no knob values to measure: give at least one of overlap, sw_batch_size, roi, pixdim "
                          "(--overlap, --sw-batch-size, --roi, --pixdim)")
    return values


# ---------------------------------------------------------------------------------------------------- the config
def _inference_config(root: str) -> Tuple[str, Dict[str, Any]]:
    from monai.bundle import ConfigParser

    for name in INFERENCE_CONFIGS:
        path = os.path.join(root, "configs", name)
        if os.path.isfile(path):
            try:
                config = ConfigParser.load_config_file(path)
            except Exception as e:
                raise InputError(f"configs/{name} is not valid JSON/YAML: {_first_line(e)}") from e
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


def _drop_savers(config: Dict[str, Any]) -> int:
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


def _locate(name: str, config: Dict[str, Any], wanted: Sequence[str]) -> Dict[str, Dict[str, Any]]:
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
            raise ConfigError(f"configs/{name}: could not build `inferer`: {_first_line(e)}") from e
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
            raise ConfigError(f"configs/{name}: could not read {path}: {_first_line(e)}") from e
        found["pixdim"] = {"key": _follow(config, path), "baseline": baseline}
    return found


class _Pipeline:
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
                raise ConfigError(f"configs/{name}: could not build `{key}`{with_}: {_first_line(e)}") from e
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
            raise InputError(f"cannot read or preprocess image {image}: {_first_line(e)}") from e
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
def _masks(labels, classes: int):
    """Per-class boolean masks of a label map: one channel of class indices, or one channel per class."""
    if labels.shape[0] == 1:
        index = labels[0].float().round().long()
        return [index == c for c in range(classes)]
    return [labels[c] > 0.5 for c in range(min(classes, labels.shape[0]))]


def _classes(metadata: Dict[str, Any], labels) -> Tuple[int, List[Tuple[int, str]]]:
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


# ---------------------------------------------------------------------------------------------------- tune
def _network(path: str, backend: str):
    from ..runtime import Predictor

    return Predictor(path, backend=backend)


def _dense_network(dense: str):
    from .models import select_model

    if not os.path.exists(dense):
        raise InputError(f"dense model {dense} does not exist")
    if os.path.isdir(dense):
        choice = select_model(dense, backend="torchscript", precision="fp32")
        return _network(choice.path, "torchscript"), f"{choice.name} (dense, {os.path.basename(choice.path)})"
    if not dense.endswith(".ts"):
        raise InputError(f"dense model {dense} is not a TorchScript file (.ts) or a bundle folder")
    logger.warning("%s: dense reference not verified against a recorded checksum", dense)
    return _network(dense, "torchscript"), os.path.basename(dense)


def _ship(key: str, value: Any) -> str:
    return f"--set {key}={json.dumps(value, separators=(',', ':'))}"


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _carried(key: str, config: Dict[str, Any], train: Optional[Dict[str, Any]]) -> bool:
    """Whether ``compress-bundle --set key=...`` records the value in the compressed ``configs/inference.json``
    (:func:`monai_prune.bundle_configs.rewrite_configs`: top-level ids of inference.json that train.json has)."""
    return ("#" not in key and key in config and not isinstance(config[key], dict)
            and isinstance(train, dict) and key in train)


def tune_pipeline(bundle: str, images: Sequence[str], dense: Optional[str] = None, backend: str = "auto",
                  precision: str = "auto", overlaps: Optional[Sequence[Any]] = None,
                  sw_batch_sizes: Optional[Sequence[Any]] = None, roi_sizes: Optional[Sequence[Any]] = None,
                  pixdims: Optional[Sequence[Any]] = None, max_delta: float = 0.01, repeats: int = 1,
                  warmup: int = 2) -> Dict[str, Any]:
    """Measure the pipeline knobs of a compressed bundle on ``images``, under the per-class guardrail.

    Args:
        bundle: the compressed bundle folder (model files and configs are checked against their sha256 first).
        images: image files (or DICOM series folders) the bundle's ``LoadImaged`` reads.
        dense: the dense model (a TorchScript file, e.g. from ``python -m monai.bundle ckpt_export``, or a bundle
            folder) whose labels at the baseline setting are the reference; default: the compressed model's.
        backend, precision: which model file of the bundle runs (:func:`~monai_prune.deploy.models.select_model`).
        overlaps, sw_batch_sizes, roi_sizes, pixdims: the values to try, one knob changed at a time from the
            bundle's own setting (text such as ``"96,96,96"`` accepted).
        max_delta: largest Dice drop allowed for any class against the compressed baseline.
        repeats: timed runs per image and setting (the median is kept); settings are interleaved.
        warmup: untimed runs of each setting on the first image before timing (TorchScript optimizes a graph on
            its second call; each setting runs its own loaded copy of a TorchScript model).

    Returns:
        ``{"rows": [...], "markdown": ..., "lines": [...], "baseline": {...}, "reference": ..., "model": {...},
        ...}``: one row per setting (``knob``, ``value``, ``overrides``, ``set``, ``seconds``, ``saving_pct``,
        ``dice``/``delta_dice`` per class, ``worst_delta_dice``, ``worst_class``, ``passed``, ``carried_ids``: the
        ids ``compress-bundle --set`` records in the compressed inference config).
    """
    # MONAI's DICOM reader warns once per series that the GPU decoder (nvImageCodec) is missing: nothing a CPU user
    # can act on, and it decodes with pydicom either way
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    from .models import bundle_metadata, select_model

    values = check_knob_values(overlaps, sw_batch_sizes, roi_sizes, pixdims)
    if isinstance(max_delta, bool) or not isinstance(max_delta, (int, float)) or not (0 <= max_delta <= 1):
        raise ConfigError(f"max_delta {max_delta!r} is not a number in [0, 1] (the largest per-class Dice drop)")
    for what, count in (("repeats", repeats), ("warmup", warmup)):
        if isinstance(count, bool) or not isinstance(count, int) or count < (1 if what == "repeats" else 0):
            raise ConfigError(f"{what} must be an integer >= {1 if what == 'repeats' else 0}, got {count!r}")
    images = [str(i) for i in ([images] if isinstance(images, (str, os.PathLike)) else list(images or []))]
    if not images:
        raise InputError("no images given: pass the image files to measure on (--images a.nii.gz b.nii.gz)")
    for image in images:
        if not os.path.exists(image):
            raise InputError(f"image {image} does not exist")
        if not os.access(image, os.R_OK):
            raise InputError(f"image {image} is not readable")

    choice = select_model(bundle, backend, precision)  # model files and configs verified here
    if choice.bundle is None:
        raise InputError(f"{bundle} is a lone model file: tune-pipeline needs the compressed bundle folder (its "
                         "configs/inference.json holds the pipeline)")
    root = choice.bundle
    name, config = _inference_config(root)
    dropped = _drop_savers(config)
    knobs = _locate(name, config, list(values))
    for knob in ("roi", "pixdim"):
        if knob in knobs and isinstance(knobs[knob]["baseline"], list):
            dims = len(knobs[knob]["baseline"])
            bad = [v for v in values.get(knob, []) if len(v) != dims]
            if bad:
                raise ConfigError(f"{knob} {_value_text(bad[0])} has {len(bad[0])} values but the bundle's "
                                  f"{knobs[knob]['key']} has {dims} ({_value_text(knobs[knob]['baseline'])})")
    metadata = bundle_metadata(root)
    train = None
    train_path = os.path.join(root, "configs", "train.json")
    if os.path.isfile(train_path):
        try:
            with open(train_path) as f:
                train = json.load(f)
        except (OSError, json.JSONDecodeError):
            train = None
    logger.info("tune-pipeline: %s (%s %s), %d image(s), SaveImage transforms dropped: %d", choice.name,
                choice.backend, choice.precision, len(images), dropped)

    settings: List[Dict[str, Any]] = [{"knob": "baseline", "value": None, "overrides": {}}]
    for knob in KNOBS:
        for value in values.get(knob, []):
            if value != knobs[knob]["baseline"]:
                settings.append({"knob": knob, "value": value, "overrides": {knobs[knob]["key"]: value}})
    network = None if choice.backend == "torchscript" else _network(choice.path, choice.backend)  # one session
    if dense is not None:
        reference, reference_name = _dense_network(dense)
    else:
        reference, reference_name = None, f"{choice.name} (compressed, at the bundle's own setting)"

    baseline_pipeline = _Pipeline(name, config, {})
    references: List[Any] = []
    for image in images if reference is not None else []:
        try:
            references.append(baseline_pipeline(image, reference)[1])
        except MonaiPruneError:
            raise
        except Exception as e:
            raise InputError(f"the dense reference failed on {os.path.basename(image)}: {_first_line(e)}") from e
    classes: Optional[Tuple[int, List[Tuple[int, str]]]] = None

    def measure(group: List[Dict[str, Any]]) -> None:
        nonlocal classes
        pipelines = [baseline_pipeline if not s["overrides"] else _Pipeline(name, config, s["overrides"])
                     for s in group]
        # TorchScript specializes (and fuses) for the input shapes it sees: one loaded copy per setting, as in a
        # deployed process that runs one setting, so that interleaving does not make every setting re-specialize
        networks = [_network(choice.path, choice.backend) for _ in group] if choice.backend == "torchscript" \
            else [network] * len(group)
        for s in group:
            s["_times"] = [[] for _ in images]
            s["_dice"] = []
        for _ in range(warmup):
            for s, pipeline, net in zip(group, pipelines, networks):
                _run(s, pipeline, images[0], net)
        for r in range(repeats):
            for i, image in enumerate(images):
                shift = (r + i) % len(group)  # interleaved: every setting runs first as often as the others
                order = list(range(len(group)))[shift:] + list(range(len(group)))[:shift]
                if r == 0:
                    order = list(range(len(group)))  # the baseline first: its labels may be the reference
                for k in order:
                    s, pipeline = group[k], pipelines[k]
                    seconds, labels = _run(s, pipeline, image, networks[k])
                    s["_times"][i].append(seconds)
                    if r:
                        continue
                    if len(references) <= i:
                        references.append(labels)
                    ref = references[i]
                    if tuple(labels.shape) != tuple(ref.shape):
                        raise ConfigError(f"{_label(s)}: the labels of {os.path.basename(image)} are "
                                          f"{tuple(labels.shape)} but the reference's are {tuple(ref.shape)}: the "
                                          "bundle's postprocessing does not bring predictions back to the image grid "
                                          "(Invertd), so they cannot be compared")
                    if classes is None:
                        classes = _classes(metadata, ref)
                    count, foreground = classes
                    ref_masks, masks = _masks(ref, count), _masks(labels, count)
                    s["_dice"].append({n: dice(masks[c], ref_masks[c], label=True) for c, n in foreground
                                       if c < len(masks) and c < len(ref_masks)})

    def _run(s, pipeline, image, net):
        try:
            return pipeline(image, net)
        except MonaiPruneError as e:
            if s["knob"] == "baseline":
                raise
            raise type(e)(f"{_label(s)}: {e}") from e
        except Exception as e:
            raise InputError(f"{_label(s)} failed on {os.path.basename(image)}: {_first_line(e)}") from e

    measure(settings)
    baseline = settings[0]
    _summarise(settings, baseline, max_delta)

    # the combined row: the best-saving passing value of every knob that saved time
    best: Dict[str, Dict[str, Any]] = {}
    for s in settings[1:]:
        if s["passed"] and s["saving_pct"] > 0 and (s["knob"] not in best
                                                    or s["saving_pct"] > best[s["knob"]]["saving_pct"]):
            best[s["knob"]] = s
    if len(best) >= 2:
        overrides: Dict[str, Any] = {}
        for s in best.values():
            overrides.update(s["overrides"])
        again = {"knob": "baseline", "value": None, "overrides": {}}
        combined = {"knob": "combined", "value": {s["knob"]: s["value"] for s in best.values()},
                    "overrides": overrides}
        measure([again, combined])
        _summarise([again, combined], baseline, max_delta, seconds_from=again)
        combined["baseline_seconds"] = again["seconds"]
        settings.append(combined)

    for s in settings:
        s["carried_ids"] = [k for k in s["overrides"] if _carried(k, config, train)]
        s["set"] = [_ship(k if k in s["carried_ids"] else f"inference#{k}", v) for k, v in s["overrides"].items()]
        s.pop("_times", None)
        s.pop("_dice", None)
    base_values = {k: knobs[k]["baseline"] for k in KNOBS if k in knobs}
    result = {"bundle": root, "model": choice.to_dict(), "reference": reference_name, "images": images,
              "config": f"configs/{name}", "max_delta": max_delta, "repeats": repeats,
              "classes": [n for _, n in (classes[1] if classes else [])], "baseline": base_values,
              "knob_ids": {k: knobs[k]["key"] for k in knobs}, "rows": settings}
    result["lines"] = ship_lines(result)
    result["markdown"] = to_markdown(result)
    return result


def _label(s: Dict[str, Any]) -> str:
    if s["knob"] == "baseline":
        return "baseline"
    if s["knob"] == "combined":
        return "combined " + ", ".join(f"{k} {_value_text(v)}" for k, v in s["value"].items())
    return f"{s['knob']} {_value_text(s['value'])}"


def _summarise(group: List[Dict[str, Any]], baseline: Dict[str, Any], max_delta: float,
               seconds_from: Optional[Dict[str, Any]] = None) -> None:
    """seconds (mean over images of the median over repeats), saving, mean per-class Dice, ΔDice, pass."""
    for s in group:
        s["seconds_per_image"] = [statistics.median(t) for t in s["_times"]]
        s["seconds"] = statistics.fmean(s["seconds_per_image"])
        names = list(s["_dice"][0]) if s["_dice"] else []
        s["dice"] = {n: statistics.fmean(d[n] for d in s["_dice"]) for n in names}
    base_dice = baseline["dice"]
    base_seconds = (seconds_from or baseline)["seconds"]
    for s in group:
        s["saving_pct"] = 100.0 * (1.0 - s["seconds"] / base_seconds) if base_seconds > 0 else 0.0
        s["delta_dice"] = {n: s["dice"][n] - base_dice[n] for n in s["dice"]}
        if s["delta_dice"]:
            s["worst_class"] = min(s["delta_dice"], key=s["delta_dice"].get)
            s["worst_delta_dice"] = s["delta_dice"][s["worst_class"]]
        else:
            s["worst_class"], s["worst_delta_dice"] = None, 0.0
        s["passed"] = all(d >= -max_delta for d in s["delta_dice"].values())


# ---------------------------------------------------------------------------------------------------- report
def _before_after(result: Dict[str, Any], row: Dict[str, Any]) -> str:
    base = result["baseline"]
    if row["knob"] == "baseline":
        return ", ".join(f"{k} {_value_text(v)}" for k, v in base.items())
    if row["knob"] == "combined":
        return ", ".join(f"{k} {_value_text(base[k])} -> {_value_text(v)}" for k, v in row["value"].items())
    return f"{_value_text(base[row['knob']])} -> {_value_text(row['value'])}"


def ship_lines(result: Dict[str, Any]) -> List[str]:
    """One line per passing setting: what it costs, what it saves, and the ``--set`` overrides that ship it."""
    lines = []
    for row in result["rows"]:
        if row["knob"] == "baseline" or not row["passed"]:
            continue
        what = "combined: " if row["knob"] == "combined" else f"{row['knob']} "
        saving = row["saving_pct"]
        time_text = f"saves {saving:.0f}%" if saving >= 0 else f"costs {-saving:.0f}% more time"
        worst = (f"worst ΔDice {row['worst_delta_dice']:+.4f} ({row['worst_class']})" if row["worst_class"]
                 else "no foreground class measured")
        lines.append(f"{what}{_before_after(result, row)}: {worst}, {time_text}; ship: {' '.join(row['set'])}"
                     + _carry_note(row))
    return lines


def _carry_note(row: Dict[str, Any]) -> str:
    """Which of a row's ``--set`` ids ``compress-bundle`` records in the compressed ``configs/inference.json``."""
    carried = [k for k in row["overrides"] if k in row["carried_ids"]]
    missing = [k for k in row["overrides"] if k not in row["carried_ids"]]
    notes = []
    if carried:
        notes.append(f"compress-bundle records {', '.join(carried)} in configs/inference.json and, as train.json "
                     "has it too, fine-tunes with it")
    if missing:
        notes.append(f"inference#{', inference#'.join(missing)}: compress-bundle writes it into configs/inference.json "
                     "only (fine-tuning unchanged)")
    return f" ({'; '.join(notes)})" if notes else ""


def to_markdown(result: Dict[str, Any]) -> str:
    rows = []
    for row in result["rows"]:
        value = _before_after(result, row)
        dice_text = ", ".join(f"{n} {d:.4f}" for n, d in row["dice"].items()) or "-"
        worst = (f"{row['worst_delta_dice']:+.4f} ({row['worst_class']})" if row["worst_class"] else "-")
        saving = "-" if row["knob"] == "baseline" else f"{row['saving_pct']:+.1f}%"
        rows.append([row["knob"], value, f"{row['seconds']:.3f}", saving, worst, dice_text,
                     "PASS" if row["passed"] else "FAIL"])
    model = result["model"]
    text = [f"Pipeline knobs of {model['name']} ({model['backend']} {model['precision']}, {model['path']}) on "
            f"{len(result['images'])} image(s), {result['repeats']} timed run(s) each: seconds are end to end "
            "(preprocessing + inferer + postprocessing) per image; Dice is against the reference labels of "
            f"{result['reference']}; a setting passes when every class keeps ΔDice >= -{result['max_delta']:g} "
            "against the baseline.", "",
            markdown_table(["knob", "value", "seconds", "saving vs baseline", "worst class ΔDice",
                            "Dice vs reference", "pass"], rows)]
    lines = result.get("lines") or ship_lines(result)
    text += ["", "Ship a passing setting: `monai-prune tune-pipeline ... --write-bundle OUT` writes a copy of this "
             "bundle that runs the one saving most (same weights, measurements recorded), or compress the source "
             "bundle again with `monai-prune compress-bundle SRC ...` and these values:", ""]
    text += [f"- {line}" for line in lines] if lines else ["- no setting other than the baseline passed"]
    return "\n".join(text)
