"""The benchmark scripts run end to end (tiny sizes) and write the rows the issue names."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"variant", "backend", "precision", "sw_batch_size", "latency_s", "macs", "params", "size_bytes"}


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [
    ("seg3d.py", ["--size", "48", "--roi", "32"]),
    ("cls2d.py", ["--size", "64"]),
])
def test_benchmark_script(tmp_path, script, extra):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick", "--repeats", "1",
         "--backends", "torch", "onnxruntime", "--json", str(out), *extra],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| variant | backend |" in proc.stdout and "pruned0.5: best backend" in proc.stdout
    rows = json.loads(out.read_text())
    assert rows and all(KEYS <= set(r) for r in rows)
    variants = {r["variant"] for r in rows}
    assert variants == {"dense", "pruned0.5", "pruned0.75"}
    macs = {r["variant"]: r["macs"] for r in rows}
    assert macs["pruned0.75"] < macs["pruned0.5"] < macs["dense"]
    assert all(r["latency_s"] > 0 for r in rows)
