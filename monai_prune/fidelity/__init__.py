"""Per-class fidelity: what a compressed model lost, class by class.

A mean Dice that holds while one small organ collapses is a patient-safety failure, so every comparison here is
per class. :class:`PerClassMetrics` accumulates one model's postprocessed predictions against labels, sample by
sample (it attaches to a MONAI evaluator like a metric handler), and :func:`compare_per_class` puts two of them
(dense = before, compressed = after) side by side.

* segmentation (prediction ``(C, *spatial)``): per-class Dice per case (cases where the class is absent in both
  prediction and label are skipped), averaged over cases, and the per-case values (to find the worst cases).
  Exclusive classes (a label map, one-hot, softmax: ``label_mode="multi_class"``) and multi-label outputs (every
  channel its own binary mask, channels may overlap, e.g. BraTS TC/WT/ET sigmoid outputs: ``"multi_label"``) are
  both measured; the mode is given or decided from the data (:mod:`.metrics`);
* classification (prediction ``(C,)`` probabilities/logits/one-hot): accuracy, per-class sensitivity (recall) and
  per-class one-vs-rest AUC (MONAI's ``compute_roc_auc``), and the expected calibration error.

Segmentation also gets per-class HD95 (mm, from the MetaTensor affine) and volume error (ml, %), and
:func:`worst_cases` names the validation cases that lost most. :func:`check_guardrails` turns a recipe's floors and
budgets into refusals, and :func:`backend_agreement` compares the same model across torch, ONNX Runtime and OpenVINO.
:class:`FidelityCard` puts all of it in one object (JSON + Markdown) whose first line says PASS, DEGRADED or
UNGUARDED and names the class that lost most.

The package: :mod:`.metrics` (measuring: :class:`PerClassMetrics`, the one :func:`dice` with its explicit
empty-class rule, calibration, worst cases), :mod:`.label_modes` (multi-class or multi-label, and their masks),
:mod:`.compare` (before/after per class), :mod:`.guardrails`, :mod:`.agreement` (across runtimes and models) and
:mod:`.card` (:class:`FidelityCard`; its Markdown in :mod:`.card_markdown`, built from a compression section by
:mod:`.card_compression`). Every public name is importable from ``monai_prune.fidelity``.
"""

from .._io import json_safe
from .agreement import (agreement_note, agreement_value, backend_agreement, dice_counts, mask_dice_counts,
                        pooled_dice, prediction_agreement)
from .card import CARD_FORMAT, CARD_VERSION, FidelityCard
from .compare import compare_per_class
from .guardrails import GUARDRAIL_KEYS, check_guardrails, validate_guardrails
from .metrics import (BACKGROUND_NAMES, LABEL_MODES, PerClassMetrics, class_names, detect_label_mode, dice,
                      dice_from_counts, expected_calibration_error, label_mode_from_bundle, worst_cases)

__all__ = ["json_safe", "agreement_note", "agreement_value", "backend_agreement", "dice_counts", "mask_dice_counts",
           "pooled_dice", "prediction_agreement", "CARD_FORMAT", "CARD_VERSION", "FidelityCard", "compare_per_class",
           "GUARDRAIL_KEYS", "check_guardrails", "validate_guardrails", "BACKGROUND_NAMES", "LABEL_MODES",
           "PerClassMetrics", "class_names", "detect_label_mode", "dice", "dice_from_counts",
           "expected_calibration_error", "label_mode_from_bundle", "worst_cases"]
