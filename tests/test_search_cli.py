"""``monai-prune search --quick`` on the built-in synthetic CT (fp32 + int8, two runtimes), resumed with an impossible
floor (refused, exit 2, nothing re-measured), and ``monai-prune report`` on its folder."""

import json
import os

import pytest

from monai_prune.cli import main

pytestmark = pytest.mark.slow


def test_search_cli_chooses_refuses_resumes_and_reports(tmp_path, capsys):
    out = str(tmp_path / "search")
    common = ["search", "--quick", "--out", out, "--ratios", "0.5", "--backends", "torch,onnxruntime"]
    # with two pipeline knobs, measured on the chosen model after the choice (tests/test_search_knobs.py: the stage)
    assert main(common + ["--max-delta-dice", "0.5", "--overlaps", "0.5,0", "--sw-batch-sizes", "2",
                          "--roi-sizes", "whole"]) == 0
    printed = capsys.readouterr().out
    summary = json.load(open(os.path.join(out, "search.json")))
    assert summary["status"] == "ok"
    keys = {r["key"] for r in summary["candidates"]}
    assert {"r0.5000-uniform-fp32-torch", "r0.5000-uniform-fp32-onnxruntime", "r0.5000-uniform-int8-onnxruntime"} == keys
    chosen = summary["chosen"]
    assert chosen["speedup"] == max(r["speedup"] for r in summary["candidates"] if r["passes"])
    assert chosen["key"] in printed and "max_delta_dice" in printed  # the table and the card were printed
    assert summary["dense"]["measured"]["per_class"]["spleen"]["hd95"] is not None  # mm, from the NIfTI spacing
    pipeline = summary["pipeline"]
    assert pipeline["baseline"] == {"overlap": 0.25, "sw_batch_size": 1, "roi_size": "default"}
    assert pipeline["candidate"] == chosen["key"]
    labels = [r["label"] for r in pipeline["rows"]]
    assert labels[:5] == ["baseline", "overlap=0.5", "overlap=0.0", "sw_batch_size=2", "roi_size=whole"]
    assert "Pipeline knobs of the chosen model" in printed and "overlap 0.25 -> 0.5" in printed
    shipped = json.load(open(os.path.join(out, "chosen", "pipeline.json")))
    assert shipped["shipped"] == (pipeline["shipped"] is not None)
    assert shipped["setting"] == (pipeline["shipped"] or pipeline["rows"][0])["setting"]
    lines = len(open(os.path.join(out, "candidates.jsonl")).readlines())

    assert main(common + ["--min-dice", "spleen=0.999"]) == 2
    err = capsys.readouterr().err
    assert "dense model itself" in err and "'spleen'" in err and "0.9990" in err
    assert len(open(os.path.join(out, "candidates.jsonl")).readlines()) == lines  # nothing re-measured

    assert main(["report", out]) == 0
    report = open(os.path.join(out, "report.md")).read()
    assert report.startswith("# Compression search report") and "REFUSED" in report  # the last search refused
    for png in ("pareto.png", "overlay.png"):
        assert os.path.getsize(os.path.join(out, png)) > 5_000
    assert main(["report", str(tmp_path / "missing")]) == 2
