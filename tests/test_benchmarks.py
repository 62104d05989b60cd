"""The benchmark scripts run end to end (tiny sizes) and write the rows the issue names, int8 rows included."""

import json
import os
import runpy
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"variant", "backend", "precision", "sw_batch_size", "latency_s", "macs", "params", "size_bytes",
        "speedup_vs_dense_torch", "speedup_vs_dense_ort", "times_s"}
INT8_KEYS = {"speedup_vs_own_fp32", "size_ratio_vs_fp32", "agreement_vs_fp32", "max_abs_logit_vs_fp32",
             "int8_layers", "fp32_layers", "fidelity", "calibration"}
ACCURACY_KEYS = {"accuracy_fp32", "accuracy_int8", "accuracy_change_pp", "auc_fp32", "auc_int8"}


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [
    ("seg3d.py", ["--size", "48", "--roi", "32", "--calibration-samples", "2"]),
    ("cls2d.py", ["--size", "64", "--train-steps", "1", "--train-batch", "2", "--val-images", "10",
                  "--calibration-samples", "2"]),
])
def test_benchmark_script(tmp_path, monkeypatch, capsys, script, extra):
    """``python benchmarks/<script> ...`` run as ``__main__`` in this process (saves an interpreter start-up)."""
    out = tmp_path / "rows.json"
    path = os.path.join(ROOT, "benchmarks", script)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(os.path.dirname(path))  # as `python benchmarks/x.py` puts its folder first
    monkeypatch.setattr(sys, "argv", [path, "--quick", "--repeats", "1", "--backends", "torch", "onnxruntime",
                                      "--pause", "0", "--json", str(out), *extra])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err[-2000:]
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    assert "| variant | backend |" in stdout and "pruned0.5: best backend" in stdout
    assert "Fastest at sw_batch_size 1:" in stdout
    rows = json.loads(out.read_text())
    assert rows and all(KEYS <= set(r) for r in rows)
    variants = {r["variant"] for r in rows}
    assert variants == {"dense", "pruned0.5", "pruned0.75"}
    macs = {r["variant"]: r["macs"] for r in rows}
    assert macs["pruned0.75"] < macs["pruned0.5"] < macs["dense"]
    assert all(r["latency_s"] > 0 for r in rows)

    # int8 rows: onnxruntime, every variant and sw_batch_size, timed like fp32, smaller than the fp32 model.onnx
    fp32 = {(r["variant"], r["sw_batch_size"]): r for r in rows
            if r["precision"] == "fp32" and r["backend"] == "onnxruntime"}
    int8 = {(r["variant"], r["sw_batch_size"]): r for r in rows if r["precision"] == "int8"}
    assert {r["precision"] for r in rows} == {"fp32", "int8"}
    assert {r["backend"] for r in int8.values()} == {"onnxruntime"}
    assert set(int8) == set(fp32)
    for key, row in int8.items():
        assert INT8_KEYS <= set(row), sorted(INT8_KEYS - set(row))
        assert row["size_bytes"] < fp32[key]["size_bytes"]
        assert len(row["times_s"]) == len(fp32[key]["times_s"]) and row["latency_s"] > 0
        assert row["speedup_vs_own_fp32"] == pytest.approx(fp32[key]["latency_s"] / row["latency_s"])
        assert 0.0 <= row["agreement_vs_fp32"] <= 1.0 and row["int8_layers"] > 0

    if script == "cls2d.py":  # a classifier: accuracy / AUC on held-out labelled data, per row and int8 vs fp32
        assert all({"accuracy", "auc"} <= set(r) and 0.0 <= r["accuracy"] <= 1.0 for r in rows)
        assert all(ACCURACY_KEYS <= set(r) for r in int8.values())
        assert "Target, dense int8 on onnxruntime:" in stdout
    if script == "seg3d.py":  # the window knob: one window over the whole volume, and the network target line
        configs = {(r["variant"], r["backend"], r["precision"]) for r in rows if r["sw_batch_size"] == 1}
        for code, window in ((0, "whole 48^3 (one window)"), (-1, "whole 48^3, SimpleInferer")):
            whole = [r for r in rows if r["sw_batch_size"] == code]
            assert {r["window"] for r in whole} == {window}
            assert {(r["variant"], r["backend"], r["precision"]) for r in whole} == configs
        stock = min(r["latency_s"] for r in rows if (r["variant"], r["backend"]) == ("dense", "torch")
                    and r["sw_batch_size"] > 0)
        for r in rows:  # against dense torch eager at its best sw_batch_size at the stock window, recomputed here
            assert r["speedup_vs_dense_torch_best_stock"] == pytest.approx(stock / r["latency_s"])
        best = max(rows, key=lambda r: r["speedup_vs_dense_torch_best_stock"])
        assert f"Network target (>= 8x vs dense torch eager at its best sw_batch_size, stock window): " \
               f"{best['speedup_vs_dense_torch_best_stock']:.2f}x with {best['variant']}" in stdout
