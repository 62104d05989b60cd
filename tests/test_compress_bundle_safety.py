"""``monai-prune compress-bundle`` is safe to run (issue 15): an ``--out`` inside (or around) the source is refused
before anything is written; SIGTERM removes the run's work folder and ends with one line; a SIGKILLed run's work
folder is removed by the next run (a live run's never); handlers writing under ``@bundle_root`` (``@output_dir``,
the data folder) write into the private run folder, never into the source; the metadata records every config's
sha256 (``config_files``).

The source bundle has untrained weights (compress-bundle's plumbing does not need a trained model) and three 48^3
volumes; runs are 2 epochs, pruned after the first.
"""

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from monai_prune.bundle import compress_bundle, verify_model_files
from monai_prune.cli import main
from monai_prune.errors import ConfigError
from helpers.bundle_fixture import ROI, write_bundle, write_untrained_weights

CLI = os.path.join(os.path.dirname(sys.executable), "monai-prune")
SHAPE = f"[1,1,{ROI[0]},{ROI[1]},{ROI[2]}]"
TERMINATED = "monai-prune compress-bundle: terminated by SIGTERM: removed the unfinished work, nothing was written to "


def _tree(root):
    """Every folder and file under ``root`` (links not followed), files with their sha256."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root) + "/"] = "folder"
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                found[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(f.read()).hexdigest()
    return found


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _work_folders(out):
    return sorted(glob.glob(os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.*")))


def _writing_bundle(root):
    """The fixture bundle whose train.json writes where model-zoo bundles do: a MetricsSaver into ``@output_dir``
    (``bundle_root/eval``, where the source already holds a ``metrics.csv``), and ``initialize`` expressions that
    rewrite the source's ``docs/README.md`` and append to its ``data/notes.txt``."""
    write_bundle(root, volumes=3, max_epochs=3)
    write_untrained_weights(root)
    for name, text in (("eval/metrics.csv", "from an earlier inference run\n"), ("docs/README.md", "# tiny\n"),
                       ("data/notes.txt", "where the data came from\n"), ("LICENSE", "Apache-2.0\n")):
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
    path = os.path.join(root, "configs", "train.json")
    train = json.load(open(path))
    train["output_dir"] = "$@bundle_root + '/eval'"
    train["validate"]["handlers"].append({"_target_": "MetricsSaver", "save_dir": "@output_dir"})
    train["initialize"] += ["$open(@bundle_root + '/docs/README.md', 'w').write('rewritten by a run\\n')",
                            "$open(@dataset_dir + '/notes.txt', 'a').write('a run was here\\n')"]
    json.dump(train, open(path, "w"), indent=2)
    return root


def _args(src, out):
    return [CLI, "compress-bundle", src, "--recipe", "channel_pruning", "--out", out, "--epochs", "2", "--repeats", "1",
            "--set", f"prune#input_shape={SHAPE}", "--set", "prune#start_epoch=0", "--set", "prune#end_epoch=0"]


