"""Label modes of segmentation outputs, and the masks each mode compares (used by :mod:`.metrics`).

* ``"multi_class"``: the channels are mutually exclusive classes, one per voxel: a one-channel label map of class
  indices, or a one-hot / softmax / logits output with one channel per class (compared through the argmax);
* ``"multi_label"``: every channel is its own binary mask and channels may overlap (sigmoid outputs thresholded by
  ``AsDiscreted(threshold=0.5)``, e.g. BraTS tumour core / whole tumour / enhancing tumour).

The mode is given, read from a bundle (:func:`label_mode_from_bundle`) or decided from the data
(:func:`detect_label_mode`).
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

import torch

from ..errors import InputError

LABEL_MODES = ("multi_class", "multi_label")


# ---------------------------------------------------------------------------------------------------- label mode
def resolve_label_mode(label_mode: Optional[str], multi_label: Optional[bool]) -> str:
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


def is_binary(x: torch.Tensor) -> bool:
    return x.dtype == torch.bool or bool(((x == 0) | (x == 1)).all())


def _not_one_hot(x: torch.Tensor) -> bool:
    """A binary multi-channel map some voxel of which is in no channel or in several: channels that overlap."""
    return x.shape[0] > 1 and is_binary(x) and bool((x.sum(0, dtype=torch.int32) != 1).any())


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
        return resolve_label_mode(declared, None) if declared != "auto" else None
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
def as_index(x: torch.Tensor, classes: int) -> torch.Tensor:
    """A channel-first map (one-hot, probabilities or logits with ``classes`` channels, or one channel of class
    indices), bool or numeric, as a map of class indices without the channel dimension."""
    if x.shape[0] == classes and classes > 1:
        return (x.to(torch.uint8) if x.dtype == torch.bool else x).argmax(0)  # argmax has no bool kernel
    if x.shape[0] == 1:
        x = x.float()
        return x[0].round().long() if classes > 1 else (x[0] > 0.5).long()
    raise InputError(f"cannot compare a {tuple(x.shape)} map with a {classes}-class prediction")


def binary_masks(x: torch.Tensor, channels: int, what: str, threshold: float) -> torch.Tensor:
    """Multi-label: a ``(channels, *spatial)`` map as boolean masks (bool as is, probabilities > ``threshold``)."""
    if x.shape[0] != channels:
        raise InputError(f"a multi-label prediction has {channels} channels, each its own binary mask, but the "
                         f"{what} is {tuple(x.shape)}: give a {channels}-channel {what} of binary masks (e.g. from "
                         "ConvertToMultiChannelBasedOnBratsClassesd), or label_mode='multi_class' for exclusive "
                         "classes")
    if x.dtype == torch.bool:
        return x
    if what == "label" and not is_binary(x):
        raise InputError(f"a multi-label label must hold binary masks (0/1 or bool), got values in "
                         f"[{float(x.min()):g}, {float(x.max()):g}]")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise InputError(f"a multi-label {what} must be probabilities in [0, 1] or binary masks (the bundle's "
                         f"postprocessing applies the sigmoid), got values in [{float(x.min()):g}, {float(x.max()):g}]")
    return x > threshold
