"""Run a MONAI Deploy app on a compressed bundle: check first, write atomically, record what produced the result.

``python app.py -i <dicom dir> -o <out dir> -m <compressed bundle> [--backend B] [--precision P] [--nifti]``

Before the SDK's graph starts, the input study is checked (:func:`monai_prune.deploy.dicom.check_dicom_input`: empty
folder, no DICOM, truncated files, no series of the wanted modality, inconsistent slice spacing) and the model files
are verified against their sha256 (:func:`monai_prune.deploy.models.select_model`). Each problem is one line on
stderr and exit code 2, with nothing written to the output folder. The app then writes into a staging folder beside
the output; only a run that produced every expected file moves them into the output folder, together with
``run.json``: model name, version, sha256, backend and precision, seconds per stage, and the input's shape (no
patient identifiers). Logs carry no patient identifiers either: the SDK's DICOM operators log at INFO about files
and series, never about patient attributes, and our own lines name stages, shapes and seconds only.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import ConfigError, MonaiPruneError
from ..utils import atomic_write_text, give_umask_mode
from .models import ALLOW_EDITED_CONFIGS, BACKENDS, PRECISIONS, ModelChoice, select_model
from .preflight import redact_uids

logger = logging.getLogger(__name__)


_factory_installed = False


def redact_logs() -> None:
    """Replace DICOM UIDs (study, series, instance) in every log record with ``<uid>``, whatever handlers the SDK
    configures later: its series selector and highdicom log them at INFO, and a Study Instance UID links a log line
    to a patient's study. Installed once per process as a log-record factory."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's business, not ours
            return record
        redacted = redact_uids(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting with a bare ``2``: the runner prints the reason as
    its one error line."""

    def error(self, message: str):
        raise ConfigError(message)


def _options(argv: Sequence[str]) -> tuple:
    parser = _ArgumentParser(add_help=False)
    parser.add_argument("--backend", choices=BACKENDS, default=os.environ.get("MONAI_PRUNE_BACKEND", "auto"))
    parser.add_argument("--precision", choices=PRECISIONS, default=os.environ.get("MONAI_PRUNE_PRECISION", "auto"))
    parser.add_argument("--nifti", action="store_true", help="also write the segmentation as NIfTI")
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--operator", choices=("compressed", "stock"), default="compressed",
                        help="stock: the SDK's own MonaiBundleInferenceOperator on the bundle's model.ts (TorchScript)")
    parser.add_argument("--bundle-postprocessing", action="store_true",
                        help="run the bundle's own postprocessing (Invertd on every float channel) instead of the "
                             "same labels computed on the input grid directly (monai-prune's operator only)")
    parser.add_argument("--series-uid", default=None,
                        help="segment this series (SeriesInstanceUID) instead of the one the selection rule picks")
    parser.add_argument("--series-description", default=None,
                        help="segment the one series whose SeriesDescription matches this regular expression")
    parser.add_argument(ALLOW_EDITED_CONFIGS, action="store_true",
                        help="parse the bundle's configs even if they differ from the sha256 in metadata.json")
    return parser.parse_known_args(list(argv[1:]))


def _paths(argv: List[str], created: List[str]) -> Dict[str, str]:
    """-i/-o/-m as the SDK resolves them (arguments, then HOLOSCAN_* environment, then defaults); folders the SDK's
    parser creates (-o, -w) are appended to ``created``."""
    from monai.deploy.core import RuntimeEnv, parse_args

    for flag in ("-o", "--output", "-w", "--workdir"):
        if flag in argv[:-1]:
            folder = os.path.abspath(argv[argv.index(flag) + 1])
            if not os.path.exists(folder):
                created.append(folder)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):  # the SDK's argparse prints usage, then exits with a bare 2
            args = parse_args(argv)
    except SystemExit as e:
        if not e.code:  # --help
            sys.stdout.write(captured.getvalue())
            raise
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        reason = next((line.split("error:", 1)[1].strip() for line in reversed(lines) if "error:" in line),
                      lines[-1] if lines else f"exit {e.code}")
        raise ConfigError(f"bad arguments: {reason}") from None
    env = RuntimeEnv()
    return {"input": os.path.abspath(args.input or env.input), "output": os.path.abspath(args.output or env.output),
            "model": os.path.abspath(args.model or env.model)}


def _replace(argv: List[str], flags: Sequence[str], value: str) -> List[str]:
    out, skip = [argv[0]], False
    for a in argv[1:]:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in flags if f.startswith("--")):
            continue
        out.append(a)
    return out + [flags[0], value]


def run_app(app_factory: Callable[..., Any], expected: Sequence[str], modality: str = "CT",
            argv: Optional[Sequence[str]] = None, min_slices: int = 2) -> int:
    """Check, run ``app_factory(argv, run_options=..., model_choice=..., stage_timer=...)`` into a staging folder,
    then publish.

    Args:
        app_factory: builds the Holoscan/MONAI Deploy ``Application`` (its ``compose`` reads ``options``).
        expected: glob patterns (relative to the output) every successful run writes, e.g. ``["*.dcm"]``.
        modality: the DICOM modality the app selects (checked before the graph starts).
        argv: command line (default ``sys.argv``).
    Returns the exit code (0 success, 2 bad input or model, 1 the app failed).
    """
    from .dicom import check_dicom_input
    from .operators import StageTimer

    redact_logs()
    argv = list(sys.argv if argv is None else argv)
    name = os.path.basename(os.path.dirname(os.path.abspath(argv[0]))) or "app"
    started = time.perf_counter()
    created: List[str] = []
    try:
        options, rest = _options(argv)
        sdk_argv = [argv[0], *rest]
        paths = _paths(sdk_argv, created)
        choice = select_model(paths["model"], "torchscript" if options.operator == "stock" else options.backend,
                              "fp32" if options.operator == "stock" else options.precision,
                              verify_configs=not options.allow_edited_configs)
        study = check_dicom_input(paths["input"], modality=modality, min_slices=min_slices,
                                  series_uid=options.series_uid, series_description=options.series_description)
    except (MonaiPruneError, OSError) as e:
        _remove_empty(created)
        print(f"{name}: error: {redact_uids(str(e))}", file=sys.stderr)
        return 2
    options.selected_series_uid = study["series_instance_uid"]  # the graph's series selector takes exactly this one
    output = paths["output"]
    os.makedirs(os.path.dirname(output), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.staging-", dir=os.path.dirname(output))
    timer = StageTimer()
    try:
        saved_argv = sys.argv
        app_argv = _replace(sdk_argv, ["--output", "-o"], staging)  # the SDK's apps read their paths from sys.argv
        if options.operator == "stock":  # the SDK's model factory must see the TorchScript file, not the folder
            ts = choice.path if choice.bundle is None else os.path.join(choice.bundle, "models", "model.ts")
            app_argv = _replace(app_argv, ["--model", "-m"], ts)
        sys.argv = app_argv
        try:
            app = app_factory(run_options=options, model_choice=choice, stage_timer=timer)
            timer.measure("app", app.run)
        except MonaiPruneError as e:  # refused inside the graph (e.g. a result off the input grid)
            _remove_empty(created)
            print(f"{name}: error: {redact_uids(str(e))}; nothing was published", file=sys.stderr)
            return 1
        finally:
            sys.argv = saved_argv
        produced = {p: sorted(glob.glob(os.path.join(staging, p))) for p in expected}
        missing = [p for p, found in produced.items() if not found]
        wrong = _segmented_other_series(staging, study["series_instance_uid"])
        if missing or wrong:
            _remove_empty(created)
            problem = f"the app did not write {missing} (see the log above)" if missing else wrong
            print(f"{name}: error: {problem}; nothing was published", file=sys.stderr)
            return 1
        record = _record(choice, timer, study, staging, time.perf_counter() - started, options)
        atomic_write_text(os.path.join(staging, "run.json"), json.dumps(record, indent=2))
        _publish(staging, output)
        logger.info("%s: wrote %s in %.2f s with %s %s (%s)", name, ", ".join(record["outputs"]),
                    record["seconds"]["total"], choice.backend, choice.precision, choice.name)
        return 0
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _segmented_other_series(staging: str, series_uid: str) -> Optional[str]:
    """A DICOM result that refers to another series than the one checked (and recorded), or None."""
    import pydicom

    for path in sorted(glob.glob(os.path.join(staging, "*.dcm"))):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        items = list(ds.get("ReferencedSeriesSequence", []))  # a SEG
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):  # an SR
            items += list(study.get("ReferencedSeriesSequence", []))
        referenced = {str(item.SeriesInstanceUID) for item in items if "SeriesInstanceUID" in item}
        if referenced and series_uid not in referenced:
            return f"{os.path.basename(path)} refers to another series than the one checked"
    return None


def _publish(staging: str, output: str) -> None:
    """One run, one result set: the staging folder becomes the output; a previous run's results there are moved
    aside first and removed after, so the output never mixes two runs (nor is ever half-written)."""
    parent, base = os.path.dirname(output), os.path.basename(output)
    previous = None
    if os.path.isdir(output) and os.listdir(output):
        previous = tempfile.mkdtemp(prefix=f".{base}.previous-", dir=parent)
        os.replace(output, os.path.join(previous, base))
    elif os.path.isdir(output):
        os.rmdir(output)
    give_umask_mode(staging)
    os.replace(staging, output)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _remove_empty(folders: Sequence[str]) -> None:
    """The SDK's argument parser creates -o/-w; a refused or failed run leaves no trace of them."""
    for folder in folders:
        if os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)


def _record(choice: ModelChoice, timer, study: Dict[str, Any], staging: str, total: float, options) -> Dict[str, Any]:
    safe_study = {k: v for k, v in study.items() if k in ("modality", "num_slices", "spacing", "rows", "columns",
                                                          "series_instance_uid", "series_description",
                                                          "series_number", "skipped_series")}
    return {"model": choice.to_dict(), "backend": choice.backend, "precision": choice.precision,
            "options": {"backend": options.backend, "precision": options.precision, "nifti": options.nifti,
                        "operator": options.operator, "bundle_postprocessing": options.bundle_postprocessing},
            "input": safe_study,
            "seconds": {**{k: round(v, 4) for k, v in timer.seconds.items()}, "total": round(total, 4)},
            "stages": dict(timer.notes),
            "outputs": sorted(os.listdir(staging))}
