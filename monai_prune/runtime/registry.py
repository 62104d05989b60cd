"""The runtimes a model can be served with, in one place: name, whether it is installed, its model files, whether
``quantize`` writes int8 models for it, and its Triton backend. Every module that names a backend asks here."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple


@dataclass(frozen=True)
class Backend:
    """One runtime.

    Attributes:
        name: what users pass (``--backend``, ``Predictor(backend=...)``).
        packages: the Python packages it needs (all of them).
        suffix: the model file it runs (``.xml`` for OpenVINO, whose weights sit beside it in ``.bin``).
        file_shaped: its model file declares the input shape (a call is checked against it first).
        int8: ``quantize`` writes int8 models for it.
        int8_packages: what int8 also needs (NNCF for OpenVINO).
        triton: the Triton Inference Server backend that serves its files, if any.
    """

    name: str
    packages: Tuple[str, ...]
    suffix: str
    file_shaped: bool = False
    int8: bool = False
    int8_packages: Tuple[str, ...] = ()
    triton: Optional[str] = None

    def available(self) -> bool:
        """Its runtime is installed here."""
        return all(importlib.util.find_spec(p) is not None for p in self.packages)

    def int8_available(self) -> bool:
        """``quantize`` can write (and this machine run) an int8 model for it."""
        return self.int8 and self.available() and all(importlib.util.find_spec(p) is not None
                                                      for p in self.int8_packages)


REGISTRY: Dict[str, Backend] = {b.name: b for b in (
    Backend("torch", ("torch",), ".pt"),
    Backend("torchscript", ("torch",), ".ts"),
    Backend("onnxruntime", ("onnxruntime",), ".onnx", file_shaped=True, int8=True, triton="onnxruntime"),
    Backend("openvino", ("openvino",), ".xml", file_shaped=True, int8=True, int8_packages=("nncf",),
            triton="openvino"),
)}
BACKENDS = tuple(REGISTRY)
FILE_SHAPED = tuple(b.name for b in REGISTRY.values() if b.file_shaped)
INT8_BACKENDS = tuple(b.name for b in REGISTRY.values() if b.int8)
TRITON_BACKENDS = tuple(b.name for b in REGISTRY.values() if b.triton)


def available_backends() -> List[str]:
    """Backends whose runtime is installed here, in :data:`BACKENDS` order."""
    return [b.name for b in REGISTRY.values() if b.available()]


def model_files(path: str) -> List[str]:
    """A model file and the files that belong to it: an OpenVINO ``.xml`` and its ``.bin`` weights."""
    if path.endswith(".xml"):
        return [path, path[:-len(".xml")] + ".bin"]
    return [path]


def artifact_size(path: str) -> int:
    """Bytes of a model file with its companions (those that exist)."""
    return sum(os.path.getsize(p) for p in model_files(path) if os.path.isfile(p))
