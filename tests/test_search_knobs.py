"""The search's pipeline-knob stage (issue 18: "pipeline knobs as part of the search, under the same per-class
guardrails"): after the model is chosen, the sliding-window ``overlap``, window size and ``sw_batch_size`` of the
workload are measured on the chosen model, each judged against the dense model per class, timed back to back, and the
fastest passing setting ships in ``chosen/pipeline.json`` and the fidelity card. Real pruning, real fine-tuning, real
sliding-window inference on the 3-class task of ``helpers/multiclass.py``."""

import json
import os
import time

import pytest
import torch
from monai.inferers import sliding_window_inference

from monai_prune.errors import ConfigError
from monai_prune.fidelity import PerClassMetrics
from monai_prune.report import write_search_report
from monai_prune.search import SearchConfig, search
from helpers.multiclass import NAMES, X, dense_model, finetune_kd

BASELINE = {"roi_size": 32, "overlap": 0.5, "sw_batch_size": 1}
GUARDRAILS = {"max_delta_dice": 0.05}


@pytest.fixture(scope="module")
def task():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dense, (x, y, vx, vy) = dense_model(0)  # shared, never modified
        yield dense, x, y, vx, vy
    finally:
        torch.set_num_threads(threads)


class Evaluate:
    """Per-class metrics of the validation images through MONAI's sliding-window inferer at the given knobs."""

    def __init__(self, vx, vy):
        self.vx, self.vy, self.calls = vx, vy, []

    def __call__(self, model, roi_size=32, overlap=0.5, sw_batch_size=1):
        self.calls.append((roi_size, overlap, sw_batch_size))
        metrics = PerClassMetrics(NAMES)
        with torch.no_grad():
            logits = sliding_window_inference(self.vx[:16], (roi_size, roi_size), sw_batch_size, model, overlap=overlap,
                                              mode="gaussian")
        for pred, label in zip(logits, self.vy[:16]):
            metrics.update(pred, label)
        return metrics.compute()


VOLUME = torch.rand(1, 1, 192, 192, generator=torch.Generator().manual_seed(0))


def latency(model, roi_size=32, overlap=0.5, sw_batch_size=1):
    """Seconds of the sliding-window inferer over one larger image (best of 3: the least noisy on a shared CPU)."""
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            sliding_window_inference(VOLUME, (roi_size, roi_size), sw_batch_size, model, overlap=overlap)
            times.append(time.perf_counter() - start)
    return min(times)


def _config(**knobs):
    return SearchConfig(ratios=(0.25,), backends=["torch"], confirm_rounds=2, pipeline_knobs=knobs,
                        pipeline_baseline=dict(BASELINE))


def _search(task, out, config, evaluate=None, lat=latency):
    dense, x, y, vx, vy = task
    evaluate = evaluate or Evaluate(vx, vy)
    result = search(dense, X, evaluate=evaluate, latency=lat, guardrails=GUARDRAILS, out_dir=str(out),
                    finetune=lambda s, t: finetune_kd(s, t, x, y, iterations=30), config=config,
                    setup_id="knobs-test")
    return result, evaluate


