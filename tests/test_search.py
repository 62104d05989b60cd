"""monai_prune.search on the 3-class task of ``multiclass.py`` (a large organ and a small lesion): real pruning, real
distillation fine-tunes, per-class Dice measured on held-out images; the choice, the refusals, resuming, bisection,
sensitivity-guided per-layer ratios, int8 and the report."""

import json
import math
import os

import pytest
import torch

from monai_prune.errors import ConfigError, InputError
from monai_prune.report import write_search_report
from monai_prune.search import SearchConfig, SearchError, search
from monai_prune.fidelity import PerClassMetrics
from helpers.multiclass import NAMES, X, dense_model, finetune_kd, train
from helpers.networks import small_unet


@pytest.fixture(scope="module")
def task():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers on any machine, and no oversubscription stalls on a busy one
    try:
        dense, (x, y, vx, vy) = dense_model(0)  # seeded, shared with test_guardrails_multiclass (not modified)
        yield dense, x, y, vx, vy
    finally:
        torch.set_num_threads(threads)


class Counter:
    """evaluate(model_or_predictor): per-class metrics on the validation images, counting its calls."""

    def __init__(self, vx, vy):
        self.vx, self.vy, self.calls = vx, vy, 0

    def __call__(self, model):
        self.calls += 1
        metrics = PerClassMetrics(NAMES)
        for image, label in zip(self.vx, self.vy):
            metrics.update(model(image[None])[0], label)
        result = metrics.compute()
        z = self.vx[0, 0]
        result["example"] = {"image": z.numpy(), "label": self.vy[0, 0].numpy(),
                             "pred": model(self.vx[:1])[0].argmax(0).numpy()}
        return result


def _latency(model) -> float:
    import time

    start = time.perf_counter()
    for _ in range(3):
        model(X.repeat(8, 1, 1, 1))
    return (time.perf_counter() - start) / 3


def _finetune(x, y, calls=None, fail_at=None):
    def finetune(student, teacher):
        if calls is not None:
            calls.append(1)
            if fail_at is not None and len(calls) == fail_at:
                raise KeyboardInterrupt("simulated interruption")
        finetune_kd(student, teacher, x, y, iterations=30)

    return finetune


def _run(task, out, guardrails, config, calls=None, fail_at=None, **kwargs):
    dense, x, y, vx, vy = task
    evaluate = Counter(vx, vy)
    result = search(dense, X, evaluate=evaluate, latency=_latency, guardrails=guardrails, out_dir=str(out),
                    finetune=_finetune(x, y, calls, fail_at), config=config, setup_id="multiclass-test", **kwargs)
    return result, evaluate


def _dice(row, name):
    return row["measured"]["per_class"][name]["dice"]


def test_grid_search_keeps_every_class_and_picks_the_most_compressed(task, tmp_path):
    config = SearchConfig(ratios=(0.125, 0.5, 0.75), backends=["torch"], objective="macs")
    result, _ = _run(task, tmp_path, {"max_delta_dice": 0.02}, config)
    rows, dense = result.rows, result.dense
    assert sorted(r["ratio"] for r in rows) == [0.125, 0.5, 0.75]
    for row in rows:  # the decision is the per-class one, recomputed here from the measured Dice
        per_class_ok = all(_dice(dense, n) - _dice(row, n) <= 0.02 for n in row["measured"]["per_class"])
        assert row["passes"] == per_class_ok, row["key"]
    chosen = result.chosen
    assert chosen["passes"]
    assert chosen["macs_ratio"] == min(r["macs_ratio"] for r in rows if r["passes"])
    assert all(not r["passes"] for r in rows if r["macs_ratio"] < chosen["macs_ratio"])
    # the chosen model is on disk, replays from its plan, and is the model that was measured
    assert os.path.isfile(os.path.join(result.paths["chosen"], "model.onnx"))
    again = Counter(task[3], task[4])(result.model)
    assert again["per_class"]["lesion"]["dice"] == pytest.approx(_dice(chosen, "lesion"), abs=1e-6)
    card = json.loads(open(os.path.join(result.paths["chosen"], "fidelity_card.json")).read())
    assert card["per_class"]["lesion"]["dice"]["after"] == pytest.approx(_dice(chosen, "lesion"), abs=1e-9)
    vs_dense = json.loads(open(tmp_path / "search.json").read())["agreement_vs_dense"]
    with torch.no_grad():  # voxel-wise agreement with the dense model's own predictions, recomputed here
        expected = float((result.model(X).argmax(1) == task[0](X).argmax(1)).float().mean())
    assert vs_dense["argmax_agreement"] == pytest.approx(expected, abs=1e-9) and vs_dense["elements"] == X[0, 0].numel()
    assert "voxel-wise argmax agreement" in " ".join(card["notes"])
    summary = json.loads(open(tmp_path / "search.json").read())
    assert summary["status"] == "ok" and summary["chosen"]["key"] == chosen["key"]
    assert len(summary["candidates"]) == 3 and os.path.getsize(tmp_path / "pareto.png") > 10_000
    assert "(chosen)" in open(tmp_path / "candidates.md").read()


