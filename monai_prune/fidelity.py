"""Per-class fidelity: what a compressed model lost, class by class.

A mean Dice that holds while one small organ collapses is a patient-safety failure, so every comparison here is
per class. :class:`PerClassMetrics` accumulates one model's postprocessed predictions against labels, sample by
sample (it attaches to a MONAI evaluator like a metric handler), and :func:`compare_per_class` puts two of them
(dense = before, compressed = after) side by side.

* segmentation (prediction ``(C, *spatial)``): per-class Dice per case (cases where the class is absent in both
  prediction and label are skipped), averaged over cases, and the per-case values (to find the worst cases).
  Exclusive classes (a label map, one-hot, softmax: ``label_mode="multi_class"``) and multi-label outputs (every
  channel its own binary mask, channels may overlap, e.g. BraTS TC/WT/ET sigmoid outputs: ``"multi_label"``) are
  both measured; the mode is given or decided from the data (:mod:`monai_prune.fidelity_metrics`);
* classification (prediction ``(C,)`` probabilities/logits/one-hot): accuracy, per-class sensitivity (recall) and
  per-class one-vs-rest AUC (MONAI's ``compute_roc_auc``), and the expected calibration error.

Segmentation also gets per-class HD95 (mm, from the MetaTensor affine) and volume error (ml, %), and
:func:`worst_cases` names the validation cases that lost most. :func:`check_guardrails` turns a recipe's floors and
budgets into refusals, and :func:`backend_agreement` compares the same model across torch, ONNX Runtime and OpenVINO.
:class:`FidelityCard` puts all of it in one object (JSON + Markdown) whose first line says PASS, DEGRADED or
UNGUARDED and names the class that lost most.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from ._io import json_safe
from ._markdown import markdown_table
from .errors import InputError, MonaiPruneError
# the measuring half lives in fidelity_metrics; its public names are this module's too
from .fidelity_metrics import (BACKGROUND_NAMES, LABEL_MODES, PerClassMetrics, class_names,  # noqa: F401
                               detect_label_mode, expected_calibration_error, label_mode_from_bundle, worst_cases)

logger = logging.getLogger(__name__)


def _defined(x: Optional[float]) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def compare_per_class(before: Mapping[str, Any], after: Mapping[str, Any]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{class: {metric: {"before", "after", "delta"}}}`` from two :meth:`PerClassMetrics.compute` results."""
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, metrics in before["per_class"].items():
        for metric, b in metrics.items():
            a = after["per_class"].get(name, {}).get(metric)
            b, a = _defined(b), _defined(a)  # undefined (nan, or None once through JSON) is None
            table.setdefault(name, {})[metric] = {"before": b, "after": a,
                                                  "delta": None if a is None or b is None else a - b}
    return table


# ---------------------------------------------------------------------------------------------------- guardrails
GUARDRAIL_KEYS = {
    "min_dice": "per-class Dice floor after compression, {class: floor} or one floor for every class",
    "max_delta_dice": "largest allowed Dice drop, absolute, per class",
    "max_delta_auc": "largest allowed AUC drop, absolute, per class",
    "max_delta_sensitivity": "largest allowed sensitivity (recall) drop, absolute, per class",
    "max_hd95_increase_mm": "largest allowed increase of the 95th-percentile Hausdorff distance, per class",
    "max_latency_ratio": "compressed / dense latency of the bundle's whole inferer must not exceed this",
    "target_latency_s": "compressed latency of the bundle's whole inferer must not exceed this many seconds",
    "target_macs": "compressed MACs must not exceed this (a fraction of dense when <= 1, else a count)",
}


def validate_guardrails(guardrails: Mapping[str, Any]) -> None:
    """Unknown guardrail names and limits that are not non-negative numbers are a :class:`ConfigError` (checked
    before any work starts)."""
    from .errors import ConfigError

    unknown = sorted(set(guardrails) - set(GUARDRAIL_KEYS))
    if unknown:
        raise ConfigError(f"unknown guardrails {unknown}; known: {sorted(GUARDRAIL_KEYS)}")
    for key, value in guardrails.items():
        numbers = value.values() if key == "min_dice" and isinstance(value, Mapping) else [value]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in numbers):
            raise ConfigError(f"guardrail {key} must be a non-negative number"
                              + (" or {class: number}" if key == "min_dice" else "") + f", got {value!r}")


