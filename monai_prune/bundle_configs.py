"""The configs of a bundle written by ``monai-prune compress-bundle`` (package-private; used by :mod:`.bundle`).

Every config the source bundle ships must run with the stock ``python -m monai.bundle`` CLI, unchanged, on the
compressed model, as the dense ones did: model-zoo bundles build the network in several configs (``train.json``,
which ``evaluate.json`` and ``multi_gpu_*.json`` overlay, ``inference.json``) and load ``models/model.pt`` through
their own checkpoint loaders, some from an ``initialize`` step (``$@checkpointloader(@evaluator) if
@load_pretrain else None``). So the configs keep their ids and loaders, and only ``network_def`` changes: it builds
the dense network from its own constructor config and replays ``models/plan.json`` on it
(:func:`monai_prune.apply_plan`, which reads the plan as data), into which the compressed ``models/model.pt`` loads.

Also here: ``configs/inference_int8.json`` (an overlay of ``inference.json`` that serves the int8 model through
:class:`RuntimeNetwork`), which ``--set`` values may be carried into a config or recorded (never local paths), the
schedule check of a pruning recipe against the fine-tuning epochs, and the versions to record in the metadata.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import os
import re
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .errors import ConfigError
from .utils import atomic_write_text

logger = logging.getLogger(__name__)

PLAN_REF = "$@bundle_root + '/models/plan.json'"
INT8_CONFIG = "inference_int8.json"
LOCAL = "<local path, not recorded>"
PATH_KEYS = re.compile(r"(dir|root|path|file|folder|files|paths|list)$", re.IGNORECASE)
CONFIG_EXTS = (".json", ".yaml", ".yml")


# ---------------------------------------------------------------------------------------------------- overrides
def is_local(key: str, value: Any) -> bool:
    """Whether a ``--set`` value is (or holds) a path of the machine it ran on: a string under a path-like id
    (``dataset_dir``, ``bundle_root``, ``datalist``...) or any string that looks like a path. Such values are never
    written into the compressed bundle."""
    if isinstance(value, str):
        return bool(PATH_KEYS.search(key.split("#")[-1])) or "/" in value or "\\" in value or value.startswith("~")
    if isinstance(value, dict):
        return any(is_local(f"{key}#{k}", v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(is_local(key, v) for v in value)
    return False


def recorded_overrides(overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The ``--set`` values as the metadata records them: local paths replaced by :data:`LOCAL`."""
    return {k: LOCAL if is_local(k, v) else v for k, v in overrides.items()}


# ---------------------------------------------------------------------------------------------------- schedule
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def schedule_problem(start: Any, end: Any, frequency: Any, max_epochs: Any) -> Optional[str]:
    """What is wrong with a pruning schedule (``prune#start_epoch``, ``prune#end_epoch``, ``prune#frequency``) for
    ``max_epochs`` of fine-tuning, or None: the schedule's own rules (:class:`~monai_prune.schedules.SparsitySchedule`)
    and one epoch at least after the last pruning step, so that the final architecture is fine-tuned and validated."""
    for name, value in (("prune#start_epoch", start), ("prune#end_epoch", end)):
        if not _is_int(value) or value < 0:
            return f"{name} must be a non-negative integer, got {value!r}"
    if not _is_int(frequency) or frequency < 1:
        return f"prune#frequency must be a positive integer number of epochs, got {frequency!r}"
    if not _is_int(max_epochs) or max_epochs < 1:
        return f"the trainer's max_epochs must be a positive integer, got {max_epochs!r}"
    if start > end:
        return f"prune#start_epoch={start} is after prune#end_epoch={end}"
    if end >= max_epochs - 1:
        return (f"prune#end_epoch={end} leaves no epoch after the last pruning step in {max_epochs} epochs: the final "
                "architecture would be neither fine-tuned nor validated")
    return None


