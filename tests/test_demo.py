"""`monai-prune demo` end to end, shrunk to tens of seconds."""

import json

import pytest
import torch

import monai_prune as mp
from monai_prune.demo import quick_config, run_demo
from monai_prune.workflows import spleen_unet


@pytest.mark.slow
def test_quick_demo_writes_a_measured_report(tmp_path):
    config = quick_config(str(tmp_path / "demo"))
    config.backends = ["torch", "onnxruntime"]
    results = run_demo(config)
    assert results["report"].endswith("report.md") and results["elapsed_s"] > 0
    out = tmp_path / "demo"
    for rel in ("report.md", "accuracy_vs_latency.png", "schedule.png", "results.json", "pruned/plan.json", "pruned/model.pt",
                "pruned/model.ts", "pruned/model.onnx", "dense/model.ts"):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    saved = json.loads((out / "results.json").read_text())
    d, p = saved["dense"], saved["pruned"]
    assert p["macs"] < 0.35 * d["macs"] and p["params"] < 0.3 * d["params"] and p["size_bytes"] < d["size_bytes"]
    assert set(p["latency_s"]) == {"torch", "onnxruntime"} and all(t > 0 for t in p["latency_s"].values())
    assert 0.0 <= p["mean_dice"] <= 1.0 and p["replay_max_abs_diff"] == 0.0
    # compressed during fine-tuning on the cubic schedule, distilled: the measured sparsity is the schedule's
    assert p["sparsity_measured"] == pytest.approx(0.5, abs=0.01) and 0.0 <= p["kd_agreement"] <= 1.0
    assert p["schedule"]["1"] < p["schedule"]["2"] == 0.5
    assert abs(p["dice_best_backend"] - p["mean_dice"]) < 0.01  # the runtime gives the same segmentation
    report = (out / "report.md").read_text()
    assert "What was lost" in report and f"{d['mean_dice']:.4f}" in report
    assert (out / "accuracy_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the saved artifacts rebuild the pruned network safely
    net = mp.apply_plan(spleen_unet(), mp.PruningPlan.load(out / "pruned" / "plan.json"))
    net.load_state_dict(torch.load(out / "pruned" / "model.pt", weights_only=True))