def check_guardrails(guardrails: Mapping[str, Any], compression: Mapping[str, Any]) -> List[str]:
    """Every broken floor or budget of ``guardrails`` in a ``compress-bundle`` measurement, as one sentence each
    (which class, which metric, by how much); empty when all hold.

    ``compression`` holds ``per_class`` (``{class: {metric: {"before", "after"}}}``), ``latency_s``
    (``before``/``after`` seconds of the bundle's inferer) and ``macs`` (``before``/``after``). A per-class floor
    declared for a class the model does not have, or for a metric that was not measured, is itself an error.
    """
    from .errors import ConfigError

    validate_guardrails(guardrails)
    per_class = compression.get("per_class", {})
    broken: List[str] = []

    def values(metric: str) -> Dict[str, Dict[str, Optional[float]]]:
        found = {name: m[metric] for name, m in per_class.items() if metric in m}
        if not found:
            raise ConfigError(f"a guardrail on {metric} was declared but {metric} was not measured for this bundle "
                              f"(measured: {sorted({k for m in per_class.values() for k in m})})")
        return found

    floors = guardrails.get("min_dice")
    if floors is not None:
        dice_values = values("dice")
        floors = floors if isinstance(floors, Mapping) else {name: floors for name in dice_values}
        for name, floor in floors.items():
            if name not in dice_values:
                raise ConfigError(f"min_dice names class {name!r}; the model's classes are {sorted(dice_values)}")
            after = dice_values[name]["after"]
            if after is None or after < floor:
                broken.append(f"class {name!r}: Dice {_num(after)} is below its floor {floor:.4f}"
                              + (f" by {floor - after:.4f}" if after is not None else ""))
    for metric in ("dice", "auc", "sensitivity"):
        limit = guardrails.get(f"max_delta_{metric}")
        if limit is None:
            continue
        for name, v in values(metric).items():
            if v["before"] is None:
                continue  # undefined before (e.g. a class absent from the validation data): nothing to lose
            if v["after"] is None or v["before"] - v["after"] > limit:
                drop = "undefined" if v["after"] is None else f"{v['before'] - v['after']:.4f}"
                broken.append(f"class {name!r}: {metric} fell from {v['before']:.4f} to {_num(v['after'])} "
                              f"(drop {drop} > max_delta_{metric} {limit})")
    limit = guardrails.get("max_hd95_increase_mm")
    if limit is not None:
        for name, v in values("hd95").items():
            if v["before"] is not None and v["after"] is not None and v["after"] - v["before"] > limit:
                broken.append(f"class {name!r}: HD95 grew from {v['before']:.2f} to {v['after']:.2f} mm "
                              f"(+{v['after'] - v['before']:.2f} > max_hd95_increase_mm {limit})")
            elif v["before"] is not None and v["after"] is None:
                broken.append(f"class {name!r}: HD95 undefined after compression (the class is no longer found)")
    latency = compression.get("latency_s", {})
    if "max_latency_ratio" in guardrails:
        ratio = latency["after"] / latency["before"]
        if ratio > guardrails["max_latency_ratio"]:
            broken.append(f"latency: compressed/dense {ratio:.3f} of the bundle's inferer exceeds max_latency_ratio "
                          f"{guardrails['max_latency_ratio']}")
    if "target_latency_s" in guardrails and latency["after"] > guardrails["target_latency_s"]:
        broken.append(f"latency: {latency['after']:.4f} s of the bundle's inferer exceeds target_latency_s "
                      f"{guardrails['target_latency_s']}")
    if "target_macs" in guardrails:
        macs, target = compression["macs"], guardrails["target_macs"]
        value = macs["after"] / macs["before"] if target <= 1 else macs["after"]
        if value > target:
            broken.append(f"MACs: {value:.4g} exceeds target_macs {target}"
                          + (" (fraction of dense)" if target <= 1 else ""))
    return broken


def _num(x: Optional[float]) -> str:
    return "undefined" if x is None else f"{x:.4f}"


# ---------------------------------------------------------------------------------------------------- backends
def dice_counts(pred, ref, classes: int, inter: Dict[int, float], sums: Dict[int, float]) -> None:
    """Add one pair of label maps (numpy or torch) to per-class intersection and size sums (pooled Dice)."""
    for c in range(classes):
        a, b = pred == c, ref == c
        inter[c] = inter.get(c, 0.0) + float((a & b).sum())
        sums[c] = sums.get(c, 0.0) + float(a.sum() + b.sum())