def test_knobs_are_measured_on_the_chosen_model_judged_per_class_and_the_fastest_passing_setting_ships(task, tmp_path):
    knobs = {"overlap": [0.0], "roi_size": [64, 8], "sw_batch_size": [4]}
    result, evaluate = _search(task, tmp_path, _config(**knobs))
    pipeline = result.pipeline
    rows = {r["label"]: r for r in pipeline["rows"]}
    assert pipeline["candidate"] == result.chosen["key"] and pipeline["baseline"] == BASELINE
    assert {"baseline", "overlap=0.0", "roi_size=64", "roi_size=8", "sw_batch_size=4"} <= set(rows)
    dense_dice = {n: m["dice"] for n, m in result.dense["measured"]["per_class"].items()}
    assert set(dense_dice) == {"organ", "lesion"}
    for label, row in rows.items():
        # the row's Dice is what evaluate gives the chosen model at that setting, recomputed here
        again = Evaluate(task[3], task[4])(result.model, **row["setting"])
        for name in dense_dice:
            assert row["per_class"][name]["dice"]["after"] == pytest.approx(again["per_class"][name]["dice"], abs=1e-6)
        # judged per class against the dense model at the baseline, as the candidates are
        keeps = all(dense_dice[n] - again["per_class"][n]["dice"] <= GUARDRAILS["max_delta_dice"] for n in dense_dice)
        assert row["passes"] == keeps, label
    assert rows["baseline"]["per_class"] == result.card.per_class  # the chosen model's own numbers at the baseline
    # 8x8 windows lose the context the organ and the lesion need: that setting must break the guardrail
    assert not rows["roi_size=8"]["passes"] and "BROKE" in next(l for l in pipeline["lines"] if "-> 8 " in l)
    assert not rows["overlap=0.0"]["passes"]  # seams without overlap cost the small lesion most of its Dice
    # one window per image instead of 25 overlapping ones is faster (a 3x+ difference, far above machine noise)
    assert rows["roi_size=64"]["saving_pct"] > 30 and rows["roi_size=64"]["speedup"] > rows["baseline"]["speedup"]
    shipped = pipeline["shipped"]
    passing = [r for r in pipeline["rows"] if r["label"] != "baseline" and r["passes"] and r["saving_pct"] > 5.0]
    assert shipped is not None and shipped["speedup"] == max(r["speedup"] for r in passing)
    # the passing values that save above the floor are combined exactly when two or more knobs have one
    saving_knobs = {r["knob"] for r in passing if r["knob"] != "combined"}
    assert ("combined" in {r["knob"] for r in pipeline["rows"]}) == (len(saving_knobs) >= 2)
    # shipped in the chosen folder, the card, search.json, candidates.md and the report
    written = json.load(open(os.path.join(result.paths["chosen"], "pipeline.json")))
    assert written["shipped"] and written["setting"] == shipped["setting"]
    assert written["overrides"] == shipped["overrides"]
    card = json.load(open(os.path.join(result.paths["chosen"], "fidelity_card.json")))
    note = next(n for n in card["notes"] if n.startswith("Pipeline setting"))
    assert f"{shipped['speedup']:.2f}x faster" in note
    summary = json.load(open(tmp_path / "search.json"))
    assert summary["pipeline"]["shipped"]["label"] == shipped["label"]
    assert "Pipeline knobs of the chosen model" in open(tmp_path / "candidates.md").read()
    write_search_report(str(tmp_path))
    assert f"**{shipped['label']}** (shipped)" in open(tmp_path / "report.md").read()

    # resumed: every knob measurement comes from the log, nothing is evaluated again, the same setting ships
    again, evaluate2 = _search(task, tmp_path, _config(**knobs))
    assert evaluate2.calls == [] and again.pipeline["shipped"]["label"] == shipped["label"]
    # re-decided with a saving floor no setting reaches: nothing ships, nothing is measured again, the file says so
    strict = _config(**knobs)
    strict.pipeline_min_saving = 0.99
    kept, evaluate3 = _search(task, tmp_path, strict)
    assert evaluate3.calls == [] and kept.pipeline["shipped"] is None
    written = json.load(open(os.path.join(kept.paths["chosen"], "pipeline.json")))
    assert not written["shipped"] and written["setting"] == BASELINE and written["overrides"] == {}
    assert "saved more than 99% of the time" in " ".join(kept.card.notes)
    with pytest.raises(ConfigError, match="pipeline_min_saving"):
        _search(task, tmp_path / "never", SearchConfig(pipeline_min_saving=1.5))


def test_bad_knobs_are_refused_before_anything_is_written(task, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="no baseline value"):
        _search(task, out, SearchConfig(ratios=(0.5,), backends=["torch"], pipeline_knobs={"overlap": [0.1]}))
    with pytest.raises(ConfigError, match="non-empty list"):
        _search(task, out, _config(overlap=[]))

    def stiff(model):  # takes no knob
        return latency(model)

    with pytest.raises(ConfigError, match="must take it as a keyword"):
        _search(task, out, _config(overlap=[0.0]), lat=stiff)

    def other_default(model, roi_size=32, overlap=0.25, sw_batch_size=1):
        return latency(model, roi_size, overlap, sw_batch_size)

    with pytest.raises(ConfigError, match="not the baseline"):
        _search(task, out, _config(overlap=[0.0]), lat=other_default)
    assert not out.exists()


def test_the_demo_search_window_knob_values(capsys):
    from monai_prune.cli import main
    from monai_prune.demo.search_frontend import window

    volume = (1, 1, 96, 96, 128)
    assert window("default", (64, 64, 64), volume) == (64, 64, 64)
    assert window("whole", (64, 64, 64), volume) == (96, 96, 128)
    assert window(80, (64, 64, 64), volume) == (80, 80, 80) and window([32, 48, 64], (1,), volume) == (32, 48, 64)
    for bad in (0, "half", True, [1, 2]):
        with pytest.raises(ConfigError, match="roi_size knob"):
            window(bad, (64, 64, 64), volume)
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--quick", "--roi-sizes", "whole,half"])
    assert exit_.value.code == 2 and "'whole' or positive integers, got 'half'" in capsys.readouterr().err
