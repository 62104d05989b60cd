"""Per-class metrics of one model's predictions against labels (the measuring half of :mod:`monai_prune.fidelity`).

Segmentation outputs come in two kinds, the *label mode*:

* ``"multi_class"``: the channels are mutually exclusive classes, one per voxel: a one-channel label map of class
  indices, or a one-hot / softmax / logits output with one channel per class (compared through the argmax);
* ``"multi_label"``: every channel is its own binary mask and channels may overlap (sigmoid outputs thresholded by
  ``AsDiscreted(threshold=0.5)``, e.g. BraTS tumour core / whole tumour / enhancing tumour, with labels from
  ``ConvertToMultiChannelBasedOnBratsClassesd``): Dice, HD95 and volumes per channel on the binary masks.

The mode is given (``PerClassMetrics(label_mode=...)`` or ``multi_label=True``, or read from a bundle with
:func:`label_mode_from_bundle`) or decided from the data (:func:`detect_label_mode`); both live in
:mod:`.label_modes` and are importable from here. For a discretized one-hot prediction both modes give the same
numbers, so the data only has to tell them apart where it can.

:func:`dice` is the one Dice of monai_prune, with an explicit rule for a class absent from both masks (``empty=``):
per-case Dice here leaves such a class out (``empty=math.nan``), agreement between two label maps counts it as
agreeing (``empty=1.0``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from .label_modes import (LABEL_MODES, as_index, binary_masks, detect_label_mode, is_binary,  # noqa: F401
                          label_mode_from_bundle, resolve_label_mode)

logger = logging.getLogger(__name__)

BACKGROUND_NAMES = ("background", "bg", "_background_")


def class_names(channel_def: Optional[Mapping[Any, Any]], classes: int) -> List[str]:
    """Names of ``classes`` output channels from a bundle's ``channel_def`` (``{"0": "background", ...}``)."""
    channel_def = {int(k): str(v) for k, v in (channel_def or {}).items()}
    return [channel_def.get(c, f"class_{c}") for c in range(classes)]



