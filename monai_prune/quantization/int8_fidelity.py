"""int8 against fp32 on held-out inputs, whatever the backend: argmax agreement, max |logit difference|, per-class
Dice between the two segmentations and, with labels, each one's Dice (segmentation) or accuracy and per-class AUC
(classification) against the labels; the tolerances of ``QuantizationConfig.max_delta`` checked against them."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from ..fidelity import dice_counts, pooled_dice


def classification_metrics(outputs: Sequence[np.ndarray], labels: Sequence[torch.Tensor]) -> Dict[str, object]:
    """Accuracy and per-class one-vs-rest AUC (MONAI's ``compute_roc_auc``) of logits against class labels."""
    from monai.metrics import compute_roc_auc

    logits = torch.as_tensor(np.concatenate(outputs))
    truth = torch.cat([lab.reshape(-1).long() for lab in labels])
    classes = logits.shape[1]
    result: Dict[str, object] = {"accuracy": float((logits.argmax(1) == truth).float().mean())}
    probs = torch.softmax(logits.float(), 1)
    auc = {}
    for c in range(classes):
        positive = truth == c
        if 0 < int(positive.sum()) < len(truth):  # AUC needs both positives and negatives
            auc[str(c)] = float(compute_roc_auc(probs[:, c], positive.long()))
    if auc:
        result["auc"] = auc
    return result


def measure_fidelity(fp32_outputs: Sequence[np.ndarray], int8: Callable[[np.ndarray], np.ndarray],
                     inputs: Sequence[torch.Tensor],
                     labels: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, object]:
    """int8 vs fp32 (outputs computed once per backend) on ``inputs``; with ``labels``, also each one's
    per-class Dice (segmentation) or accuracy and per-class AUC (classification) against the labels."""
    agree = total = 0
    max_abs = 0.0
    between: tuple = ({}, {})
    truth = {"fp32": ({}, {}), "int8": ({}, {})}
    int8_outputs = []
    for i, x in enumerate(inputs):
        a, b = fp32_outputs[i], int8(x.numpy())
        int8_outputs.append(b)
        max_abs = max(max_abs, float(np.abs(a - b).max()))
        pa, pb = a.argmax(1), b.argmax(1)
        agree += int((pa == pb).sum())
        total += pa.size
        if a.ndim > 2:  # segmentation: per-class Dice between the two label maps
            dice_counts(pb, pa, a.shape[1], *between)
            if labels is not None:
                ref = np.asarray(labels[i]).reshape(pa.shape)
                dice_counts(pa, ref, a.shape[1], *truth["fp32"])
                dice_counts(pb, ref, a.shape[1], *truth["int8"])
    result: Dict[str, object] = {"agreement": agree / total, "max_abs_logit": max_abs, "samples": len(inputs)}
    if between[1]:
        result["dice_vs_fp32"] = pooled_dice(*between)
    if labels is not None and truth["fp32"][1]:
        d32, d8 = pooled_dice(*truth["fp32"]), pooled_dice(*truth["int8"])
        result.update(dice_fp32=d32, dice_int8=d8, dice_drop=max(d32[c] - d8[c] for c in d32 if c != "0"))
    if labels is not None and fp32_outputs[0].ndim == 2:
        c32, c8 = classification_metrics(fp32_outputs, labels), classification_metrics(int8_outputs, labels)
        result.update(accuracy_fp32=c32["accuracy"], accuracy_int8=c8["accuracy"],
                      accuracy_drop=c32["accuracy"] - c8["accuracy"])
        if "auc" in c32:
            result.update(auc_fp32=c32["auc"], auc_int8=c8["auc"],
                          auc_drop=max(c32["auc"][c] - c8["auc"][c] for c in c32["auc"]))
    return result


def fidelity_violations(fidelity: Dict[str, object], max_delta: Dict[str, float]) -> Dict[str, float]:
    """How far each tolerance is exceeded (empty when all hold)."""
    over = {}
    if "max_abs_logit" in max_delta and fidelity["max_abs_logit"] > max_delta["max_abs_logit"]:
        over["max_abs_logit"] = fidelity["max_abs_logit"] - max_delta["max_abs_logit"]
    if "agreement" in max_delta and 1 - fidelity["agreement"] > max_delta["agreement"]:
        over["agreement"] = 1 - fidelity["agreement"] - max_delta["agreement"]
    if "dice" in max_delta and ("dice_drop" in fidelity or "dice_vs_fp32" in fidelity):
        # against labels when given (the Dice the user would lose), else against the fp32 segmentation
        worst = fidelity["dice_drop"] if "dice_drop" in fidelity else 1 - min(fidelity["dice_vs_fp32"].values())
        if worst > max_delta["dice"]:
            over["dice"] = worst - max_delta["dice"]
    for key in ("accuracy", "auc"):  # classification against labels
        if key in max_delta and f"{key}_drop" in fidelity and fidelity[f"{key}_drop"] > max_delta[key]:
            over[key] = fidelity[f"{key}_drop"] - max_delta[key]
    return over


def error_score(fidelity: Dict[str, object]) -> float:
    """One number to rank layer sensitivity: disagreement plus (normalised) logit error."""
    dice = fidelity.get("dice_vs_fp32")
    return (1 - fidelity["agreement"]) + (1 - min(dice.values()) if dice else 0.0) + 1e-3 * fidelity["max_abs_logit"]
