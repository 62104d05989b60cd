"""Compress a MONAI bundle into a new bundle: ``monai-prune compress-bundle SRC --recipe R --out DST``.

The source bundle is never modified. Its ``configs/train.json`` is overlaid with a packaged (or user) recipe, the
trained dense ``models/model.pt`` is loaded, and the bundle's own trainer fine-tunes while our handlers compress,
in a private working copy. The result is a new bundle folder, written under a temporary name and renamed at the end
(nothing half-written on failure):

* ``models/model.ts`` (TorchScript; ``metadata.json`` and ``inference.json`` embedded under ``extra/`` as
  ``monai.bundle ckpt_export`` does), ``models/model.pt`` (state dict) + ``models/plan.json`` (replay the pruning on
  the freshly built network), ``models/model.onnx``, and with ``int8=`` the int8 artifact;
* ``configs/``: every config of the source, runnable with the stock ``python -m monai.bundle`` CLI as before
  (:mod:`.bundle_configs`): each ``network_def`` builds the dense network and replays ``models/plan.json`` on it, so
  the configs' own checkpoint loaders load the compressed ``model.pt``; with ``int8=``, ``inference_int8.json`` (an
  overlay of ``inference.json``) serves the int8 model; no ``--set`` local path is carried; a ``large_files.yml``
  that would download the dense model files over the compressed ones loses those entries;
* ``configs/metadata.json``: new version + changelog entry, ``eval_metrics`` as measured here (the source's
  published ones kept apart), the versions of monai/torch/numpy and packages used, a ``compression`` section (recipe, plan checksum,
  calibration hash, params/MACs/size before -> after, measured latency ratio of the bundle's whole inferer and of
  one network call, the evaluator's metrics and per-class metrics before -> after), the sha256 of every model
  file (``model_files``) and of every other file in ``configs/`` (``config_files``, checked before deploy parses them);
* ``docs/fidelity_card.json`` / ``docs/fidelity_card.md``: the :class:`~monai_prune.fidelity.FidelityCard` (per-class
  before -> after, cost, backend agreement, worst cases, guardrails held or broken; its first line says PASS,
  DEGRADED or UNGUARDED), also under ``fidelity_card`` in the metadata's ``compression`` section;
* ``docs/README.md``: the same in words, the card included.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ._io import config_digests, sha256  # noqa: F401 (public names of this module)
from .bundle_configs import (check_schedule, drop_model_downloads, instantiate, recorded_overrides, rewrite_configs,
                             versions_used, write_int8_config)
from .deploy.models import verify_model_files  # noqa: F401 (a public name of this module)
from .errors import ConfigError, GuardrailError, InputError
from .runtime.registry import INT8_BACKENDS as QUANT_BACKENDS, model_files
from .fidelity import (FidelityCard, check_guardrails, class_names, compare_per_class, json_safe, validate_guardrails,
                       worst_cases)
from .utils import atomic_write_text
from .weights import read_state_dict

logger = logging.getLogger(__name__)

CONFIG_EXTS = (".json", ".yaml", ".yml")
RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")
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


def _get(config: Dict[str, Any], key: str) -> Tuple[bool, Any]:
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


def _load(path: str) -> Dict[str, Any]:
    from monai.bundle import ConfigParser

    try:
        return ConfigParser.load_config_file(path)
    except Exception as e:
        raise InputError(f"cannot read {path}: {e}") from e


def _config_file(src: str, name: str) -> Optional[str]:
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
    found, roi = _get(train, "validate#inferer#roi_size")
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
    path = _config_file(src, "inference")
    if path is None:
        raise ConfigError(f"--set {keys[0]}: {src} has no configs/inference.json to write it into")
    inference = _load(path)
    for key in keys:
        if not _get(inference, key.split("#", 1)[1])[0]:
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
    train_path = _config_file(src, "train")
    if train_path is None:
        raise InputError(f"{src} has no configs/train.json (or .yaml): compression fine-tunes with the bundle's "
                         "own trainer")
    metadata, train = _load(meta_path), _load(train_path)
    if isinstance(metadata.get("compression"), dict):
        raise InputError(f"{src} is a bundle compressed by monai-prune already: compress its dense source bundle "
                         "(with a stronger recipe) instead")
    if not isinstance(train.get("network_def"), dict):
        raise InputError(f"{train_path} has no network_def (the network's constructor config)")
    fmt = metadata.get("network_data_format", {})
    if "image" not in fmt.get("inputs", {}) or "pred" not in fmt.get("outputs", {}):
        raise InputError("metadata.json network_data_format must describe inputs.image and outputs.pred")
    for key in ("train#trainer", "train#handlers", "validate#evaluator"):
        if not _get(train, key)[0]:
            raise InputError(f"{train_path} has no {key} (model-zoo ids are expected)")
    weights = os.path.join(src, "models", "model.pt")
    if not os.path.isfile(weights):
        raise InputError(f"{src} has no models/model.pt: train the bundle first (compression starts from the trained "
                         "dense weights)")
    path = recipe_path(recipe)
    recipe_config = _load(path)
    if recipe_config.get("recipe", {}).get("quantize") == "qat":
        raise ConfigError("the qat recipe runs with the stock bundle CLI (python -m monai.bundle run --config_file "
                          "\"['configs/train.json','<qat.json>']\"); compress-bundle makes int8 by post-training "
                          "quantization: --int8 openvino|onnxruntime|auto")
    check_inference_overrides(src, overrides)
    unknown = [k for k in overrides if not _get(recipe_config, k)[0] and not _get(train, k)[0]
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


# ---------------------------------------------------------------------------------------------------- helpers
def _bump(version: str) -> str:
    parts = [int(p) if p.isdigit() else 0 for p in str(version).split(".")[:3]] + [0, 0, 0]
    return f"{parts[0]}.{parts[1] + 1}.0"


def dense_network(parser) -> Tuple[Dict[str, Any], nn.Module]:
    """``(network_def, network)``: the dense network as the run builds it, from the config with the ``--set``
    overrides applied (a zoo config may pass arguments that newer MONAI removed, e.g. SwinUNETR ``img_size``, which
    users override with ``--set network_def#...``), built by a parser of its own so it is not the instance the
    trainer prunes."""
    from monai.bundle import ConfigParser

    definition = copy.deepcopy(parser.get("network_def"))
    return definition, ConfigParser(copy.deepcopy(parser.get())).get_parsed_content("network_def")


def validation_label_mode(metadata: Dict[str, Any], raw: Dict[str, Any]) -> Optional[str]:
    """``"multi_label"`` (sigmoid outputs, overlapping channels: BraTS), ``"multi_class"`` or None (decided from the
    data), from the metadata and the validation postprocessing (instantiated: a zoo config often refers to it)."""
    from monai.bundle import ConfigParser

    from .fidelity import label_mode_from_bundle

    try:
        post = ConfigParser(copy.deepcopy(raw)).get_parsed_content("validate#postprocessing", instantiate=True)
    except Exception:  # no such id, or not buildable alone: let the data decide
        post = None
    return label_mode_from_bundle(metadata, post)


def _evaluate(raw: Dict[str, Any], network: nn.Module, names: List[str],
              guard: _SigtermGuard, label_mode: Optional[str] = None) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Run the bundle's own validation evaluator (its data, inferer, postprocessing, metrics) on ``network``,
    without its handlers (no checkpoint is written): its key/additional metrics, and our per-class metrics
    (:class:`~monai_prune.fidelity.PerClassMetrics`) from the same postprocessed outputs."""
    from monai.bundle import ConfigParser

    from .fidelity import PerClassMetrics

    parser = ConfigParser(copy.deepcopy(raw))
    parser["network"] = network
    parser["validate#handlers"] = []
    evaluator = instantiate(parser, "validate#evaluator")
    per_class = PerClassMetrics(names, label_mode=label_mode or "auto").attach(evaluator)
    with guard.running(evaluator):
        evaluator.run()
    scalars = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
    return scalars, per_class.compute()


def _latency(model: Any, x: torch.Tensor, repeats: int = 5) -> float:
    from .measure import time_call

    with torch.no_grad():
        return time_call(lambda: model(x), repeats=repeats)["median_s"]


def _inferer_latency(image: torch.Tensor, inferer: Any, models: Dict[str, nn.Module], device: torch.device,
                     repeats: int) -> Dict[str, Any]:
    """Median seconds of the bundle's whole inferer (e.g. sliding window) on one preprocessed validation ``image``,
    for each model (interleaved rounds, same input)."""
    from .measure import paired_latency

    x = torch.as_tensor(image)[None].float().to(device)
    with torch.no_grad():
        timed = paired_latency({name: (lambda model=model: inferer(inputs=x, network=model))
                                for name, model in models.items()}, rounds=repeats)
    result: Dict[str, Any] = {name: t["median_s"] for name, t in timed.items()}
    result.update(input_shape=list(x.shape), inferer=type(inferer).__name__)
    return result


def _check_schedule(src: str, info: Dict[str, Any], epochs: Optional[int], overrides: Dict[str, Any]) -> None:
    """The recipe's pruning schedule against the fine-tuning epochs (``--epochs`` or the trainer's ``max_epochs``),
    with the ``--set`` values, before anything runs (also for ``--dry-run``); the fixes it suggests pass this same
    check (:func:`~monai_prune.bundle_configs.check_schedule`)."""
    from monai.bundle import ConfigParser


    if not _get(info["recipe"], "prune#end_epoch")[0]:
        return
    parser = ConfigParser()
    parser.read_config([info["train_path"], info["recipe_path"]])
    parser["bundle_root"] = src
    for key, value in overrides.items():
        if not key.startswith(NOT_FOR_TRAINING):
            parser[key] = value
    if epochs is not None:
        parser["train#trainer#max_epochs"] = epochs
    values = {}
    for name, key in (("start_epoch", "prune#start_epoch"), ("end_epoch", "prune#end_epoch"),
                      ("frequency", "prune#frequency"), ("max_epochs", "train#trainer#max_epochs")):
        if _get(parser.get(), key)[0]:
            try:
                values[name] = parser.get_parsed_content(key)
            except Exception as e:
                raise ConfigError(f"cannot evaluate {key}: {e}") from e
    check_schedule(values)


def _describe(src: str, out: str, epochs: Optional[int], int8: Optional[str],
              info: Dict[str, Any]) -> List[str]:
    steps = [f"read {src} (never modified): {os.path.relpath(info['train_path'], src)}, configs/metadata.json, "
             "models/model.pt",
             f"fine-tune a private copy with the bundle's trainer + recipe {os.path.basename(info['recipe_path'])}"
             + (f" for {epochs} epochs" if epochs else " (the bundle's max_epochs)"),
             "evaluate dense and compressed with the bundle's validate#evaluator; time the network call on "
             f"{tuple(info['shape'])} (from {info['shape_source']}) and the whole validate#inferer on one "
             "validation image",
             "write models/model.ts (+ metadata/inference under extra/), model.pt, plan.json, model.onnx"
             + (f", int8 ({int8})" if int8 else ""),
             "rewrite every config that builds the network (network_def: the dense constructor + models/plan.json)"
             + (", write configs/inference_int8.json" if int8 else "")
             + "; metadata.json (new version, measured eval_metrics and versions, compression section, sha256), "
             "docs/fidelity_card.json + .md, docs/README.md",
             f"rename the finished folder to {out}"]
    return steps


# ---------------------------------------------------------------------------------------------------- work folders
def _copy_or_link(path: str, target: str) -> str:
    if os.path.getsize(path) <= COPY_LIMIT:
        return shutil.copy2(path, target)
    os.symlink(os.path.realpath(path), target)  # a large data file: read through the link, never rewritten in place
    return target


def _private_run_root(src: str, run_root: str, weights: str) -> None:
    """The bundle root of the fine-tuning run. Whatever the bundle's handlers write under ``@bundle_root``
    (``@output_dir``, checkpoints, logs, caches) must land here, never in the source: folders are real folders, small
    files copies, only large files symlinks to the source's (data the trainer reads); the source's output folder
    (``eval``) and models are left out, the dense weights copied."""
    os.makedirs(os.path.join(run_root, "models"))
    shutil.copytree(os.path.join(src, "configs"), os.path.join(run_root, "configs"))
    for entry in os.listdir(src):
        path, target = os.path.join(src, entry), os.path.join(run_root, entry)
        if entry in RUN_SKIPPED:
            continue
        if os.path.isdir(path):
            shutil.copytree(path, target, copy_function=_copy_or_link, ignore_dangling_symlinks=True)
        elif os.path.isfile(path):
            _copy_or_link(path, target)
    shutil.copy2(weights, os.path.join(run_root, "models", "model.pt"))


def _make_work(out: str) -> str:
    """The run's work folder beside ``out``: ``.<out>.<pid>.XXXX``, holding :data:`OWNER_FILE` (the host), so a later
    run can tell an abandoned one (its process is gone) from a live one."""
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.{os.getpid()}.", dir=os.path.dirname(out))
    with open(os.path.join(work, OWNER_FILE), "w", encoding="utf-8") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
    return work


def _pid_alive(pid: int) -> bool:
    if os.name != "posix" or pid < 1:
        return True  # cannot tell: keep the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a killed process not yet reaped is gone too
    except (OSError, IndexError):
        return True


def _remove_stale_work(out: str) -> None:
    """Remove the work folders beside ``out`` of earlier runs whose process is gone (SIGKILL, power loss). Folders of
    live runs, and of runs on other hosts sharing the folder, are kept."""
    parent, name = os.path.split(out)
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[a-z0-9_]+")
    for entry in sorted(os.listdir(parent)):
        match, path = pattern.fullmatch(entry), os.path.join(parent, entry)
        if match is None or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, OWNER_FILE), encoding="utf-8") as f:
                host = json.load(f).get("host")
        except (OSError, ValueError, AttributeError):
            host = None  # killed before it wrote its owner: the pid in the name is all there is
        pid = int(match.group(1))
        if (host is not None and host != socket.gethostname()) or _pid_alive(pid):
            continue
        logger.info("removing %s, left behind by an earlier compress-bundle run (process %d is gone)", path, pid)
        shutil.rmtree(path, ignore_errors=True)


