"""The same model across runtimes (torch, ONNX Runtime, OpenVINO), or two models on the same inputs: voxel/argmax
agreement and per-class Dice between their label maps."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch

from ..errors import InputError
from .metrics import LABEL_MODES, dice_from_counts

logger = logging.getLogger(__name__)


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
    return {str(c): dice_from_counts(inter[c], sums[c], empty=1.0) for c in sorted(sums)}


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
    from ..runtime import Predictor, available_backends

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