def schedule_fixes(start: Any, end: Any, frequency: Any, max_epochs: Any) -> List[str]:
    """Command-line options that make :func:`schedule_problem` pass (each one checked by it), e.g.
    ``["--epochs 12", "--set prune#start_epoch=0 --set prune#end_epoch=0"]``."""
    freq = frequency if _is_int(frequency) and frequency >= 1 else 1
    first = start if _is_int(start) and start >= 0 else 0
    candidates = []
    if _is_int(end) and end >= 0:  # keep the schedule, train longer
        candidates.append((max(max_epochs if _is_int(max_epochs) else 1, end + 2), min(first, end), end))
    if _is_int(max_epochs) and max_epochs >= 2:  # keep the epochs, end the schedule earlier
        candidates.append((max_epochs, min(first, max_epochs - 2), max_epochs - 2))
    fixes: List[str] = []
    for epochs, new_start, new_end in candidates:
        if schedule_problem(new_start, new_end, freq, epochs) is not None:
            continue
        parts = [f"--epochs {epochs}"] if epochs != max_epochs else []
        parts += [f"--set prune#{name}={new}" for name, old, new in
                  (("start_epoch", start, new_start), ("end_epoch", end, new_end), ("frequency", frequency, freq))
                  if new != old]
        if parts and " ".join(parts) not in fixes:
            fixes.append(" ".join(parts))
    return fixes


def check_schedule(values: Dict[str, Any]) -> None:
    """Raise :class:`ConfigError` when the recipe's schedule does not fit the epochs, with fixes that pass."""
    args = (values.get("start_epoch", 0), values.get("end_epoch"), values.get("frequency", 1), values.get("max_epochs"))
    problem = schedule_problem(*args)
    if problem is None:
        return
    fixes = schedule_fixes(*args)
    raise ConfigError(problem + (". Use " + ", or ".join(fixes) if fixes else "") + " (nothing was run)")


# ---------------------------------------------------------------------------------------------------- configs
def compressed_network_def(dense_def: Dict[str, Any]) -> Dict[str, Any]:
    """``network_def`` of the compressed bundle: the dense constructor config, pruned by ``models/plan.json``."""
    return {"_target_": "monai_prune.apply_plan", "model": copy.deepcopy(dense_def), "plan": PLAN_REF}


def _load(path: str) -> Any:
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_file(path)


def _write(path: str, config: Any) -> None:
    if path.endswith(".json"):
        atomic_write_text(path, json.dumps(config, indent=4) + "\n")
    else:
        import yaml

        atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def _config_files(configs: str) -> List[str]:
    return sorted(n for n in os.listdir(configs) if n.endswith(CONFIG_EXTS) and n != "metadata.json"
                  and os.path.isfile(os.path.join(configs, n)))


def rewrite_configs(bundle: str, dense_def: Optional[Dict[str, Any]], overrides: Dict[str, Any]) -> Dict[str, str]:
    """Rewrite the copied configs in ``bundle/configs`` in place; returns what was done to each, by file name.

    * with a pruning plan (``dense_def`` given), every ``network_def`` that is a constructor config becomes
      :func:`compressed_network_def` (an expression such as ``inference_trt.json``'s ``torch.jit.load`` is kept: it
      loads a file made from this bundle's own ``network_def`` and ``model.pt``); overlays that use
      ``@network_def`` (``multi_gpu_*.json``) and load ``@ckpt_dir/model.pt`` (``evaluate.json``) need no change;
    * ``inference.*`` takes the ``--set`` values of top-level ids it shares with the fine-tuning run (e.g. a patch
      size), so inference runs as the model was fine-tuned; never a local path (:func:`is_local`): the bundle's own
      ``dataset_dir`` etc. stay;
    * ``inference.*`` also takes every ``--set inference#<id>=...`` (deployment knobs such as the sliding-window
      overlap, which the fine-tuning run never sees).
    """
    configs = os.path.join(bundle, "configs")
    done: Dict[str, str] = {}
    for name in _config_files(configs):
        path = os.path.join(configs, name)
        config = _load(path)
        if not isinstance(config, dict):
            continue
        notes = []
        if dense_def is not None and isinstance(config.get("network_def"), dict):
            config["network_def"] = compressed_network_def(dense_def)
            notes.append("network_def builds the compressed network (models/plan.json)")
        elif isinstance(config.get("network_def"), str):
            notes.append(f"network_def kept: {config['network_def']}")
        if os.path.splitext(name)[0] == "inference":
            carried = {k: v for k, v in overrides.items() if "#" not in k and k in config
                       and not isinstance(config[k], dict) and not k.startswith("guardrails") and not is_local(k, v)}
            config.update(carried)
            if carried:
                notes.append(f"--set values carried: {sorted(carried)}")
            knobs = {k.split("#", 1)[1]: v for k, v in overrides.items() if k.startswith("inference#")}
            for key, value in knobs.items():
                set_id(config, key, value)
            if knobs:
                notes.append(f"inference-only --set values: {sorted(knobs)}")
        if notes and any(not n.startswith("network_def kept") for n in notes):
            _write(path, config)
        done[name] = "; ".join(notes) or ("unchanged (builds the network through @network_def)"
                                          if "@network_def" in json.dumps(config) else "unchanged")
    return done


