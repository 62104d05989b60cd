"""A Triton model repository for a compressed model.

**Triton** (:func:`write_triton_repository`, :func:`check_triton_repository`). The layout Triton reads is
``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/<version>/<model file>``. With ``backend="onnxruntime"`` the
file is ``model.onnx`` (``backend: "onnxruntime"``, ``platform: "onnxruntime_onnx"``). With ``backend="openvino"``
(Triton's OpenVINO backend, CPU only) the backend's default file is an IR, ``model.xml`` + ``model.bin``; an ONNX
file is served too, as ``model.onnx`` with ``default_model_filename: "model.onnx"`` (the backend's documented way
to load a non-IR format). Inputs and outputs (names, element types, dims; dynamic dims as -1) are read from the
model file itself; with ``max_batch_size > 0`` the batch dim is left out, as Triton requires. Every config is
parsed back with Triton's own ``ModelConfig`` proto (shipped in ``tritonclient``) and compared with what was meant.

Written under a temporary name beside the target and renamed at the end; an existing model folder is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import BackendUnavailableError, ConfigError, InputError
from ..runtime.registry import TRITON_BACKENDS, model_files
from ..utils import give_umask_mode

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------- Triton
INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
_ONNX_TYPES = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "DOUBLE": "TYPE_FP64", "BFLOAT16": "TYPE_BF16",
               "BOOL": "TYPE_BOOL", "STRING": "TYPE_STRING", **{t: f"TYPE_{t}" for t in (
                   "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")}}
_OPENVINO_TYPES = {"f32": "TYPE_FP32", "f16": "TYPE_FP16", "f64": "TYPE_FP64", "bf16": "TYPE_BF16",
                   "boolean": "TYPE_BOOL", "i8": "TYPE_INT8", "i16": "TYPE_INT16", "i32": "TYPE_INT32",
                   "i64": "TYPE_INT64", "u8": "TYPE_UINT8", "u16": "TYPE_UINT16", "u32": "TYPE_UINT32",
                   "u64": "TYPE_UINT64"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def _onnx_io(path: str) -> Tuple[List[dict], List[dict]]:
    import onnx

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as e:
        raise InputError(f"{path} is not an ONNX model that onnx can read: {e}") from e
    initializers = {i.name for i in graph.initializer}

    def spec(value) -> dict:
        tensor = value.type.tensor_type
        elem = onnx.TensorProto.DataType.Name(tensor.elem_type)
        if elem not in _ONNX_TYPES:
            raise InputError(f"{path}: tensor {value.name!r} has element type {elem}, which Triton cannot serve")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim]
        return {"name": value.name, "data_type": _ONNX_TYPES[elem], "dims": dims}

    return [spec(v) for v in graph.input if v.name not in initializers], [spec(v) for v in graph.output]


def _openvino_io(path: str) -> Tuple[List[dict], List[dict]]:
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailableError("reading an OpenVINO IR needs openvino: "
                                      "pip install 'monai-prune[openvino]'") from e
    try:
        model = ov.Core().read_model(path)
    except Exception as e:
        raise InputError(f"{path} is not an OpenVINO IR that OpenVINO can read: {e}") from e

    def spec(port) -> dict:
        elem = port.get_element_type().get_type_name()
        if elem not in _OPENVINO_TYPES:
            raise InputError(f"{path}: tensor {port.get_any_name()!r} has element type {elem}, not served by Triton")
        dims = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
        return {"name": port.get_any_name(), "data_type": _OPENVINO_TYPES[elem], "dims": dims}

    return [spec(p) for p in model.inputs], [spec(p) for p in model.outputs]


def _model_io(path: str) -> Tuple[List[dict], List[dict]]:
    return _openvino_io(path) if path.endswith(".xml") else _onnx_io(path)


def _quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; non-ASCII stays UTF-8, which the parser accepts)."""
    out = []
    for ch in str(text):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _tensors(key: str, tensors: Sequence[dict]) -> List[str]:
    lines = [f"{key} ["]
    for i, t in enumerate(tensors):
        dims = ", ".join(str(d) for d in t["dims"])
        lines += ["  {", f"    name: {_quote(t['name'])}", f"    data_type: {t['data_type']}", f"    dims: [ {dims} ]",
                  "  }" + ("," if i < len(tensors) - 1 else "")]
    return lines + ["]"]


def _model_config_proto():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise BackendUnavailableError("checking a Triton config.pbtxt needs Triton's ModelConfig proto from "
                                      "tritonclient: pip install 'tritonclient[grpc]'") from e
    return model_config_pb2


