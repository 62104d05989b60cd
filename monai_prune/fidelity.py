"""Per-class fidelity: what a compressed model lost, class by class.

A mean Dice that holds while one small organ collapses is a patient-safety failure, so every comparison here is
per class. :class:`PerClassMetrics` accumulates one model's postprocessed predictions against labels, sample by
sample (it attaches to a MONAI evaluator like a metric handler), and :func:`compare_per_class` puts two of them
(dense = before, compressed = after) side by side.

* segmentation (prediction ``(C, *spatial)``): per-class Dice per case (cases where the class is absent in both
  prediction and label are skipped, like MONAI's ``ignore_empty``), averaged over cases, and the per-case values
  (to find the worst cases);
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

from .errors import InputError, MonaiPruneError

logger = logging.getLogger(__name__)

BACKGROUND_NAMES = ("background", "bg", "_background_")


def class_names(channel_def: Optional[Mapping[Any, Any]], classes: int) -> List[str]:
    """Names of ``classes`` output channels from a bundle's ``channel_def`` (``{"0": "background", ...}``)."""
    channel_def = {int(k): str(v) for k, v in (channel_def or {}).items()}
    return [channel_def.get(c, f"class_{c}") for c in range(classes)]


def _as_index(x: torch.Tensor, classes: int) -> torch.Tensor:
    """A channel-first map (one-hot, probabilities or logits with ``classes`` channels, or one channel of class
    indices) as a map of class indices without the channel dimension."""
    if x.shape[0] == classes and classes > 1:
        return x.argmax(0)
    if x.shape[0] == 1:
        return x[0].round().long() if classes > 1 else (x[0] > 0.5).long()
    raise InputError(f"cannot compare a {tuple(x.shape)} map with a {classes}-class prediction")


