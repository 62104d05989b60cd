"""The measure stage: every model measured the same way. Per-class metrics (the caller's ``evaluate``), seconds of
the caller's workload (``latency``) on every backend, MACs, parameters, size; each measurement one line of the search
log as soon as it is taken, and taken again only when the log lacks it."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..measure import count_macs, count_params, file_size, state_dict_bytes
from ..runtime.registry import artifact_size
from ..utils import atomic_path
from .build import CandidateBuilder
from .candidates import Candidate, DenseReference, candidate_key
from .config import Evaluate
from .context import SearchContext

logger = logging.getLogger(__package__)  # "monai_prune.search": the name the command line prints


def split_example(measured: Mapping[str, Any]) -> tuple:
    """``(metrics, example)``: ``evaluate``'s result without its optional ``"example"`` slice, and that slice."""
    measured = dict(measured)
    example = measured.pop("example", None)
    if "per_class" not in measured:
        raise InputError("evaluate(model) must return PerClassMetrics.compute()-style results with a 'per_class' "
                         f"entry; got keys {sorted(measured)}")
    return measured, example


def flat_metrics(measured: Mapping[str, Any]) -> Dict[str, float]:
    """``{"worst_class": min over classes, "<metric>/<class>": ...}`` of the main metric (Dice for segmentation,
    AUC else), higher is better (sensitivity analysis needs one number per model)."""
    metric = "dice" if measured.get("task", "segmentation") == "segmentation" else "auc"
    values = {f"{metric}/{name}": m.get(metric) for name, m in measured["per_class"].items()}
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    return {"worst_class": min(finite) if finite else math.nan, **values}


def artifact_bytes(path: str) -> int:
    """Bytes of a model file; an OpenVINO IR counts its ``.xml`` and its ``.bin``."""
    return artifact_size(path) if os.path.isfile(path) else file_size(path)


def store_example(example: Optional[Mapping[str, Any]], path: str) -> Optional[str]:
    """Save an ``evaluate`` example slice (``{"image", "label", "pred"}`` 2D arrays) as ``.npz``; returns the path."""
    if example is None:
        return None
    arrays = {name: np.asarray(value) for name, value in example.items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return path


class Meter:
    """Measures the dense model and the candidates with the caller's ``evaluate`` and ``latency``, and logs each
    measurement."""

    def __init__(self, ctx: SearchContext, evaluate: Evaluate, latency: Callable[[Any], float]) -> None:
        self.ctx, self.evaluate, self.latency, self.log = ctx, evaluate, latency, ctx.log

    def metrics(self, net) -> tuple:
        """``(metrics, example slice or None)`` of a model or predictor."""
        with torch.no_grad():
            return split_example(self.evaluate(net))

    def flat(self, net) -> Dict[str, float]:
        """:func:`flat_metrics` of a model or predictor (what the sensitivity analyses compare)."""
        return flat_metrics(self.metrics(net)[0])

    def seconds(self, runner) -> float:
        """The caller's workload on a model or predictor, in seconds."""
        with torch.no_grad():
            return float(self.latency(runner))

    def runner(self, net: nn.Module, backend: str, folder: str):
        """``net`` behind ``backend`` (itself for torch)."""
        from ..runtime import Predictor

        if backend == "torch":
            return net
        return Predictor(net, self.ctx.example, backend=backend, work_dir=folder)

    def dense(self) -> DenseReference:
        """The dense model measured (once: from the log when it has it)."""
        ctx, model = self.ctx, self.ctx.model
        record = self.log.get("dense")
        if record is None:
            logger.info("measuring the dense model (%s)", ", ".join(ctx.backends))
            measured, example = self.metrics(model)
            folder = ctx.folder("dense")
            os.makedirs(folder, exist_ok=True)
            seconds = {b: self.seconds(self.runner(model, b, folder)) for b in ctx.backends}
            record = self.log.put({"kind": "dense", "key": "dense", "measured": measured, "latency_s": seconds,
                                   "macs": count_macs(model, ctx.example), "params": count_params(model),
                                   "size_bytes": state_dict_bytes(model),
                                   "example": store_example(example, os.path.join(folder, "example.npz"))})
        return DenseReference.from_record(record)

    def fp32(self, ratio: float, mode: str, builder: CandidateBuilder) -> List[Candidate]:
        """The fp32 candidate of ``(ratio, mode)`` on every backend (accuracy once: fp32 runtimes agree; the chosen
        model's agreement across runtimes is measured at the end)."""
        ctx = self.ctx
        keys = [candidate_key(ratio, mode, "fp32", b) for b in ctx.backends]
        if all(self.log.get(k) for k in keys):
            return [Candidate.from_record(self.log.get(k)) for k in keys]
        net = builder.build(ratio, mode)
        first = self.log.get(keys[0])
        folder = ctx.folder(candidate_key(ratio, mode))
        if first:
            measured, example_path = first["measured"], first.get("example")
        else:
            measured, example = self.metrics(net)
            example_path = store_example(example, os.path.join(folder, "example.npz"))
        common = dict(ratio=ratio, mode=mode, precision="fp32", measured=measured, macs=count_macs(net, ctx.example),
                      params=count_params(net), size_bytes=state_dict_bytes(net),
                      artifact=os.path.join(folder, "model.pt"), example=example_path)
        candidates = []
        for backend, key in zip(ctx.backends, keys):
            record = self.log.get(key) or self.log.put(Candidate(
                key=key, backend=backend, latency_s=self.seconds(self.runner(net, backend, folder)),
                **common).to_record())
            candidates.append(Candidate.from_record(record))
        return candidates

    def int8(self, ratio: float, mode: str, backend: str, builder: CandidateBuilder) -> Optional[Candidate]:
        """The int8 candidate of ``(ratio, mode)`` on ``backend``; None when quantization failed (logged as such)."""
        from ..errors import QuantizationError

        key = candidate_key(ratio, mode, "int8-sens" if builder.int8_guided else "int8", backend)
        record = self.log.get(key)
        if record is None:
            net = builder.build(ratio, mode)
            keep = builder.int8_sensitive_layers(net, ratio, mode, backend, self.flat) if builder.int8_guided else []
            try:
                result = builder.quantize(net, ratio, mode, backend, keep)
            except QuantizationError as e:
                logger.warning("candidate %s: int8 failed: %s", key, e)
                self.log.put({"kind": "failed", "key": key, "ratio": ratio, "mode": mode, "precision": "int8",
                              "backend": backend, "error": str(e)})
                return None
            predictor = result.predictor("int8")
            measured, example = self.metrics(predictor)
            record = self.log.put(Candidate(
                key=key, ratio=ratio, mode=mode, precision="int8", backend=backend, measured=measured,
                latency_s=self.seconds(predictor), macs=count_macs(net, self.ctx.example), params=count_params(net),
                size_bytes=artifact_bytes(result.path), artifact=result.path, fp32_layers=result.fp32_layers,
                kept_fp32_by_sensitivity=keep, example=store_example(example, os.path.join(
                    builder.int8_folder(ratio, mode, backend), "example.npz"))).to_record())
        return Candidate.from_record(record) if record.get("kind") == "candidate" else None
