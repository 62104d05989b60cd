"""``monai-prune serve`` scheduling, on a stand-in app (a ``main(argv)`` that writes ``run.json`` like the real apps and
takes a set time): which inbox folders are taken and when, restarts, bad arguments, and SIGTERM in the middle of a
study (the study finishes and is recorded, the next is not started, the server exits 0 with its summary). The real
CT app under ``serve`` is tested in ``test_deploy.py``."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from monai_prune.deploy.serve import LOG_NAME, READY_MARKER, serve
from monai_prune.errors import ConfigError, InputError

CLI = os.path.join(os.path.dirname(sys.executable), "monai-prune")

APP = textwrap.dedent('''
    import json, os, sys, time

    def main(argv):
        study, out = argv[argv.index("-i") + 1], argv[argv.index("-o") + 1]
        if os.path.exists(os.path.join(study, "bad")):
            return 2
        with open(os.path.join(study, "started"), "w"):
            pass
        time.sleep(float(os.environ.get("STAND_IN_SECONDS", "0")))
        os.makedirs(out)
        with open(os.path.join(out, "run.json"), "w") as f:
            json.dump({"seconds": {"network": 0.5}}, f)
        return 0
''')


@pytest.fixture
def app(tmp_path):
    path = tmp_path / "stand_in_app" / "app.py"
    path.parent.mkdir()
    path.write_text(APP)
    return str(path)


def _study(root, name, *files):
    folder = root / name
    folder.mkdir(parents=True)
    for file in files or ("slice.dcm",):
        (folder / file).write_text("x")
    return str(folder)


def _log(out):
    with open(os.path.join(out, LOG_NAME)) as f:
        return [json.loads(line) for line in f]


def test_studies_in_order_a_failure_is_recorded_and_a_restart_serves_nothing_twice(app, tmp_path):
    studies = [_study(tmp_path / "in", "a"), _study(tmp_path / "in", "b", "bad"), _study(tmp_path / "in", "c")]
    out = str(tmp_path / "out")
    summary = serve(app, "model", out, studies=studies)
    assert (summary["studies"], summary["failed"]) == (3, 1) and summary["first_study_s"] > 0
    assert [(os.path.basename(r["study"]), r["exit_code"], r["first"]) for r in _log(out)] == [
        ("a", 0, True), ("b", 2, False), ("c", 0, False)]
    assert _log(out)[0]["stages"] == {"network": 0.5}  # the app's run.json seconds, per study
    assert serve(app, "model", out, studies=studies)["studies"] == 0 and len(_log(out)) == 3


def test_an_inbox_study_is_taken_when_ready_or_settled_never_while_it_still_changes(app, tmp_path):
    inbox, out = tmp_path / "inbox", str(tmp_path / "out")
    ready = _study(inbox, "ready", "slice.dcm", READY_MARKER)
    _study(inbox, "copying")  # settle is longer than the server waits: still being copied, not taken
    _study(inbox, ".hidden")
    summary = serve(app, "model", out, watch=str(inbox), settle=30, poll=0.05, idle_exit=0.5)
    assert summary["studies"] == 1 and [r["study"] for r in _log(out)] == [ready]
    summary = serve(app, "model", out, watch=str(inbox), settle=0.2, poll=0.05, idle_exit=1.0)
    assert summary["studies"] == 1 and os.path.basename(_log(out)[-1]["study"]) == "copying"


def test_bad_arguments_are_refused_before_anything_runs(app, tmp_path):
    study = _study(tmp_path / "x", "same")
    other = _study(tmp_path / "y", "same")
    with pytest.raises(ConfigError, match="give study folders"):
        serve(app, "model", str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="same folder name"):
        serve(app, "model", str(tmp_path / "out"), studies=[study, other])
    with pytest.raises(InputError, match="is not a folder"):
        serve(app, "model", str(tmp_path / "out"), studies=[str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="--poll"):
        serve(app, "model", str(tmp_path / "out"), studies=[study], poll=0)
    no_main = tmp_path / "no_main.py"
    no_main.write_text("x = 1\n")
    with pytest.raises(InputError, match="has no main"):
        serve(str(no_main), "model", str(tmp_path / "out"), studies=[study])
    assert not os.path.exists(tmp_path / "out")


def test_sigterm_mid_study_finishes_it_records_it_and_exits_0_with_the_summary(app, tmp_path):
    studies = [_study(tmp_path / "in", name) for name in ("first", "second")]
    out = str(tmp_path / "out")
    env = dict(os.environ, STAND_IN_SECONDS="2")
    proc = subprocess.Popen([CLI, "serve", app, "-m", "model", "-o", out, "--study", *studies],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(studies[0], "started")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, log
    assert "SIGTERM received: finishing the current study, then stopping" in log
    assert [(os.path.basename(r["study"]), r["exit_code"]) for r in _log(out)] == [("first", 0)]
    assert os.path.isfile(os.path.join(out, "first", "run.json"))
    assert not os.path.exists(os.path.join(studies[1], "started"))  # the next study was never begun
    summary = json.loads([line for line in log.splitlines() if line.startswith('{"studies"')][-1])
    assert summary["studies"] == 1 and summary["failed"] == 0
