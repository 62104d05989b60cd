"""Every bad input to ``monai-prune`` ends as one line on stderr and exit code 2: no traceback, nothing half-written,
the user's files untouched (issue 15). Tiny networks; the search cases are refused before anything is trained."""

import errno
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from monai_prune import cli
from monai_prune.cli import main

NET = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
       "channels": [4, 8], "strides": [2]}
SCRIPT = os.path.join(os.path.dirname(sys.executable), "monai-prune")
COMMAND = [SCRIPT] if os.path.isfile(SCRIPT) else [sys.executable, "-m", "monai_prune.cli"]


def run_cli(*args):
    return subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True, timeout=300)


def invoke(capsys, *args, real: bool = False):
    """``(exit code, stdout + stderr of the run, stderr)``: the installed script in a subprocess (``real``: what a user
    sees, import-time warnings included) or ``main`` in this process (faster)."""
    if real:
        proc = run_cli(*args)
        return proc.returncode, proc.stdout + proc.stderr, proc.stderr
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err, captured.err


def one_line(stderr: str, *words: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("monai-prune ") and ": error: " in lines[0], stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def last_line(stderr: str, *words: str) -> str:
    """For failures after work was done: progress logged before is fine, the error is the one last line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and [line for line in lines if ": error: " in line] == lines[-1:], stderr
    return one_line(lines[-1], *words)


def snapshot(folder) -> dict:
    """Every file and folder under ``folder``, with the files' bytes."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def unet(channels=(4, 8)):
    from monai.networks.nets import UNet

    return UNet(2, 1, 2, channels, (2,))


def prune_args(tmp_path, *extra, network=None):
    return ["prune", "--network", network or json.dumps(NET), "--input-shape", "1,1,16,16", *extra]


# ------------------------------------------------------------------------------------------------- 1. the network
@pytest.mark.parametrize("kind, words", [
    ("text", ["--network must be a JSON object or a file path", "is neither"]),
    ("file", ["net.json is not valid JSON/YAML", "Expecting property name"]),
    ("list", ['--network needs a "_target_"', "got a JSON list"]),
    ("unknown", ["could not build the network from monai.networks.nets.NoSuchNet", "Cannot locate"]),
])
def test_malformed_network(tmp_path, capsys, kind, words):
    network = {"text": '{"_target_": "monai.networks.nets.UNet", ', "list": "[1, 2, 3]",
               "unknown": json.dumps({**NET, "_target_": "monai.networks.nets.NoSuchNet"})}.get(kind)
    if kind == "file":
        (tmp_path / "net.json").write_text('{_target_: UNet')
        network = str(tmp_path / "net.json")
    before = snapshot(tmp_path)
    code, _, err = invoke(capsys, *prune_args(tmp_path, "--out", tmp_path / "out", network=network),
                          real=kind == "text")
    assert code == 2
    one_line(err, *words)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------- 2-3. the weights
def test_weights_of_another_architecture_name_the_first_mismatch(tmp_path):
    torch.save(unet((8, 16)).state_dict(), tmp_path / "model.pt")
    before = snapshot(tmp_path)
    proc = run_cli(*prune_args(tmp_path, "--weights", tmp_path / "model.pt", "--out", tmp_path / "out"))
    assert proc.returncode == 2
    one_line(proc.stderr, "do not fit the network", "model.0.conv.weight", "[8, 1, 3, 3]", "[4, 1, 3, 3]")
    assert snapshot(tmp_path) == before


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


@pytest.mark.parametrize("kind, words", [
    ("truncated", ["is not a weights-only PyTorch state dict", "corrupt or truncated", "it was not loaded"]),
    ("pickle", ["is not a weights-only PyTorch state dict", "pickles other Python objects", "was not loaded"]),
    ("module", ["is not a weights-only PyTorch state dict", "pickles other Python objects", "was not loaded"]),
])
def test_weights_that_are_not_a_weights_only_state_dict(tmp_path, capsys, kind, words):
    path = tmp_path / "model.pt"
    if kind == "truncated":
        torch.save(unet().state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"model.0.conv.weight": Payload()}, f)
    else:
        torch.save(unet(), path)  # the whole module: needs unsafe unpickling
    before = snapshot(tmp_path)
    code, printed, err = invoke(capsys, *prune_args(tmp_path, "--weights", path, "--out", tmp_path / "out"),
                                real=kind == "pickle")
    assert code == 2
    one_line(err, str(path), *words)
    assert "this ran while loading" not in printed
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------- 4. --set values
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    sys.path.insert(0, os.path.dirname(__file__))
    from helpers.bundle_fixture import NETWORK_DEF, write_bundle
    from monai.bundle import ConfigParser

    root = write_bundle(str(tmp_path_factory.mktemp("source") / "bundle"), volumes=3)
    net = ConfigParser({"n": NETWORK_DEF}).get_parsed_content("n")
    torch.save(net.state_dict(), os.path.join(root, "models", "model.pt"))  # untrained: enough to fail on
    return root