class _Terminated(BaseException):
    """SIGTERM arrived during :func:`compress_bundle`. Like ``KeyboardInterrupt`` it is no ``Exception``, so
    ``except Exception`` clauses let it through and every ``finally`` on the way removes unfinished work."""


class _SigtermGuard:
    """The SIGTERM handler of one :func:`compress_bundle` run. Outside ignite engines it raises :class:`_Terminated`;
    while engines run (:meth:`running`) it stops them with ignite's own ``terminate`` at their next iteration, because
    an exception raised through them is logged with a traceback by the bundle's ``StatsHandler``, and
    :class:`_Terminated` is raised once they returned."""

    def __init__(self) -> None:
        self.received = False
        self.engines: List[Any] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self.received = True
        if not self.engines:
            raise _Terminated()
        for engine in self.engines:
            engine.terminate(skip_completed=True)

    def _stop_if_received(self, engine: Any) -> None:
        if self.received:  # an engine started after the signal (e.g. the trainer's validation) stops at once
            engine.terminate(skip_completed=True)

    @contextlib.contextmanager
    def running(self, *engines: Any):
        from ignite.engine import Events

        for engine in engines:
            engine.add_event_handler(Events.STARTED, self._stop_if_received)
        self.engines = list(engines)
        try:
            yield
        finally:
            self.engines = []
            for engine in engines:
                engine.remove_event_handler(self._stop_if_received, Events.STARTED)
        if self.received:
            raise _Terminated()


