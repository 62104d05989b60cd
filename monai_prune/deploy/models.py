"""Which model file and backend a compressed bundle runs with, checked against its recorded sha256 first.

A bundle written by ``monai-prune compress-bundle`` holds ``models/model.ts`` (TorchScript), ``models/model.onnx``
and, with ``--int8``, ``models/model_int8.onnx`` (ONNX Runtime) or ``models/model_int8.xml``/``.bin`` (OpenVINO);
``configs/metadata.json`` lists every file's sha256 (``model_files``) and what was measured (``compression``).
:func:`select_model` turns (bundle, backend, precision) into one verified file; nothing is loaded before the
checksums match.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

from .._io import sha256
from ..errors import ConfigError, InputError
from ..runtime.registry import BACKENDS as RUNTIMES, REGISTRY

logger = logging.getLogger(__name__)

BACKENDS = ("auto",) + tuple(b for b in RUNTIMES if b != "torch")  # a bundle ships files, not a module
PRECISIONS = ("auto", "fp32", "int8")


@dataclass
class ModelChoice:
    """The model file a deploy operator runs, and what it is (written into every result)."""

    bundle: Optional[str]
    path: str
    backend: str
    precision: str
    sha256: str
    name: str
    version: str
    reason: str

    def to_dict(self) -> Dict[str, Any]:
        record = asdict(self)
        record["path"] = os.path.relpath(self.path, self.bundle) if self.bundle else os.path.basename(self.path)
        record.pop("bundle")
        return record

    @property
    def dicom_uid(self) -> str:
        """A DICOM UID derived from the model file's sha256 (the Device UID of the results' equipment)."""
        return "2.25." + str(int(self.sha256[:32], 16))


def bundle_root(path: str) -> Optional[str]:
    """The bundle folder for ``path`` (the folder itself, or ``models/<file>`` inside one); None if not a bundle."""
    path = os.path.abspath(path)
    for candidate in (path, os.path.dirname(os.path.dirname(path))):
        if os.path.isdir(candidate) and os.path.isfile(os.path.join(candidate, "configs", "metadata.json")):
            return candidate
    return None


def _metadata(root: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(root, "configs", "metadata.json")) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{root}/configs/metadata.json is not valid JSON: {e}") from e


ALLOW_EDITED_CONFIGS = "--allow-edited-configs"


def verify_model_files(bundle: str) -> Dict[str, str]:
    """Check every model file listed in ``configs/metadata.json`` ``model_files`` against its sha256."""
    try:
        listed = _metadata(bundle).get("model_files", {})
    except OSError as e:
        raise InputError(f"cannot read {bundle}/configs/metadata.json: {e}") from e
    if not listed:
        raise InputError(f"{bundle}/configs/metadata.json lists no model_files with sha256")
    for name, digest in listed.items():
        path = os.path.join(bundle, "models", name)
        if not os.path.isfile(path):
            raise InputError(f"model file {name} listed in metadata.json is missing")
        if sha256(path) != digest:
            raise InputError(f"model file {name} does not match its sha256 in metadata.json: it was modified or "
                             "corrupted; refusing to load it")
    return listed


def verify_config_files(root: str) -> Dict[str, str]:
    """Check every file in ``configs/`` against the sha256 recorded in ``configs/metadata.json`` (``config_files``)
    before any of them is parsed: MONAI evaluates a config's ``$`` expressions, so an edited config is code.

    ``metadata.json`` itself is read as plain JSON (never evaluated). Refuses a config that is missing, edited,
    or added after compression, and a bundle that records no config checksums.
    """
    listed = _metadata(root).get("config_files")
    hint = f"to run edited configs on purpose, pass {ALLOW_EDITED_CONFIGS}"
    if not isinstance(listed, dict) or not listed:
        raise InputError(f"{os.path.basename(root)}/configs/metadata.json records no config_files sha256 (compressed "
                         f"by an older monai-prune?): refusing to parse unverified configs; recompress it, or {hint}")
    configs = os.path.join(root, "configs")
    bad_names = [n for n in listed if not isinstance(n, str) or os.path.basename(n) != n or n in ("", ".", "..")]
    if bad_names:
        raise InputError(f"metadata.json config_files names {bad_names[0]!r}, which is not a file name in configs/")
    present = sorted(n for n in os.listdir(configs) if n != "metadata.json" and os.path.isfile(os.path.join(configs, n)))
    unlisted = [n for n in present if n not in listed]
    if unlisted:
        raise InputError(f"configs/{unlisted[0]} was added after compression (no sha256 in metadata.json): "
                         f"refusing to run the bundle; remove it, or {hint}")
    for name, digest in sorted(listed.items()):
        path = os.path.join(configs, name)
        if not os.path.isfile(path):
            raise InputError(f"configs/{name} listed in metadata.json is missing")
        if sha256(path) != digest:
            raise InputError(f"configs/{name} does not match its sha256 in metadata.json: it was edited after "
                             f"compression; refusing to parse it ({hint})")
    return listed


def _available(backend: str) -> bool:
    return REGISTRY[backend].available()


def _int8_backend(file: str) -> str:
    return "openvino" if file.endswith(".xml") else "onnxruntime"


def select_model(path: str, backend: str = "auto", precision: str = "auto", verify: bool = True,
                 verify_configs: Optional[bool] = None) -> ModelChoice:
    """Pick and verify the model file of a compressed bundle (or take a single model file as given).

    Args:
        path: a compressed bundle folder, a file inside its ``models/``, or a lone ``.ts``/``.onnx``/``.xml``.
        backend: ``"torchscript"``, ``"onnxruntime"``, ``"openvino"`` or ``"auto"``: int8 when the bundle has an
            int8 model that measured faster than its fp32 (``compression.int8.speedup_vs_fp32 >= 1``) and its
            runtime is installed, else OpenVINO fp32, ONNX Runtime fp32, TorchScript, the first installed.
        precision: ``"fp32"``, ``"int8"`` or ``"auto"``.
        verify: check every model file's sha256 against ``configs/metadata.json`` before anything is loaded.
        verify_configs: check every config file's sha256 too (:func:`verify_config_files`); default: as ``verify``.
            ``False`` is the opt-out for people who edit a compressed bundle's configs on purpose.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not os.path.exists(path):
        raise InputError(f"model path {path} does not exist")
    root = bundle_root(path)
    if root is None:
        return _lone_file(path, backend, precision)
    metadata = _metadata(root)
    files = metadata.get("model_files")
    if not files and os.path.isfile(path) and path.endswith(".ts"):
        # a model.ts named explicitly inside a bundle that records no checksums (e.g. a dense model-zoo bundle)
        return _lone_file(path, backend, precision)
    if verify:
        if not files:
            raise InputError(f"{root}/configs/metadata.json has no model_files checksums: refusing to load "
                             "unverified models (name its models/model.ts explicitly to run it unverified)")
        verify_model_files(root)
    if verify if verify_configs is None else verify_configs:
        verify_config_files(root)
    elif verify:
        logger.warning("%s: configs not verified against metadata.json (%s)", os.path.basename(root),
                       ALLOW_EDITED_CONFIGS)
    models = os.path.join(root, "models")
    compression = metadata.get("compression", {})
    int8 = compression.get("int8") or {}
    name, version = str(metadata.get("name", os.path.basename(root))), str(metadata.get("version", ""))

    def choice(file: str, chosen_backend: str, chosen_precision: str, reason: str) -> ModelChoice:
        full = os.path.join(models, file)
        if not os.path.isfile(full):
            raise InputError(f"{root} has no models/{file} (needed for {chosen_backend} {chosen_precision})")
        digest = (files or {}).get(file)
        if digest is None:
                    digest = sha256(full)
        return ModelChoice(root, full, chosen_backend, chosen_precision, digest, name, version, reason)

    int8_file = int8.get("file")
    if precision == "int8" or (precision == "auto" and int8_file):
        if not int8_file:
            if precision == "int8":
                raise InputError(f"{root} has no int8 model (compress it with --int8)")
        else:
            wanted = _int8_backend(int8_file)
            speedup = int8.get("speedup_vs_fp32")
            if precision == "int8":
                if backend not in ("auto", wanted):
                    raise InputError(f"the int8 model {int8_file} runs on {wanted}, not {backend}")
                return choice(int8_file, wanted, "int8", "int8 requested")
            if backend in ("auto", wanted) and _available(wanted) and speedup is not None and speedup >= 1.0:
                return choice(int8_file, wanted, "int8", f"int8 measured {speedup:.2f}x its fp32 at compression")
            logger.info("int8 model %s not used: %s", int8_file,
                        f"measured {speedup:.2f}x its fp32" if speedup is not None else "no measured speed-up")
    order = [backend] if backend != "auto" else ["openvino", "onnxruntime", "torchscript"]
    for candidate in order:
        if not _available(candidate):
            if backend != "auto":
                raise InputError(f"backend {candidate} is not installed here")
            continue
        file = "model.ts" if candidate == "torchscript" else "model.onnx"
        if backend == "auto" and not os.path.isfile(os.path.join(models, file)):
            continue
        return choice(file, candidate, "fp32", "requested" if backend != "auto" else "first installed of "
                      "openvino > onnxruntime > torchscript with a model file")
    raise InputError(f"no runnable model in {models} for backend={backend}, precision={precision}")


