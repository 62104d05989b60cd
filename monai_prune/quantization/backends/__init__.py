"""The int8 backends :func:`~monai_prune.quantization.quantize` dispatches to: one module per backend, each with
the same small interface:

* ``NAME``; ``METHODS``, the activation calibrations it offers; ``SUFFIX``, the int8 file it writes;
* ``quantize_file(fp32_onnx, out_path, calibration, method, per_channel, exclude, only, layers,
  calibration_cache)`` writes the int8 model of the fp32 ONNX export and returns its path;
* ``int8_layers(path, layers)``: the ONNX nodes among ``layers`` that the int8 file really runs int8;
* ``fp32_file(fp32_onnx, out_dir)``: the fp32 model in the backend's own format (the reference);
* ``runner(path)``: ``run(x: np.ndarray) -> np.ndarray`` on the backend;
* ``version()``: the package versions its int8 depends on.

Which backends exist and which are installed is the runtime registry's word
(:data:`monai_prune.runtime.registry.REGISTRY`); :data:`QUANTIZERS` holds a module for each of its int8 backends.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ...runtime.registry import INT8_BACKENDS, REGISTRY
from ..calibration import CalibrationSet
from ..onnx_layers import attached_to_excluded
from . import onnxruntime, openvino

_BY_NAME = {module.NAME: module for module in (onnxruntime, openvino)}
# in the registry's order; an int8 backend of the registry without a module here fails the import (KeyError)
QUANTIZERS: Dict[str, ModuleType] = {name: _BY_NAME[name] for name in INT8_BACKENDS}
METHODS: Dict[str, tuple] = {name: module.METHODS for name, module in QUANTIZERS.items()}


def quant_backend_available(backend: str) -> bool:
    """``quantize`` can write an int8 model for ``backend`` here (its runtime, and NNCF for OpenVINO, installed)."""
    return REGISTRY[backend].int8_available()


def run_backend(backend: str, fp32_onnx: str, out_dir: str, calibration: CalibrationSet, config,
                layers: Sequence[str], exclude: Sequence[str], only: Optional[Sequence[str]] = None,
                tag: str = "", calibration_cache: Optional[str] = None) -> str:
    """Write ``model_int8<tag>`` of ``fp32_onnx`` in ``out_dir`` with ``backend``, as ``config`` (a
    ``QuantizationConfig``: its ``method`` and ``per_channel``) says: the ``exclude`` layers fp32 (with ``only``,
    also every one of ``layers`` but those), and with them the unweighted nodes that serve only fp32 layers.
    ``calibration_cache``: a file for ONNX Runtime's activation ranges, written once and reused (OpenVINO/NNCF
    collects statistics each time). Returns the int8 file."""
    quantizer = QUANTIZERS[backend]
    fp32_layers = set(exclude) | (set(layers) - set(only) if only is not None else set())
    exclude = list(exclude) + attached_to_excluded(fp32_onnx, layers, sorted(fp32_layers))
    out_path = os.path.join(out_dir, f"model_int8{tag}{quantizer.SUFFIX}")
    return quantizer.quantize_file(fp32_onnx, out_path, calibration, config.method, config.per_channel, exclude,
                                   only, layers, calibration_cache)


def int8_layer_names(backend: str, path: str, layers: Sequence[str]) -> List[str]:
    """The ONNX nodes among ``layers`` that the int8 file at ``path`` runs int8, read back from it."""
    return QUANTIZERS[backend].int8_layers(path, layers)


def fp32_model_file(backend: str, fp32_onnx: str, out_dir: str) -> str:
    """The fp32 model ``backend`` runs as the reference (OpenVINO: converted to IR in ``out_dir`` once)."""
    return QUANTIZERS[backend].fp32_file(fp32_onnx, out_dir)


def runner(backend: str, path: str) -> Callable[[np.ndarray], np.ndarray]:
    """``run(x) -> output`` on numpy arrays, the model file at ``path`` on ``backend``."""
    return QUANTIZERS[backend].runner(path)


def backend_version(backend: str) -> str:
    """The versions of the packages ``backend``'s int8 comes from."""
    return QUANTIZERS[backend].version()


__all__ = ["QUANTIZERS", "METHODS", "quant_backend_available", "run_backend", "int8_layer_names", "fp32_model_file",
           "runner", "backend_version", "onnxruntime", "openvino"]
