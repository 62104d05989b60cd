"""monai_prune.search.decide on made-up measurements: no model, no file. The per-class guardrails refuse a candidate
that loses one class (whatever the mean), the dense model breaking a floor refuses everything, the objective orders
the choice, the worst class's Δ breaks ties (then the order measured), paired timings decide speed, and a row keeps
the shape of ``search.json``."""

import pytest

from monai_prune.errors import ConfigError
from monai_prune.search import Candidate, Decision, DenseReference, PairedTiming, assess, decide
from monai_prune.search.candidates import FP32_FIELDS, INT8_FIELDS
from monai_prune.search.decide import VERDICT_FIELDS

DENSE = DenseReference(measured={"per_class": {"organ": {"dice": 0.90}, "lesion": {"dice": 0.60}}},
                       latency_s={"torch": 1.0, "onnxruntime": 0.5}, macs=1000, params=100, size_bytes=4000)


def candidate(ratio, organ, lesion, latency, macs, size, backend="torch", precision="fp32", mode="uniform"):
    key = f"r{ratio:.4f}-{mode}-{precision}-{backend}"
    extra = {"fp32_layers": ["head"], "kept_fp32_by_sensitivity": []} if precision == "int8" else {}
    return Candidate(key=key, ratio=ratio, mode=mode, precision=precision, backend=backend,
                     measured={"per_class": {"organ": {"dice": organ}, "lesion": {"dice": lesion}}},
                     latency_s=latency, macs=macs, params=50, size_bytes=size, artifact=f"/x/{key}", **extra)


GUARD = {"max_delta_dice": 0.02}


def test_a_candidate_that_loses_one_class_is_refused_even_when_the_mean_holds():
    # organ +0.03, lesion -0.03: the mean Dice is unchanged, the lesion breaks max_delta_dice
    lossy = candidate(0.5, 0.93, 0.57, latency=0.5, macs=400, size=1500)
    decision = decide([lossy], DENSE, GUARD)
    verdict = decision.verdicts[0]
    assert not verdict.passes and not verdict.accuracy_ok
    assert len(verdict.broken) == 1 and "class 'lesion'" in verdict.broken[0]
    assert verdict.worst_class == "lesion" and verdict.worst_delta == pytest.approx(-0.03)
    assert decision.chosen is None and decision.status == "refused"
    assert decision.reason.startswith("none of the 1 candidates holds every guardrail; the closest "
                                      "(r0.5000-uniform-fp32-torch) broke: class 'lesion'")


def test_a_latency_guardrail_breaks_only_the_slow_candidate_and_accuracy_still_holds():
    slow = candidate(0.25, 0.90, 0.60, latency=2.0, macs=800, size=3000)
    fast = candidate(0.5, 0.90, 0.60, latency=0.5, macs=400, size=1500)
    decision = decide([slow, fast], DENSE, {**GUARD, "max_latency_ratio": 1.0})
    slow_v, fast_v = decision.verdicts
    assert slow_v.accuracy_ok and not slow_v.passes and "latency" in slow_v.broken[0]
    assert fast_v.passes and decision.chosen is fast_v


def test_a_dense_model_below_a_floor_refuses_everything_even_passing_candidates():
    good = candidate(0.25, 0.90, 0.60, latency=0.5, macs=800, size=3000)
    decision = decide([good], DENSE, {"min_dice": {"lesion": 0.7}})
    assert decision.chosen is None
    assert decision.reason.startswith("the dense model itself breaks the guardrails, so no compressed model can meet "
                                      "them: class 'lesion': Dice 0.6000 is below its floor 0.7000")
    assert decide([], DENSE, {"min_dice": {"lesion": 0.7}}).reason.startswith("the dense model itself")


def test_nothing_measured_or_nothing_passing_is_a_refusal_that_names_the_closest():
    assert decide([], DENSE, GUARD).reason == "no candidate was measured"
    near = candidate(0.25, 0.90, 0.57, latency=0.5, macs=800, size=3000)  # breaks one guardrail (lesion)
    far = candidate(0.75, 0.80, 0.50, latency=0.3, macs=200, size=1000)  # breaks two (organ and lesion)
    also_one = candidate(0.5, 0.90, 0.55, latency=0.4, macs=400, size=1500)  # one, at a larger ratio than near
    decision = decide([near, far, also_one], DENSE, GUARD)
    assert decision.chosen is None and [len(v.broken) for v in decision.verdicts] == [1, 2, 1]
    assert "the closest (r0.5000-uniform-fp32-torch)" in decision.reason  # fewest broken, then the largest ratio


