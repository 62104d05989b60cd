"""Per-class guardrails on a real case where one class degrades while the mean holds (issue 8).

A small 2D UNet is trained on three classes (``multiclass.py``): background, a large bright organ and small
low-contrast lesions inside it. Structured channel pruning (``prune_channels``, L1) followed by a distillation
fine-tune costs the lesion far more Dice than the organ: the organ is large and high-contrast, so its pixels sit far
from the decision boundary and it recovers within a few fine-tune iterations, while a lesion is a few dozen pixels
at a contrast-to-noise ratio of 1.6 and loses a large fraction of itself to a boundary that moves by one pixel.

* aggressive: 50% of the channels of every group pruned, then fine-tuned until the mean-only view accepts it (the
  mean foreground Dice within ``MEAN_TOLERANCE`` of dense at a validation every ``EVERY`` iterations, where a
  pipeline that watches the mean would stop). The organ is back within the per-class budget by then, the lesion is
  not: the mean hides it, and ``max_delta_dice`` and a ``min_dice`` floor on the lesion refuse it.
* mild: 20% pruned, the same fine-tune, stopped when the per-class guardrail holds: it is met, so the guardrail
  tells the two apart rather than refusing everything.

Nothing is hard-coded: every Dice is measured here. The margins were checked on eight training seeds (0-7): at the
mean-only stop the lesion had lost 0.031-0.068 Dice and the organ 0.005-0.016 (seed 0: 0.058 and 0.012); the mild
model lost at most 0.015 on either class.
"""

import pytest
import torch

from monai_prune import prune_channels
from monai_prune.fidelity import check_guardrails, compare_per_class

from helpers import multiclass as M

pytestmark = pytest.mark.slow  # trains a model: about 20 s on 2 idle cores, 30-40 s on a busy machine

SEED = 0
MAX_DELTA_DICE = 0.02  # the per-class guardrail under test
# The mean-only gate we compare against: the mean foreground Dice (unweighted over organ and lesion) may fall by at
# most this much. 0.04, mid-range of the 0.03-0.05 considered for a mean-only tolerance: lenient enough to be
# plausible, strict enough that the organ has recovered when it is met. Averaged over two classes it admits a lesion
# drop of up to 0.08 - organ drop, four times the per-class budget.
MEAN_TOLERANCE = 0.04
AGGRESSIVE, MILD = 0.5, 0.2  # fraction of channels pruned per group
EVERY, BUDGET = 10, 100  # validate the fine-tune every EVERY iterations, for BUDGET iterations at most


def build(seed: int = SEED):
    """Train the dense model, prune it twice and fine-tune each copy under its gate; returns the measurements."""
    dense, data = M.dense_model(seed)
    x, y, vx, vy = data
    before = M.per_class(dense, vx, vy)
    fast_before = M.dice_only(dense, vx, vy)

    def mean_only(result):
        return M.mean_drop(fast_before, result) <= MEAN_TOLERANCE

    def per_class_guardrail(result):
        table = compare_per_class(fast_before, result)
        return not check_guardrails({"max_delta_dice": MAX_DELTA_DICE}, {"per_class": table})

    out = {"dense": dense, "before": before, "data": data}
    for name, ratio, gate in (("aggressive", AGGRESSIVE, mean_only), ("mild", MILD, per_class_guardrail)):
        pruned, plan = prune_channels(dense, M.X, ratio)
        iterations, student = M.finetune_until(pruned, dense, data, gate, every=EVERY, budget=BUDGET, seed=seed)
        out[name] = {"model": student, "iterations": iterations, "plan": plan, "after": M.per_class(student, vx, vy),
                     "fast": M.dice_only(student, vx, vy)}
    return out


@pytest.fixture(scope="module")
def case():
    # one thread, restored after: the numbers do not depend on the core count, and a busy 2-core machine does not
    # stall (two threads next to another job trained 70x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build(SEED)
    finally:
        torch.set_num_threads(threads)


def table(case, name):
    return {"per_class": compare_per_class(case["before"], case[name]["after"])}


def test_the_measured_dice_is_per_class_metrics(case):
    # the gates watched dice_only; the verdicts below use PerClassMetrics: the two must agree
    for name in ("aggressive", "mild"):
        for cls, value in M.dice(case[name]["fast"]).items():
            assert M.dice(case[name]["after"])[cls] == pytest.approx(value, abs=1e-9)
    assert M.dice(case["before"])["lesion"] > 0.75 and M.dice(case["before"])["organ"] > 0.95  # a trained model


def test_the_mean_holds_while_the_small_class_breaks_its_guardrail(case):
    aggressive = case["aggressive"]
    assert aggressive["iterations"] is not None, "the mean-only gate never accepted the pruned model"
    drop = M.drops(case["before"], aggressive["after"])
    mean = M.mean_drop(case["before"], aggressive["after"])
    assert mean <= MEAN_TOLERANCE  # the mean-only view ships it
    assert drop["organ"] < MAX_DELTA_DICE  # the large class holds
    assert drop["lesion"] > MAX_DELTA_DICE + 0.01  # the small class does not, clearly
    assert drop["lesion"] > 2 * drop["organ"]  # the smallest class degrades most
    broken = check_guardrails({"max_delta_dice": MAX_DELTA_DICE}, table(case, "aggressive"))
    assert len(broken) == 1, broken
    assert "'lesion'" in broken[0] and "dice fell" in broken[0] and "'organ'" not in broken[0]
    assert f"drop {drop['lesion']:.4f} > max_delta_dice {MAX_DELTA_DICE}" in broken[0]
    # 50% of the channels pruned: a real compression, not a no-op
    stats = aggressive["plan"].stats
    assert stats["params_after"] < 0.4 * stats["params_before"]


def test_a_dice_floor_on_the_small_class_says_by_how_much(case):
    dense = M.dice(case["before"])
    after = M.dice(case["aggressive"]["after"])
    floor = round(dense["lesion"] - MAX_DELTA_DICE, 4)
    broken = check_guardrails({"min_dice": {"lesion": floor}}, table(case, "aggressive"))
    assert len(broken) == 1 and "'lesion'" in broken[0]
    assert f"Dice {after['lesion']:.4f} is below its floor {floor:.4f} by {floor - after['lesion']:.4f}" in broken[0]
    assert floor - after["lesion"] > 0.005
    # the same floor below the organ's dense Dice holds
    organ_floor = round(dense["organ"] - MAX_DELTA_DICE, 4)
    assert check_guardrails({"min_dice": {"organ": organ_floor}}, table(case, "aggressive")) == []


def test_a_milder_compression_passes_the_guardrail(case):
    mild = case["mild"]
    assert mild["iterations"] is not None, "the per-class guardrail was never met at the mild ratio"
    assert check_guardrails({"max_delta_dice": MAX_DELTA_DICE}, table(case, "mild")) == []
    drop = M.drops(case["before"], mild["after"])
    assert max(drop.values()) <= MAX_DELTA_DICE
    stats = mild["plan"].stats
    assert stats["params_after"] < 0.8 * stats["params_before"]  # still compressed
    assert stats["params_after"] > case["aggressive"]["plan"].stats["params_after"]  # less than the refused one


def test_the_mean_only_view_cannot_tell_them_apart(case):
    # both pass the mean-only gate; only the per-class guardrail separates them
    for name in ("aggressive", "mild"):
        assert M.mean_drop(case["before"], case[name]["after"]) <= MEAN_TOLERANCE
    verdicts = [bool(check_guardrails({"max_delta_dice": MAX_DELTA_DICE}, table(case, name)))
                for name in ("aggressive", "mild")]
    assert verdicts == [True, False]