def mask_dice_counts(pred, ref, inter: Dict[int, float], sums: Dict[int, float]) -> None:
    """:func:`dice_counts` for multi-label outputs: ``(N, C, *spatial)`` boolean masks, channel ``c`` is class ``c``
    (channels may overlap)."""
    for c in range(ref.shape[1]):
        a, b = pred[:, c], ref[:, c]
        inter[c] = inter.get(c, 0.0) + float((a & b).sum())
        sums[c] = sums.get(c, 0.0) + float(a.sum() + b.sum())


def pooled_dice(inter: Dict[int, float], sums: Dict[int, float]) -> Dict[str, float]:
    """Per-class Dice from :func:`dice_counts` or :func:`mask_dice_counts` sums (1.0 for a class absent from
    both)."""
    return {str(c): (2 * inter[c] / sums[c] if sums[c] else 1.0) for c in sorted(sums)}


def _check_label_mode(label_mode: Optional[str]) -> None:
    if label_mode not in (None, *LABEL_MODES):
        raise InputError(f"label_mode must be None, 'multi_class' or 'multi_label', got {label_mode!r}")


def _agreement_key(label_mode: Optional[str]) -> str:
    """Which agreement :func:`_agreement` measures: of the argmax maps, or of the binary channel masks."""
    return "mask_agreement" if label_mode == "multi_label" else "argmax_agreement"


def agreement_value(agreement: Mapping[str, Any]) -> Optional[float]:
    """The voxel-wise agreement of a :func:`prediction_agreement` / :func:`backend_agreement` entry, whichever
    kind it is (argmax maps, or binary channel masks for multi-label outputs)."""
    value = agreement.get("argmax_agreement")
    return agreement.get("mask_agreement") if value is None else value


def backend_agreement(model: Any, inputs: Sequence[torch.Tensor], inferer: Optional[Callable] = None,
                      onnx_path: Optional[str] = None, backends: Optional[Sequence[str]] = None,
                      label_mode: Optional[str] = None) -> Dict[str, Any]:
    """The same model through torch and every other installed runtime, compared output by output, so that a
    silent divergence of one runtime is caught before deployment.

    Args:
        model: the (compressed) ``nn.Module`` in eval mode; the reference is torch eager.
        inputs: preprocessed network inputs ``(1, C, *spatial)`` (e.g. a few validation images).
        inferer: e.g. the bundle's ``SlidingWindowInferer``; called as ``inferer(inputs=x, network=runner)``.
        onnx_path: the exported ONNX file (exported from ``model`` when not given).
        backends: runtimes to compare (default every installed one of ONNX Runtime, OpenVINO).
        label_mode: ``"multi_label"`` for sigmoid outputs whose channels may overlap (compared as binary masks, see
            :func:`prediction_agreement`); default: exclusive classes, compared through the argmax.

    Returns ``{backend: {"argmax_agreement", "max_abs_diff", "dice_vs_torch": {channel: dice}}}`` where the
    Dice per output channel is between the backend's and torch's argmax maps (segmentation only); multi-label:
    ``"mask_agreement"`` instead of ``"argmax_agreement"`` and Dice between the channel masks, with
    ``"label_mode": "multi_label"``.
    """
    from .runtime import Predictor, available_backends

    wanted = list(backends or [b for b in ("onnxruntime", "openvino") if b in available_backends()])
    if not inputs:
        raise InputError("backend_agreement needs at least one input")
    _check_label_mode(label_mode)
    run = inferer or (lambda inputs, network: network(inputs))
    example = inputs[0]
    with torch.no_grad():
        reference = [run(inputs=x, network=model).float().cpu() for x in inputs]
    result: Dict[str, Any] = {}
    for backend in wanted:
        try:
            predictor = Predictor(onnx_path or model, example_input=example, backend=backend)
            with torch.no_grad():
                outputs = [run(inputs=x, network=predictor).float().cpu() for x in inputs]
        except Exception as e:  # a runtime that cannot run this model (e.g. OpenVINO on a SwinUNETR Reshape)
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            result[backend] = {"error": f"{type(e).__name__}: {reason}"}
            logger.warning("%s cannot run this model, skipped (do not deploy on it): %s", backend, reason)
            continue
        found = _agreement(outputs, reference, label_mode)
        key = _agreement_key(label_mode)
        result[backend] = {key: found[key], "max_abs_diff": found["max_abs_diff"], "dice_vs_torch": found["dice"],
                           **({"label_mode": found["label_mode"]} if "label_mode" in found else {})}
        logger.info("%s vs torch: %s %.5f, max |diff| %.3g", backend, key.replace("_", " "), found[key],
                    found["max_abs_diff"])
    return result