@pytest.mark.parametrize("value, shown", [("1.5", "got 1.5"), ("abc", "got 'abc'")])
def test_set_values_are_checked_before_any_work(tmp_path, bundle, capsys, value, shown):
    before, source = snapshot(tmp_path), snapshot(bundle)
    for dry_run in ([], ["--dry-run"]):
        code = main(["compress-bundle", bundle, "--recipe", "channel_pruning", "--out", str(tmp_path / "out"),
                     "--set", f"prune#final_sparsity={value}", *dry_run])
        assert code == 2
        one_line(capsys.readouterr().err, "prune#final_sparsity=", "final must be a sparsity in [0, 1)", shown,
                 "nothing was written")
        assert snapshot(tmp_path) == before and snapshot(bundle) == source


def test_errors_from_monai_instantiation_are_unwrapped(tmp_path, bundle, capsys):
    """A value only the bundle's trainer can check (the pruning handler needs the network) arrives wrapped in
    MONAI's ``Failed to instantiate component ...``: the user sees our sentence."""
    before, source = snapshot(tmp_path), snapshot(bundle)
    code = main(["compress-bundle", bundle, "--recipe", "channel_pruning", "--out", str(tmp_path / "out"),
                 "--epochs", "2", "--set", "prune#start_epoch=0", "--set", "prune#end_epoch=0",
                 "--set", "prune#round_to=0"])
    assert code == 2
    err = capsys.readouterr().err  # the dense model's evaluation logs progress first
    last_line(err, "round_to must be a positive integer", "got 0")
    assert "Failed to instantiate" not in err
    assert snapshot(tmp_path) == before and snapshot(bundle) == source


# ------------------------------------------------------------------------------------------------- 5-6. search
SEARCH = ["search", "--quick", "--precision", "fp32", "--backends", "torch", "--max-delta-dice", "0.05"]


def search_fails(capsys, out, *args, words=()):
    code = main([*SEARCH, "--out", str(out), *args])
    assert code == 2
    return one_line(capsys.readouterr().err, *words)


