"""``monai-prune compress-bundle`` on a bundle with the real model-zoo ``spleen_ct_segmentation`` structure (every
config, ids, ``initialize`` checkpoint loading, literal ``dataset_dir``, published metrics; tests/bundle_fixture.py):
every config of the compressed bundle runs with the stock ``python -m monai.bundle`` CLI as the dense ones did,
builds the compressed network, its metadata says what was measured here with which versions, no local path is
carried, the schedule check's suggestions pass, and the int8 model has a config that serves it."""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import monai
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from helpers.bundle_fixture import ROI, ZOO_DATASET_DIR, write_zoo_bundle, write_zoo_data
from monai_prune.bundle import compress_bundle
from monai_prune.cli import main
from monai_prune.errors import ConfigError, InputError
from monai_prune.runtime import available_backends
from helpers.repo_bundles import offline_env

CLI = os.path.join(os.path.dirname(sys.executable), "monai-prune")
SHAPE = f"[1,1,{ROI[0]},{ROI[1]},{ROI[2]}]"
INT8 = "openvino" if "openvino" in available_backends() else "onnxruntime"


def stock_cli(root, *args):
    """``python -m monai.bundle run`` from the bundle folder, offline, as the zoo README documents it."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600, env=offline_env())
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)}\n{log[-5000:]}"
    return log


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The zoo-shaped bundle trained dense by the stock CLI (data elsewhere: ``--dataset_dir``), then compressed with
    ``--set dataset_dir=<local data>`` and ``--int8``."""
    base = tmp_path_factory.mktemp("zoo")
    data = write_zoo_data(str(base / "home_me_data"))
    src = write_zoo_bundle(str(base / "spleen_ct_segmentation"), epochs=3)
    stock_cli(src, "--config_file", "configs/train.json", "--dataset_dir", data)
    out = str(base / "spleen_ct_segmentation_compressed")
    done = subprocess.run([CLI, "compress-bundle", src, "--recipe", "channel_pruning", "--out", out, "--epochs", "2",
                           "--repeats", "1",
                           "--set", f"prune#input_shape={SHAPE}", "--set", "prune#start_epoch=0",
                           "--set", "prune#end_epoch=0", "--set", f"dataset_dir={data}", "--int8", INT8,
                           "--calibration", "4"], capture_output=True, text=True, timeout=900, env=offline_env())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    written = [p for p in glob.glob(os.path.join(out, "**"), recursive=True) if os.path.isfile(p)]
    return {"src": src, "out": out, "data": data, "written": written}  # before the tests' own runs write eval/


def _config(root, name):
    with open(os.path.join(root, "configs", name)) as f:
        return json.load(f)


@pytest.mark.slow
def test_the_compressed_bundles_documented_commands_run_with_the_stock_cli(zoo):
    out, data = zoo["out"], zoo["data"]
    infer = _config(out, "inference.json")
    source = _config(zoo["src"], "inference.json")
    # the zoo's own loading is kept: the initialize step calls its checkpoint loader, which is not disabled
    assert infer["initialize"] == source["initialize"] and infer["load_pretrain"] is True
    assert "_disabled_" not in infer["checkpointloader"]
    log = stock_cli(out, "--config_file", "configs/inference.json", "--dataset_dir", data)
    assert "Traceback" not in log
    preds = sorted(glob.glob(os.path.join(out, "eval", "*", "*_trans.nii.gz")))
    assert len(preds) == 2 and nib.load(preds[0]).shape[:3] == (48, 48, 48)  # inverted to the input's grid

    # the evaluate route: train.json + evaluate.json, whose CheckpointLoader loads @ckpt_dir/model.pt
    log = stock_cli(out, "--config_file", "['configs/train.json','configs/evaluate.json']", "--dataset_dir", data)
    assert "size mismatch" not in log and "val_mean_dice" in log
    with open(os.path.join(out, "eval", "val_mean_dice_summary.csv")) as f:
        assert "mean" in f.read()


