"""The fidelity card: what a compressed model lost and gained, class by class, in one object (JSON + Markdown)."""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional

from .._io import json_safe
from .._markdown import markdown_table
from ..errors import InputError, MonaiPruneError
from .agreement import agreement_note, agreement_value
from .guardrails import GUARDRAIL_KEYS, check_guardrails
from .metrics import LABEL_MODES

logger = logging.getLogger(__name__)


CARD_FORMAT = "monai-prune fidelity card"
CARD_VERSION = 1
# the metrics a card's headline judges classes by (the worst change among them), by task
_PRIMARY = {"segmentation": ("dice",), "classification": ("sensitivity", "auc")}
_METRIC_LABELS = {"dice": "Dice", "auc": "AUC", "sensitivity": "sensitivity", "volume_error_pct": "volume error (%)"}
_SUMMARY_LABELS = {"ece": "expected calibration error (lower is better)", "accuracy": "accuracy"}


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
        pipeline_s: the whole deployed pipeline timed (e.g. by ``benchmarks/deploy_e2e.py``, DICOM in to SEG out):
            ``{"what", "end_to_end": {"before", "after"}, "first_study": {...}, "stages": {stage: {"before",
            "after"}}}`` seconds, before = the dense model's stock pipeline, after = the compressed one; ``None`` when
            the pipeline was not timed (``compress-bundle`` times the network and the bundle's inferer only).
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
        label = _METRIC_LABELS.get(worst["metric"], worst["metric"])
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
        if not isinstance(compression, Mapping):
            raise InputError("compression must be the metadata's compression section, got "
                             f"{type(compression).__name__}")
        if "per_class" not in compression and isinstance(compression.get("compression"), Mapping):
            compression = compression["compression"]  # a whole metadata.json
        if "per_class" not in compression:
            raise InputError("no per_class measurements in this compression section (keys "
                             f"{sorted(compression)}): it was not written by monai-prune compress-bundle")
        per_class = compression["per_class"]
        task = compression.get("task") or ("segmentation" if any("dice" in m for m in per_class.values())
                                            else "classification")
        summary = {k: {"before": v.get("before"), "after": v.get("after")}
                   for k, v in (compression.get("metrics") or {}).items()}
        if compression.get("ece"):
            summary["ece"] = {"before": compression["ece"].get("before"), "after": compression["ece"].get("after")}
        guard = compression.get("guardrails") or {}
        recipe = compression.get("recipe")
        notes = []
        if recipe:
            notes.append(f"made by monai-prune compress-bundle with the recipe {recipe!r}"
                         + (f", {compression['epochs']} fine-tuning epochs" if compression.get("epochs") else "")
                         + (f", plan checksum {compression['plan_checksum']}" if compression.get("plan_checksum")
                            else "") + ".")
        label_mode = compression.get("label_mode") or (compression.get("agreement_vs_dense") or {}).get("label_mode")
        how = ("multi-label segmentation: every output channel is its own class, Dice per channel on its binary "
               "mask (channels may overlap), averaged over cases" if label_mode == "multi_label"
               else "segmentation: Dice per class averaged over cases")
        notes.append("before = the source bundle's dense model, after = the compressed model; both measured by the "
                     "source bundle's own validation evaluator (its data, inferer and postprocessing), per-class "
                     f"values by monai-prune from the same outputs ({how}; "
                     "classification: sensitivity and one-vs-rest AUC per class; n/a where undefined, e.g. a class "
                     "absent from the data). Check them on your own held-out data before clinical use.")
        if compression.get("agreement_vs_dense"):
            notes.append(agreement_note(compression["agreement_vs_dense"], "validation input(s) through the bundle's "
                                                                           "inferer"))
        for backend, v in (compression.get("backend_agreement") or {}).items():
            if "error" in v:
                notes.append(f"{backend} cannot run this model and was skipped ({v['error'][:160]}): serve it on "
                             "another runtime.")
        int8 = compression.get("int8")
        if int8:
            notes.append(f"int8 artifact models/{int8.get('file')} ({int8.get('backend')}): argmax agreement with the "
                         f"compressed fp32 model {_fmt4(int8.get('agreement_vs_fp32'))}; the per-class values above "
                         "are of the fp32 model.")
        return cls(title=title or f"monai-prune compression ({recipe or 'unknown recipe'})", task=task,
                   per_class=per_class, summary=summary, units=dict(compression.get("units") or {}),
                   latency_s=_timed(compression.get("latency_s"), "the bundle's inferer"),
                   network_latency_s=_timed(compression.get("network_latency_s"), "one network call"),
                   macs=_before_after(compression.get("macs")), params=_before_after(compression.get("params")),
                   size_bytes=_before_after(compression.get("size_bytes")),
                   backend_agreement=compression.get("backend_agreement") or None,
                   worst_cases=list(compression.get("worst_cases") or []), guardrails=dict(guard.get("declared") or {}),
                   broken=list(guard.get("broken") or []), allowed_degraded=bool(guard.get("allowed_degraded")),
                   cases=compression.get("validation_cases"), notes=notes,
                   label_mode=label_mode if task == "segmentation" else None)

    # ------------------------------------------------------------------------------------------------ Markdown
    def to_markdown(self, heading_level: int = 2) -> str:
        """The card for people: the :meth:`headline` in bold as the first line, then per-class before/after/Δ of
        every metric measured, whole-model metrics, cost (parameters, MACs, size, latency with ratios), backend
        agreement, worst cases, each guardrail held or broken, and the notes. ``heading_level`` sets the section
        headings (``3`` to embed the card under a ``##`` section)."""
        h = "#" * heading_level
        lines = [f"**{self.headline()}**", "",
                 f"{self.title}: {self.task}"
                 + (" (multi-label: every output channel is its own class, channels may overlap)"
                    if self.label_mode == "multi_label" else "")
                 + (f", {self.cases} validation case{'s' if self.cases != 1 else ''}" if self.cases is not None else "")
                 + ". Before = dense, after = compressed; Δ = after - before.", ""]
        rows = [[name, self._metric_label(metric), _fmt4(v.get("before")), _fmt4(v.get("after")),
                 _fmt4(_delta(v), "{:+.4f}")]
                for name, metrics in self.per_class.items() for metric, v in metrics.items()]
        lines += [f"{h} Per class", ""]
        lines += [markdown_table(["class", "metric", "before", "after", "Δ"], rows) if rows
                  else "No per-class metrics were measured.", ""]
        if self.summary:
            rows = [[_SUMMARY_LABELS.get(k, k), _fmt4(v.get("before")), _fmt4(v.get("after")),
                     _fmt4(_delta(v), "{:+.4f}")] for k, v in self.summary.items()]
            lines += [f"{h} Whole model", "", markdown_table(["metric", "before", "after", "Δ"], rows), ""]
        cost = []
        if self.params:
            cost.append(["parameters", *_pair(self.params, "{:,.0f}")])
        if self.macs:
            cost.append(["MACs per input", *_pair(self.macs, *_prefixed(self.macs, ""))])
        if self.size_bytes:
            cost.append(["weights size", *_pair(self.size_bytes, *_prefixed(self.size_bytes, "B"))])
        for timed in (self.latency_s, self.network_latency_s):
            if timed:
                row = [f"latency: {timed.get('what', 'unspecified')}", *_pair(timed, "{:.4f} s")]
                speedup = _ratio(timed.get("before"), timed.get("after"))
                if speedup is not None:
                    row[-1] += f" ({speedup:.2f}x faster)"
                cost.append(row)
        if cost:
            lines += [f"{h} Cost", "", markdown_table(["", "before", "after", "after / before"], cost), ""]
        if self.pipeline_s:
            lines += [f"{h} End to end: {self.pipeline_s.get('what', 'the deployed pipeline')}", "",
                      markdown_table(["seconds", "before (dense)", "after (compressed)", "after / before", "speed-up"],
                                     _pipeline_rows(self.pipeline_s)), ""]
        if self.backend_agreement:
            rows = [[backend, "**cannot run this model**", "—", v["error"]] if "error" in v else
                    [backend, _fmt4(agreement_value(v), "{:.5f}"), _fmt4(v.get("max_abs_diff"), "{:.2g}"),
                     ", ".join(f"{c}: {_fmt4(d)}" for c, d in (v.get("dice_vs_torch") or {}).items()) or "n/a"]
                    for backend, v in self.backend_agreement.items()]
            masks = any(v.get("label_mode") == "multi_label" for v in self.backend_agreement.values())
            agreement = "channel mask agreement" if masks else "argmax agreement"
            lines += [f"{h} Runtimes vs PyTorch (the compressed model)", "",
                      markdown_table(["runtime", agreement, "max abs diff", "Dice vs torch by channel"], rows), ""]
        if self.worst_cases:
            rows = [[w.get("case"), _fmt4(w.get("dice_before")), _fmt4(w.get("dice_after")), _fmt4(w.get("drop"))]
                    for w in self.worst_cases]
            lines += [f"{h} Worst validation cases (by position in the validation list)", "",
                      markdown_table(["case", "mean foreground Dice before", "after", "drop"], rows), ""]
        lines += [f"{h} Guardrails", ""]
        if self.guardrails:
            rows = []
            for r in self.guardrail_results():
                verdict = {True: "held", False: "broken", None: "not re-checked"}[r["held"]]
                detail = "; ".join(r["broken"]) if r["broken"] else (r["error"] or "")
                rows.append([r["guardrail"], json.dumps(r["limit"]), verdict, r["meaning"], detail])
            lines += [markdown_table(["guardrail", "limit", "result", "meaning", "detail"], rows), ""]
            if self.broken and self.allowed_degraded:
                lines += ["Written only because of --allow-degraded.", ""]
        else:
            lines += ["None declared (a recipe's `guardrails` section, or `--set guardrails#<name>=<limit>`, declares "
                      "per-class floors and budgets that compress-bundle then enforces).", ""]
        if self.notes:
            lines += [f"{h} Notes", ""] + [f"- {note}" for note in self.notes] + [""]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def _metric_label(self, metric: str) -> str:
        if metric == "hd95":
            return f"HD95 ({self.units.get('hd95', 'mm')})"
        if metric == "volume_error_ml":
            return f"volume error ({self.units.get('volume', 'ml')})"
        return _METRIC_LABELS.get(metric, metric)


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


def _fmt4(value: Optional[float], spec: str = "{:.4f}") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else spec.format(value)


def _delta(v: Mapping[str, Any]) -> Optional[float]:
    if v.get("delta") is not None:
        return v["delta"]
    before, after = v.get("before"), v.get("after")
    return None if before is None or after is None else after - before


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _pipeline_rows(pipeline: Mapping[str, Any]) -> List[List[str]]:
    """End to end, first study, then each stage: before, after, after / before, speed-up."""
    timed = [("end to end (steady state)", pipeline.get("end_to_end")), ("first study", pipeline.get("first_study"))]
    timed += [(f"stage: {name}", v) for name, v in (pipeline.get("stages") or {}).items()]
    rows = []
    for label, v in timed:
        if v:
            speedup = _ratio(v.get("before"), v.get("after"))
            rows.append([label, *_pair(v, "{:.2f}"), "n/a" if speedup is None else f"{speedup:.2f}x"])
    return rows


def _pair(v: Mapping[str, Any], spec: str, scale: float = 1.0) -> List[str]:
    """before, after, after / before of a ``{"before", "after"}`` quantity."""
    before, after = v.get("before"), v.get("after")
    ratio = _ratio(after, before)
    return [_fmt4(None if before is None else before / scale, spec),
            _fmt4(None if after is None else after / scale, spec), _fmt4(ratio, "{:.3f}")]


def _prefixed(v: Mapping[str, Any], unit: str) -> tuple:
    """A format and scale for a ``{"before", "after"}`` count: G/M/k by the larger of the two."""
    largest = max(abs(x) for x in (v.get("before") or 0, v.get("after") or 0))
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if largest >= scale:
            return "{:.3f} " + prefix + unit, scale
    return "{:,.0f}" + (" " + unit if unit else ""), 1.0


def _before_after(v: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    return None if not v else {"before": v.get("before"), "after": v.get("after")}


def _timed(v: Optional[Mapping[str, Any]], default: str) -> Optional[Dict[str, Any]]:
    """``{"before", "after", "what"}`` from a compression section's timing (``what`` + inferer, device, input)."""
    if not v:
        return None
    what = str(v.get("what") or default)
    details = [str(v[k]) for k in ("inferer", "device") if v.get(k)]
    if v.get("input_shape"):
        details.append(f"input {tuple(v['input_shape'])}")
    if details:
        what = f"{what[:-1]}; {', '.join(details)})" if what.endswith(")") else f"{what} ({', '.join(details)})"
    return {"before": v.get("before"), "after": v.get("after"), "what": what}