class PerClassMetrics:
    """Accumulate per-class metrics of one model's predictions against labels.

    Args:
        names: class names by channel (default ``class_0``, ``class_1`` ...), e.g. from :func:`class_names`.
        skip: class names left out of the result (the background's Dice says nothing).
    """

    def __init__(self, names: Optional[Sequence[str]] = None, skip: Sequence[str] = BACKGROUND_NAMES) -> None:
        self.names = list(names) if names is not None else None
        self.skip = {s.lower() for s in skip}
        self.task: Optional[str] = None
        self.dice: List[List[float]] = []  # per case, per class (nan: class absent in both)
        self.hd95: List[List[float]] = []  # per case, per class, mm (nan: class missing in prediction or label)
        self.volumes: List[List[tuple]] = []  # per case, per class: (predicted ml, label ml)
        self.units = "mm"
        self.scores: List[torch.Tensor] = []
        self.labels: List[int] = []

    def _names(self, classes: int) -> List[str]:
        if self.names is None:
            self.names = class_names(None, classes)
        if len(self.names) != classes:
            raise InputError(f"{classes} output channels but {len(self.names)} class names {self.names}")
        return self.names

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """One sample, channel first, as a bundle's postprocessing leaves it."""
        spacing = _spacing(pred, label)
        pred, label = torch.as_tensor(pred).detach().cpu(), torch.as_tensor(label).detach().cpu()
        task = "segmentation" if pred.ndim >= 3 else "classification"
        if self.task not in (None, task):
            raise InputError(f"a {task} sample after {self.task} samples: one metric object per task")
        self.task = task
        if task == "segmentation":
            classes = int(pred.shape[0]) if pred.shape[0] > 1 else 2
            self._names(classes)
            p, t = _as_index(pred, classes), _as_index(label, classes)
            if p.shape != t.shape:
                raise InputError(f"prediction {tuple(p.shape)} and label {tuple(t.shape)} differ in spatial shape")
            if spacing is None:
                spacing, self.units = [1.0] * p.ndim, "voxels"
            voxel_ml = float(torch.tensor(spacing, dtype=torch.float64).prod()) / 1000.0
            row, distances, volumes = [], [], []
            for c in range(classes):
                a, b = p == c, t == c
                total = int(a.sum() + b.sum())
                row.append(2.0 * int((a & b).sum()) / total if total else math.nan)
                distances.append(_hd95(a, b, spacing))
                volumes.append((int(a.sum()) * voxel_ml, int(b.sum()) * voxel_ml))
            self.dice.append(row)
            self.hd95.append(distances)
            self.volumes.append(volumes)
        else:
            scores = pred.reshape(-1).float()
            self._names(len(scores))
            self.scores.append(scores)
            flat = label.reshape(-1)
            self.labels.append(int(flat.argmax()) if flat.numel() == len(scores) and flat.numel() > 1
                               else int(flat[0].round()))

    def attach(self, engine, output_transform: Optional[Callable[[Any], Any]] = None) -> "PerClassMetrics":
        """Update from an ignite/MONAI engine's decollated output (``[{"pred": ..., "label": ...}, ...]``) after
        every iteration."""
        from ignite.engine import Events

        def collect(e) -> None:
            output = e.state.output if output_transform is None else output_transform(e.state.output)
            for item in output if isinstance(output, list) else [output]:
                self.update(item["pred"], item["label"])

        engine.add_event_handler(Events.ITERATION_COMPLETED, collect)
        return self

    @property
    def cases(self) -> int:
        return len(self.dice) if self.task == "segmentation" else len(self.labels)

    def compute(self) -> Dict[str, Any]:
        """``{"task", "cases", "per_class": {name: {metric: value}}, ...}`` (nan where a metric is undefined)."""
        if self.task is None:
            raise InputError("no samples were seen: nothing to measure")
        names = self.names or []
        keep = [c for c, n in enumerate(names) if n.lower() not in self.skip]
        result: Dict[str, Any] = {"task": self.task, "cases": self.cases}
        if self.task == "segmentation":
            table = torch.tensor(self.dice, dtype=torch.float64)
            hd95 = torch.tensor(self.hd95, dtype=torch.float64)
            vols = torch.tensor(self.volumes, dtype=torch.float64)  # (cases, classes, 2)
            result["per_class"] = {}
            for c in keep:
                pred_ml, label_ml = vols[:, c, 0], vols[:, c, 1]
                present = label_ml > 0
                pct = (pred_ml[present] - label_ml[present]).abs() / label_ml[present] * 100
                result["per_class"][names[c]] = {
                    "dice": _nanmean(table[:, c]), "hd95": _nanmean(hd95[:, c]),
                    "volume_error_ml": float((pred_ml - label_ml).abs().mean()),
                    "volume_error_pct": float(pct.mean()) if len(pct) else math.nan}
            result["units"] = {"hd95": self.units, "volume": "ml" if self.units == "mm" else "voxels/1000"}
            result["per_case_dice"] = [[None if math.isnan(v) else v for v in (row[c] for c in keep)]
                                       for row in self.dice]
            return result
        from monai.metrics import compute_roc_auc

        scores, truth = torch.stack(self.scores), torch.tensor(self.labels)
        predicted = scores.argmax(1)
        result["accuracy"] = float((predicted == truth).float().mean())
        result["ece"] = expected_calibration_error(scores, truth)
        per_class = {}
        for c in keep:
            positive = truth == c
            entry = {"sensitivity": float((predicted[positive] == c).float().mean()) if positive.any() else math.nan,
                     "auc": math.nan}
            if 0 < int(positive.sum()) < len(truth):  # AUC needs both positives and negatives
                entry["auc"] = float(compute_roc_auc(scores[:, c], positive.long()))
            per_class[names[c]] = entry
        result["per_class"] = per_class
        return result


def _spacing(pred: Any, label: Any) -> Optional[List[float]]:
    """Voxel spacing (mm) from a MetaTensor's affine (the prediction's, else the label's); None if unknown."""
    for x in (pred, label):
        pixdim = getattr(x, "pixdim", None)
        if pixdim is not None and getattr(x, "ndim", 0) >= 3:
            values = [float(v) for v in torch.as_tensor(pixdim).reshape(-1)]
            if len(values) == x.ndim - 1 and all(v > 0 for v in values):
                return values
    return None