def test_search_out_is_a_file(tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("my notes")
    search_fails(capsys, out, words=[str(out), "exists and is not a directory"])
    assert out.read_text() == "my notes" and os.listdir(tmp_path) == ["results"]


def test_search_refuses_a_malformed_search_json(tmp_path, capsys):
    out = tmp_path / "search"
    out.mkdir()
    (out / "search.json").write_text('{"status": "ok", ')
    before = snapshot(tmp_path)
    search_fails(capsys, out, words=["search.json is not valid JSON", "nothing was changed"])
    assert snapshot(tmp_path) == before
    assert main(["report", str(out)]) == 2
    one_line(capsys.readouterr().err, "search.json is not valid JSON")
    assert snapshot(tmp_path) == before


def test_search_refuses_a_malformed_line_in_the_middle_of_its_log(tmp_path, capsys):
    out = tmp_path / "search"
    out.mkdir()
    lines = [json.dumps({"kind": "header", "fingerprint": {}, "format": 1}), '{"kind": "dense", "ke',
             json.dumps({"kind": "model", "key": "r0.5000-uniform/model"})]
    (out / "candidates.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(tmp_path)
    search_fails(capsys, out, words=["candidates.jsonl line 2 is not valid JSON", "damaged"])
    assert snapshot(tmp_path) == before


class _Stop(Exception):
    pass


def test_search_drops_a_truncated_last_line_and_resumes(tmp_path, capsys, monkeypatch):
    """A run killed while writing a line leaves it cut short: the next run drops it (with a warning) and resumes.
    Training and measuring are stubbed out: the test stops where the resumed search starts measuring."""
    import monai_prune.demo.search_frontend as workflow
    import monai_prune.search.measure as measure_stage

    seen = {}

    def stop(run):
        seen["records"] = dict(run.log.records)
        raise _Stop

    monkeypatch.setattr(workflow, "train_segmentation", lambda *a, **k: None)
    monkeypatch.setattr(measure_stage.Meter, "dense", stop)
    out = tmp_path / "search"
    args = [*SEARCH, "--out", str(out)]
    with pytest.raises(_Stop):
        main(args)  # the first run writes the log's header, then "dies"
    log = out / "candidates.jsonl"
    header = log.read_text()
    record = json.dumps({"kind": "model", "key": "r0.5000-uniform/model", "ratio": 0.5, "mode": "uniform"})
    log.write_text(header + record + "\n" + '{"kind": "candidate", "key": "r0.5000-unif')
    capsys.readouterr()
    with pytest.raises(_Stop):
        main(args)
    assert "dropped its last line" in capsys.readouterr().err
    assert log.read_text() == header + record + "\n"  # whole lines only: the next record starts on its own line
    assert list(seen["records"]) == ["r0.5000-uniform/model"]


@pytest.mark.parametrize("args, words", [
    (["--ratios", "1.5"], ["ratios are fractions of channels removed", "1.5"]),
    (["--ratios=-0.1"], ["ratios are fractions of channels removed", "-0.1"]),
    (["--ratios", ""], ["ratios are fractions of channels removed", "[]"]),
    (["--precision", ""], ["precisions must be among"]),
    (["--layers", "uniform,everything"], ["layer_modes must be among", "everything"]),
    (["--backends", "tensorrt"], ["backends must be among", "tensorrt"]),
    (["--strategy", "bisect", "--bisect-steps", "0"], ["bisect_steps must be an integer in 1..8"]),
    (["--max-delta-dice", "-0.1"], ["guardrail max_delta_dice must be a non-negative number"]),
    (["--min-dice", "liver=0.5"], ["min_dice names classes ['liver']", "spleen"]),
    (["--guardrails", '{"max_drop": 1}'], ["unknown guardrails ['max_drop']"]),
    (["--finetune-epochs", "-1"], ["finetune_epochs must be a non-negative integer"]),
])
def test_search_arguments_are_refused_before_anything_is_written(tmp_path, capsys, args, words):
    out = tmp_path / "search"
    search_fails(capsys, out, *args, words=words)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_search_refuses_a_log_from_another_setup_before_training(tmp_path, capsys, monkeypatch):
    import monai_prune.demo.search_frontend as workflow

    monkeypatch.setattr(workflow, "train_segmentation", lambda *a, **k: pytest.fail("trained before refusing"))
    out = tmp_path / "search"
    out.mkdir()
    header = {"kind": "header", "format": 1, "fingerprint": {"setup": "synthetic-ct:another", "input": [1, 1, 8, 8, 8]}}
    (out / "candidates.jsonl").write_text(json.dumps(header) + "\n")
    before = snapshot(tmp_path)
    search_fails(capsys, out, words=["was written by a different setup", "input", "setup", "nothing was changed"])
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------- 7. --out
def test_prune_refuses_a_folder_that_holds_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    torch.save(unet().state_dict(), out / "model.pt")
    (out / "plan.json").write_text('{"mine": true}')
    before = snapshot(tmp_path)
    proc = run_cli(*prune_args(tmp_path, "--weights", out / "model.pt", "--out", out))
    assert proc.returncode == 2
    one_line(proc.stderr, f"output {out} exists and is not empty", "choose a new folder", "nothing was written")
    assert snapshot(tmp_path) == before


def test_prune_writes_into_an_existing_empty_folder(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(prune_args(tmp_path, "--out", str(out))) == 0
    assert sorted(os.listdir(out)) == ["model.onnx", "model.pt", "model.ts", "plan.json", "summary.json"]
    assert os.listdir(tmp_path) == ["empty"]  # no staging folder left beside it


# ------------------------------------------------------------------------------------------------- 8. a full disk
def test_disk_full_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # in-memory serialisation (size estimates) still works
        if isinstance(f, (str, os.PathLike)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "out"
    assert main(prune_args(tmp_path, "--out", str(out))) == 2
    last_line(capsys.readouterr().err, f"no space left on device writing {out / 'model.pt'}", "nothing was written")
    assert os.listdir(tmp_path) == []


def test_disk_full_on_a_tiny_filesystem(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    except OSError:
        pytest.skip("no mount command here")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        proc = run_cli(*prune_args(tmp_path, "--out", mount / "out"))
        assert proc.returncode == 2
        last_line(proc.stderr, f"no space left on device writing {mount / 'out'}", "nothing was written")
        assert os.listdir(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# ------------------------------------------------------------------------------------------------- not ours
def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    """Only our own errors (possibly wrapped by MONAI) become one line; a programming error is not hidden, not even
    one raised while handling ours."""
    from monai_prune.errors import ConfigError

    def broken(text):
        try:
            raise ConfigError("ours")
        except ConfigError:
            return undefined_name  # noqa: F821

    monkeypatch.setattr(cli, "load_network_def", broken)
    with pytest.raises(NameError):
        main(prune_args(tmp_path, "--out", str(tmp_path / "out")))


@pytest.mark.parametrize("value, words", [("0", "0 rounds: give at least 1"), ("two", "'two' is not a whole number")])
def test_compress_bundle_repeats_must_be_a_positive_count(value, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["compress-bundle", str(tmp_path), "--recipe", "channel_pruning", "--out", str(tmp_path / "o"),
              "--repeats", value])
    assert info.value.code == 2 and words in capsys.readouterr().err and not (tmp_path / "o").exists()
