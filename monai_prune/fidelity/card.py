"""The fidelity card: what a compressed model lost and gained, class by class, in one object (JSON + Markdown).

The data model, its verdict and its JSON are here; the Markdown is rendered by :mod:`.card_markdown`, and a card is
built from a ``compress-bundle`` compression section by :mod:`.card_compression`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional

from .._io import json_safe
from ..errors import InputError, MonaiPruneError
from .card_compression import card_fields
from .card_markdown import METRIC_LABELS, card_markdown, metric_label
from .guardrails import GUARDRAIL_KEYS, check_guardrails
from .label_modes import LABEL_MODES

logger = logging.getLogger(__name__)


CARD_FORMAT = "monai-prune fidelity card"
CARD_VERSION = 1
# the metrics a card's headline judges classes by (the worst change among them), by task
_PRIMARY = {"segmentation": ("dice",), "classification": ("sensitivity", "auc")}


@dataclass
class FidelityCard:
    """What a compressed model lost and gained, class by class, in one object: measured before (dense) and after
    (compressed), with the guardrails it was held to. Written by ``compress-bundle`` as ``docs/fidelity_card.json``
    and ``docs/fidelity_card.md``, embedded in ``configs/metadata.json`` and ``docs/README.md``, printed by the CLI.

    Every value is a measurement (``None`` where undefined, e.g. a class absent from the validation data); the
    first line of the card, :meth:`headline`, names its :attr:`status` and the class that lost most.

    Args:
        title: what the card is about (e.g. the compressed bundle's name and version).
        task: ``"segmentation"`` or ``"classification"``.
        per_class: :func:`compare_per_class`'s ``{class: {metric: {"before", "after", "delta"}}}``.
        summary: whole-model metrics ``{name: {"before", "after"}}`` (the evaluator's mean Dice, accuracy, ECE ...).
        units: ``{"hd95": "mm" | "voxels", "volume": "ml" | ...}`` as :meth:`PerClassMetrics.compute` reports them.
        latency_s: ``{"before", "after", "what"}`` seconds, ``what`` saying what was timed on which device.
        network_latency_s: the same for one network call, where measured.
        macs, params, size_bytes: ``{"before", "after"}`` where known.
        backend_agreement: :func:`backend_agreement`'s result for the compressed model.
        worst_cases: :func:`worst_cases`' rows.
        guardrails: the declared guardrails (:data:`GUARDRAIL_KEYS`), ``{}`` when none were declared.
        broken: :func:`check_guardrails`' sentences, empty when all held; this decides :attr:`status`.
        allowed_degraded: the artifact was written despite ``broken`` (``--allow-degraded``).
        cases: number of validation cases measured.
        notes: free sentences (where the numbers come from, caveats).
        pipeline_s: the whole deployed pipeline timed, DICOM in to SEG out (``monai-prune time-pipeline``,
            ``benchmarks/deploy_e2e.py``): ``{"what", "end_to_end": {"before", "after"}, "first_study": {...},
            "stages": {stage: {"before", "after"}}}`` seconds, before = the dense model's stock pipeline, after = the
            compressed one; ``None`` when the pipeline was not timed (``compress-bundle`` times the network and the
            bundle's inferer only).
        label_mode: segmentation only: ``"multi_label"`` when every output channel is its own class measured on its
            binary mask (channels may overlap, e.g. BraTS TC/WT/ET), ``"multi_class"`` for exclusive classes;
            ``None`` when unknown (cards written before it existed).
    """

    title: str
    task: str
    per_class: Dict[str, Dict[str, Dict[str, Optional[float]]]]
    summary: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)
    units: Dict[str, str] = field(default_factory=dict)
    latency_s: Optional[Dict[str, Any]] = None
    network_latency_s: Optional[Dict[str, Any]] = None
    macs: Optional[Dict[str, Any]] = None
    params: Optional[Dict[str, Any]] = None
    size_bytes: Optional[Dict[str, Any]] = None
    backend_agreement: Optional[Dict[str, Any]] = None
    worst_cases: List[Dict[str, Any]] = field(default_factory=list)
    guardrails: Dict[str, Any] = field(default_factory=dict)
    broken: List[str] = field(default_factory=list)
    allowed_degraded: bool = False
    cases: Optional[int] = None
    notes: List[str] = field(default_factory=list)
    label_mode: Optional[str] = None
    pipeline_s: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        if self.task not in ("segmentation", "classification"):
            raise InputError(f"a fidelity card's task is 'segmentation' or 'classification', got {self.task!r}")
        if self.label_mode not in (None, *LABEL_MODES):
            raise InputError(f"a fidelity card's label_mode is 'multi_class', 'multi_label' or None, got "
                             f"{self.label_mode!r}")
        if not isinstance(self.per_class, Mapping):
            raise InputError(f"per_class must be {{class: {{metric: {{before, after, delta}}}}}}, got "
                             f"{type(self.per_class).__name__}")
        # one normal form (plain JSON values, nan/inf -> None) so that a card equals its JSON round trip
        for name in ("per_class", "summary", "units", "latency_s", "network_latency_s", "macs", "params",
                     "size_bytes", "backend_agreement", "worst_cases", "guardrails", "broken", "notes", "pipeline_s"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, json_safe(_plain(value)))
        self.allowed_degraded = bool(self.allowed_degraded)
        self.cases = None if self.cases is None else int(self.cases)

    # ------------------------------------------------------------------------------------------------ verdict
    @property
    def status(self) -> str:
        """``"DEGRADED"`` (guardrails broken, written with ``--allow-degraded``), ``"FAIL"`` (broken, not allowed:
        the artifact should not exist), ``"PASS"`` (guardrails declared, none broken) or ``"UNGUARDED"`` (none
        declared; the measurements are still reported)."""
        if self.broken:
            return "DEGRADED" if self.allowed_degraded else "FAIL"
        return "PASS" if self.guardrails else "UNGUARDED"

    def worst_class(self) -> Optional[Dict[str, Any]]:
        """The class whose headline metric changed most for the worse (segmentation: Dice; classification: the
        larger drop of sensitivity and AUC): ``{"class", "metric", "before", "after", "delta"}``. A class that became
        undefined after compression (e.g. no longer found) counts as the worst; None when no class has a headline
        metric defined before compression."""
        for group in (_PRIMARY[self.task], *(g for t, g in _PRIMARY.items() if t != self.task)):
            rows = [(name, metric, m[metric]) for metric in group for name, m in self.per_class.items()
                    if metric in m and m[metric].get("before") is not None]
            if not rows:
                continue
            name, metric, v = min(rows, key=lambda row: -math.inf if row[2].get("after") is None
                                  else row[2]["after"] - row[2]["before"])
            delta = None if v.get("after") is None else v["after"] - v["before"]
            return {"class": name, "metric": metric, "before": v["before"], "after": v.get("after"), "delta": delta}
        return None

    def _worst_phrase(self) -> str:
        worst = self.worst_class()
        if worst is None:
            return "no per-class metric defined before compression"
        label = METRIC_LABELS.get(worst["metric"], worst["metric"])
        if worst["delta"] is None:
            return (f"worst class {worst['class']!r}: {label} {worst['before']:.4f} -> undefined after compression")
        return (f"worst class Δ {label} {worst['delta']:+.4f} ({worst['class']}: {worst['before']:.4f} -> "
                f"{worst['after']:.4f})")

    def guardrail_results(self) -> List[Dict[str, Any]]:
        """Each declared guardrail re-checked on the card's own measurements: ``{"guardrail", "limit", "meaning",
        "held" (True/False, None when it could not be re-checked), "broken" (its sentences), "error"}``."""
        measured = {"per_class": self.per_class, "latency_s": self.latency_s or {}, "macs": self.macs or {}}
        results = []
        for key, limit in self.guardrails.items():
            row: Dict[str, Any] = {"guardrail": key, "limit": limit, "meaning": GUARDRAIL_KEYS.get(key, "unknown"),
                                   "held": None, "broken": [], "error": None}
            try:
                row["broken"] = check_guardrails({key: limit}, measured)
                row["held"] = not row["broken"]
            except (MonaiPruneError, KeyError, TypeError, ZeroDivisionError) as e:
                row["error"] = f"{type(e).__name__}: {e}"
                logger.debug("guardrail %s could not be re-checked on the card's measurements: %s", key, e)
            results.append(row)
        return results

    def headline(self) -> str:
        """The card's first line: its status, what broke (or what held), and the class that lost most with its
        measured change."""
        status, worst = self.status, self._worst_phrase()
        if status in ("DEGRADED", "FAIL"):
            count = sum(1 for r in self.guardrail_results() if r["held"] is False) or len(self.broken)
            why = "written with --allow-degraded" if status == "DEGRADED" else "not written without --allow-degraded"
            return (f"{status}: {count} guardrail{'s' if count != 1 else ''} broken — " + "; ".join(self.broken)
                    + f" ({why}); {worst}")
        if status == "PASS":
            declared = ", ".join(f"{k} {json.dumps(v)}" for k, v in self.guardrails.items())
            count = len(self.guardrails)
            return f"PASS: all {count} guardrail{'s' if count != 1 else ''} held ({declared}); {worst}"
        return f"UNGUARDED: no guardrails declared; {worst}"

    # ------------------------------------------------------------------------------------------------ JSON
    def to_dict(self) -> Dict[str, Any]:
        """Strict-JSON dict (nan -> None) with ``format``, ``version``, ``status`` and ``headline`` added for readers
        (:meth:`from_dict` ignores those four)."""
        data = {"format": CARD_FORMAT, "version": CARD_VERSION, "status": self.status, "headline": self.headline()}
        data.update({f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)})
        return json_safe(data)

    def to_json(self, path: str) -> str:
        """Write :meth:`to_dict` to ``path`` (atomically); returns the path."""
        from .._io import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FidelityCard":
        """The card :meth:`to_dict` wrote (keys this version does not know are logged and ignored)."""
        if not isinstance(data, Mapping):
            raise InputError(f"a fidelity card is a JSON object, got {type(data).__name__}")
        if data.get("format", CARD_FORMAT) != CARD_FORMAT:
            raise InputError(f"not a fidelity card: format {data.get('format')!r} (expected {CARD_FORMAT!r})")
        known = {f.name for f in fields(cls)}
        missing = sorted(k for k in ("title", "task", "per_class") if k not in data)
        if missing:
            raise InputError(f"a fidelity card needs {missing}; got keys {sorted(data)}")
        unknown = sorted(set(data) - known - {"format", "version", "status", "headline"})
        if unknown:
            logger.warning("ignoring unknown fidelity card keys %s", unknown)
        return cls(**{k: copy.deepcopy(v) for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str) -> "FidelityCard":
        """Read a card written by :meth:`to_json`."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise InputError(f"no fidelity card at {path}") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_compression(cls, compression: Mapping[str, Any], title: Optional[str] = None) -> "FidelityCard":
        """A card from the ``compression`` section ``compress-bundle`` writes to ``configs/metadata.json`` (also
        from bundles written before cards existed; a whole ``metadata.json`` is accepted too)."""
        return cls(**card_fields(compression, title))

    # ------------------------------------------------------------------------------------------------ Markdown
    def to_markdown(self, heading_level: int = 2) -> str:
        """The card for people: the :meth:`headline` in bold as the first line, then per-class before/after/Δ of
        every metric measured, whole-model metrics, cost (parameters, MACs, size, latency with ratios), backend
        agreement, worst cases, each guardrail held or broken, and the notes. ``heading_level`` sets the section
        headings (``3`` to embed the card under a ``##`` section)."""
        return card_markdown(self, heading_level)

    def __str__(self) -> str:
        return self.to_markdown()

    def _metric_label(self, metric: str) -> str:
        return metric_label(metric, self.units)


def _plain(x: Any) -> Any:
    """Mappings/sequences as dicts/lists with string keys, numbers as Python numbers (tensors, numpy scalars)."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (str, bool, int, float)) or x is None:
        return x
    try:
        return x.item() if hasattr(x, "item") else float(x)  # a 0-d tensor, a numpy scalar
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"a fidelity card holds JSON values only, got {type(x).__name__}: {x!r}") from None
