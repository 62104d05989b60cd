"""``monai-prune time-pipeline``: a user's dense model and compressed bundle timed on their own DICOM series, the whole
pipeline (DICOM in, DICOM SEG out) and stage by stage, with the compressed SEG's per-class Dice against the dense SEG.

* before: the dense model (a ``ckpt_export`` TorchScript file or a bundle folder) through the SDK's own
  ``MonaiBundleInferenceOperator`` (``--operator stock``), one app process per study, launch to exit;
* after: the compressed bundle through monai-prune's operator at the chosen backend and precision, one app process
  per study, or (``resident=True``) one ``monai-prune serve`` process for every study: its first study counts from
  the process launch, the later ones (the steady state) from the moment the study is dropped into its inbox.

One untimed warm-up run of the dense pipeline, then ``rounds`` rounds, before and after interleaved (round ``r``
starts at variant ``r``), a short pause between runs; medians over the runs (:mod:`.pipeline_timing`). Accuracy needs
no label: both SEGs of each series are read back and compared class by class (the one Dice of monai_prune, a class
absent from both scores 1.0) and voxel by voxel. With ``write_bundle`` a copy of the bundle gets the result as its
fidelity card's end-to-end section (:attr:`~monai_prune.fidelity.FidelityCard.pipeline_s`); the bundle itself is never
changed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from .._markdown import markdown_table
from ..errors import ConfigError, InputError
from .pipeline_timing import (PAUSE_S, Variant, add_speedups, machine, pipeline_section, run_app, run_rounds,
                              summarize, write_card_pipeline)

logger = logging.getLogger(__name__)

CARD = os.path.join("docs", "fidelity_card.json")


def check_inputs(bundle: str, dense: str, series: Sequence[str], backend: str = "auto", precision: str = "auto",
                 rounds: int = 3, resident: bool = False, work: Optional[str] = None,
                 write_bundle: Optional[str] = None, modality: str = "CT") -> None:
    """Everything :func:`time_pipeline` can check before a run: one :class:`InputError`/:class:`ConfigError`."""
    from .models import bundle_root, select_model
    from .preflight import check_dicom_input
    from .tuned_bundle import check_target

    if rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {rounds}")
    if not series:
        raise InputError("no --series: give one or more DICOM series folders")
    if resident and rounds < 2:
        raise ConfigError("--resident needs a steady state after the first study for every series: --rounds 2 or "
                          "more (the resident process's first study is its start-up)")
    if not os.path.isdir(bundle) or bundle_root(bundle) != os.path.abspath(bundle):
        raise InputError(f"BUNDLE {bundle} is not a compressed bundle folder (configs/metadata.json)")
    if write_bundle:  # the cheap checks first: nothing is read or logged for a refused command
        check_target(bundle, write_bundle)
        if not os.path.isfile(os.path.join(bundle, CARD)):
            raise InputError(f"--write-bundle: {bundle} has no {CARD} to carry the end-to-end section (a bundle "
                             "written by monai-prune compress-bundle has one)")
    if work:
        real_bundle, real_work = os.path.realpath(bundle), os.path.realpath(work)
        if os.path.commonpath([real_bundle, real_work]) == real_bundle:
            raise ConfigError(f"--work {work} lies inside the bundle {bundle}, which is never written to: give a "
                              "folder outside it")
    if not os.path.exists(dense):
        raise InputError(f"--dense {dense} does not exist: give the dense model's TorchScript file or bundle folder")
    if not (os.path.isdir(dense) or (os.path.isfile(dense) and dense.endswith(".ts"))):
        raise InputError(f"--dense {dense} is neither a TorchScript file (.ts, from python -m monai.bundle "
                         "ckpt_export) nor a bundle folder")
    for folder in series:
        check_dicom_input(folder, modality=modality)
    select_model(bundle, backend, precision)  # the model file exists, its runtime is here, every sha256 matches
    select_model(dense, "torchscript", "fp32")  # what the stock operator will load, checked now


def seg_agreement(before_seg: str, after_seg: str, series: str) -> Dict[str, Any]:
    """Per-class Dice of the compressed SEG against the dense SEG of one series (class names from the SEGs' segment
    labels; a class absent from both scores 1.0), the voxel agreement and the foreground voxels of each."""
    from ..fidelity.metrics import dice
    from .dicom import read_segmentation, segment_descriptions

    before, after = read_segmentation(before_seg, series), read_segmentation(after_seg, series)
    names = {s["number"]: s["label"] or f"segment {s['number']}" for s in segment_descriptions(before_seg)}
    names.update({s["number"]: s["label"] or f"segment {s['number']}" for s in segment_descriptions(after_seg)})
    return {"series": series, "dice": {names[n]: dice(after, before, empty=1.0, label=n) for n in sorted(names)},
            "voxel_agreement": float(np.mean(after == before)),
            "foreground_voxels": {"before": int((before > 0).sum()), "after": int((after > 0).sum())}}


def _last_seg(results: Sequence[Dict[str, Any]], index: int) -> str:
    return [r for r in results if r["series"] == index][-1]["seg"]


def time_pipeline(app: str, bundle: str, dense: str, series: Sequence[str], rounds: int = 3, backend: str = "auto",
                  precision: str = "auto", resident: bool = False, work: Optional[str] = None,
                  write_bundle: Optional[str] = None, pause: float = PAUSE_S, modality: str = "CT") -> Dict[str, Any]:
    """Time ``dense`` (before) and ``bundle`` (after) through the deploy app ``app`` on every DICOM series.

    Args:
        app: the app's ``app.py`` (e.g. ``apps/ct_seg_compressed/app.py``); it must write a DICOM SEG.
        bundle: the compressed bundle folder (never changed).
        dense: the dense model: a TorchScript file from ``python -m monai.bundle ckpt_export``, or a bundle folder.
        series: DICOM series folders (real studies; no label needed).
        rounds: timed rounds (medians over rounds and series).
        backend, precision: the compressed bundle's runtime (``--backend`` / ``--precision`` of the app).
        resident: run the compressed bundle in one ``monai-prune serve`` process instead of one app per study.
        work: folder for the runs' outputs and logs, kept (default: a temporary folder, removed).
        write_bundle: also write a copy of ``bundle`` here whose fidelity card carries the result.
        pause: seconds between runs.
        modality: the modality the app segments (checked in every series before anything runs).

    Returns: ``{"rows": [before, after], "accuracy", "pipeline", "settings", "machine", "markdown", "written"}``;
    ``pipeline`` is in :attr:`~monai_prune.fidelity.FidelityCard.pipeline_s`'s shape.
    """
    series = [os.path.abspath(s) for s in series]
    check_inputs(bundle, dense, series, backend, precision, rounds, resident, work, write_bundle, modality)
    before = Variant("dense-stock", "dense", "torchscript", "fp32", "stock")
    after = Variant(f"compressed-{backend}-{precision}" + ("-resident" if resident else ""), "compressed", backend,
                    precision, "compressed", resident=resident)
    models = {"dense": os.path.abspath(dense), "compressed": os.path.abspath(bundle)}
    folder = os.path.abspath(work) if work else tempfile.mkdtemp(prefix="monai_prune_time_pipeline_")
    os.makedirs(folder, exist_ok=True)
    try:
        logger.info("untimed warm-up run of the dense pipeline")
        run_app(app, before, models, series[0], os.path.join(folder, "runs", "warmup"), os.path.join(folder, "logs"),
                "warmup")
        runs = run_rounds(app, [before, after], models, series, folder, rounds, pause=pause, log=logger.info)
        rows = [summarize(before, runs[before.name]), summarize(after, runs[after.name])]
        add_speedups(rows)
        per_series = [seg_agreement(_last_seg(runs[before.name], i), _last_seg(runs[after.name], i), s)
                      for i, s in enumerate(series)]
    finally:
        if not work:
            shutil.rmtree(folder, ignore_errors=True)
    worst = {name: min(p["dice"][name] for p in per_series if name in p["dice"])
             for name in dict.fromkeys(n for p in per_series for n in p["dice"])}
    accuracy = {"dice_vs_dense": worst, "voxel_agreement_vs_dense": min(p["voxel_agreement"] for p in per_series),
                "per_series": per_series}
    host = machine()
    pipeline = pipeline_section(rows[0], rows[1], _what(app, bundle, dense, series, rounds, rows[1], accuracy, host))
    result = {"rows": rows, "accuracy": accuracy, "pipeline": pipeline, "machine": host,
              "settings": {"app": app, "bundle": os.path.abspath(bundle), "dense": os.path.abspath(dense),
                           "series": series, "rounds": rounds, "backend": backend, "precision": precision,
                           "resident": resident, "pause_s": pause, "work": work},
              "written": write_pipeline_bundle(bundle, write_bundle, pipeline) if write_bundle else None}
    result["markdown"] = report(result)
    return result


def _what(app: str, bundle: str, dense: str, series: Sequence[str], rounds: int, after: Mapping[str, Any],
          accuracy: Mapping[str, Any], host: Mapping[str, Any]) -> str:
    """The card section's heading: what was timed, how, and what the compressed SEG kept of the dense SEG."""
    post = after["postprocessing"].replace(" on the input grid", "")
    how = "one monai-prune serve process (resident)" if after["resident"] else "one app process per study"
    dice = ", ".join(f"{name} {value:.4f}" for name, value in accuracy["dice_vs_dense"].items())
    return (f"DICOM series to DICOM SEG with {os.path.basename(os.path.dirname(os.path.abspath(app)))}, monai-prune "
            f"time-pipeline on {host['cpus']} CPUs ({len(series)} series x {rounds} round(s); seconds: the median "
            f"per series{', summed over the series' if len(series) > 1 else ''}); before = the "
            f"dense model ({os.path.basename(os.path.normpath(dense))}) through the SDK's stock operator, one app "
            f"process per study; after = {_model_name(after, bundle)} ({after['backend']} {after['precision']}, "
            f"{post} postprocessing, {how}); per-class Dice of the compressed SEG vs the "
            f"dense SEG (worst series): {dice or 'no class'}, voxel agreement "
            f"{accuracy['voxel_agreement_vs_dense']:.4f}")