def test_the_objective_orders_the_choice():
    fastest = candidate(0.25, 0.90, 0.60, latency=0.25, macs=700, size=2000, backend="onnxruntime")
    fewest_macs = candidate(0.75, 0.90, 0.59, latency=0.8, macs=200, size=1800)
    smallest = candidate(0.5, 0.90, 0.59, latency=0.6, macs=400, size=900)
    everything = [fastest, fewest_macs, smallest]
    assert decide(everything, DENSE, GUARD, "latency").chosen.candidate is fastest
    assert decide(everything, DENSE, GUARD, "macs").chosen.candidate is fewest_macs
    assert decide(everything, DENSE, GUARD, "size").chosen.candidate is smallest
    verdict = decide(everything, DENSE, GUARD).verdicts[0]
    assert verdict.speedup == pytest.approx(4.0)  # against dense torch
    assert verdict.speedup_same_backend == pytest.approx(2.0)  # against dense on onnxruntime
    assert verdict.macs_ratio == pytest.approx(0.7) and verdict.size_ratio == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="objective"):
        decide(everything, DENSE, GUARD, "accuracy")


def test_ties_go_to_the_smaller_worst_class_loss_then_to_the_first_measured():
    loses_more = candidate(0.5, 0.90, 0.585, latency=0.5, macs=400, size=1500, mode="uniform")
    loses_less = candidate(0.5, 0.90, 0.595, latency=0.5, macs=400, size=1500, mode="sensitivity")
    assert decide([loses_more, loses_less], DENSE, GUARD).chosen.candidate is loses_less
    assert decide([loses_less, loses_more], DENSE, GUARD).chosen.candidate is loses_less
    twin_a = candidate(0.5, 0.90, 0.59, latency=0.5, macs=400, size=1500, mode="uniform")
    twin_b = candidate(0.5, 0.90, 0.59, latency=0.5, macs=400, size=1500, mode="sensitivity")
    assert decide([twin_a, twin_b], DENSE, GUARD).chosen.candidate is twin_a
    assert decide([twin_b, twin_a], DENSE, GUARD).chosen.candidate is twin_b


def test_paired_timings_decide_speed_among_the_finalists():
    screened_fast = candidate(0.75, 0.90, 0.59, latency=0.2, macs=200, size=800)  # 5x at screening, not a finalist
    finalist = candidate(0.5, 0.90, 0.59, latency=0.5, macs=400, size=1500)
    paired = {finalist.key: PairedTiming(before=0.9, after=0.3, speedup=3.1)}
    decision = decide([screened_fast, finalist], DENSE, GUARD, "latency", paired)
    assert decision.chosen.candidate is finalist
    chosen = decision.chosen
    assert chosen.latency_confirmed and chosen.speedup == pytest.approx(3.1)  # the median of ratios, not 0.9 / 0.3
    assert chosen.comparison["latency_s"] == {"before": 0.9, "after": 0.3, "speedup": 3.1, "confirmed": True}
    assert decision.verdicts[0].speedup == pytest.approx(5.0) and not decision.verdicts[0].latency_confirmed
    # other objectives choose among every passing candidate
    assert decide([screened_fast, finalist], DENSE, GUARD, "macs", paired).chosen.candidate is screened_fast
    # a failing finalist leaves the choice to the screening timings of the passing ones
    lossy = candidate(0.5, 0.90, 0.50, latency=0.5, macs=400, size=1500)
    decision = decide([screened_fast, lossy], DENSE, GUARD, "latency", {lossy.key: paired[finalist.key]})
    assert decision.chosen.candidate is screened_fast


def test_rows_keep_the_shape_of_search_json():
    fp32 = candidate(0.5, 0.90, 0.59, latency=0.5, macs=400, size=1500)
    int8 = candidate(0.5, 0.90, 0.59, latency=0.4, macs=400, size=600, backend="onnxruntime", precision="int8")
    decision = decide([fp32, int8], DENSE, GUARD)
    assert isinstance(decision, Decision) and decision.status == "ok"
    rows, chosen = decision.rows()
    assert list(rows[0]) == list(FP32_FIELDS) + list(VERDICT_FIELDS)
    assert list(rows[1]) == list(INT8_FIELDS) + list(VERDICT_FIELDS)
    assert chosen is rows[1] and chosen["key"] == "r0.5000-uniform-int8-onnxruntime"
    assert rows[0]["kind"] == "candidate" and rows[0]["delta"] == {"organ": 0.0, "lesion": pytest.approx(-0.01)}
    for c in (fp32, int8):  # a candidate and its log line convert both ways, field for field
        assert Candidate.from_record(c.to_record()) == c
    assert DenseReference.from_record(DENSE.to_record()) == DENSE
    assert list(DENSE.to_record()) == ["kind", "key", "measured", "latency_s", "macs", "params", "size_bytes",
                                       "example"]


def test_assess_is_what_decide_uses_for_each_candidate():
    c = candidate(0.5, 0.90, 0.59, latency=0.5, macs=400, size=1500)
    assert assess(c, DENSE, GUARD) == decide([c], DENSE, GUARD).verdicts[0]
