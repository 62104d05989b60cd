"""Runtimes: :class:`Predictor` serves a network through one of them; :mod:`.registry` says which exist, which are
installed, which files each runs and which get int8 models. The registry imports nothing heavy; ``Predictor``
(torch, the runtimes) is imported on first use."""

from typing import Any

from .registry import (BACKENDS, FILE_SHAPED, INT8_BACKENDS, REGISTRY, TRITON_BACKENDS, Backend, artifact_size,
                       available_backends, model_files)

__all__ = ["Predictor", "ort_session", "BACKENDS", "FILE_SHAPED", "INT8_BACKENDS", "REGISTRY", "TRITON_BACKENDS",
           "Backend", "artifact_size", "available_backends", "model_files"]


def __getattr__(name: str) -> Any:
    if name in ("Predictor", "ort_session"):
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