def test_a_search_where_every_candidate_loses_the_lesion_is_refused_naming_it(task, tmp_path):
    """75% of the channels pruned without fine-tuning: the small low-contrast lesion loses its Dice, the search refuses
    and says which class (test_guardrails_multiclass.py shows the case where the mean holds meanwhile)."""
    dense, x, y, vx, vy = task
    config = SearchConfig(ratios=(0.75,), backends=["torch"])
    with pytest.raises(SearchError, match="lesion") as err:
        search(dense, X, evaluate=Counter(vx, vy), latency=_latency, guardrails={"max_delta_dice": 0.02},
               out_dir=str(tmp_path), config=config, setup_id="no-finetune")
    assert "class 'lesion'" in str(err.value)
    summary = json.loads(open(tmp_path / "search.json").read())
    assert summary["status"] == "refused" and summary["chosen"] is None
    row = summary["candidates"][0]
    drops = {n: _dice(summary["dense"], n) - _dice(row, n) for n in ("organ", "lesion")}
    assert drops["lesion"] > 0.02
    assert not os.path.exists(tmp_path / "chosen")


def test_an_impossible_floor_is_refused_before_any_candidate_is_built(task, tmp_path):
    calls = []
    config = SearchConfig(ratios=(0.5,), backends=["torch"])
    with pytest.raises(SearchError, match=r"dense model itself.*'lesion'.*below its floor 0.9990"):
        _run(task, tmp_path, {"min_dice": {"lesion": 0.999}}, config, calls=calls)
    assert calls == []
    assert json.loads(open(tmp_path / "search.json").read())["status"] == "refused"


def test_an_interrupted_search_resumes_from_its_log_and_new_guardrails_reuse_every_measurement(task, tmp_path):
    config = SearchConfig(ratios=(0.125, 0.5), backends=["torch"], objective="macs")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        _run(task, tmp_path, {"max_delta_dice": 0.02}, config, calls=calls, fail_at=2)
    log = [json.loads(line) for line in open(tmp_path / "candidates.jsonl")]
    assert [r["key"] for r in log[1:]] == ["dense", "r0.1250-uniform-fp32/model", "r0.1250-uniform-fp32-torch"]
    calls = []
    result, evaluate = _run(task, tmp_path, {"max_delta_dice": 0.02}, config, calls=calls)
    assert calls == [1] and evaluate.calls == 1  # only the interrupted candidate was built and measured
    assert sorted(r["ratio"] for r in result.rows) == [0.125, 0.5]
    # other guardrails: nothing re-measured, only re-decided
    result2, evaluate2 = _run(task, tmp_path, {"max_delta_dice": 1.0}, config, calls=(calls2 := []))
    assert evaluate2.calls == 0 and calls2 == []
    assert result2.chosen["ratio"] == 0.5


def test_a_log_from_another_setup_is_refused_and_left_alone(task, tmp_path):
    dense, x, y, vx, vy = task
    config = SearchConfig(ratios=(0.125,), backends=["torch"])
    _run(task, tmp_path, {"max_delta_dice": 1.0}, config)
    before = open(tmp_path / "candidates.jsonl").read()
    other = train(small_unet(2, len(NAMES), num_res_units=1), x[:8], y[:8], iterations=5, seed=3)
    with pytest.raises(ConfigError, match="different setup.*weights"):
        search(other, X, evaluate=Counter(vx, vy), latency=_latency, guardrails={"max_delta_dice": 1.0},
               out_dir=str(tmp_path), config=config, setup_id="multiclass-test")
    assert open(tmp_path / "candidates.jsonl").read() == before


def test_bisection_measures_few_candidates_and_keeps_the_largest_passing_ratio(task, tmp_path):
    config = SearchConfig(ratios=(0.75,), strategy="bisect", bisect_steps=3, backends=["torch"], objective="macs")
    result, _ = _run(task, tmp_path, {"max_delta_dice": 0.02}, config)
    ratios = sorted(r["ratio"] for r in result.rows)
    assert 1 <= len(ratios) <= 4 and max(ratios) == 0.75
    assert all(r in (0.75, 0.375, 0.1875, 0.5625, 0.0938, 0.2812, 0.4688, 0.6562, 0.7188) for r in ratios)
    passing = [r["ratio"] for r in result.rows if r["passes"]]
    assert result.chosen["ratio"] == max(passing)