def _parse_config(text: str, where: str):
    from google.protobuf import text_format

    pb = _model_config_proto()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as e:
        raise InputError(f"{where} is not a valid Triton model configuration: {e}") from e


def _tensor_specs(config, field: str) -> List[dict]:
    pb = _model_config_proto()
    return [{"name": t.name, "data_type": pb.DataType.Name(t.data_type), "dims": list(t.dims)}
            for t in getattr(config, field)]


def write_triton_repository(
    model_path: str | os.PathLike,
    repo_dir: str | os.PathLike,
    name: str,
    backend: str = "onnxruntime",
    version: int = 1,
    max_batch_size: int = 0,
    instance_count: int = 1,
    kind: str = "KIND_CPU",
    metadata: Optional[Mapping[str, Any]] = None,
) -> str:
    """Add ``model_path`` to the Triton model repository ``repo_dir`` as model ``name``; returns the model folder.

    Args:
        model_path: ``model.onnx`` (both backends) or an OpenVINO IR ``.xml`` with its ``.bin`` (``openvino``).
        repo_dir: the repository (created if needed); ``<repo_dir>/<name>`` must not exist yet.
        name: the model name Triton serves (the folder name).
        backend: ``"onnxruntime"`` or ``"openvino"``.
        version: the version folder (a positive integer).
        max_batch_size: 0 = the client sends the full shape, batch dim included; > 0 = Triton batches requests and
            the model's first dim must be dynamic (it is left out of ``dims``).
        instance_count, kind: ``instance_group`` (``KIND_CPU``, ``KIND_GPU`` or ``KIND_AUTO``).
        metadata: written as string ``parameters`` (e.g. sha256, compression summary); non-strings as JSON.
    """
    model_path, repo_dir = os.path.abspath(model_path), os.path.abspath(repo_dir)
    if backend not in TRITON_BACKENDS:
        raise ConfigError(f"backend must be one of {TRITON_BACKENDS}, got {backend!r}")
    if kind not in INSTANCE_KINDS:
        raise ConfigError(f"kind must be one of {INSTANCE_KINDS}, got {kind!r}")
    for label, value, low in (("version", version, 1), ("max_batch_size", max_batch_size, 0),
                              ("instance_count", instance_count, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{label} must be an integer >= {low}, got {value!r}")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"model name {name!r} must be letters, digits, '_', '.', '-' (it becomes a folder name)")
    if not os.path.isfile(model_path):
        raise InputError(f"model file {model_path} does not exist")
    suffix = os.path.splitext(model_path)[1]
    if suffix not in ((".onnx",) if backend == "onnxruntime" else (".onnx", ".xml")):
        served = "ONNX (.onnx)" if backend == "onnxruntime" else "ONNX (.onnx) or OpenVINO IR (.xml + .bin)"
        raise InputError(f"the {backend} backend serves {served} files, got {os.path.basename(model_path)}")
    files = {f"model{suffix}": model_path}
    if suffix == ".xml":
        files["model.bin"] = model_files(model_path)[1]
        if not os.path.isfile(files["model.bin"]):
            raise InputError(f"OpenVINO IR {model_path} has no {os.path.basename(files['model.bin'])} beside it")
    target = os.path.join(repo_dir, name)
    if os.path.lexists(target):
        raise InputError(f"{target} already exists: choose another model name or remove it first (not overwritten)")

    inputs, outputs = _model_io(model_path)
    if max_batch_size > 0:
        for t in inputs + outputs:
            if not t["dims"] or t["dims"][0] != -1:
                raise ConfigError(f"max_batch_size={max_batch_size} needs a dynamic first (batch) dim, but "
                                  f"{t['name']!r} has shape {t['dims']}: export with a dynamic batch axis or use "
                                  "max_batch_size=0")
        inputs = [{**t, "dims": t["dims"][1:]} for t in inputs]
        outputs = [{**t, "dims": t["dims"][1:]} for t in outputs]
    lines = [f"# Triton model configuration written by monai-prune from {os.path.basename(model_path)}",
             f"name: {_quote(name)}", f"backend: {_quote(backend)}"]
    if backend == "onnxruntime":
        lines.append('platform: "onnxruntime_onnx"')
    elif suffix == ".onnx":
        lines.append('default_model_filename: "model.onnx"')  # the OpenVINO backend's default file is model.xml
    lines.append(f"max_batch_size: {max_batch_size}")
    lines += _tensors("input", inputs) + _tensors("output", outputs)
    lines += ["instance_group [", "  {", f"    count: {instance_count}", f"    kind: {kind}", "  }", "]"]
    for key, value in (metadata or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        lines += ["parameters {", f"  key: {_quote(key)}", f"  value: {{ string_value: {_quote(text)} }}", "}"]
    text = "\n".join(lines) + "\n"

    config = _parse_config(text, f"the config.pbtxt written for {name}")  # our own text must parse
    parsed = (config.name, _tensor_specs(config, "input"), _tensor_specs(config, "output"))
    if parsed != (name, inputs, outputs):
        raise RuntimeError(f"config.pbtxt for {name} does not parse back to what was written: {parsed}")

    os.makedirs(repo_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{name}.", dir=repo_dir)
    try:
        os.makedirs(os.path.join(work, str(version)))
        for file_name, source in files.items():
            shutil.copy2(source, os.path.join(work, str(version), file_name))
        Path(work, "config.pbtxt").write_text(text, encoding="utf-8")
        give_umask_mode(work)
        os.rename(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("wrote Triton model %s (%s, version %d, max_batch_size %d) to %s", name, backend, version,
                max_batch_size, target)
    return target


def _check_triton_model(folder: Path) -> dict:
    config_path = folder / "config.pbtxt"
    if not config_path.is_file():
        raise InputError(f"Triton model {folder.name}: {config_path} is missing (every model needs a config.pbtxt)")
    config = _parse_config(config_path.read_text(encoding="utf-8"), str(config_path))
    if config.name and config.name != folder.name:
        raise InputError(f"Triton model folder {folder.name!r} holds a config named {config.name!r}: Triton refuses "
                         "this; rename one of them")
    backend = config.backend or {"onnxruntime_onnx": "onnxruntime"}.get(config.platform, config.platform)
    info = {"backend": backend, "max_batch_size": config.max_batch_size,
            "inputs": _tensor_specs(config, "input"), "outputs": _tensor_specs(config, "output"), "versions": []}
    entries = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for p in entries:
        if not p.name.isdigit() or p.name.startswith("0"):
            raise InputError(f"Triton model {folder.name}: version folder {p.name!r} is not a positive integer "
                             "(Triton would ignore it)")
    if not entries:
        raise InputError(f"Triton model {folder.name} has no version folder (e.g. {folder.name}/1/)")
    info["versions"] = sorted(int(p.name) for p in entries)
    if backend not in TRITON_BACKENDS:
        info["model_checked"] = False  # another backend's files: not ours to judge
        return info
    default = "model.onnx" if backend == "onnxruntime" else "model.xml"
    model_file = config.default_model_filename or default
    for v in info["versions"]:
        path = folder / str(v) / model_file
        if not path.is_file():
            raise InputError(f"Triton model {folder.name}: version {v} has no {model_file} (the {backend} backend "
                             "loads that file)")
        if not all(os.path.isfile(p) for p in model_files(str(path))):
            raise InputError(f"Triton model {folder.name}: version {v} has {model_file} but no {path.stem}.bin")
        model_in, model_out = _model_io(str(path))
        for field, declared, actual in (("input", info["inputs"], model_in), ("output", info["outputs"], model_out)):
            by_name = {t["name"]: t for t in actual}
            batch = 1 if config.max_batch_size > 0 else 0
            for t in declared:
                real = by_name.get(t["name"])
                if real is None:
                    raise InputError(f"Triton model {folder.name}: {field} {t['name']!r} in config.pbtxt is not an "
                                     f"{field} of {path} (it has {sorted(by_name)})")
                real_dims = real["dims"][batch:]
                if real["data_type"] != t["data_type"] or len(real_dims) != len(t["dims"]) or any(
                        r != -1 and d != -1 and r != d for r, d in zip(real_dims, t["dims"])):
                    raise InputError(f"Triton model {folder.name}: {field} {t['name']!r} is declared "
                                     f"{t['data_type']} {t['dims']} but {path.name} has {real['data_type']} "
                                     f"{real_dims}{' after the batch dim' if batch else ''}")
    info["model_file"] = model_file
    info["model_checked"] = True
    return info


def check_triton_repository(repo_dir: str | os.PathLike) -> Dict[str, dict]:
    """Validate a Triton model repository: every model folder has a ``config.pbtxt`` that parses as Triton's
    ``ModelConfig`` and names the folder, integer version folders holding the file its backend loads, and (for
    the ONNX Runtime and OpenVINO backends) inputs/outputs that exist in that file with the declared type and rank.

    Returns ``{model name: {backend, max_batch_size, inputs, outputs, versions, ...}}``; raises
    :class:`~monai_prune.errors.InputError` on the first problem found.
    """
    repo = Path(repo_dir)
    if not repo.is_dir():
        raise InputError(f"Triton model repository {repo} is not a folder")
    models = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not models:
        raise InputError(f"Triton model repository {repo} holds no model folder")
    return {p.name: _check_triton_model(p) for p in models}