def _lone_file(path: str, backend: str, precision: str) -> ModelChoice:
    if not os.path.isfile(path):
        raise InputError(f"{path} is neither a compressed bundle (configs/metadata.json) nor a model file")
    if not path.endswith(".ts"):
        raise InputError(f"{os.path.basename(path)} is not inside a bundle and carries no bundle configs: give the "
                         "bundle folder, or a model.ts exported with its metadata/inference configs (ckpt_export)")
    if backend not in ("auto", "torchscript") or precision == "int8":
        raise InputError(f"{os.path.basename(path)} is TorchScript fp32: it cannot run on {backend} {precision}")
    metadata = bundle_metadata(path)
    logger.warning("%s: no recorded checksum to verify it against (not a compressed bundle)", path)
    return ModelChoice(None, os.path.abspath(path), "torchscript", "fp32", sha256(path),
                       str(metadata.get("name", os.path.basename(path))), str(metadata.get("version", "")),
                       "a lone TorchScript file")


def bundle_metadata(path: str) -> Dict[str, Any]:
    """``metadata.json`` of a bundle folder (or a file in its ``models/``), or the one embedded in a ``model.ts``."""
    root = bundle_root(path)
    if root is not None:
        return _metadata(root)
    from ..export import read_torchscript_extra_files

    try:
        text = read_torchscript_extra_files(path, ["metadata.json"]).get("metadata.json")
    except Exception as e:  # not a TorchScript archive
        raise InputError(f"{path} is not a TorchScript file with bundle metadata: {e}") from e
    if not text:
        raise InputError(f"{path} has no metadata.json under extra/ (export it with monai.bundle ckpt_export)")
    return json.loads(text)