@contextlib.contextmanager
def _sigterm_unwinds(out: str):
    """While the body runs, SIGTERM unwinds it (:class:`_SigtermGuard`, yielded) instead of killing the process
    outright, so the unfinished work is removed; then the process exits with code 128 + SIGTERM (as the default action
    reports it) and one line on stderr. Only in the main thread, and only where SIGTERM has its default action (an
    application's own handler is left alone); the default is restored after."""
    guard = _SigtermGuard()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield guard
        return
    signal.signal(signal.SIGTERM, guard)
    try:
        yield guard
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if guard.received:
        done = (f"{out} was written before the signal" if os.path.isdir(out) else
                f"removed the unfinished work, nothing was written to {out}")
        print(f"monai-prune compress-bundle: terminated by SIGTERM: {done}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM)


# ---------------------------------------------------------------------------------------------------- main
def compress_bundle(src: str, recipe: str, out: str, epochs: Optional[int] = None,
                    overrides: Optional[Dict[str, Any]] = None, int8: Optional[str] = None,
                    calibration_samples: int = 8, target_device: str = "cpu", dry_run: bool = False,
                    repeats: int = 5, input_shape: Optional[List[int]] = None,
                    allow_degraded: bool = False) -> Dict[str, Any]:
    """Compress bundle ``src`` with ``recipe`` into a new bundle at ``out``; returns the compression summary (the
    metadata's ``compression`` section) with the :class:`~monai_prune.fidelity.FidelityCard` under ``"card"``.

    Args:
        src: the source bundle folder (read only).
        recipe: a packaged recipe name (``monai-prune recipes``) or a recipe file.
        out: the new bundle folder; must not exist, nor be or lie inside ``src`` (or contain it). The work happens in
            ``.<out>.<pid>.XXXX`` beside it, removed on success, error and SIGTERM (then the process exits with
            143); such folders left by killed runs are removed by the next run.
        epochs: fine-tuning epochs (``train#trainer#max_epochs``); default: the bundle's own.
        overrides: recipe parameters by id, e.g. ``{"prune#final_sparsity": 0.7}`` (``train#...`` ids too).
        int8: also quantize the compressed model (``"openvino"``, ``"onnxruntime"`` or ``"auto"``), calibrated on
            ``calibration_samples`` inputs of the bundle's validation data.
        target_device: where latency is measured (``"cpu"``; ``"cuda"`` when available).
        dry_run: only return (and log) what would be done.
        input_shape: the example input ``(1, C, *spatial)`` for MACs, exports and the network-call latency
            (default: ``network_data_format`` inputs.image in the metadata); also ``prune#input_shape``.
        allow_degraded: write the bundle even when it breaks the recipe's ``guardrails`` (per-class floors and
            budgets, :func:`monai_prune.fidelity.check_guardrails`; ``guardrails#<name>`` overrides); its README
            and fidelity card then say DEGRADED in their first line. Without it such a bundle raises
            :class:`GuardrailError`.
    """
    src, out = os.path.abspath(src), os.path.abspath(out)
    overrides = dict(overrides or {})
    if int8 is not None and int8 not in INT8_BACKENDS:
        raise ConfigError(f"int8 must be one of {INT8_BACKENDS}, got {int8!r}")
    if target_device not in ("cpu", "cuda") or (target_device == "cuda" and not torch.cuda.is_available()):
        raise ConfigError(f"target device {target_device!r} is not available here (cpu{', cuda' if torch.cuda.is_available() else ''})")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    info = check_bundle(src, recipe, out, overrides)
    info["allow_degraded"] = allow_degraded
    if input_shape is not None:
        if len(input_shape) != len(info["shape"]) or input_shape[1] != info["shape"][1] or min(input_shape) < 1:
            raise ConfigError(f"input_shape {list(input_shape)} does not fit the bundle's input {info['shape']} "
                              "(same rank and channels)")
        info["shape"] = [int(v) for v in input_shape]
        info["shape_source"] = "--input-shape"
    _check_schedule(src, info, epochs, overrides)
    steps = _describe(src, out, epochs, int8, info)
    if dry_run:
        return {"dry_run": True, "steps": steps}
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_work(out)
    with _sigterm_unwinds(out) as guard:
        work = _make_work(out)
        try:
            staging = os.path.join(work, "bundle")
            summary = _compress(src, out, staging, os.path.join(work, "run"), info, epochs, overrides, int8,
                                calibration_samples, torch.device(target_device), repeats, guard)
            if guard.received:  # a SIGTERM that some code caught and swallowed: never publish its result
                raise _Terminated()
            os.replace(staging, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    logger.info("compressed bundle written to %s", out)
    return summary


def _write_network_def(train_path: str, network_def: Dict[str, Any]) -> None:
    """Put the ``--set network_def`` override into the private run's train config, where the recipes read the
    constructor config the pruning plan records (``prune#network_def`` loads the file: parsing it in the run's
    config would build a network instead). Never the source's file."""
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_file(train_path)
    config["network_def"] = network_def
    ConfigParser.export_config_file(config, train_path, fmt="yaml" if train_path.endswith((".yaml", ".yml"))
                                    else "json", indent=4)


def _compress(src, out, staging, run_root, info, epochs, overrides, int8, calibration_samples, device, repeats,
              guard):
    from monai.bundle import ConfigParser

    from . import count_macs, count_params
    from .export import export_onnx, export_torchscript
    from .measure import state_dict_bytes
    from .pruning import PruningPlan

    _private_run_root(src, run_root, info["weights"])

    parser = ConfigParser()
    run_train = info["train_path"].replace(src, run_root, 1)
    parser.read_config([run_train, info["recipe_path"]])
    parser.read_meta(os.path.join(run_root, "configs", "metadata.json"))
    parser["bundle_root"] = run_root
    if _get(info["recipe"], "prune#input_shape")[0] and "prune#input_shape" not in overrides:
        parser["prune#input_shape"] = info["shape"]  # the bundle's own input, not the recipe's 3D placeholder
    for key, value in overrides.items():
        if not key.startswith(NOT_FOR_TRAINING):
            parser[key] = value
    if epochs is not None:
        parser["train#trainer#max_epochs"] = epochs
    if any(k == "network_def" or k.startswith("network_def#") for k in overrides):
        _write_network_def(run_train, copy.deepcopy(parser.get("network_def")))
    dense_state = read_state_dict(info["weights"])
    as_written = copy.deepcopy(parser.get())  # ids in errors are the user's, not shifted by the loader we insert
    # the dense weights load first (before distillation takes its teacher at STARTED)
    parser["train#handlers"] = [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                                 "load_dict": {"model": "@network"}, "map_location": "cpu"}] + list(parser["train#handlers"])
    x = torch.zeros(info["shape"], device=device)
    raw = copy.deepcopy(parser.get())
    if _get(raw, "initialize")[0]:
        parser.get_parsed_content("initialize")  # e.g. set_determinism, as monai.bundle run does

    dense_def, dense = dense_network(parser)
    dense = dense.to(device)
    dense.load_state_dict(dense_state)
    dense.eval()
    pred_format = info["metadata"]["network_data_format"]["outputs"]["pred"]
    names = class_names(pred_format.get("channel_def"), int(pred_format.get("num_channels", 1)))
    label_mode = validation_label_mode(info["metadata"], raw)
    logger.info("evaluating the dense model with the bundle's validate#evaluator")
    before, before_classes = _evaluate(raw, dense, names, guard, label_mode)

    trainer = instantiate(parser, "train#trainer", as_written)
    logger.info("fine-tuning with %s for %d epochs", os.path.basename(info["recipe_path"]), trainer.state.max_epochs)
    with guard.running(trainer, parser.get_parsed_content("validate#evaluator")):
        trainer.run()
    network = parser.get_parsed_content("network")
    ckpt_dir = parser.get_parsed_content("ckpt_dir")
    best = os.path.join(ckpt_dir, "model.pt")
    if os.path.isfile(best):
        network.load_state_dict(read_state_dict(best))  # the evaluator's best checkpoint (of the final architecture)
    network.eval()
    after, after_classes = _evaluate(raw, network, names, guard, label_mode)
    plan_file = os.path.join(ckpt_dir, "plan.json")
    plan = PruningPlan.load(plan_file) if os.path.isfile(plan_file) else None
    if plan is None and _get(info["recipe"], "prune#plan_path")[0]:
        raise ConfigError("the recipe's pruning handler never ran, so nothing was pruned: a --set train#handlers=... "
                          "replaces the handlers the recipe appends (+train#handlers); change single handlers "
                          "(train#handlers#<i>#...) instead (nothing was written)")

    # artifacts
    models = os.path.join(staging, "models")
    os.makedirs(models)
    shutil.copytree(os.path.join(src, "configs"), os.path.join(staging, "configs"))
    for entry in os.listdir(src):
        if entry not in SKIPPED and entry != "configs":
            target = os.path.join(staging, entry)
            (shutil.copytree if os.path.isdir(os.path.join(src, entry)) else shutil.copy2)(
                os.path.join(src, entry), target)
    shutil.copy2(info["recipe_path"], os.path.join(staging, "configs", "compress_recipe.json"))
    torch.save(network.state_dict(), os.path.join(models, "model.pt"))
    if plan is not None:
        plan.save(os.path.join(models, "plan.json"))
    onnx = export_onnx(network.cpu(), x.cpu(), os.path.join(models, "model.onnx"))
    network.to(device)

    macs = {"before": count_macs(dense, x), "after": count_macs(network, x)}
    params = {"before": count_params(dense), "after": count_params(network)}
    size = {"before": state_dict_bytes(dense), "after": state_dict_bytes(network)}  # both as torch.save writes them
    network_call = {"before": _latency(dense, x, repeats), "after": _latency(network, x, repeats)}
    # the trainer's validation dataset and inferer (already built, cached): latency, backend agreement, calibration
    dataset = parser.get_parsed_content("validate#dataset")
    inferer = parser.get_parsed_content("validate#inferer")
    logger.info("timing the bundle's validate#inferer with both models on %s", device.type)
    latency = _inferer_latency(dataset[0]["image"], inferer, {"before": dense, "after": network}, device, repeats)
    compression: Dict[str, Any] = {
        "tool": "monai-prune", "recipe": info["recipe"].get("recipe", {}).get("name",
                                                                           os.path.basename(info["recipe_path"])),
        "recipe_overrides": recorded_overrides(overrides), "epochs": trainer.state.max_epochs,
        "plan_checksum": plan.checksum if plan is not None else None,
        "params": params, "macs": macs, "size_bytes": size,
        "latency_s": {**latency, "device": device.type, "ratio": latency["before"] / latency["after"],
                      "what": "the bundle's validate#inferer on the first validation case (median)"},
        "network_latency_s": {**network_call, "device": device.type, "input_shape": info["shape"],
                              "ratio": network_call["before"] / network_call["after"]},
        "metrics": {k: {"before": before[k], "after": after.get(k)} for k in before},
        "per_class": json_safe(compare_per_class(before_classes, after_classes)),
        "validation_cases": before_classes["cases"],
        "units": before_classes.get("units", {}),
        "label_mode": before_classes.get("label_mode"),
        "worst_cases": json_safe(worst_cases(before_classes, after_classes)),
        **({"ece": {"before": before_classes["ece"], "after": after_classes["ece"]}} if "ece" in before_classes
           else {}),
        "calibration_sha256": None,
    }
    from .fidelity import backend_agreement, prediction_agreement

    inputs = [torch.as_tensor(dataset[i]["image"])[None].float() for i in range(min(2, len(dataset)))]
    compression["backend_agreement"] = backend_agreement(network.cpu().eval(), inputs, inferer, onnx_path=onnx.path,
                                                         label_mode=compression["label_mode"])
    compression["agreement_vs_dense"] = prediction_agreement(dense.cpu().eval(), network, inputs, inferer,
                                                             label_mode=compression["label_mode"])
    network.to(device)
    dense.to(device)
    broken = check_guardrails(info["guardrails"], compression) if info["guardrails"] else []
    compression["guardrails"] = {"declared": info["guardrails"], "broken": broken,
                                 "allowed_degraded": bool(broken and info["allow_degraded"])}
    if broken and not info["allow_degraded"]:
        raise GuardrailError("the compressed model breaks its guardrails, nothing was written (--allow-degraded "
                             "writes it anyway, marked DEGRADED): " + "; ".join(broken))
    if broken:
        logger.warning("DEGRADED (written because of --allow-degraded): %s", "; ".join(broken))
    if int8:
        from .quantization import calibration_data, quantize

        calibration = calibration_data(dataset, calibration_samples, roi_size=info["shape"][2:])
        result = quantize(network.cpu(), calibration, backend=int8, out_dir=os.path.join(staging, ".int8"),
                          repeats=repeats)
        for path in model_files(result.path):  # an OpenVINO .xml moves with its .bin
            shutil.move(path, os.path.join(models, os.path.basename(path)))
        shutil.rmtree(os.path.join(staging, ".int8"))
        compression["calibration_sha256"] = calibration.sha256
        compression["int8"] = {"file": os.path.basename(result.path), "backend": result.backend,
                               "int8_layers": len(result.int8_layers), "fp32_layers": result.fp32_layers,
                               "agreement_vs_fp32": result.fidelity["agreement"],
                               "speedup_vs_fp32": result.speedup, "warnings": result.warnings}
        network.to(device)

    # configs, metadata, TorchScript with them embedded

    configs_done = rewrite_configs(staging, dense_def if plan is not None else None, overrides)
    downloads = drop_model_downloads(staging)
    if downloads:
        configs_done["large_files"] = downloads
    if int8:
        compression["int8"]["config"] = write_int8_config(staging)
        if compression["int8"]["config"]:
            configs_done[compression["int8"]["config"]] = (
                f"overlay of inference.json that runs models/{compression['int8']['file']} "
                f"({compression['int8']['backend']} int8, checked against its sha256)")
    compression["configs"] = configs_done
    metadata = copy.deepcopy(info["metadata"])
    version = _bump(metadata.get("version", "0.1.0"))
    metadata["version"] = version
    metadata.update(versions_used(info["metadata"], compression.get("int8", {}).get("backend")))
    published = metadata.get("eval_metrics")
    metadata["eval_metrics"] = _measured_eval_metrics(published, after)
    metadata["eval_metrics_source"] = (
        f"measured by monai-prune compress-bundle on the source bundle's validation split "
        f"({compression['validation_cases']} cases, train.json validate#dataset) with its validate#evaluator, "
        "after fine-tuning; the dense source model on the same cases: compression.metrics (before)")
    if published:
        compression["source_published_eval_metrics"] = {
            "values": published, "note": "published by the source bundle for its dense model; not measured here"}
    summary_line = (f"compressed with monai-prune recipe {compression['recipe']}: MACs x{macs['after'] / macs['before']:.3f}, "
                    f"params x{params['after'] / params['before']:.3f}, latency {compression['latency_s']['ratio']:.2f}x "
                    f"faster on {device.type}")
    if compression["guardrails"]["broken"]:
        summary_line = "DEGRADED (breaks its guardrails): " + summary_line
    metadata["changelog"] = {version: summary_line, **metadata.get("changelog", {})}
    name = str(metadata.get("name", os.path.basename(src)))
    metadata["name"] = name if "compressed" in name.lower() else f"{name} (compressed)"
    card = FidelityCard.from_compression(compression, title=f"{metadata['name']} {version}")
    compression["fidelity_card"] = card.to_dict()
    metadata["compression"] = compression
    inference_path = _config_file(staging, "inference")
    inference = _load(inference_path) if inference_path else None
    export_torchscript(network.cpu(), x.cpu(), os.path.join(models, "model.ts"),
                       extra_files={"metadata.json": metadata, **({"inference.json": inference} if inference else {})})
    metadata["model_files"] = {name: sha256(os.path.join(models, name)) for name in sorted(os.listdir(models))}
    metadata["config_files"] = config_digests(staging)  # every config is final now; deploy checks them before parsing
    atomic_write_text(os.path.join(staging, "configs", "metadata.json"), json.dumps(metadata, indent=2))
    os.makedirs(os.path.join(staging, "docs"), exist_ok=True)
    if os.path.isfile(os.path.join(staging, "docs", "README.md")):
        os.replace(os.path.join(staging, "docs", "README.md"), os.path.join(staging, "docs", "README_dense.md"))
    card.to_json(os.path.join(staging, "docs", "fidelity_card.json"))
    atomic_write_text(os.path.join(staging, "docs", "fidelity_card.md"), card.to_markdown())
    atomic_write_text(os.path.join(staging, "docs", "README.md"), _readme(metadata, card, src, out, onnx.path))
    logger.info("fidelity card: %s", card.headline())
    return {**compression, "card": card}


def _measured_eval_metrics(published: Any, measured: Dict[str, float]) -> Dict[str, float]:
    """The metadata's ``eval_metrics``: what the evaluator measured on the compressed model, by its metric names; a
    published name that is a measured one without the ``val_`` prefix (the model zoo's ``mean_dice`` for
    ``val_mean_dice``) keeps its name with the measured value; published values with no measured counterpart go."""
    result = {}
    for key in (published if isinstance(published, dict) else {}):
        for name in (key, f"val_{key}"):
            if name in measured:
                result[key] = measured[name]
                break
    for name, value in measured.items():
        if name not in result and not (name.startswith("val_") and name[4:] in result):
            result[name] = value
    return result


def _readme(metadata: Dict[str, Any], card: FidelityCard, src: str, out: str, onnx_path: str) -> str:
    """The new bundle's ``docs/README.md``: what it is, its fidelity card (measured before -> after, guardrails), its
    files and how to run it. A degraded bundle's README starts with the card's headline."""
    c = metadata["compression"]
    int8 = c.get("int8")
    lines = [f"**{card.headline()}**", ""] if card.status in ("DEGRADED", "FAIL") else []
    lines += [
        f"# {metadata['name']}", "",
        f"Version {metadata['version']}: {metadata['changelog'][metadata['version']]}.", "",
        f"This bundle was made from `{os.path.basename(src)}` by `monai-prune compress-bundle` with the recipe "
        f"`{c['recipe']}` ({c['epochs']} fine-tuning epochs with the source bundle's own trainer and data). "
        "Only the network changed: preprocessing, inferer and postprocessing are the source bundle's.", "",
        "## Fidelity card: what was measured (before = the source's dense model, after = this bundle's model)", "",
        card.to_markdown(heading_level=3),
        "The card is also in `docs/fidelity_card.md`, `docs/fidelity_card.json` "
        "(`monai_prune.fidelity.FidelityCard.load`) and `configs/metadata.json` (`compression.fidelity_card`).", "",
    ]
    if int8:
        lines += [f"int8 ({int8['backend']}): `models/{int8['file']}`, {int8['int8_layers']} layers int8, argmax "
                  f"agreement with fp32 {int8['agreement_vs_fp32']:.4f}, {int8['speedup_vs_fp32']:.2f}x vs its fp32. "
                  + " ".join(w.rstrip(". ") + "." for w in int8["warnings"]), ""]
    configs = c.get("configs", {})
    plan = any("plan.json" in note for note in configs.values())
    lines += ["## Measured metrics", "",
              f"`eval_metrics` in `configs/metadata.json` are {metadata['eval_metrics_source']}."
              + (" The source bundle's published values (of its dense model) are kept under "
                 "`compression.source_published_eval_metrics`, not as this bundle's." if
                 c.get("source_published_eval_metrics") else ""),
              "", "## Files", "",
              "- `models/model.pt` + `models/plan.json`: state dict and pruning plan of the compressed network. Every "
              "config's `network_def` builds the source's dense network and replays the plan on it "
              "(`monai_prune.apply_plan`, the plan read as data), so the configs' own checkpoint loaders load "
              "`model.pt` as they did for the dense bundle (`torch.load(..., weights_only=True)` works too)."
              if plan else "- `models/model.pt`: state dict of the compressed network (same layout as the source's).",
              "- `models/model.ts`: TorchScript of the compressed network (metadata and inference config embedded); "
              "what MONAI Deploy loads.",
              f"- `models/{os.path.basename(onnx_path)}`: ONNX for ONNX Runtime / OpenVINO / Triton.",
              "- every model file's sha256 is in `configs/metadata.json` (`model_files`); "
              "`monai_prune.bundle.verify_model_files(bundle)` checks them; every config's is under `config_files`, "
              "which deploy apps check before parsing a config.", "",
              "## Configs", ""]
    lines += [f"- `configs/{name}`: {note}." for name, note in sorted(configs.items()) if name.endswith(CONFIG_EXTS)]
    if configs.get("large_files"):
        lines += [f"- {configs['large_files']}."]
    root = os.path.basename(out)
    lines += ["", "## Run (from the bundle folder, with monai-prune installed: the configs use `monai_prune.apply_plan`)",
              "", "```bash",
              "python -m monai.bundle run --config_file configs/inference.json --dataset_dir <your data>"]
    if "evaluate.json" in configs and "train.json" in configs:
        lines += ["python -m monai.bundle run --config_file \"['configs/train.json','configs/evaluate.json']\" "
                  "--dataset_dir <your data>"]
    if int8 and int8.get("config"):
        lines += [f"python -m monai.bundle run --config_file \"['configs/inference.json','configs/{int8['config']}']\" "
                  "--dataset_dir <your data>  # int8, " + int8["backend"]]
    lines += ["```", "", f"(or from elsewhere with `--bundle_root {root}`.)", ""]
    if "inference_trt.json" in configs:
        lines += ["## TensorRT (untested here)", "",
                  "`configs/inference_trt.json` loads `models/model_trt.ts`, which this bundle does not ship. Make it "
                  "from this bundle's own `network_def` and `model.pt` (the compressed network), then run it:", "",
                  "```bash",
                  "python -m monai.bundle trt_export --net_id network_def --filepath models/model_trt.ts "
                  "--ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json "
                  "--precision fp16",
                  "python -m monai.bundle run --config_file \"['configs/inference.json','configs/inference_trt.json']\"",
                  "```", "",
                  "TensorRT and a GPU were not available where this bundle was made: the TensorRT route was not run.",
                  ""]
    return "\n".join(lines)
