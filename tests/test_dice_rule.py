"""The one Dice (``monai_prune.fidelity.metrics.dice``) and its explicit empty-class rule, on small real arrays."""

import math

import numpy as np
import pytest
import torch

from monai_prune.errors import InputError
from monai_prune.fidelity import PerClassMetrics, dice, dice_from_counts, pooled_dice
from monai_prune.fidelity.metrics import dice as metrics_dice


def test_one_dice_in_the_fidelity_package():
    assert dice is metrics_dice


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_both_empty_scores_the_rule(kind):
    empty = np.zeros((4, 4), dtype=bool) if kind == "numpy" else torch.zeros(4, 4, dtype=torch.bool)
    assert dice(empty, empty, empty=1.0) == 1.0  # agree the class is absent
    assert math.isnan(dice(empty, empty, empty=math.nan))  # not counted
    assert dice(empty, empty, empty=0.0) == 0.0


@pytest.mark.parametrize("rule", [1.0, math.nan])
def test_one_empty_scores_zero_whatever_the_rule(rule):
    full = np.zeros((3, 3), dtype=bool)
    full[1, 1] = True
    empty = np.zeros((3, 3), dtype=bool)
    assert dice(full, empty, empty=rule) == 0.0
    assert dice(empty, full, empty=rule) == 0.0


def test_partial_overlap_numpy_torch_and_mixed():
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 0, 0], dtype=bool)
    assert dice(a, b, empty=1.0) == pytest.approx(2 / 3)
    assert dice(torch.from_numpy(a), torch.from_numpy(b), empty=math.nan) == pytest.approx(2 / 3)
    assert dice(a, torch.from_numpy(b), empty=1.0) == pytest.approx(2 / 3)
    assert dice([0.0, 0.7, 0.0], [0, 2, 3], empty=1.0) == pytest.approx(2 / 3)  # nonzero is in the mask
    assert dice(a, a, empty=math.nan) == 1.0


def test_multi_class_label_maps_with_the_label_argument():
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    ref = np.array([[0, 1, 0], [2, 0, 0]])
    got = {c: dice(pred, ref, label=c, empty=math.nan) for c in range(4)}
    assert got[0] == pytest.approx(2 * 2 / (2 + 4))
    assert got[1] == pytest.approx(2 * 1 / (2 + 1))
    assert got[2] == pytest.approx(2 * 1 / (2 + 1))
    assert math.isnan(got[3])  # class 3 absent from both: not counted
    assert dice(pred, ref, label=3, empty=1.0) == 1.0


def test_a_batch_is_pooled_and_per_sample_is_a_call_per_sample():
    pred = torch.zeros(2, 1, 4, dtype=torch.bool)
    ref = torch.zeros(2, 1, 4, dtype=torch.bool)
    pred[0, 0, :2] = True
    ref[0, 0, :1] = True  # sample 0: Dice 2/3; sample 1: both empty
    assert dice(pred, ref, empty=math.nan) == pytest.approx(2 / 3)  # pooled over the batch
    per_sample = [dice(p, r, empty=math.nan) for p, r in zip(pred, ref)]
    assert per_sample[0] == pytest.approx(2 / 3) and math.isnan(per_sample[1])
    assert [dice(p, r, empty=1.0) for p, r in zip(pred, ref)] == [pytest.approx(2 / 3), 1.0]


def test_counts_follow_the_same_rule_as_pooled_agreement():
    assert dice_from_counts(1, 3, empty=1.0) == pytest.approx(2 / 3)
    assert dice_from_counts(0, 0, empty=1.0) == 1.0 and math.isnan(dice_from_counts(0, 0, empty=math.nan))
    inter, sums = {0: 3.0, 1: 1.0, 2: 0.0}, {0: 8.0, 1: 3.0, 2: 0.0}
    assert pooled_dice(inter, sums) == {str(c): dice_from_counts(inter[c], sums[c], empty=1.0) for c in sums}


def test_the_rule_must_be_given_and_be_a_number():
    a = np.ones(2, dtype=bool)
    with pytest.raises(TypeError):
        dice(a, a)  # no default: every caller states its rule
    with pytest.raises(InputError, match="empty"):
        dice(a, a, empty=None)
    with pytest.raises(InputError, match="one shape"):
        dice(np.ones(2, dtype=bool), np.ones(3, dtype=bool), empty=1.0)


def test_per_class_metrics_leave_a_class_absent_from_both_out():
    label = torch.zeros(1, 4, 4)
    label[0, :2, :2] = 1  # class 1 present, class 2 absent from both
    pred = torch.zeros(1, 4, 4)
    pred[0, :2, :1] = 1
    metrics = PerClassMetrics(names=["background", "organ", "tumour"])
    metrics.update(pred, label)  # a one-channel label map of a 2D image
    result = metrics.compute()
    assert result["per_class"]["organ"]["dice"] == pytest.approx(2 * 2 / (2 + 4))
    assert math.isnan(result["per_class"]["tumour"]["dice"])
    assert result["per_case_dice"] == [[pytest.approx(2 / 3), None]]
