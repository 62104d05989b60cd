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

The knobs and their values are in :mod:`.knob_values`, the bundle's pipeline and the timed runs in
:mod:`.knob_pipeline`, the choice and the report in :mod:`.knob_report`; their public names are importable from here.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from .._markdown import markdown_table  # noqa: F401
from ..errors import ConfigError, InputError, MonaiPruneError
from .dicom import dice  # noqa: F401  (the old name here: per class, 1.0 when both label maps lack the class)
from .knob_pipeline import (INFERENCE_CONFIGS, Pipeline, SettingRuns, dense_network, drop_savers,  # noqa: F401
                            inference_config, load_network, locate)
from .knob_report import carried, combined_setting, ship, ship_lines, summarise, to_markdown  # noqa: F401
from .knob_values import CHECKS, INFERER_KNOBS, KNOBS, check_knob_values, first_line, value_text  # noqa: F401

logger = logging.getLogger(__name__)


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
    images = _check_arguments(images, max_delta, repeats, warmup)
    choice = select_model(bundle, backend, precision)  # model files and configs verified here
    if choice.bundle is None:
        raise InputError(f"{bundle} is a lone model file: tune-pipeline needs the compressed bundle folder (its "
                         "configs/inference.json holds the pipeline)")
    root = choice.bundle
    name, config = inference_config(root)
    dropped = drop_savers(config)
    knobs = locate(name, config, list(values))
    _check_dimensions(knobs, values)
    metadata = bundle_metadata(root)
    train = _train_config(root)
    logger.info("tune-pipeline: %s (%s %s), %d image(s), SaveImage transforms dropped: %d", choice.name,
                choice.backend, choice.precision, len(images), dropped)

    settings = _settings(values, knobs)
    network = None if choice.backend == "torchscript" else load_network(choice.path, choice.backend)  # one session
    if dense is not None:
        reference, reference_name = dense_network(dense)
    else:
        reference, reference_name = None, f"{choice.name} (compressed, at the bundle's own setting)"
    baseline_pipeline = Pipeline(name, config, {})
    runs = SettingRuns(name, config, choice, images, metadata, network, baseline_pipeline,
                       _dense_labels(baseline_pipeline, images, reference), warmup, repeats)
    runs.measure(settings)
    baseline = settings[0]
    summarise(settings, baseline, max_delta)
    combined = combined_setting(settings)  # the best-saving passing value of every knob that saved time
    if combined is not None:
        again = {"knob": "baseline", "value": None, "overrides": {}}
        runs.measure([again, combined])
        summarise([again, combined], baseline, max_delta, seconds_from=again)
        combined["baseline_seconds"] = again["seconds"]
        settings.append(combined)

    for s in settings:  # what ships each setting; the raw measurements go
        s["carried_ids"] = [k for k in s["overrides"] if carried(k, config, train)]
        s["set"] = [ship(k if k in s["carried_ids"] else f"inference#{k}", v) for k, v in s["overrides"].items()]
        s.pop("_times", None)
        s.pop("_dice", None)
    base_values = {k: knobs[k]["baseline"] for k in KNOBS if k in knobs}
    result = {"bundle": root, "model": choice.to_dict(), "reference": reference_name, "images": images,
              "config": f"configs/{name}", "max_delta": max_delta, "repeats": repeats,
              "classes": [n for _, n in (runs.classes[1] if runs.classes else [])], "baseline": base_values,
              "knob_ids": {k: knobs[k]["key"] for k in knobs}, "rows": settings}
    result["lines"] = ship_lines(result)
    result["markdown"] = to_markdown(result)
    return result


def _check_arguments(images: Sequence[str], max_delta: float, repeats: int, warmup: int) -> List[str]:
    """ConfigError/InputError for a bad max_delta, repeats, warmup or image list; the images as strings."""
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
    return images


def _settings(values: Dict[str, List[Any]], knobs: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The baseline, then one setting per knob value that differs from the bundle's own, one knob at a time."""
    settings: List[Dict[str, Any]] = [{"knob": "baseline", "value": None, "overrides": {}}]
    for knob in KNOBS:
        for value in values.get(knob, []):
            if value != knobs[knob]["baseline"]:
                settings.append({"knob": knob, "value": value, "overrides": {knobs[knob]["key"]: value}})
    return settings


def _check_dimensions(knobs: Dict[str, Dict[str, Any]], values: Dict[str, List[Any]]) -> None:
    """roi/pixdim values must have as many numbers as the bundle's own setting."""
    for knob in ("roi", "pixdim"):
        if knob in knobs and isinstance(knobs[knob]["baseline"], list):
            dims = len(knobs[knob]["baseline"])
            bad = [v for v in values.get(knob, []) if len(v) != dims]
            if bad:
                raise ConfigError(f"{knob} {value_text(bad[0])} has {len(bad[0])} values but the bundle's "
                                  f"{knobs[knob]['key']} has {dims} ({value_text(knobs[knob]['baseline'])})")


def _train_config(root: str) -> Optional[Dict[str, Any]]:
    """The bundle's configs/train.json, None when it has none or it is not JSON."""
    train_path = os.path.join(root, "configs", "train.json")
    if os.path.isfile(train_path):
        try:
            with open(train_path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return None
    return None


def _dense_labels(baseline: Pipeline, images: Sequence[str], reference: Any) -> List[Any]:
    """The dense reference's labels of every image at the baseline setting ([] without a dense reference: the
    baseline's own labels become the reference)."""
    references: List[Any] = []
    for image in images if reference is not None else []:
        try:
            references.append(baseline(image, reference)[1])
        except MonaiPruneError:
            raise
        except Exception as e:
            raise InputError(f"the dense reference failed on {os.path.basename(image)}: {first_line(e)}") from e
    return references
