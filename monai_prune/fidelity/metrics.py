"""Per-class metrics of one model's predictions against labels (the measuring half of :mod:`monai_prune.fidelity`).

Segmentation outputs come in two kinds, the *label mode*:

* ``"multi_class"``: the channels are mutually exclusive classes, one per voxel: a one-channel label map of class
  indices, or a one-hot / softmax / logits output with one channel per class (compared through the argmax);
* ``"multi_label"``: every channel is its own binary mask and channels may overlap (sigmoid outputs thresholded by
  ``AsDiscreted(threshold=0.5)``, e.g. BraTS tumour core / whole tumour / enhancing tumour, with labels from
  ``ConvertToMultiChannelBasedOnBratsClassesd``): Dice, HD95 and volumes per channel on the binary masks.

The mode is given (``PerClassMetrics(label_mode=...)`` or ``multi_label=True``, or read from a bundle with
:func:`label_mode_from_bundle`) or decided from the data (:func:`detect_label_mode`). For a discretized one-hot
prediction both modes give the same numbers, so the data only has to tell them apart where it can.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from ..errors import InputError

logger = logging.getLogger(__name__)

BACKGROUND_NAMES = ("background", "bg", "_background_")
LABEL_MODES = ("multi_class", "multi_label")


def class_names(channel_def: Optional[Mapping[Any, Any]], classes: int) -> List[str]:
    """Names of ``classes`` output channels from a bundle's ``channel_def`` (``{"0": "background", ...}``)."""
    channel_def = {int(k): str(v) for k, v in (channel_def or {}).items()}
    return [channel_def.get(c, f"class_{c}") for c in range(classes)]


# ---------------------------------------------------------------------------------------------------- label mode
def _resolve_mode(label_mode: Optional[str], multi_label: Optional[bool]) -> str:
    """``"auto"``, ``"multi_class"`` or ``"multi_label"`` from the two ways of saying it."""
    mode = "auto" if label_mode in (None, "auto") else label_mode
    if mode not in ("auto", *LABEL_MODES):
        raise InputError(f"label_mode must be 'auto', 'multi_class' or 'multi_label', got {label_mode!r}")
    if multi_label is not None:
        wanted = "multi_label" if multi_label else "multi_class"
        if mode not in ("auto", wanted):
            raise InputError(f"multi_label={multi_label} contradicts label_mode={label_mode!r}: give one of them")
        mode = wanted
    return mode


def _is_binary(x: torch.Tensor) -> bool:
    return x.dtype == torch.bool or bool(((x == 0) | (x == 1)).all())


def _not_one_hot(x: torch.Tensor) -> bool:
    """A binary multi-channel map some voxel of which is in no channel or in several: channels that overlap."""
    return x.shape[0] > 1 and _is_binary(x) and bool((x.sum(0, dtype=torch.int32) != 1).any())


def detect_label_mode(pred: torch.Tensor, label: torch.Tensor) -> str:
    """The label mode of one channel-first segmentation sample, decided from the data.

    ``"multi_label"`` when the label has as many channels as the prediction and either of them is a binary map
    that is not one-hot (a voxel in no channel, or in several: overlapping channels); ``"multi_class"`` otherwise
    (a one-channel label map, a one-hot that sums to 1, softmax probabilities, logits).
    """
    pred, label = torch.as_tensor(pred), torch.as_tensor(label)
    if pred.shape[0] > 1 and label.shape[0] == pred.shape[0] and (_not_one_hot(pred) or _not_one_hot(label)):
        return "multi_label"
    return "multi_class"


