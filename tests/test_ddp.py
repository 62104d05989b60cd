"""DDP with torchrun (2 processes, gloo, CPU): every rank prunes the same channels / holds the same masks, the
rebuilt DDP wrapper keeps the ranks' weights in sync and the validation evaluator keeps running."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))


def test_two_ranks_prune_identically_and_stay_in_sync(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(HERE, "ddp_worker.py"), str(tmp_path), "channel", "magnitude"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    for method in ("channel", "magnitude"):
        ranks = [json.load(open(tmp_path / f"{method}-rank{r}.json")) for r in (0, 1)]
        a, b = ranks
        assert a["iterations"] == b["iterations"] == 6
        assert a["shapes"] == b["shapes"]
        assert a["plan"] == b["plan"] and a["masks"] == b["masks"]
        assert a["weights"] == b["weights"]  # gradients still all-reduced after pruning: weights identical
        assert a["sparsity"] == b["sparsity"] == pytest.approx(0.5, abs=0.07)
        assert a["ddp_params_are_module_params"] and a["optimizer_params_are_module_params"]
        if method == "channel":
            assert a["plan"] is not None and a["macs_ratio"] < 0.45
        else:
            assert a["masks"] is not None and a["macs_ratio"] == 1.0
