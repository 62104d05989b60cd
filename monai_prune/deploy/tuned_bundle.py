"""Ship a measured pipeline setting: a copy of a compressed bundle whose inference config runs the setting that
``monai-prune tune-pipeline`` measured under the per-class guardrail (``--write-bundle OUT``).

The source bundle is never touched. The copy gets:

* ``configs/inference.json`` with the setting's values at the ids tune-pipeline located (``roi_size``,
  ``inferer#overlap`` ...);
* ``models/model.ts`` with the same ``inference.json`` embedded under ``extra/`` (the SDK's stock
  ``MonaiBundleInferenceOperator`` reads the config from there), the weights unchanged;
* ``configs/metadata.json``: the next patch version, ``compression.pipeline_knobs`` (the setting, its measured
  seconds and saving, every class's Dice change and the reference it was measured against), a changelog line, and
  every file's sha256
  recomputed, so deploy's checks pass on the copy and would still catch a later edit;
* the fidelity card (``docs/fidelity_card.json`` / ``.md`` and the metadata's copy) with a note saying what was
  changed and what it cost.

It is written beside ``OUT`` and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Iterator, Optional

import torch

from .._io import atomic_path, atomic_write_text, config_digests, give_umask_mode, sha256
from ..bundle import refuse_nested
from ..bundle_configs import set_id
from ..errors import ConfigError, InputError
from ..fidelity import FidelityCard
from .models import verify_config_files, verify_model_files

logger = logging.getLogger(__name__)


MIN_SAVING_PCT = 5.0  # a smaller measured saving is within the timing noise of a shared machine: not shipped


def chosen_setting(result: Dict[str, Any], min_saving_pct: float = MIN_SAVING_PCT) -> Dict[str, Any]:
    """The row of a :func:`~monai_prune.deploy.pipeline_knobs.tune_pipeline` result to ship: the passing knobs
    combined when that row passed, else the passing single-knob setting that saved most time; only a row that saved
    more than ``min_saving_pct`` percent (5 by default) ships."""
    rows = [r for r in result["rows"] if r["knob"] != "baseline" and r.get("passed")
            and r["saving_pct"] > min_saving_pct]
    combined = [r for r in rows if r["knob"] == "combined"]
    if combined:
        return combined[0]
    if not rows:
        raise ConfigError(f"no setting both kept every class within ΔDice {result['max_delta']} of the baseline and "
                          f"saved more than {min_saving_pct:g}% of the time (less is within the timing noise): "
                          "there is nothing to ship (nothing was written)")
    return max(rows, key=lambda r: r["saving_pct"])


def _patch_bump(version: str) -> str:
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:3]] + [0, 0, 0]
    return f"{parts[0]}.{parts[1]}.{parts[2] + 1}"


def check_target(bundle: str, out: str) -> None:
    """``out`` is a new folder outside ``bundle`` (checked before the measurement, and again before writing)."""
    refuse_nested(bundle, out)
    if os.path.exists(out):
        raise ConfigError(f"--write-bundle {out} exists: give a new folder (nothing was written)")


@contextlib.contextmanager
def bundle_copy(src: str, out: str) -> Iterator[str]:
    """A copy of ``src`` to edit (files with the user's umask, no ``__pycache__``), made in a work folder beside
    ``out`` and renamed to ``out`` when the block ends; removed, with nothing at ``out``, when it raises."""
    check_target(src, out)
    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        staging = os.path.join(work, "bundle")
        shutil.copytree(src, staging, ignore=shutil.ignore_patterns("__pycache__"))
        for root, dirs, files in os.walk(staging):
            for name in dirs + files:
                give_umask_mode(os.path.join(root, name))
        yield staging
        os.rename(staging, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _evidence(result: Dict[str, Any], row: Dict[str, Any]) -> Dict[str, Any]:
    return {"setting": row["knob"],
            "values": row["value"], "overrides": row["overrides"], "seconds": row["seconds"],
            "baseline_seconds": row.get("baseline_seconds", result["rows"][0]["seconds"]),
            "saving_pct": row["saving_pct"], "dice": row["dice"], "delta_dice": row["delta_dice"],
            "worst_delta_dice": row.get("worst_delta_dice"), "max_delta": result["max_delta"],
            "reference": result["reference"], "images": [os.path.basename(i) for i in result["images"]],
            "model": result["model"].get("name"), "backend": result["model"].get("backend"),
            "precision": result["model"].get("precision"), "tool": "monai-prune tune-pipeline"}


def _embed(model_ts: str, inference: Dict[str, Any], metadata: Dict[str, Any]) -> None:
    """Rewrite ``model_ts`` with the new configs under ``extra/`` (the graph and weights as they were)."""
    module = torch.jit.load(model_ts, map_location="cpu")
    files = {"metadata.json": json.dumps(metadata), "inference.json": json.dumps(inference)}
    with atomic_path(model_ts, keep_name=True) as tmp:  # the archive's root folder is named after the file
        torch.jit.save(module, str(tmp), _extra_files=files)


def write_tuned_bundle(result: Dict[str, Any], out: str, row: Optional[Dict[str, Any]] = None,
                       min_saving_pct: float = MIN_SAVING_PCT) -> str:
    """Write a copy of ``result["bundle"]`` at ``out`` that runs ``row`` (default: :func:`chosen_setting`).

    Args:
        result: what :func:`~monai_prune.deploy.pipeline_knobs.tune_pipeline` returned.
        out: the new bundle folder; it must not exist, and may be neither inside the source nor around it.
        row: one of ``result["rows"]`` that passed.
        min_saving_pct: without ``row``, the smallest saving (percent) a setting must show to ship.

    Returns: ``out``.
    """
    row = chosen_setting(result, min_saving_pct) if row is None else row
    if not row.get("passed") or not row["overrides"]:
        raise ConfigError(f"the setting {row['knob']} {row.get('value')} did not pass the guardrail: not shipped "
                          "(nothing was written)")
    src = result["bundle"]
    check_target(src, out)
    verify_model_files(src)
    verify_config_files(src)  # nothing edited since it was measured
    with bundle_copy(src, out) as staging:
        configs = os.path.join(staging, "configs")
        inference_path = os.path.join(configs, os.path.basename(result["config"]))
        if not inference_path.endswith(".json"):
            raise InputError(f"{result['config']}: --write-bundle rewrites JSON inference configs only")
        with open(inference_path) as f:
            inference = json.load(f)
        for key, value in row["overrides"].items():
            set_id(inference, key, value)
        atomic_write_text(inference_path, json.dumps(inference, indent=4) + "\n")

        metadata_path = os.path.join(configs, "metadata.json")
        with open(metadata_path) as f:
            metadata = json.load(f)
        evidence = _evidence(result, row)
        compression = metadata.setdefault("compression", {})
        compression["pipeline_knobs"] = evidence
        shipped = ", ".join(f"{k} = {json.dumps(v)}" for k, v in row["overrides"].items())
        worst = min(evidence["delta_dice"].values(), default=0.0)
        note = (f"Pipeline setting shipped by monai-prune tune-pipeline: {shipped} in {result['config']} "
                f"({evidence['saving_pct']:.1f}% fewer seconds per image than the bundle's own setting; worst "
                f"per-class ΔDice {worst:+.4f} against {result['reference']}, limit {-result['max_delta']:+.4f}; "
                f"measured on {len(evidence['images'])} image(s) with {evidence['backend']} {evidence['precision']}).")
        previous = str(metadata.get("version", "0.1.0"))
        metadata["version"] = _patch_bump(previous)  # another inference config: another version of the bundle
        metadata["changelog"] = {metadata["version"]: note, **metadata.get("changelog", {})}
        card_path = os.path.join(staging, "docs", "fidelity_card.json")
        if os.path.isfile(card_path):
            card = FidelityCard.load(card_path)
            card.notes = [*card.notes, note]
            if card.title.endswith(f" {previous}"):
                card.title = f"{card.title[:-len(previous)]}{metadata['version']}"
            card.to_json(card_path)
            atomic_write_text(os.path.join(staging, "docs", "fidelity_card.md"), card.to_markdown())
            compression["fidelity_card"] = card.to_dict()
        models = os.path.join(staging, "models")
        if os.path.isfile(os.path.join(models, "model.ts")):
            _embed(os.path.join(models, "model.ts"), inference, metadata)
        metadata["model_files"] = {name: sha256(os.path.join(models, name)) for name in metadata["model_files"]}
        metadata["config_files"] = config_digests(staging)
        atomic_write_text(metadata_path, json.dumps(metadata, indent=2))
    logger.info("wrote %s: %s", out, note)
    return out