# ---------------------------------------------------------------------------------------------------- Dice
def dice(pred: Any, ref: Any, *, empty: float, label: Any = None) -> float:
    """Dice overlap ``2 |P ∩ R| / (|P| + |R|)`` of two masks of one shape: the one Dice of monai_prune.

    Args:
        pred, ref: masks (numpy arrays or torch tensors, bool or numeric: nonzero is in the mask), or label maps
            with ``label`` given. Any leading (batch) dimensions are pooled: one Dice over all voxels. Call it once
            per class for per-class values, once per sample for per-sample values.
        empty: the empty-class rule, stated by every caller: what a class absent from both masks scores. ``1.0``:
            the two agree that it is absent (agreement between two models' label maps); ``math.nan``: not counted
            (left out of a nan-aware mean: per-case Dice against labels). One mask empty and the other not scores
            0.0 whatever the rule.
        label: compare ``pred == label`` with ``ref == label`` (label maps of class indices) instead.
    """
    a, b = _mask(pred, label), _mask(ref, label)
    if tuple(a.shape) != tuple(b.shape):
        raise InputError(f"dice needs two masks of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):  # one numpy, one torch: compare as torch
        b = torch.as_tensor(b, device=a.device)
    elif isinstance(b, torch.Tensor) and not isinstance(a, torch.Tensor):
        a = torch.as_tensor(a, device=b.device)
    return dice_from_counts(int((a & b).sum()), int(a.sum()) + int(b.sum()), empty=empty)


def dice_from_counts(intersection: float, size_sum: float, *, empty: float) -> float:
    """:func:`dice` from counts (e.g. pooled over cases): ``2 * intersection / size_sum``, ``empty`` when
    ``size_sum`` is 0 (the class is absent from both)."""
    if isinstance(empty, bool) or not isinstance(empty, (int, float)):
        raise InputError(f"empty must be the score of a class absent from both masks (e.g. 1.0, or math.nan: not "
                         f"counted), got {empty!r}")
    return 2.0 * intersection / size_sum if size_sum else float(empty)


def _mask(x: Any, label: Any) -> Any:
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
    if label is not None:
        return x == label
    return x.bool() if isinstance(x, torch.Tensor) else x.astype(bool)


# ---------------------------------------------------------------------------------------------------- metrics
class PerClassMetrics:
    """Accumulate per-class metrics of one model's predictions against labels.

    Args:
        names: class names by channel (default ``class_0``, ``class_1`` ...), e.g. from :func:`class_names`.
        skip: class names left out of the result (the background's Dice says nothing). In multi-label mode every
            channel is its own class, so only a channel that ``names`` calls background is skipped.
        label_mode: ``"multi_class"`` (exclusive classes: a label map, one-hot, softmax or logits),
            ``"multi_label"`` (every channel its own binary mask, channels may overlap: sigmoid outputs), or
            ``"auto"`` (default: decided from the data by :func:`detect_label_mode`; once a sample shows overlapping
            channels, the object stays multi-label).
        multi_label: ``True``/``False`` is the same as ``label_mode="multi_label"``/``"multi_class"``.
        threshold: multi-label probabilities above it are in the mask (bool masks are used as they are).
    """

    def __init__(self, names: Optional[Sequence[str]] = None, skip: Sequence[str] = BACKGROUND_NAMES,
                 label_mode: Optional[str] = "auto", multi_label: Optional[bool] = None,
                 threshold: float = 0.5) -> None:
        self.names = list(names) if names is not None else None
        self.skip = {s.lower() for s in skip}
        self.requested_mode = resolve_label_mode(label_mode, multi_label)
        self.label_mode: Optional[str] = None if self.requested_mode == "auto" else self.requested_mode
        self.threshold = float(threshold)
        self.task: Optional[str] = None
        self.dice: List[List[float]] = []  # per case, per class (nan: class absent in both)
        self.hd95: List[List[float]] = []  # per case, per class, mm (nan: class missing in prediction or label)
        self.volumes: List[List[tuple]] = []  # per case, per class: (predicted ml, label ml)
        self.units = "mm"
        self.scores: List[torch.Tensor] = []
        self.labels: List[int] = []
        self._soft_argmax = 0  # multi-class cases whose prediction was not binary (argmax of probabilities/logits)

    def _names(self, classes: int) -> List[str]:
        if self.names is None:
            self.names = class_names(None, classes)
        if len(self.names) != classes:
            raise InputError(f"{classes} output channels but {len(self.names)} class names {self.names}")
        return self.names

    def _mode(self, pred: torch.Tensor, label: torch.Tensor) -> str:
        """This sample's label mode: the requested one, else the data's (and it sticks to multi-label)."""
        if self.requested_mode != "auto":
            return self.requested_mode
        found = detect_label_mode(pred, label)
        if found == "multi_label" and self.label_mode == "multi_class":
            if self._soft_argmax:
                raise InputError(f"case {self.cases} has overlapping channels (multi-label) but the {self.cases} "
                                 "case(s) before were measured as exclusive classes through the argmax: pass "
                                 "label_mode='multi_label' (sigmoid outputs) or 'multi_class' explicitly")
            logger.info("overlapping channels in case %d: measuring channels as binary masks (multi-label); the "
                        "one-hot cases before give the same numbers either way", self.cases)
        if found == "multi_label" or self.label_mode is None:
            self.label_mode = found
        return self.label_mode

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """One sample, channel first, as a bundle's postprocessing leaves it (float or bool)."""
        spacing = _spacing(pred, label)
        pred, label = torch.as_tensor(pred).detach().cpu(), torch.as_tensor(label).detach().cpu()
        task = "segmentation" if pred.ndim >= 3 else "classification"
        if self.task not in (None, task):
            raise InputError(f"a {task} sample after {self.task} samples: one metric object per task")
        if task == "classification" and self.requested_mode == "multi_label":
            raise InputError("multi-label classification is not measured per class yet: use label_mode='multi_class' "
                             "(or 'auto') for classification")
        self.task = task
        if task == "segmentation":
            multi_label = self._mode(pred, label) == "multi_label"
            if multi_label:
                classes = int(pred.shape[0])
                self._names(classes)
                p = binary_masks(pred, classes, "prediction", self.threshold)
                t = binary_masks(label, classes, "label", self.threshold)
            else:
                classes = int(pred.shape[0]) if pred.shape[0] > 1 else max(2, len(self.names or ()))
                self._names(classes)
                if pred.shape[0] > 1 and not is_binary(pred):
                    self._soft_argmax += 1
                p, t = as_index(pred, classes), as_index(label, classes)
            if p.shape != t.shape:
                raise InputError(f"prediction {tuple(pred.shape[1:])} and label {tuple(label.shape[1:])} differ in "
                                 "spatial shape")
            if spacing is None:
                spacing, self.units = [1.0] * (pred.ndim - 1), "voxels"
            voxel_ml = float(torch.tensor(spacing, dtype=torch.float64).prod()) / 1000.0
            row, distances, volumes = [], [], []
            for c in range(classes):
                a, b = (p[c], t[c]) if multi_label else (p == c, t == c)
                row.append(dice(a, b, empty=math.nan))  # a class absent from both is not counted
                distances.append(_hd95(a, b, spacing))
                volumes.append((int(a.sum()) * voxel_ml, int(b.sum()) * voxel_ml))
            self.dice.append(row)
            self.hd95.append(distances)
            self.volumes.append(volumes)
        else:
            scores = pred.reshape(-1).float()
            self._names(len(scores))
            self.scores.append(scores)
            flat = label.reshape(-1).float()
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
        """``{"task", "cases", "per_class": {name: {metric: value}}, ...}`` (nan where a metric is undefined);
        segmentation also gives ``label_mode`` (``"multi_class"`` or ``"multi_label"``)."""
        if self.task is None:
            raise InputError("no samples were seen: nothing to measure")
        names = self.names or []
        keep = [c for c, n in enumerate(names) if n.lower() not in self.skip]
        result: Dict[str, Any] = {"task": self.task, "cases": self.cases}
        if self.task == "segmentation":
            result["label_mode"] = self.label_mode
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
