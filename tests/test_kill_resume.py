"""Kill and resume for real: a training process with a ``PruningHandler`` is SIGKILLed mid-epoch, a new process
resumes from the last checkpoint on disk, and the run ends exactly where the uninterrupted run ends.

The worker (``kill_resume_worker.py``) trains a tiny 2D UNet for 6 epochs of 4 iterations with pruning steps at epochs
2, 3 and 4 (linear schedule to 0.5), and a ``CheckpointSaver`` after every epoch. The killed process holds at
iteration 14 (epoch 4, after the checkpoint of epoch 3, which holds the first two pruning steps, and before the third),
so the resumed process must rebuild the pruned network from the checkpoint, take the last pruning step itself and
train on: its plan, architecture and sparsity, and even its weights, must be those of the uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import monai_prune as mp

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_resume_worker.py")
HOLD_AT = 14  # epoch 4 of 4-iteration epochs: after checkpoint_epoch=3.pt, before the pruning step of epoch 4


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def _run(out, *extra, timeout=240):
    done = subprocess.run([sys.executable, WORKER, str(out), *extra], capture_output=True, text=True, timeout=timeout,
                          env=_env())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads((out / "result.json").read_text())


def _start_and_kill(out, timeout=240):
    """Start the worker, wait until it reports iteration ``HOLD_AT``, SIGKILL it there."""
    marker = out / f"reached_iteration_{HOLD_AT}"
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, WORKER, str(out), "--hold-at-iteration", str(HOLD_AT)],
                                stdout=log, stderr=subprocess.STDOUT, env=_env())
        try:
            deadline = time.monotonic() + timeout
            while not marker.exists():
                assert proc.poll() is None, f"the worker ended (exit {proc.returncode}) before iteration {HOLD_AT}"
                assert time.monotonic() < deadline, f"the worker did not reach iteration {HOLD_AT} in {timeout} s"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _plan_steps(out):
    return [(s["root"], s["channels_before"], s["kept"]) for s in mp.PruningPlan.load(out / "plan.json").steps]


def test_sigkilled_training_resumes_to_the_same_pruned_network(tmp_path):
    reference = _run(tmp_path / "straight")
    assert reference["resumed_from"] is None and reference["epochs_run"] == [1, 2, 3, 4, 5, 6]
    assert reference["achieved"] == pytest.approx(0.5) and reference["prune_sparsity"] == pytest.approx(0.5, abs=0.05)
    assert len(mp.PruningPlan.load(tmp_path / "straight" / "plan.json").steps) > 0

    killed = tmp_path / "killed"
    killed.mkdir()
    _start_and_kill(killed)
    # the process died mid-epoch 4: checkpoints of epochs 1-3 on disk, no result, the plan of the first two steps
    assert sorted(os.listdir(killed / "ckpt")) == [f"checkpoint_epoch={e}.pt" for e in (1, 2, 3)]
    assert not (killed / "result.json").exists()
    steps_before_kill = _plan_steps(killed)
    reference_steps = _plan_steps(tmp_path / "straight")
    assert 0 < len(steps_before_kill) < len(reference_steps)  # the kill came between pruning steps
    assert steps_before_kill == reference_steps[:len(steps_before_kill)]

    resumed = _run(killed)  # a new process, same folder: it resumes from the newest checkpoint
    assert resumed["resumed_from"] == "checkpoint_epoch=3.pt" and resumed["epochs_run"] == [4, 5, 6]
    assert resumed["final_epoch"] == reference["final_epoch"] == 6

    # same architecture (every parameter and buffer shape), same plan (kept channels of every step), same sparsity
    assert resumed["shapes"] == reference["shapes"]
    assert resumed["kept"] == reference["kept"]
    assert _plan_steps(killed) == reference_steps
    assert resumed["achieved"] == reference["achieved"]
    assert resumed["prune_sparsity"] == reference["prune_sparsity"]
    assert resumed["prune_params"] == reference["prune_params"]
    # and the same training: optimizer state and data order were restored, so the weights match bit for bit
    assert resumed["last_loss"] == reference["last_loss"]
    assert resumed["weights_sha256"] == reference["weights_sha256"]