def test_sensitivity_guided_layer_ratios_spare_sensitive_groups(task, tmp_path):
    config = SearchConfig(ratios=(0.5,), layer_modes=("uniform", "sensitivity"), sensitivity_ratios=(0.25, 0.5),
                          backends=["torch"], objective="macs")
    result, _ = _run(task, tmp_path, {"max_delta_dice": 0.05}, config)
    modes = {r["mode"]: r for r in result.rows}
    assert set(modes) == {"uniform", "sensitivity"}
    log = {r["key"]: r for r in map(json.loads, open(tmp_path / "candidates.jsonl")) if "key" in r}
    ratios = log["r0.5000-sensitivity-fp32/model"]["layer_ratios"]
    assert ratios and all(0 < v <= 0.5 for v in ratios.values())
    # fewer channels removed than uniform where groups were sensitive: never more MACs removed than uniform
    assert modes["sensitivity"]["macs_ratio"] >= modes["uniform"]["macs_ratio"] - 1e-9
    written = write_search_report(str(tmp_path))
    assert {"pareto", "per_class", "sensitivity", "overlay", "report"} <= set(written)
    report = open(written["report"]).read()
    assert "![sensitivity](sensitivity.png)" in report and result.chosen["key"] in report
    assert all(os.path.getsize(p) > 5_000 for k, p in written.items() if k != "report")


def test_int8_candidates_are_measured_on_the_int8_backend(task, tmp_path):
    from monai_prune.quantization import calibration_data

    dense, x, y, vx, vy = task
    calibration = calibration_data(list(x[:8]), 8)
    config = SearchConfig(ratios=(0.25,), precisions=("fp32", "int8"), backends=["torch", "onnxruntime"])
    result, _ = _run(task, tmp_path, {"max_delta_dice": 0.1}, config, calibration=calibration)
    rows = {(r["precision"], r["backend"]): r for r in result.rows}
    assert set(rows) == {("fp32", "torch"), ("fp32", "onnxruntime"), ("int8", "onnxruntime")}
    int8, fp32 = rows[("int8", "onnxruntime")], rows[("fp32", "torch")]
    assert int8["size_ratio"] < fp32["size_ratio"]  # int8 weights (+ the ONNX graph of this tiny net)
    assert int8["latency_s"] > 0 and int8["fp32_layers"] is not None
    assert all(math.isfinite(_dice(int8, n)) for n in ("organ", "lesion"))
    assert os.path.exists(int8["artifact"]) and int8["artifact"].endswith(".onnx")
    with pytest.raises(ConfigError, match="calibration"):
        search(dense, X, evaluate=Counter(vx, vy), latency=_latency, guardrails={"max_delta_dice": 0.1},
               out_dir=str(tmp_path / "x"), config=config)


def test_bad_search_arguments_are_clear_errors(task, tmp_path):
    dense, x, y, vx, vy = task
    ok = dict(evaluate=Counter(vx, vy), latency=_latency, out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="at least one guardrail"):
        search(dense, X, guardrails={}, **ok)
    with pytest.raises(ConfigError, match="unknown guardrails"):
        search(dense, X, guardrails={"max_delta_dicee": 0.02}, **ok)
    with pytest.raises(ConfigError, match="ratios"):
        search(dense, X, guardrails={"max_delta_dice": 0.02}, config=SearchConfig(ratios=(1.5,)), **ok)
    with pytest.raises(ConfigError, match="strategy"):
        search(dense, X, guardrails={"max_delta_dice": 0.02}, config=SearchConfig(strategy="random"), **ok)
    with pytest.raises(InputError, match="per_class"):
        search(dense, X, evaluate=lambda m: {"dice": 1.0}, latency=_latency, guardrails={"max_delta_dice": 0.02},
               out_dir=str(tmp_path / "y"), config=SearchConfig(backends=["torch"]))
    with pytest.raises(InputError, match="no search.json"):
        write_search_report(str(tmp_path / "nothing"))


def test_int8_with_sensitivity_keeps_the_layers_whose_int8_costs_most(task, tmp_path):
    from monai_prune.quantization import QuantSensitivityResult, calibration_data

    dense, x, y, vx, vy = task
    config = SearchConfig(ratios=(0.25,), precisions=("fp32", "int8"), backends=["torch", "onnxruntime"],
                          int8_keep_fp32="sensitivity", sensitivity_max_delta=0.005)
    result, _ = _run(task, tmp_path, {"max_delta_dice": 0.2}, config, calibration=calibration_data(list(x[:8]), 8))
    row = next(r for r in result.rows if r["precision"] == "int8")
    assert row["key"] == "r0.2500-uniform-int8-sens-onnxruntime"
    table = QuantSensitivityResult.load(tmp_path / "quant_sensitivity_r0.2500-uniform-fp32_onnxruntime.json")
    expected = table.suggest_keep_fp32(0.005, metric="worst_class")  # the layers whose solo int8 costs > 0.005
    assert row["kept_fp32_by_sensitivity"] == expected
    assert len(table.layers) >= 8 and all(r["delta"] for r in table.table)  # every layer measured alone
    if expected:  # what was kept is what quantize reports as fp32
        assert all(any(name == e or name.startswith(e + ".") for name in row["fp32_layers"]) for e in expected)
    assert os.path.getsize(tmp_path / "quant_sensitivity_r0.2500-uniform-fp32_onnxruntime.png") > 5_000
    with pytest.raises(ConfigError, match="int8_keep_fp32"):
        SearchConfig(int8_keep_fp32="always").validate()