@pytest.mark.slow
def test_every_config_that_builds_the_network_builds_the_compressed_one(zoo):
    out = zoo["out"]
    state = torch.load(os.path.join(out, "models", "model.pt"), weights_only=True)
    ts = torch.jit.load(os.path.join(out, "models", "model.ts"))
    x = torch.rand(1, 1, *ROI)
    expected = ts(x)
    routes = [["train.json"], ["train.json", "evaluate.json"], ["train.json", "multi_gpu_train.json"],
              ["train.json", "evaluate.json", "multi_gpu_evaluate.json"], ["inference.json"]]
    for files in routes:
        parser = ConfigParser()
        parser.read_config([os.path.join(out, "configs", f) for f in files])
        parser["bundle_root"] = out
        assert parser["network_def"]["_target_"] == "monai_prune.apply_plan", files  # the zoo's ids are kept
        if files[-1].startswith("multi_gpu"):  # DDP needs NCCL/GPUs: its module is built from @network_def
            assert parser["network"]["module"] == "$@network_def.to(@device)"
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(state)  # strict: the compressed layout
        with torch.no_grad():
            assert torch.allclose(net.eval()(x), expected, atol=1e-4), files
    trt = _config(out, "inference_trt.json")  # TensorRT is not here: kept consistent, said so in the README
    assert trt["network_def"] == "$torch.jit.load(@bundle_root + '/models/model_trt.ts')"
    readme = open(os.path.join(out, "docs", "README.md")).read()
    assert "## TensorRT (untested here)" in readme and "trt_export --net_id network_def" in readme
    assert "was not run" in readme
    # the zoo's large_files.yml would download the dense model.pt/model.ts over the compressed ones
    assert os.path.isfile(os.path.join(zoo["src"], "large_files.yml"))
    assert not os.path.exists(os.path.join(out, "large_files.yml"))


@pytest.mark.slow
def test_metadata_publishes_what_was_measured_here_and_the_versions_used(zoo):
    metadata = _config(zoo["out"], "metadata.json")
    c = metadata["compression"]
    assert metadata["eval_metrics"]["mean_dice"] == pytest.approx(c["metrics"]["val_mean_dice"]["after"])
    assert metadata["eval_metrics"]["mean_dice"] != 0.961 and "val_accuracy" in metadata["eval_metrics"]
    assert "validate#evaluator" in metadata["eval_metrics_source"]
    assert "monai-prune compress-bundle" in metadata["eval_metrics_source"]
    assert c["source_published_eval_metrics"]["values"] == {"mean_dice": 0.961}
    assert metadata["monai_version"] == monai.__version__ != "1.4.0"
    assert metadata["pytorch_version"] == torch.__version__.split("+")[0]
    assert metadata["numpy_version"] == np.__version__
    optional = metadata["optional_packages_version"]
    assert {"nibabel", "pytorch-ignite", "monai-prune", "torch-pruning", INT8} <= set(optional)
    assert optional["nibabel"] == nib.__version__
    readme = open(os.path.join(zoo["out"], "docs", "README.md")).read()
    assert "## Measured metrics" in readme and "source_published_eval_metrics" in readme


@pytest.mark.slow
def test_no_local_path_is_carried_into_the_compressed_bundle(zoo):
    out, data = zoo["out"], zoo["data"]
    for name in ("inference.json", "train.json"):
        assert _config(out, name)["dataset_dir"] == ZOO_DATASET_DIR  # the bundle's own default
    assert _config(out, "metadata.json")["compression"]["recipe_overrides"]["dataset_dir"].startswith("<local")
    assert len(zoo["written"]) > 10
    for path in zoo["written"]:  # every file compress-bundle wrote, model.ts's embedded configs included
        with open(path, "rb") as f:
            assert b"home_me_data" not in f.read(), path