def _pred_format(metadata: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    if not isinstance(metadata, Mapping):
        return {}
    if "network_data_format" in metadata:  # a whole metadata.json
        metadata = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    return metadata if isinstance(metadata, Mapping) else {}


def _flag(value: Any) -> bool:
    """A transform argument that is true for the first key (``True``, ``[True, ...]``, ``"$True"``)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else False
    if isinstance(value, str):
        return value.strip().lstrip("$").lower() == "true"
    return value is True


def _transforms(postprocessing: Any) -> List[Any]:
    """The transforms of a postprocessing ``Compose`` (instantiated or a raw bundle config), flattened."""
    if postprocessing is None:
        return []
    if isinstance(postprocessing, Mapping):
        if "transforms" in postprocessing:
            return _transforms(postprocessing["transforms"])
        return [postprocessing]
    if isinstance(postprocessing, (list, tuple)):
        return [t for item in postprocessing for t in _transforms(item)]
    inner = getattr(postprocessing, "transforms", None)
    return _transforms(list(inner)) if isinstance(inner, (list, tuple)) else [postprocessing]


def label_mode_from_bundle(metadata: Optional[Mapping[str, Any]] = None, postprocessing: Any = None,
                           key: str = "pred") -> Optional[str]:
    """The label mode a bundle declares, or None when it does not say (then :class:`PerClassMetrics` decides from
    the data).

    Args:
        metadata: ``network_data_format.outputs.pred`` of ``configs/metadata.json`` (or the whole metadata). An
            explicit ``"label_mode"`` (``"multi_class"``/``"multi_label"``) or ``"multi_label": true|false`` there
            decides. The model zoo's own keys (``channel_def``, ``num_channels``, ``is_onehot``) do not say whether
            channels are exclusive, so they are not used for this.
        postprocessing: the bundle's validation postprocessing, a ``Compose`` or its raw config
            (``{"_target_": "Compose", "transforms": [...]}``): ``Activations(d)`` with ``sigmoid`` on ``key`` means
            ``"multi_label"`` (BraTS), ``softmax`` or ``AsDiscrete(d)`` with ``argmax`` means ``"multi_class"``.
        key: the prediction's key in the postprocessing transforms.
    """
    pred_format = _pred_format(metadata)
    declared = pred_format.get("label_mode")
    if declared is not None:
        return _resolve_mode(declared, None) if declared != "auto" else None
    if isinstance(pred_format.get("multi_label"), bool):
        return "multi_label" if pred_format["multi_label"] else "multi_class"
    sigmoid = exclusive = False
    for t in _transforms(postprocessing):
        if isinstance(t, Mapping):
            name = str(t.get("_target_", "")).rsplit(".", 1)[-1]
            keys, get = t.get("keys", key), t.get
        else:
            name = type(t).__name__
            keys, get = getattr(t, "keys", key), lambda a, default=None, t=t: getattr(t, a, default)
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        if key not in keys:
            continue
        position = keys.index(key)

        def on(arg: str) -> bool:
            value = get(arg, False)
            if isinstance(value, (list, tuple)) and len(value) == len(keys):
                value = value[position]
            return _flag(value)

        if name in ("Activationsd", "Activations"):
            sigmoid |= on("sigmoid")
            exclusive |= on("softmax")
        elif name in ("AsDiscreted", "AsDiscrete"):
            exclusive |= on("argmax")
    if exclusive:
        return "multi_class"
    return "multi_label" if sigmoid else None


# ---------------------------------------------------------------------------------------------------- masks
def _as_index(x: torch.Tensor, classes: int) -> torch.Tensor:
    """A channel-first map (one-hot, probabilities or logits with ``classes`` channels, or one channel of class
    indices), bool or numeric, as a map of class indices without the channel dimension."""
    if x.shape[0] == classes and classes > 1:
        return (x.to(torch.uint8) if x.dtype == torch.bool else x).argmax(0)  # argmax has no bool kernel
    if x.shape[0] == 1:
        x = x.float()
        return x[0].round().long() if classes > 1 else (x[0] > 0.5).long()
    raise InputError(f"cannot compare a {tuple(x.shape)} map with a {classes}-class prediction")


def _binary_masks(x: torch.Tensor, channels: int, what: str, threshold: float) -> torch.Tensor:
    """Multi-label: a ``(channels, *spatial)`` map as boolean masks (bool as is, probabilities > ``threshold``)."""
    if x.shape[0] != channels:
        raise InputError(f"a multi-label prediction has {channels} channels, each its own binary mask, but the "
                         f"{what} is {tuple(x.shape)}: give a {channels}-channel {what} of binary masks (e.g. from "
                         "ConvertToMultiChannelBasedOnBratsClassesd), or label_mode='multi_class' for exclusive "
                         "classes")
    if x.dtype == torch.bool:
        return x
    if what == "label" and not _is_binary(x):
        raise InputError(f"a multi-label label must hold binary masks (0/1 or bool), got values in "
                         f"[{float(x.min()):g}, {float(x.max()):g}]")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise InputError(f"a multi-label {what} must be probabilities in [0, 1] or binary masks (the bundle's "
                         f"postprocessing applies the sigmoid), got values in [{float(x.min()):g}, {float(x.max()):g}]")
    return x > threshold


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
        self.requested_mode = _resolve_mode(label_mode, multi_label)
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
                p = _binary_masks(pred, classes, "prediction", self.threshold)
                t = _binary_masks(label, classes, "label", self.threshold)
            else:
                classes = int(pred.shape[0]) if pred.shape[0] > 1 else max(2, len(self.names or ()))
                self._names(classes)
                if pred.shape[0] > 1 and not _is_binary(pred):
                    self._soft_argmax += 1
                p, t = _as_index(pred, classes), _as_index(label, classes)
            if p.shape != t.shape:
                raise InputError(f"prediction {tuple(pred.shape[1:])} and label {tuple(label.shape[1:])} differ in "
                                 "spatial shape")
            if spacing is None:
                spacing, self.units = [1.0] * (pred.ndim - 1), "voxels"
            voxel_ml = float(torch.tensor(spacing, dtype=torch.float64).prod()) / 1000.0
            row, distances, volumes = [], [], []
            for c in range(classes):
                a, b = (p[c], t[c]) if multi_label else (p == c, t == c)
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