def _start_and_wait_for(src, out, *where):
    """Start a run; return it once ``where`` exists in its work folder."""
    proc = subprocess.Popen(_args(src, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not glob.glob(os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{proc.pid}.*", *where)):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {'/'.join(where)} appeared in its work "
                        f"folder:\n{(stdout + stderr)[-3000:]}")
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One source bundle and, with the same arguments: a run stopped by SIGTERM, a run SIGKILLed, and a run to the
    end (with the work folder of a live run beside it, which it must keep)."""
    src = _writing_bundle(str(tmp_path_factory.mktemp("src") / "tiny"))
    parent = tmp_path_factory.mktemp("outputs")
    out = str(parent / "tiny_compressed")
    result = {"src": src, "out": out, "before": _tree(src)}

    # SIGTERM mid fine-tuning: the first epoch's validation checkpoint is written, the trainer is in its second
    proc = _start_and_wait_for(src, out, "run", "models", "compressed", "model.pt")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    result["sigterm"] = {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "left": _work_folders(out),
                         "out_exists": os.path.exists(out), "source": _tree(src)}

    proc = _start_and_wait_for(src, out, "run", "models", "model.pt")  # SIGKILL once the private run folder is made
    proc.kill()
    proc.communicate(timeout=60)
    result["sigkill"] = {"rc": proc.returncode, "pid": proc.pid, "left": _work_folders(out)}

    live = os.path.join(str(parent), f".tiny_compressed.{os.getpid()}.live0run")  # this test process: alive
    os.makedirs(os.path.join(live, "run"))
    done = subprocess.run(_args(src, out), capture_output=True, text=True, timeout=600)
    result["rerun"] = {"rc": done.returncode, "log": done.stdout + done.stderr, "left": _work_folders(out),
                       "live": live}
    result["after"] = _tree(src)
    return result


def test_out_inside_the_source_or_around_it_is_refused_before_anything_is_written(tmp_path, capsys):
    src = write_bundle(str(tmp_path / "b"), volumes=3)
    write_untrained_weights(src)
    os.symlink(src, str(tmp_path / "link"))
    before, listing = _tree(src), sorted(os.listdir(tmp_path))
    for out, message in ((os.path.join(src, "compressed"), f"--out {os.path.join(src, 'compressed')} lies inside the "
                                                            f"source bundle {src}: choose a folder outside it "
                                                            "(nothing was written)"),
                         (os.path.join(src, "data", "x", "y"), "lies inside the source bundle"),
                         (str(tmp_path / "link" / "compressed"), "lies inside the source bundle"),
                         (src, "is the source bundle itself: choose a folder outside it (nothing was written)"),
                         (str(tmp_path), f"the source bundle {src} lies inside --out {tmp_path}")):
        assert main(["compress-bundle", src, "--recipe", "channel_pruning", "--out", out]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert _tree(src) == before and sorted(os.listdir(tmp_path)) == listing  # nothing created, source identical
    with pytest.raises(ConfigError, match="lies inside the source bundle"):
        compress_bundle(src, "channel_pruning", os.path.join(src, "compressed"), dry_run=True)


@pytest.mark.slow
def test_sigterm_removes_the_work_folder_and_ends_with_one_line(runs):
    term = runs["sigterm"]
    assert term["rc"] == 128 + signal.SIGTERM, term["stderr"][-3000:]
    lines = [line for line in term["stderr"].splitlines() if line.strip()]
    assert lines[-1] == TERMINATED + runs["out"]
    assert sum("SIGTERM" in line for line in lines) == 1
    logs = term["stdout"] + term["stderr"]
    assert "Traceback" not in logs and "terminating due to exception" not in logs  # ignite stopped, not raised through
    assert term["left"] == [] and not term["out_exists"]
    assert term["source"] == runs["before"]


@pytest.mark.slow
def test_a_killed_runs_work_folder_is_removed_by_the_next_run_and_a_live_runs_is_kept(runs):
    kill, rerun = runs["sigkill"], runs["rerun"]
    assert kill["rc"] == -signal.SIGKILL
    assert len(kill["left"]) == 1 and os.path.basename(kill["left"][0]).startswith(f".tiny_compressed.{kill['pid']}.")
    assert rerun["rc"] == 0, rerun["log"][-4000:]
    assert f"removing {kill['left'][0]}, left behind by an earlier compress-bundle run" in rerun["log"]
    assert rerun["left"] == [rerun["live"]]  # the stale folder is gone, the live run's kept
    out = runs["out"]
    assert set(os.listdir(out)) == {"configs", "models", "docs", "LICENSE"}
    assert set(verify_model_files(out)) == {"model.ts", "model.pt", "plan.json", "model.onnx"}
    assert {"fidelity_card.json", "fidelity_card.md", "README.md"} <= set(os.listdir(os.path.join(out, "docs")))
    assert json.load(open(os.path.join(out, "configs", "metadata.json")))["compression"]["epochs"] == 2


@pytest.mark.slow
def test_handlers_writing_under_bundle_root_never_touch_the_source(runs, tmp_path):
    from monai.bundle import ConfigParser

    assert runs["after"] == runs["before"]  # after SIGTERM, SIGKILL and a full run: byte-identical, nothing added
    # the bundle's expressions do write under its root (the test would prove nothing otherwise)
    copy = str(tmp_path / "copy")
    shutil.copytree(runs["src"], copy)
    parser = ConfigParser()
    parser.read_config(os.path.join(copy, "configs", "train.json"))
    parser["bundle_root"] = copy
    parser.get_parsed_content("initialize")
    assert open(os.path.join(copy, "docs", "README.md")).read() == "rewritten by a run\n"
    assert open(os.path.join(copy, "data", "notes.txt")).read().endswith("a run was here\n")


@pytest.mark.slow
def test_metadata_records_the_sha256_of_every_config(runs):
    configs = os.path.join(runs["out"], "configs")
    recorded = json.load(open(os.path.join(configs, "metadata.json")))["config_files"]
    assert set(recorded) == set(os.listdir(configs)) - {"metadata.json"}
    assert {"inference.json", "train.json", "compress_recipe.json", "logging.conf"} <= set(recorded)
    assert recorded == {name: _sha256(os.path.join(configs, name)) for name in recorded}


def test_a_component_monai_cannot_build_or_a_recipe_that_never_pruned_is_one_line_and_writes_nothing(tmp_path,
                                                                                                      capsys):
    """A zoo bundle's handler this machine cannot build (the zoo's TensorBoardStatsHandler without tensorboard; here
    a keyword StatsHandler does not take) is named by id in one line, not MONAI's traceback; a ``--set`` that
    replaces ``train#handlers`` wholesale drops the recipe's pruning handler: refused, never published at 1.0x."""
    src = write_bundle(str(tmp_path / "b"), volumes=3)
    write_untrained_weights(src)
    before = _tree(src)
    out = str(tmp_path / "out")
    base = ["compress-bundle", src, "--recipe", "channel_pruning", "--out", out, "--epochs", "2", "--repeats", "1",
            "--set", f"prune#input_shape={SHAPE}", "--set", "prune#start_epoch=0", "--set", "prune#end_epoch=0"]
    broken = '{"_target_": "StatsHandler", "tag_name": "train_loss", "no_such_keyword": 1}'
    assert main(base + ["--set", f"train#handlers#1={broken}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and sum(line.startswith("monai-prune") for line in err.splitlines()) == 1, err
    err = err.splitlines()[-1]
    assert "the bundle's train#trainer cannot be built (StatsHandler at train#handlers#1): TypeError" in err, err
    assert "no_such_keyword" in err and "--set 'train#handlers#1=...'" in err and "(nothing was written)" in err
    assert not os.path.exists(out) and _work_folders(out) == [] and _tree(src) == before

    plain = '[{"_target_": "StatsHandler", "tag_name": "train_loss"}]'
    assert main(base + ["--set", f"train#handlers={plain}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "the recipe's pruning handler never ran" in err.splitlines()[-1], err
    assert not os.path.exists(out) and _work_folders(out) == [] and _tree(src) == before
