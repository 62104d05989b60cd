"""Small shared helpers: library versions, logging set-up (atomic writes live in :mod:`._io`; re-exported here)."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Dict, Iterator, Sequence

from ._io import atomic_path, atomic_write_text, current_umask, give_umask_mode  # noqa: F401 (public names)

if TYPE_CHECKING:  # annotations only: the CLI's --help and `deploy run` must not import torch
    from torch import nn


def library_versions() -> Dict[str, str]:
    versions = {}
    for dist in ("monai-prune", "torch", "monai", "torch-pruning", "onnx", "onnxruntime", "openvino"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a record is emitted (not the stream it was created with),
    so a redirected or replaced stderr (a notebook, a test capture) never leaves it writing to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always follows sys.stderr
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Log monai_prune messages to stderr in MONAI's plain format unless the application configured logging."""
    logger = logging.getLogger("monai_prune")
    if not any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)


def first_output(output):
    """The tensor a network returned, or the first of several (deep supervision, tuples)."""
    return output[0] if isinstance(output, (list, tuple)) else output


def run_forward(model: nn.Module, example_input):
    """Call the model the way torch-pruning does: tuples are unpacked, dicts become keyword arguments."""
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, (list, tuple)):
        return model(*example_input)
    return model(example_input)


@contextmanager
def root_logging_for_others(drop: Sequence[str] = ()) -> Iterator[None]:
    """ONNX Runtime's quantization tools log through the root logger (``logging.warning``), which configures it on
    first use and then prints every ``monai_prune`` message twice. While quantizing, a root handler that shows only
    the other libraries' records keeps their warnings visible and ours single; root records whose message starts
    with one of ``drop`` (noise that says nothing about the result) are dropped."""
    root = logging.getLogger()
    noise = logging.Filter()
    noise.filter = lambda record: not str(record.msg).startswith(tuple(drop))
    root.addFilter(noise)
    handler = None
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.addFilter(lambda record: not record.name.startswith("monai_prune"))
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        root.addHandler(handler)
    try:
        yield
    finally:
        root.removeFilter(noise)
        if handler is not None:
            root.removeHandler(handler)