@pytest.mark.slow
def test_the_int8_model_is_served_by_its_config(zoo, tmp_path):
    out, data = zoo["out"], zoo["data"]
    metadata = _config(out, "metadata.json")
    int8 = metadata["compression"]["int8"]
    assert int8["config"] == "inference_int8.json" and int8["backend"] == INT8
    assert "inference_int8.json" in metadata["config_files"]
    log = stock_cli(out, "--config_file", "['configs/inference.json','configs/inference_int8.json']",
                    "--dataset_dir", data, "--output_dir", "$@bundle_root + '/eval_int8'")
    assert f"network: models/{int8['file']} on {INT8} (int8, sha256" in log and "verified" in log
    preds = sorted(glob.glob(os.path.join(out, "eval_int8", "*", "*_trans.nii.gz")))
    assert len(preds) == 2
    fp32 = sorted(glob.glob(os.path.join(out, "eval", "*", "*_trans.nii.gz")))
    if len(fp32) == 2:  # the fp32 inference of the first test ran: int8 agrees with it voxel-wise
        for a, b in zip(preds, fp32):
            assert (np.asarray(nib.load(a).dataobj) == np.asarray(nib.load(b).dataobj)).mean() > 0.95
    readme = open(os.path.join(out, "docs", "README.md")).read()
    assert "configs/inference_int8.json" in readme
    # the int8 network is the deploy operator's choice, verified: a modified int8 file is refused
    from monai_prune.bundle_configs import RuntimeNetwork

    tampered = str(tmp_path / "tampered")
    shutil.copytree(out, tampered)
    with open(os.path.join(tampered, "models", int8["file"]), "ab") as f:
        f.write(b"x")
    with pytest.raises(InputError, match="sha256"):
        RuntimeNetwork(tampered)


def _suggestions(message):
    """The options after "Use " in an error message, one list of arguments per suggestion."""
    match = re.search(r"Use (.*?) \(nothing was run\)", message)
    assert match, message
    return [shlex.split(s) for s in match.group(1).split(", or ")]


@pytest.mark.parametrize("args", [["--epochs", "2"], ["--epochs", "1"], ["--epochs", "3", "--set", "prune#end_epoch=2"],
                                  ["--set", "prune#end_epoch=900"]])
def test_schedule_is_checked_before_anything_runs_and_its_suggestions_pass(tmp_path, capsys, args):
    """Checked in --dry-run too (before any training or evaluation), and every suggested fix passes that check."""
    from helpers.bundle_fixture import write_untrained_weights

    src = write_zoo_bundle(str(tmp_path / "spleen"))
    write_untrained_weights(src)
    base = ["compress-bundle", src, "--recipe", "channel_pruning", "--out", str(tmp_path / "out"), "--dry-run",
            "--set", f"prune#input_shape={SHAPE}"]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    fixes = _suggestions(err)
    assert fixes
    for fix in fixes:
        options = list(args)
        for i in range(0, len(fix), 2):  # a suggested option replaces the same option given before
            if fix[i] == "--epochs" and "--epochs" in options:
                options[options.index("--epochs") + 1] = fix[i + 1]
            else:
                options += fix[i:i + 2]
        assert main(base + options) == 0, (fix, capsys.readouterr().err)
        assert "would" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "out")
    # the Python API checks the same before any work
    with pytest.raises(ConfigError, match="nothing was run"):
        compress_bundle(src, "channel_pruning", str(tmp_path / "out2"), epochs=1, dry_run=True)


def test_every_suggested_schedule_fix_passes_the_same_check():
    from monai_prune.bundle_configs import schedule_fixes, schedule_problem

    for start in (0, 1, 3, -1, None):
        for end in (0, 1, 2, 10, -2):
            for frequency in (1, 2, 0):
                for max_epochs in (1, 2, 3, 5):
                    if schedule_problem(start, end, frequency, max_epochs) is None:
                        continue
                    for fix in schedule_fixes(start, end, frequency, max_epochs):
                        values = {"start_epoch": start, "end_epoch": end, "frequency": frequency,
                                  "epochs": max_epochs}
                        for option, value in re.findall(r"--(?:set prune#)?(\w+)[ =](-?\d+)", fix):
                            values[option] = int(value)
                        assert schedule_problem(values["start_epoch"], values["end_epoch"], values["frequency"],
                                                values["epochs"]) is None, (start, end, frequency, max_epochs, fix)