def _masks(out: torch.Tensor, ref: torch.Tensor) -> tuple:
    """Multi-label network outputs as binary channel masks: probabilities (both within [0, 1]) above 0.5, else
    logits above 0 (sigmoid(x) > 0.5)."""
    probabilities = all(float(x.min()) >= 0 and float(x.max()) <= 1 for x in (out, ref))
    cut = 0.5 if probabilities else 0.0
    return out > cut, ref > cut


def _agreement(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor],
               label_mode: Optional[str] = None) -> Dict[str, Any]:
    """Argmax agreement (voxel-wise for segmentation), max |difference| and per-channel Dice of the argmax maps
    (segmentation only) of ``outputs`` against ``reference``, pooled over the pairs. ``label_mode="multi_label"``:
    agreement of the binary channel masks over every channel and voxel, and Dice per channel between the masks."""
    _check_label_mode(label_mode)
    multi_label = label_mode == "multi_label"
    agree = total = 0
    max_abs = 0.0
    inter: Dict[int, float] = {}
    sums: Dict[int, float] = {}
    for out, ref in zip(outputs, reference):
        max_abs = max(max_abs, float((out - ref).abs().max()))
        a, b = _masks(out, ref) if multi_label else (out.argmax(1), ref.argmax(1))
        agree += int((a == b).sum())
        total += a.numel()
        if multi_label:
            mask_dice_counts(a, b, inter, sums)
        elif ref.ndim > 2:
            dice_counts(a, b, ref.shape[1], inter, sums)
    found = {_agreement_key(label_mode): agree / total, "max_abs_diff": max_abs, "dice": pooled_dice(inter, sums),
             "elements": total}
    return {**found, "label_mode": "multi_label"} if multi_label else found


def agreement_note(agreement: Mapping[str, Any], inputs: str) -> str:
    """One sentence for a card's notes from :func:`prediction_agreement` (``inputs`` says on what)."""
    dice = ", ".join(f"{c}: {v:.4f}" for c, v in (agreement.get("dice") or {}).items())
    if agreement.get("argmax_agreement") is None and agreement.get("mask_agreement") is not None:
        what = (f"agreement of the binary channel masks (multi-label) {agreement['mask_agreement']:.5f} over "
                f"{agreement['elements']} channel-voxels")
    else:
        what = f"voxel-wise argmax agreement {agreement['argmax_agreement']:.5f} over {agreement['elements']} voxels"
    return (f"against the dense model's own predictions on {inputs}: {what}"
            + (f"; Dice between the two segmentations by channel {dice}" if dice else "")
            + f"; max |output difference| {agreement['max_abs_diff']:.3g}.")


def prediction_agreement(reference: Any, candidate: Any, inputs: Sequence[torch.Tensor],
                         inferer: Optional[Callable] = None, label_mode: Optional[str] = None) -> Dict[str, Any]:
    """How far a compressed model's predictions are from the dense model's, whatever the labels say: voxel-wise
    argmax agreement, per-channel Dice between the two argmax maps and max |difference| of the outputs, over
    ``inputs`` through ``inferer`` (e.g. the sliding-window inferer; called as ``inferer(inputs=x, network=m)``).
    ``reference``/``candidate``: modules or :class:`~monai_prune.Predictor` s (e.g. the int8 model).

    ``label_mode="multi_label"`` (sigmoid outputs whose channels may overlap, e.g. BraTS; see
    :func:`label_mode_from_bundle`): every channel is a binary mask (logits > 0, or probabilities > 0.5 when both
    outputs lie in [0, 1]); the result has ``"mask_agreement"`` (over every channel and voxel) instead of
    ``"argmax_agreement"``, Dice per channel between the masks, and ``"label_mode": "multi_label"``."""
    if not inputs:
        raise InputError("prediction_agreement needs at least one input")
    _check_label_mode(label_mode)
    run = inferer or (lambda inputs, network: network(inputs))
    with torch.no_grad():
        reference_out = [run(inputs=x, network=reference).float().cpu() for x in inputs]
        candidate_out = [run(inputs=x, network=candidate).float().cpu() for x in inputs]
    return _agreement(candidate_out, reference_out, label_mode)


# ---------------------------------------------------------------------------------------------------- the card
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
        from .utils import atomic_write_text

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
