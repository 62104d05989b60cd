"""Export pruned networks: TorchScript ``model.ts`` (what MONAI Deploy loads) and ONNX ``model.onnx``.

Every export is traced from an eval-mode copy, written to a temporary file beside the target and renamed
into place (readers never see half a file; a failed export leaves the previous file as it was), then loaded
back and compared with the PyTorch model on a seeded random input shaped like the example: the largest absolute
difference is reported.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn

from .errors import ExportError, InputError
from .utils import atomic_path, first_output, run_forward

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """Where an export went and how closely it reproduces the PyTorch model."""

    path: str
    format: str
    size_bytes: int
    max_abs_diff: Optional[float]

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def _probe(example_input: torch.Tensor) -> torch.Tensor:
    """A seeded random tensor shaped like the example: an all-zero example through instance norm amplifies
    rounding noise and would make the comparison meaningless."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(example_input.shape, generator=generator, dtype=example_input.dtype)


def _reference(model: nn.Module, example_input) -> torch.Tensor:
    with torch.no_grad():
        return first_output(run_forward(model, example_input)).detach().float().cpu()


def _check_args(model, example_input, path) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module to export, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise InputError(f"example_input must be a tensor shaped like one network input, got {type(example_input).__name__}")
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory; give the file name to write (e.g. {os.path.join(path, 'model.ts')})")
    return copy.deepcopy(model).eval()


def export_torchscript(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    extra_files: Optional[Mapping[str, Any]] = None,
    check: bool = True,
    atol: float = 1e-4,
) -> ExportResult:
    """Trace ``model`` to TorchScript and save it at ``path``.

    Args:
        extra_files: files to embed under ``extra/`` in the archive, e.g. ``{"metadata.json": {...},
            "inference.json": {...}}`` as ``monai.bundle ckpt_export`` does (dicts are written as JSON).
        check: reload the file and compare with the PyTorch model; raise :class:`ExportError` above ``atol``.
    """
    net = _check_args(model, example_input, path)
    files = {}
    for name, content in (extra_files or {}).items():
        files[name] = json.dumps(content) if isinstance(content, (dict, list)) else content
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(net, example_input, check_trace=False)
    diff = None
    with atomic_path(path, keep_name=True) as tmp:  # the archive's root folder is named after the file
        torch.jit.save(traced, str(tmp), _extra_files=files)
        if check:
            loaded = torch.jit.load(str(tmp), map_location="cpu")
            probe = _probe(example_input)
            with torch.no_grad():
                got = first_output(loaded(probe)).float()
            diff = float((got - _reference(net.cpu(), probe)).abs().max())
            if not diff <= atol:
                raise ExportError(f"TorchScript export differs from the PyTorch model by {diff:.3g} (> {atol}); not written")
    logger.info("wrote %s (TorchScript, max |diff| %s)", path, diff)
    return ExportResult(str(path), "torchscript", os.path.getsize(path), diff)


def read_torchscript_extra_files(path: str | os.PathLike, names) -> Dict[str, str]:
    """Read the ``extra/`` files embedded in a TorchScript archive (empty string when absent)."""
    files = {name: "" for name in names}
    torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in files.items()}


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    opset: int = 17,
    dynamic_batch: bool = True,
    dynamic_spatial: bool = True,
    check: bool = True,
    atol: float = 1e-3,
) -> ExportResult:
    """Export ``model`` to ONNX (input ``input``, output ``output``) and check it with ONNX Runtime.

    The batch axis is dynamic (sliding-window inference sends ``sw_batch_size`` windows, fewer in the last
    batch), and so are the spatial axes unless ``dynamic_spatial=False`` (one file serves any ROI size).
    """
    net = _check_args(model, example_input, path)
    example_input = example_input.cpu()
    net = net.cpu()
    axes = {0: "batch"} if dynamic_batch else {}
    if dynamic_spatial:
        axes.update({i: f"spatial{i - 2}" for i in range(2, example_input.dim())})
    dynamic_axes = {"input": axes, "output": dict(axes)} if axes else None
    diff = None
    with atomic_path(path, ".onnx") as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(net, (example_input,), str(tmp), input_names=["input"], output_names=["output"],
                                  opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False)
            except Exception as e:
                raise ExportError(f"ONNX export of {type(model).__name__} failed: {type(e).__name__}: {e}") from e
        if check:
            import onnxruntime as ort

            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            probe = _probe(example_input)
            got = session.run(None, {"input": probe.numpy()})[0]
            diff = float(np.abs(got - _reference(net, probe).numpy()).max())
            if not diff <= atol:
                raise ExportError(f"ONNX export differs from the PyTorch model by {diff:.3g} (> {atol}); not written")
    logger.info("wrote %s (ONNX opset %d, max |diff| vs torch %s)", path, opset, diff)
    return ExportResult(str(path), "onnx", os.path.getsize(path), diff)


def export_openvino(onnx_path: str | os.PathLike, path: str | os.PathLike) -> ExportResult:
    """Convert an ONNX file to OpenVINO IR (``.xml`` + ``.bin``) with fp32 weights (OpenVINO's default is fp16)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise ExportError("OpenVINO is not installed: pip install 'monai-prune[openvino]'") from e
    path = str(path)
    if not path.endswith(".xml"):
        raise InputError(f"an OpenVINO IR path must end in .xml, got {path}")
    return save_openvino_ir(ov.convert_model(str(onnx_path)), path)


def save_openvino_ir(model, path: str | os.PathLike) -> ExportResult:
    """Write an ``openvino.Model`` as IR (``.xml`` + ``.bin``, weights kept fp32) without leaving a half-written
    pair: both files are written beside the target under temporary names, the ``.bin`` is moved first."""
    import openvino as ov

    path = str(path)
    if not path.endswith(".xml"):
        raise InputError(f"an OpenVINO IR path must end in .xml, got {path}")
    with atomic_path(path, ".xml") as tmp:
        tmp_bin = str(tmp)[:-4] + ".bin"
        try:
            ov.save_model(model, str(tmp), compress_to_fp16=False)
            os.replace(tmp_bin, path[:-4] + ".bin")
        finally:
            if os.path.exists(tmp_bin):
                os.remove(tmp_bin)
    size = os.path.getsize(path) + os.path.getsize(path[:-4] + ".bin")
    return ExportResult(path, "openvino", size, None)
