"""What the search measures, typed: the dense reference, each :class:`Candidate`, the paired timings of the
finalists. Each converts to and from its line of the search log (``to_record``/``from_record``), field for field and
in the order the log has always had, so ``candidates.jsonl`` and ``search.json`` keep their shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

# the order of a candidate's fields in its log line (and so in the rows of search.json), fp32 and int8
FP32_FIELDS = ("kind", "ratio", "mode", "precision", "measured", "macs", "params", "size_bytes", "artifact", "example",
               "key", "backend", "latency_s")
INT8_FIELDS = ("kind", "key", "ratio", "mode", "precision", "backend", "measured", "latency_s", "macs", "params",
               "size_bytes", "artifact", "fp32_layers", "kept_fp32_by_sensitivity", "example")


def ratio_key(ratio: float) -> str:
    return f"{ratio:.4f}"


def candidate_key(ratio: float, mode: str, precision: str = "fp32", backend: Optional[str] = None) -> str:
    """``r0.5000-uniform-fp32`` (the pruned model), ``r0.5000-uniform-fp32-torch`` (its measurement on a backend)."""
    return f"r{ratio_key(ratio)}-{mode}-{precision}" + (f"-{backend}" if backend else "")


@dataclass
class DenseReference:
    """The dense model as measured: per-class metrics (``evaluate``'s result), seconds per backend, MACs, parameters,
    bytes of its weights, and the stored example slice (a path, or None)."""

    measured: Dict[str, Any]
    latency_s: Dict[str, float]
    macs: int
    params: int
    size_bytes: int
    example: Optional[str] = None

    @property
    def torch_latency(self) -> float:
        """What speed-ups are taken against: the dense model in torch (else its fastest backend)."""
        return self.latency_s.get("torch", min(self.latency_s.values()))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "DenseReference":
        return cls(measured=record["measured"], latency_s=record["latency_s"], macs=record["macs"],
                   params=record["params"], size_bytes=record["size_bytes"], example=record.get("example"))

    def to_record(self) -> Dict[str, Any]:
        return {"kind": "dense", "key": "dense", "measured": self.measured, "latency_s": self.latency_s,
                "macs": self.macs, "params": self.params, "size_bytes": self.size_bytes, "example": self.example}


@dataclass
class Candidate:
    """One compressed model measured on one backend: ``(ratio, mode)`` names the pruned model, ``precision`` and
    ``backend`` how it ran; ``artifact`` is its file (``model.pt``, or the int8 model); ``fp32_layers`` and
    ``kept_fp32_by_sensitivity`` are int8's (None for fp32)."""

    key: str
    ratio: float
    mode: str
    precision: str
    backend: str
    measured: Dict[str, Any]
    latency_s: float
    macs: int
    params: int
    size_bytes: int
    artifact: str
    example: Optional[str] = None
    fp32_layers: Optional[List[str]] = None
    kept_fp32_by_sensitivity: Optional[List[str]] = None

    @property
    def model_key(self) -> str:
        """The key of the pruned fp32 model this candidate was made from (its folder under ``candidates/``)."""
        return candidate_key(self.ratio, self.mode)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Candidate":
        fields = INT8_FIELDS if record["precision"] == "int8" else FP32_FIELDS
        return cls(**{name: record.get(name) for name in fields if name != "kind"})

    def to_record(self) -> Dict[str, Any]:
        """Its line of the search log, in the log's field order."""
        fields = INT8_FIELDS if self.precision == "int8" else FP32_FIELDS
        return {name: "candidate" if name == "kind" else getattr(self, name) for name in fields}


@dataclass
class PairedTiming:
    """A finalist timed again right after the dense model, round after round: medians of the dense seconds
    (``before``), of the candidate's (``after``) and of the per-round ratios (``speedup``)."""

    before: float
    after: float
    speedup: float

    def to_dict(self) -> Dict[str, float]:
        return {"before": self.before, "after": self.after, "speedup": self.speedup}