def _hd95(a: torch.Tensor, b: torch.Tensor, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance between two boolean masks (MONAI), nan when either is empty."""
    if not a.any() or not b.any():
        return math.nan
    from monai.metrics import compute_hausdorff_distance

    value = compute_hausdorff_distance(a[None, None].float(), b[None, None].float(), include_background=True,
                                       percentile=95, spacing=list(spacing))
    return float(value.reshape(-1)[0])


def expected_calibration_error(scores: torch.Tensor, truth: torch.Tensor, bins: int = 10) -> float:
    """ECE of the top-class confidence in ``bins`` equal-width bins (scores are softmaxed unless they already are
    probabilities)."""
    probs = scores.float()
    if probs.min() < 0 or probs.max() > 1 or not torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-3):
        probs = torch.softmax(probs, 1)
    confidence, predicted = probs.max(1)
    correct = (predicted == truth).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += float(inside.float().mean()) * abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
    return ece


def worst_cases(before: Mapping[str, Any], after: Mapping[str, Any], k: int = 3) -> List[Dict[str, Any]]:
    """The ``k`` validation cases whose mean foreground Dice fell most from ``before`` to ``after`` (by index in
    the evaluator's order; no file names, which may identify a patient)."""
    rows = []
    for i, (b, a) in enumerate(zip(before.get("per_case_dice", []), after.get("per_case_dice", []))):
        pairs = [(x, y) for x, y in zip(b, a) if x is not None and y is not None]
        if pairs:
            mb, ma = sum(x for x, _ in pairs) / len(pairs), sum(y for _, y in pairs) / len(pairs)
            rows.append({"case": i, "dice_before": mb, "dice_after": ma, "drop": mb - ma})
    return sorted(rows, key=lambda r: -r["drop"])[:k]


def _nanmean(values: torch.Tensor) -> float:
    values = values[~torch.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


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


def json_safe(x: Any) -> Any:
    """nan/inf -> None, recursively (JSON has no NaN; ``metadata.json`` must stay strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


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


def pooled_dice(inter: Dict[int, float], sums: Dict[int, float]) -> Dict[str, float]:
    """Per-class Dice from :func:`dice_counts` sums (1.0 for a class absent from both)."""
    return {str(c): (2 * inter[c] / sums[c] if sums[c] else 1.0) for c in sorted(sums)}


def backend_agreement(model: Any, inputs: Sequence[torch.Tensor], inferer: Optional[Callable] = None,
                      onnx_path: Optional[str] = None, backends: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The same model through torch and every other installed runtime, compared output by output, so that a
    silent divergence of one runtime is caught before deployment.

    Args:
        model: the (compressed) ``nn.Module`` in eval mode; the reference is torch eager.
        inputs: preprocessed network inputs ``(1, C, *spatial)`` (e.g. a few validation images).
        inferer: e.g. the bundle's ``SlidingWindowInferer``; called as ``inferer(inputs=x, network=runner)``.
        onnx_path: the exported ONNX file (exported from ``model`` when not given).
        backends: runtimes to compare (default every installed one of ONNX Runtime, OpenVINO).

    Returns ``{backend: {"argmax_agreement", "max_abs_diff", "dice_vs_torch": {channel: dice}}}`` where the
    Dice per output channel is between the backend's and torch's argmax maps (segmentation only).
    """
    from .runtime import Predictor, available_backends

    wanted = list(backends or [b for b in ("onnxruntime", "openvino") if b in available_backends()])
    if not inputs:
        raise InputError("backend_agreement needs at least one input")
    run = inferer or (lambda inputs, network: network(inputs))
    example = inputs[0]
    with torch.no_grad():
        reference = [run(inputs=x, network=model).float().cpu() for x in inputs]
    result: Dict[str, Any] = {}
    for backend in wanted:
        predictor = Predictor(onnx_path or model, example_input=example, backend=backend)
        with torch.no_grad():
            outputs = [run(inputs=x, network=predictor).float().cpu() for x in inputs]
        found = _agreement(outputs, reference)
        result[backend] = {"argmax_agreement": found["argmax_agreement"], "max_abs_diff": found["max_abs_diff"],
                           "dice_vs_torch": found["dice"]}
        logger.info("%s vs torch: argmax agreement %.5f, max |diff| %.3g", backend, found["argmax_agreement"],
                    found["max_abs_diff"])
    return result


def _agreement(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> Dict[str, Any]:
    """Argmax agreement (voxel-wise for segmentation), max |difference| and per-channel Dice of the argmax maps
    (segmentation only) of ``outputs`` against ``reference``, pooled over the pairs."""
    agree = total = 0
    max_abs = 0.0
    inter: Dict[int, float] = {}
    sums: Dict[int, float] = {}
    for out, ref in zip(outputs, reference):
        max_abs = max(max_abs, float((out - ref).abs().max()))
        a, b = out.argmax(1), ref.argmax(1)
        agree += int((a == b).sum())
        total += a.numel()
        if ref.ndim > 2:
            dice_counts(a, b, ref.shape[1], inter, sums)
    return {"argmax_agreement": agree / total, "max_abs_diff": max_abs, "dice": pooled_dice(inter, sums),
            "elements": total}


def agreement_note(agreement: Mapping[str, Any], inputs: str) -> str:
    """One sentence for a card's notes from :func:`prediction_agreement` (``inputs`` says on what)."""
    dice = ", ".join(f"{c}: {v:.4f}" for c, v in (agreement.get("dice") or {}).items())
    return (f"against the dense model's own predictions on {inputs}: voxel-wise argmax agreement "
            f"{agreement['argmax_agreement']:.5f} over {agreement['elements']} voxels"
            + (f"; Dice between the two segmentations by channel {dice}" if dice else "")
            + f"; max |output difference| {agreement['max_abs_diff']:.3g}.")


def prediction_agreement(reference: Any, candidate: Any, inputs: Sequence[torch.Tensor],
                         inferer: Optional[Callable] = None) -> Dict[str, Any]:
    """How far a compressed model's predictions are from the dense model's, whatever the labels say: voxel-wise
    argmax agreement, per-channel Dice between the two argmax maps and max |difference| of the outputs, over
    ``inputs`` through ``inferer`` (e.g. the sliding-window inferer; called as ``inferer(inputs=x, network=m)``).
    ``reference``/``candidate``: modules or :class:`~monai_prune.Predictor` s (e.g. the int8 model)."""
    if not inputs:
        raise InputError("prediction_agreement needs at least one input")
    run = inferer or (lambda inputs, network: network(inputs))
    with torch.no_grad():
        reference_out = [run(inputs=x, network=reference).float().cpu() for x in inputs]
        candidate_out = [run(inputs=x, network=candidate).float().cpu() for x in inputs]
    return _agreement(candidate_out, reference_out)


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

    def __post_init__(self) -> None:
        if self.task not in ("segmentation", "classification"):
            raise InputError(f"a fidelity card's task is 'segmentation' or 'classification', got {self.task!r}")
        if not isinstance(self.per_class, Mapping):
            raise InputError(f"per_class must be {{class: {{metric: {{before, after, delta}}}}}}, got "
                             f"{type(self.per_class).__name__}")
        # one normal form (plain JSON values, nan/inf -> None) so that a card equals its JSON round trip
        for name in ("per_class", "summary", "units", "latency_s", "network_latency_s", "macs", "params",
                     "size_bytes", "backend_agreement", "worst_cases", "guardrails", "broken", "notes"):
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
        notes.append("before = the source bundle's dense model, after = the compressed model; both measured by the "
                     "source bundle's own validation evaluator (its data, inferer and postprocessing), per-class "
                     "values by monai-prune from the same outputs (segmentation: Dice per class averaged over cases; "
                     "classification: sensitivity and one-vs-rest AUC per class; n/a where undefined, e.g. a class "
                     "absent from the data). Check them on your own held-out data before clinical use.")
        if compression.get("agreement_vs_dense"):
            notes.append(agreement_note(compression["agreement_vs_dense"], "validation input(s) through the bundle's "
                                                                           "inferer"))
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
                   cases=compression.get("validation_cases"), notes=notes)

    # ------------------------------------------------------------------------------------------------ Markdown
    def to_markdown(self, heading_level: int = 2) -> str:
        """The card for people: the :meth:`headline` in bold as the first line, then per-class before/after/Δ of
        every metric measured, whole-model metrics, cost (parameters, MACs, size, latency with ratios), backend
        agreement, worst cases, each guardrail held or broken, and the notes. ``heading_level`` sets the section
        headings (``3`` to embed the card under a ``##`` section)."""
        from .report import markdown_table

        h = "#" * heading_level
        lines = [f"**{self.headline()}**", "",
                 f"{self.title}: {self.task}"
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
        if self.backend_agreement:
            rows = [[backend, _fmt4(v.get("argmax_agreement"), "{:.5f}"), _fmt4(v.get("max_abs_diff"), "{:.2g}"),
                     ", ".join(f"{c}: {_fmt4(d)}" for c, d in (v.get("dice_vs_torch") or {}).items()) or "n/a"]
                    for backend, v in self.backend_agreement.items()]
            lines += [f"{h} Runtimes vs PyTorch (the compressed model)", "",
                      markdown_table(["runtime", "argmax agreement", "max abs diff", "Dice vs torch by channel"], rows),
                      ""]
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