def set_id(config: Dict[str, Any], key: str, value: Any) -> None:
    """``config[a][b]... = value`` for the bundle id ``a#b#...`` (list items by index); the id must exist."""
    *parents, last = key.split("#")
    node: Any = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _loader_ids(node: Any, prefix: str = "") -> List[str]:
    """Ids of every ``CheckpointLoader`` component in a config."""
    found = []
    if isinstance(node, dict):
        if str(node.get("_target_", "")).endswith("CheckpointLoader"):
            found.append(prefix)
        for key, value in node.items():
            found += _loader_ids(value, f"{prefix}#{key}" if prefix else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _loader_ids(value, f"{prefix}#{i}" if prefix else str(i))
    return found


def int8_config(inference: Dict[str, Any]) -> Dict[str, Any]:
    """``configs/inference_int8.json``: an overlay of ``inference.json`` (as ``inference_trt.json`` is in the model
    zoo) whose network is the bundle's verified int8 model run by its runtime (:class:`RuntimeNetwork`); the
    checkpoint loaders of ``inference.json`` (there are no torch weights to load) are disabled, and ``initialize``
    steps that call them are left out."""
    loaders = _loader_ids(inference)
    overlay: Dict[str, Any] = {
        "network_def": {"_target_": "monai_prune.bundle_configs.RuntimeNetwork", "bundle_root": "@bundle_root",
                        "precision": "int8"},
    }
    for loader in loaders:
        overlay[f"{loader}#_disabled_"] = True
    if "load_pretrain" in inference:
        overlay["load_pretrain"] = False
    initialize = inference.get("initialize")
    if isinstance(initialize, list):
        kept = [step for step in initialize if not any(re.search(rf"@{re.escape(i)}\b", str(step)) for i in loaders)]
        if kept != initialize:
            overlay["initialize"] = kept
    if isinstance(inference.get("evaluator"), dict) and "amp" in inference["evaluator"]:
        overlay["evaluator#amp"] = False  # the int8 runtimes run on the CPU, in their own precision
    return overlay


def write_int8_config(bundle: str) -> Optional[str]:
    """Write :func:`int8_config` next to the bundle's ``inference.json``; its file name, or None without one."""
    configs = os.path.join(bundle, "configs")
    source = next((n for n in ("inference.json", "inference.yaml", "inference.yml")
                   if os.path.isfile(os.path.join(configs, n))), None)
    if source is None:
        return None
    _write(os.path.join(configs, INT8_CONFIG), int8_config(_load(os.path.join(configs, source))))
    return INT8_CONFIG


def drop_model_downloads(bundle: str) -> Optional[str]:
    """A model-zoo ``large_files.yml`` (or ``.json``) downloads the DENSE ``models/model.pt``/``model.ts`` over the
    compressed ones (``monai.bundle download``): keep only its entries outside ``models/``; remove it when none is
    left. Returns what was done, or None without such a file."""
    for name in ("large_files.yml", "large_files.yaml", "large_files.json"):
        path = os.path.join(bundle, name)
        if not os.path.isfile(path):
            continue
        data = _load(path)
        entries = data.get("large_files", []) if isinstance(data, dict) else []
        kept = [e for e in entries if not str(e.get("path", "")).lstrip("./").startswith("models/")]
        if not kept:
            os.remove(path)
            return f"{name} removed (it downloads the dense source model files)"
        data["large_files"] = kept
        _write(path, data)
        return f"{name}: dense model files left out"
    return None


# ---------------------------------------------------------------------------------------------------- versions
def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions_used(source: Dict[str, Any], int8_backend: Optional[str]) -> Dict[str, Any]:
    """The metadata's version fields as of this run: monai, torch, numpy, and ``optional_packages_version``: the
    source's packages at their installed versions, plus what the compressed configs import to run (monai-prune,
    torch-pruning for the plan's replay, the int8 runtime)."""
    import monai
    import numpy

    published = dict(source.get("optional_packages_version") or {})
    optional = {}
    for dist in list(published) + ["monai-prune", "torch-pruning"] + ([int8_backend] if int8_backend else []):
        installed = _version(dist) or published.get(dist)
        if installed:
            optional[dist] = installed
    return {"monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": numpy.__version__, "optional_packages_version": optional}


# ---------------------------------------------------------------------------------------------------- int8 network
class RuntimeNetwork(nn.Module):
    """A compressed bundle's model file run by its runtime (ONNX Runtime, OpenVINO, TorchScript), as the torch module
    a bundle's evaluator and inferer call: ``configs/inference_int8.json`` builds it as ``network_def``.

    The file is the one the deploy operators run (:func:`monai_prune.deploy.models.select_model`), after every model
    file was checked against its sha256 in ``configs/metadata.json``.

    Args:
        bundle_root: the compressed bundle.
        precision: ``"int8"`` (the bundle's int8 model), ``"fp32"`` or ``"auto"``.
        backend: ``"auto"`` or a runtime (``select_model``).
    """

    def __init__(self, bundle_root: str, precision: str = "int8", backend: str = "auto") -> None:
        super().__init__()
        from .deploy.models import select_model, verify_model_files
        from .runtime import Predictor

        root = os.path.abspath(bundle_root)
        verify_model_files(root)
        self.choice = select_model(root, backend=backend, precision=precision, verify=False)
        self.predictor = Predictor(self.choice.path, backend=self.choice.backend)
        logger.info("network: models/%s on %s (%s, sha256 %s verified)", os.path.basename(self.choice.path),
                    self.choice.backend, self.choice.precision, self.choice.sha256[:12])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(x).to(x.device)


def _component_ids(node: Any, class_name: str, prefix: str) -> List[str]:
    """The ids under ``prefix`` whose ``_target_`` names ``class_name`` (``"TensorBoardStatsHandler"`` or a dotted
    path ending in it)."""
    found: List[str] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if key == "_target_" and isinstance(value, str) and value.rsplit(".", 1)[-1] == class_name:
            found.append(prefix)
        elif isinstance(value, (dict, list)):
            found += _component_ids(value, class_name, f"{prefix}#{key}" if prefix else str(key))
    return found


def build_failure(config: Dict[str, Any], key: str, error: BaseException) -> str:
    """One line for a bundle component MONAI could not build: which id, which class, and the root cause (MONAI
    wraps it in ``Failed to instantiate component ...``), with the ``--set`` that replaces it."""
    root = error
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    cause = " ".join(str(root).split()) or type(root).__name__
    failed = [m.group(1) for e in (error, root) for m in [re.search(r"component '([\w.]+)'", str(e))] if m]
    where = ""
    if failed:
        class_name = failed[0].rsplit(".", 1)[-1]
        ids = _component_ids(config, class_name, "")
        section = key.split("#")[0] + "#"
        ids = [i for i in ids if i.startswith(section)] or ids  # the validate#... one when training fails: last
        where = f" ({class_name} at {', '.join(ids)})" if ids else f" ({class_name})"
        if ids:
            cause += f"; install what it needs or replace it with --set '{ids[0]}=...'"
    return f"the bundle's {key} cannot be built{where}: {type(root).__name__}: {cause} (nothing was written)"


def instantiate(parser: Any, key: str, config: Optional[Dict[str, Any]] = None) -> Any:
    """``parser.get_parsed_content(key, instantiate=True)``, or a :class:`ConfigError` in one line
    (:func:`build_failure`) when MONAI cannot build it: a missing optional package (tensorboard, mlflow), a class
    this MONAI no longer has, a wrong keyword. ``config``: the config as the user wrote it, to name ids in it (the
    parser's may hold components we inserted)."""
    try:
        return parser.get_parsed_content(key, instantiate=True)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(build_failure(parser.get() if config is None else config, key, e)) from e