def _model_name(row: Mapping[str, Any], path: str) -> str:
    model = row.get("model") or {}
    name = model.get("name") or os.path.basename(os.path.normpath(path))
    return f"{name} {model['version']}" if model.get("version") else name


def report(result: Mapping[str, Any]) -> str:
    """The Markdown the command prints: seconds before/after per stage, then the per-class Dice vs the dense SEG."""
    from ..fidelity.card_markdown import pipeline_rows

    before, after = result["rows"]
    accuracy = result["accuracy"]
    seconds = markdown_table(["seconds", "before (dense, SDK operator)",
                              f"after ({after['backend']} {after['precision']}"
                              f"{', resident' if after['resident'] else ''})", "after / before", "speed-up"],
                             pipeline_rows(result["pipeline"]))
    names = list(accuracy["dice_vs_dense"])
    header = ["class", "Dice vs dense SEG (worst series)"] + (
        [f"series {i + 1}" for i in range(len(accuracy["per_series"]))] if len(accuracy["per_series"]) > 1 else [])
    body = [[name, f"{accuracy['dice_vs_dense'][name]:.4f}"] + (
        [f"{p['dice'].get(name, float('nan')):.4f}" for p in accuracy["per_series"]]
        if len(accuracy["per_series"]) > 1 else []) for name in names]
    lines = [f"## time-pipeline: {result['pipeline']['what']}", "", seconds, "", markdown_table(header, body), "",
             f"Voxel agreement with the dense SEG: {accuracy['voxel_agreement_vs_dense']:.4f} (worst series). "
             f"Machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs; a shared machine: read the "
             "ratios, not the absolute seconds."]
    if result.get("written"):
        lines += ["", f"Wrote {result['written']}: its docs/fidelity_card.json and .md carry this end-to-end section."]
    return "\n".join(lines) + "\n"


def write_pipeline_bundle(bundle: str, out: str, pipeline: Dict[str, Any]) -> str:
    """A copy of ``bundle`` at ``out`` whose fidelity card (``docs/fidelity_card.json`` / ``.md``, the metadata's
    ``compression.fidelity_card`` and the card ``docs/README.md`` embeds) carries ``pipeline``; written beside ``out``
    and renamed into place when complete.

    The card is in ``docs/`` and ``metadata.json``, which no sha256 record covers (``model_files``: ``models/``;
    ``config_files``: ``configs/`` but ``metadata.json``): the records are copied as they are and still verify.
    """
    from .models import verify_config_files, verify_model_files
    from .tuned_bundle import bundle_copy, check_target

    check_target(bundle, out)
    verify_model_files(bundle)
    verify_config_files(bundle)  # nothing edited since it was timed
    with bundle_copy(bundle, out) as staging:
        if write_card_pipeline(staging, pipeline) is None:
            raise InputError(f"{bundle} has no {CARD}: nothing to carry the end-to-end section (nothing was written)")
    logger.info("wrote %s: its fidelity card carries the end-to-end section", out)
    return out

