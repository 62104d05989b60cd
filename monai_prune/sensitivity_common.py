"""What the two sensitivity analyses (channel pruning in :mod:`monai_prune.sensitivity`, int8 in
:mod:`monai_prune.quantization.sensitivity`) share: the JSON cache of measured rows and what keys it, the check of
``evaluate``'s answer, the JSON persistence of their results, and the one loop that walks the candidates, takes each
row from the cache or measures it, and records it."""

from __future__ import annotations

import copy
import hashlib
import json
import numbers
import os
import warnings
from contextlib import AbstractContextManager
from dataclasses import asdict, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import InputError
from .utils import atomic_write_text

CACHE_FORMAT = 1


def weights_digest(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): identifies the trained weights."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def evaluation_id(evaluate: Callable) -> str:
    target = evaluate if hasattr(evaluate, "__qualname__") else type(evaluate)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


class ResultCache:
    """A JSON file of ``{key: record}``; read once, rewritten atomically after every new record."""

    def __init__(self, path: Optional[str | os.PathLike]):
        self.path, self.entries = path, {}
        if path is None or not os.path.exists(path):
            return
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not (isinstance(data, dict) and data.get("format") == CACHE_FORMAT and isinstance(data.get("entries"), dict)):
                raise ValueError(f"expected a sensitivity cache of format {CACHE_FORMAT}")
            self.entries = data["entries"]
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            warnings.warn(f"ignoring the sensitivity cache {path}: it is unreadable or not a cache ({e}); "
                          "it will be rewritten with fresh results", RuntimeWarning, stacklevel=3)

    @staticmethod
    def key(**parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: str):
        return copy.deepcopy(self.entries.get(key))

    def put(self, key: str, record) -> None:
        self.entries[key] = record
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"format": CACHE_FORMAT, "entries": self.entries}))


def numeric_metrics(returned, who: str) -> Dict[str, float]:
    """``evaluate``'s answer as ``{name: float}``; a bare number becomes ``{"metric": value}``."""
    if isinstance(returned, (numbers.Real, torch.Tensor)) and not isinstance(returned, bool):
        returned = {"metric": returned}
    metrics = {}
    if isinstance(returned, dict):
        for name, value in returned.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                metrics[str(name)] = float(value)
    if not metrics:
        raise InputError(f"evaluate returned {type(returned).__name__} {str(returned)[:80]!r} for the {who} model; it "
                         "must return a dict of numeric metrics where higher is better, e.g. {'dice': 0.91}")
    return metrics


class JsonResult:
    """JSON persistence shared by the sensitivity results (dataclasses): every field but ``evaluations`` is written,
    ``_required`` must be present to load."""

    _required: tuple = ()
    _what = "result"

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "evaluations"}

    def to_json(self, path: str | os.PathLike) -> str:
        """Write the result as JSON, atomically. Returns the path."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not set(cls._required) <= set(data):
            raise InputError(f"{path} is not a {cls._what} written by {cls.__name__}.to_json")
        names = [f.name for f in fields(cls) if f.name != "evaluations"]
        return cls(**{k: data[k] for k in names if k in data})


# (label shown on the progress bar and in the log, cache key, measure() -> the row)
Job = Tuple[str, str, Callable[[], Dict[str, Any]]]


def measure_candidates(store: ResultCache, jobs: Sequence[Job], desc: str, progress: bool,
                       quiet: AbstractContextManager,
                       log: Callable[[str, Dict[str, Any]], None]) -> List[Dict[str, Any]]:
    """The rows of ``jobs``, in order: each from ``store`` when it holds the job's key, else measured, stored under
    the key and passed to ``log(label, row)``. A tqdm bar (``desc``, shown with ``progress``) names the job at hand;
    ``quiet`` is held around the loop (to keep loggers that would talk on every job down)."""
    rows: List[Dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, leave=False)
    with quiet, bar:
        for label, key, measure in jobs:
            bar.set_postfix_str(label)
            row = store.get(key)
            if row is None:
                row = measure()
                store.put(key, row)
                log(label, row)
            rows.append(row)
            bar.update()
    return rows
