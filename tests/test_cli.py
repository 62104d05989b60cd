"""The monai-prune command line: real pruning runs, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest
import torch

import monai_prune as mp
from monai_prune.cli import main

NET = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
       "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}


@pytest.fixture
def weights(tmp_path):
    from monai.bundle import ConfigParser

    net = ConfigParser({"n": NET}).get_parsed_content("n")
    path = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, path)  # the shape MONAI's CheckpointSaver writes
    return path


def test_prune_command_writes_artifacts_that_reload(tmp_path, weights, capsys):
    (tmp_path / "net.json").write_text(json.dumps(NET))
    before = weights.read_bytes()
    out = tmp_path / "out"
    code = main(["prune", "--network", str(tmp_path / "net.json"), "--weights", str(weights),
                 "--input-shape", "1,1,32,32,32", "--ratio", "0.5", "--out", str(out)])
    assert code == 0
    assert "MACs" in capsys.readouterr().out
    assert weights.read_bytes() == before  # the input is never touched
    summary = json.loads((out / "summary.json").read_text())
    assert summary["macs_after"] < 0.5 * summary["macs_before"] and summary["onnx_max_abs_diff"] < 1e-3
    net = mp.PruningPlan.load(out / "plan.json").build_network()
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    ts = torch.jit.load(str(out / "model.ts"))
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), ts(x), atol=1e-5)
    # measure reads the same plan
    assert main(["measure", "--network", json.dumps(NET), "--plan", str(out / "plan.json"),
                 "--input-shape", "1,1,32,32,32"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == summary["macs_after"]


@pytest.mark.parametrize("args, message", [
    (["--ratio", "1.5"], "ratio must be in [0, 1)"),
    (["--ignore", "nope"], "names layers this network does not have"),
    (["--input-shape", "1,3,32,32,32"], "expects 1"),
])
def test_prune_command_errors_are_one_line(tmp_path, weights, capsys, args, message):
    base = ["prune", "--network", json.dumps(NET), "--weights", str(weights), "--input-shape", "1,1,32,32,32",
            "--out", str(tmp_path / "o")]
    # later options win in argparse. The first case as a user meets it (a process of its own: exit code and stderr
    # of the real command line), the others in this process (same code path, no interpreter start-up)
    if args == ["--ratio", "1.5"]:
        proc = subprocess.run([sys.executable, "-m", "monai_prune.cli", *base, *args], capture_output=True, text=True)
        code, stderr = proc.returncode, proc.stderr
    else:
        code, stderr = main([*base, *args]), capsys.readouterr().err
    assert code == 2
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


def test_refuses_to_overwrite_its_input(tmp_path, weights):
    code = main(["prune", "--network", json.dumps(NET), "--weights", str(weights), "--input-shape", "1,1,32,32,32",
                 "--out", str(weights.parent)])
    assert code == 2


def test_missing_files_and_bad_network(tmp_path, capsys):
    assert main(["prune", "--network", '{"channels": 1}', "--input-shape", "1,1,8,8,8", "--out", str(tmp_path)]) == 2
    assert "_target_" in capsys.readouterr().err
    assert main(["prune", "--network", json.dumps(NET), "--weights", str(tmp_path / "none.pt"),
                 "--input-shape", "1,1,8,8,8", "--out", str(tmp_path)]) == 2
