"""Shipping: Triton model repositories checked with Triton's own ModelConfig proto; MAP-ready app folders."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from monai_prune.bundle import sha256
from monai_prune.deploy.package import check_package, package_app, packager_status
from monai_prune.deploy.triton import check_triton_repository, write_triton_repository
from monai_prune.errors import ConfigError, InputError
from monai_prune.export import export_onnx, export_openvino


def _net():
    from monai.networks.nets import UNet

    return UNet(3, 1, 2, (4, 8), (2,), num_res_units=0).eval()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A tiny 3D UNet in ONNX with dynamic batch and spatial axes (input ``input`` 1 channel, output 2)."""
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(_net(), torch.randn(1, 1, 16, 16, 16), path)
    return str(path)


def _parse(folder):
    text = open(os.path.join(folder, "config.pbtxt"), encoding="utf-8").read()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("max_batch_size", [0, 4])
def test_triton_onnxruntime_repository_matches_the_model(onnx_model, tmp_path, max_batch_size):
    repo = tmp_path / "repo"
    folder = write_triton_repository(onnx_model, repo, "seg", max_batch_size=max_batch_size, instance_count=2,
                                     metadata={"sha256": sha256(onnx_model), "compression": {"macs_ratio": 0.5}})
    assert folder == str(repo / "seg")
    assert sorted(os.listdir(folder)) == ["1", "config.pbtxt"] and os.listdir(repo / "seg" / "1") == ["model.onnx"]
    assert [p for p in os.listdir(repo) if p.startswith(".")] == []  # no temporary folder left behind
    config = _parse(folder)
    assert (config.name, config.backend, config.platform) == ("seg", "onnxruntime", "onnxruntime_onnx")
    assert config.max_batch_size == max_batch_size
    batch = [-1] if max_batch_size == 0 else []  # with batching Triton adds the batch dim itself
    (inp,), (out,) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("input", model_config_pb2.TYPE_FP32, batch + [1, -1, -1, -1])
    assert (out.name, out.data_type, list(out.dims)) == ("output", model_config_pb2.TYPE_FP32,
                                                         batch + [2, -1, -1, -1])
    group = config.instance_group[0]
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["sha256"].string_value == sha256(onnx_model)
    assert json.loads(config.parameters["compression"].string_value) == {"macs_ratio": 0.5}
    info = check_triton_repository(repo)
    assert info["seg"]["versions"] == [1] and info["seg"]["model_checked"]

    # the declared shapes are what the model file really takes and gives
    dims = list(inp.dims) if max_batch_size == 0 else [-1] + list(inp.dims)
    shape = [2] + [d if d > 0 else 16 for d in dims[1:]]  # 2 images (<= max_batch_size), 16^3 voxels
    session = ort.InferenceSession(str(repo / "seg" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["output"], {"input": np.random.rand(*shape).astype(np.float32)})
    declared = list(out.dims) if max_batch_size == 0 else [-1] + list(out.dims)
    assert got.dtype == np.float32 and len(got.shape) == len(declared) and got.shape == (2, 2, 16, 16, 16)
    assert all(d in (-1, g) for d, g in zip(declared, got.shape))


def test_triton_openvino_layouts(onnx_model, tmp_path):
    ir = export_openvino(onnx_model, tmp_path / "ir" / "model.xml").path
    repo = tmp_path / "repo"
    write_triton_repository(ir, repo, "seg_ir", backend="openvino", max_batch_size=2)
    write_triton_repository(onnx_model, repo, "seg_onnx", backend="openvino")
    assert sorted(os.listdir(repo / "seg_ir" / "1")) == ["model.bin", "model.xml"]
    assert os.listdir(repo / "seg_onnx" / "1") == ["model.onnx"]
    ir_config, onnx_config = _parse(repo / "seg_ir"), _parse(repo / "seg_onnx")
    assert (ir_config.backend, ir_config.platform, ir_config.default_model_filename) == ("openvino", "", "")
    assert list(ir_config.input[0].dims) == [1, -1, -1, -1]
    assert onnx_config.default_model_filename == "model.onnx"  # the backend's default is model.xml
    info = check_triton_repository(repo)
    assert info["seg_ir"]["model_file"] == "model.xml" and info["seg_onnx"]["model_file"] == "model.onnx"


def test_triton_writer_refuses(onnx_model, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repository(onnx_model, repo, "seg")
    before = _parse(repo / "seg")
    with pytest.raises(InputError, match="already exists"):
        write_triton_repository(onnx_model, repo, "seg", max_batch_size=8)
    assert _parse(repo / "seg") == before
    with pytest.raises(ConfigError, match="backend"):
        write_triton_repository(onnx_model, repo, "x", backend="tensorrt")
    with pytest.raises(ConfigError, match="kind"):
        write_triton_repository(onnx_model, repo, "x", kind="GPU")
    with pytest.raises(ConfigError, match="model name"):
        write_triton_repository(onnx_model, repo, "../x")
    with pytest.raises(InputError, match="serves ONNX"):
        write_triton_repository(str(repo / "seg" / "config.pbtxt"), repo, "x")
    fixed = export_onnx(_net(), torch.randn(1, 1, 16, 16, 16), tmp_path / "fixed.onnx", dynamic_batch=False).path
    with pytest.raises(ConfigError, match="dynamic first"):
        write_triton_repository(fixed, repo, "x", max_batch_size=4)
    assert sorted(os.listdir(repo)) == ["seg"]


def _break_missing_config(model):
    os.remove(model / "config.pbtxt")


def _break_name(model):
    text = (model / "config.pbtxt").read_text().replace('name: "seg"', 'name: "other"')
    (model / "config.pbtxt").write_text(text)


def _break_version_folder(model):
    shutil.rmtree(model / "1")


def _break_model_file(model):
    os.remove(model / "1" / "model.onnx")


def _break_input_name(model):
    text = (model / "config.pbtxt").read_text().replace('name: "input"', 'name: "image"')
    (model / "config.pbtxt").write_text(text)


def _break_syntax(model):
    (model / "config.pbtxt").write_text('name: "seg"\nmax_batch_size: four\n')


def _break_version_name(model):
    os.rename(model / "1", model / "v1")


@pytest.mark.parametrize("damage, message", [
    (_break_missing_config, "config.pbtxt is missing"),
    (_break_name, "holds a config named 'other'"),
    (_break_version_folder, "no version folder"),
    (_break_model_file, "version 1 has no model.onnx"),
    (_break_input_name, "input 'image' in config.pbtxt is not an input"),
    (_break_syntax, "not a valid Triton model configuration"),
    (_break_version_name, "'v1' is not a positive integer"),
])
def test_check_triton_repository_finds(onnx_model, tmp_path, damage, message):
    repo = tmp_path / "repo"
    write_triton_repository(onnx_model, repo, "seg")
    damage(repo / "seg")
    with pytest.raises(InputError, match=message):
        check_triton_repository(repo)


# ---------------------------------------------------------------------------------------------------- packaging
APP = '''"""A stand-in Deploy app: reports which monai_prune it imported."""
import argparse
import os

import helpers  # noqa: F401  (the app's own module)
import monai_prune

parser = argparse.ArgumentParser()
parser.add_argument("-o", "--output", required=True)
args = parser.parse_args()
os.makedirs(args.output, exist_ok=True)
with open(os.path.join(args.output, "imported_from.txt"), "w") as f:
    f.write(monai_prune.__file__)
print("monai_prune imported from", monai_prune.__file__)
'''


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, onnx_model):
    """A fake compressed bundle: model.onnx + TorchScript model.ts listed with sha256 in metadata.json."""
    root = tmp_path_factory.mktemp("bundles") / "spleen_ct_segmentation_compressed"
    (root / "models").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "docs").mkdir()
    shutil.copy(onnx_model, root / "models" / "model.onnx")
    net = _net()
    torch.jit.trace(net, torch.randn(1, 1, 16, 16, 16)).save(str(root / "models" / "model.ts"))
    files = {n: sha256(str(root / "models" / n)) for n in ("model.onnx", "model.ts")}
    (root / "configs" / "inference.json").write_text(json.dumps({"roi_size": [16, 16, 16]}))
    configs = {"inference.json": sha256(str(root / "configs" / "inference.json"))}
    (root / "configs" / "metadata.json").write_text(json.dumps({"version": "0.2.0", "compression": {"recipe": "x"},
                                                                "model_files": files, "config_files": configs}))
    (root / "docs" / "README.md").write_text("# compressed\n")
    (root / "LICENSE").write_text("Apache-2.0\n")
    return root


@pytest.fixture
def app_dir(tmp_path):
    app = tmp_path / "my_app"
    (app / "__pycache__").mkdir(parents=True)
    (app / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"stale")
    (app / "outputs").mkdir()
    (app / "outputs" / "old.nii.gz").write_bytes(b"old")
    (app / "app.py").write_text(APP)
    (app / "helpers.py").write_text("import scipy\n")
    (app / "ops").mkdir()
    (app / "ops" / "__init__.py").write_text("from PIL import Image\n")
    (app / "notes.md").write_text("notes\n")
    return app


def _what_is_installed():
    """What a MAP build needs, looked up here independently of ``packager_status``: a Docker client whose daemon
    answers, holoscan-cli <= 4.2 (4.3 removed MAP packaging) and its ``monai-deploy``/``holoscan`` command."""
    import importlib.metadata as md

    docker = shutil.which("docker")
    daemon = docker is not None and subprocess.run([docker, "version", "--format", "{{.Server.Version}}"],
                                                   capture_output=True, text=True, timeout=60).stdout.strip() != ""
    try:
        cli = md.version("holoscan-cli")
    except md.PackageNotFoundError:
        cli = None
    bin_dir = os.path.dirname(sys.executable)
    commands = [shutil.which(exe) or shutil.which(exe, path=bin_dir) for exe in ("monai-deploy", "holoscan")]
    return {"docker": docker, "daemon": daemon, "holoscan_cli": cli, "commands": [c for c in commands if c]}


def _check_packager_status(status, found):
    cli = found["holoscan_cli"]
    cli_can_package = cli is not None and tuple(int(p) for p in re.findall(r"\d+", cli)[:2]) <= (4, 2)
    ready = found["daemon"] and cli_can_package and bool(found["commands"])
    assert status["ready"] == ready, (status, found)
    assert status["docker"] == found["docker"] and status["holoscan_cli"] == cli
    if ready:  # Docker and holoscan-cli <= 4.2 here: the build command is the first packager found
        assert status["missing"] == [] and status["message"].startswith("MAP packaging available")
        assert status["command"][0] == found["commands"][0] and status["command"][1] == "package"
        return
    assert status["command"] is None and status["message"].startswith("MAP image not built; missing: ")
    if found["docker"] is None:
        assert "Docker (no `docker` command on PATH)" in status["message"]
    elif not found["daemon"]:
        assert "a running Docker daemon (`docker version` failed" in status["message"]  # a client, no daemon
    else:
        assert "Docker" not in "; ".join(status["missing"])
    if cli is None:
        assert "holoscan-cli<=4.2 (not installed)" in status["message"]
    elif not cli_can_package:
        assert f"holoscan-cli {cli} is installed: 4.3 removed MAP packaging" in status["message"]
    elif not found["commands"]:
        assert f"the `monai-deploy`/`holoscan` command of holoscan-cli {cli} (not on PATH)" in status["message"]
    else:
        assert "holoscan-cli" not in "; ".join(status["missing"])


def _clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def test_package_app_writes_a_checked_map_folder(app_dir, bundle, tmp_path):
    out = tmp_path / "pkg"
    result = package_app(app_dir, out, model=bundle, name="spleen", requirements_extra=["scikit-image>=0.20"])
    assert result["folder"] == str(out) and [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
    files = set(result["files"])
    assert {"app.py", "helpers.py", "ops/__init__.py", "notes.md", "__main__.py", "app.yaml", "requirements.txt",
            "README.md", "models/spleen/configs/metadata.json", "models/spleen/models/model.onnx",
            "models/spleen/models/model.ts", "models/spleen/docs/README.md", "models/spleen/LICENSE"} <= files
    assert not any("__pycache__" in f or f.startswith("outputs") for f in files)
    assert (out / "monai_prune" / "deploy" / "package.py").is_file() and result["vendored"]["files"] > 20
    assert not list((out / "monai_prune").rglob("__pycache__"))
    assert set(result["model"]["files"]) == {"models/model.onnx", "models/model.ts"}

    yaml_text = (out / "app.yaml").read_text()
    for line in ('  version: "0.2.0"', '  inputFormats: ["file"]', '  outputFormats: ["file"]', "  cpu: 2",
                 "  gpu: 0", "  memory: 4Gi"):
        assert line in yaml_text.splitlines()
    assert "gpuMemory" not in yaml_text
    requirements = (out / "requirements.txt").read_text().splitlines()
    import importlib.metadata as md

    for dist in ("torch", "monai", "numpy", "pydicom", "highdicom", "onnxruntime", "openvino", "monai-deploy-app-sdk",
                 "nibabel", "scipy"):  # scipy: imported by the app's helpers.py
        assert f"{dist}=={md.version(dist)}" in requirements
    assert f"pillow=={md.version('pillow')}" in requirements  # imported by the app's ops/ package
    manifest = json.loads((out / "monai_prune_package.json").read_text())
    assert "helpers" not in manifest["not_installed_imports"] and "ops" not in manifest["not_installed_imports"]
    assert "torch-pruning==" + md.version("torch-pruning") in requirements  # imported when monai_prune loads
    assert not any(r.startswith("onnxruntime-gpu") for r in requirements)
    assert ("--extra-index-url https://download.pytorch.org/whl/cpu" in requirements) == ("+cpu" in torch.__version__)
    assert requirements[-1] == "scikit-image>=0.20"
    readme = (out / "README.md").read_text()
    assert "python app.py -i <dicom dir> -o <out dir> -m models/spleen" in readme
    assert "monai-deploy package pkg -c pkg/app.yaml -t pkg:latest --platform x86_64" in readme

    checked = check_package(out)
    assert checked["ok"] and checked["requirements"]["mismatches"] == [] and checked["has_main"]
    assert checked["application"]["title"] and checked["resources"]["memory"] == "4Gi"
    assert set(checked["models"]["spleen"]) == {"model.onnx", "model.ts"}

    status = result["packager"]
    assert status == packager_status()
    _check_packager_status(status, _what_is_installed())


def test_vendored_monai_prune_is_imported_from_the_package(app_dir, bundle, tmp_path):
    out = tmp_path / "pkg"
    package_app(app_dir, out, model=bundle)
    for command in ([sys.executable, "app.py", "-o", str(tmp_path / "run1")],  # python app.py, from the folder
                    [sys.executable, str(out), "-o", str(tmp_path / "run2")]):  # python <folder> (__main__.py)
        done = subprocess.run(command, cwd=out, env=_clean_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    for run in ("run1", "run2"):
        imported = (tmp_path / run / "imported_from.txt").read_text()
        assert imported == str(out / "monai_prune" / "__init__.py")


def test_tampered_models_are_refused(app_dir, bundle, tmp_path):
    out = tmp_path / "pkg"
    package_app(app_dir, out, model=bundle)
    with open(out / "models" / bundle.name / "models" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match="does not match its sha256"):
        check_package(out)

    tampered = tmp_path / "tampered_bundle"
    shutil.copytree(bundle, tampered)
    with open(tampered / "models" / "model.ts", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match="does not match its sha256"):
        package_app(app_dir, tmp_path / "pkg2", model=tampered)
    assert not (tmp_path / "pkg2").exists() and [p for p in os.listdir(tmp_path) if p.startswith(".")] == []

    edited = tmp_path / "edited_bundle"
    shutil.copytree(bundle, edited)
    with open(edited / "configs" / "inference.json", "a") as f:
        f.write(" ")
    with pytest.raises(InputError, match="configs/inference.json does not match its sha256"):
        package_app(app_dir, tmp_path / "pkg3", model=edited)
    assert not (tmp_path / "pkg3").exists()
    package_app(app_dir, tmp_path / "pkg4", model=bundle)
    with open(tmp_path / "pkg4" / "models" / bundle.name / "configs" / "inference.json", "a") as f:
        f.write(" ")
    with pytest.raises(InputError, match="configs/inference.json does not match its sha256"):
        check_package(tmp_path / "pkg4")


def test_single_model_file_and_resources(app_dir, onnx_model, tmp_path):
    out = tmp_path / "pkg"
    result = package_app(app_dir, out, model=onnx_model, name="seg", gpu=1, gpu_memory="6Gi", cpu=4, version="2.1")
    assert result["model"]["kind"] == "file" and list(result["model"]["files"]) == ["model.onnx"]
    yaml_text = (out / "app.yaml").read_text()
    assert "  gpu: 1" in yaml_text and "  gpuMemory: 6Gi" in yaml_text and '  version: "2.1"' in yaml_text
    assert check_package(out)["models"] == {"seg": result["model"]["files"]}
    (out / "models" / "seg" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="does not match its sha256"):
        check_package(out)


def test_package_check_reports_pin_mismatches_and_bad_yaml(app_dir, tmp_path):
    out = tmp_path / "pkg"
    package_app(app_dir, out)
    with open(out / "requirements.txt", "a") as f:
        f.write("numpy==0.0.1\n")
    checked = check_package(out)
    assert not checked["ok"]
    assert {"name": "numpy", "pinned": "0.0.1", "installed": np.__version__} in checked["requirements"]["mismatches"]
    (out / "app.yaml").write_text("application:\n  version: \"1.0\"\nresources:\n  cpu: 1\n  memory: 1Gi\n")
    with pytest.raises(InputError, match="title and version"):
        check_package(out)


def test_package_app_refuses(app_dir, bundle, tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        package_app(app_dir, out, model=bundle)
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
    with pytest.raises(InputError, match="no app.py"):
        package_app(tmp_path, tmp_path / "other")
    with pytest.raises(ConfigError, match="memory"):
        package_app(app_dir, tmp_path / "other", memory="4 gigs")
    with pytest.raises(ConfigError, match="tag"):
        package_app(app_dir, tmp_path / "other", build=True)
    assert not (tmp_path / "other").exists()


def test_build_runs_the_packager_only_where_one_is_installed(app_dir, bundle, tmp_path, monkeypatch):
    status = packager_status()
    _check_packager_status(status, _what_is_installed())
    if not status["ready"]:  # the folder is written, the build is reported as not run, with what is missing
        result = package_app(app_dir, tmp_path / "pkg", build=True, tag="demo:1.0")
        assert result["build"] == {"ran": False, "reason": status["message"]}
        assert (tmp_path / "pkg" / "app.py").is_file()
        return
    # Docker and holoscan-cli <= 4.2 here: the packager is called on the folder (its run is recorded, not executed:
    # a real MAP build pulls base images, which a test must not do)
    import monai_prune.deploy.package as package

    calls, real_run = [], subprocess.run

    def record(command, *args, **kwargs):
        if command[1:2] == ["package"]:
            calls.append(command)
            return subprocess.CompletedProcess(command, 0)
        return real_run(command, *args, **kwargs)  # `docker version` of packager_status

    monkeypatch.setattr(package.subprocess, "run", record)
    out = tmp_path / "pkg"
    result = package_app(app_dir, out, model=bundle, build=True, tag="demo:1.0")
    assert calls == [result["build"]["command"]] and result["build"]["returncode"] == 0
    command = calls[0]
    assert command[:2] == status["command"][:2] and command[2] == str(out)
    assert command[command.index("-c") + 1] == str(out / "app.yaml") and command[command.index("-t") + 1] == "demo:1.0"
    assert command[command.index("-m") + 1] == str(out / "models")


def test_a_ready_packager_is_found_and_called(app_dir, tmp_path, monkeypatch):
    """The other case on any machine: a Docker whose daemon answers and holoscan-cli 4.2 with its `monai-deploy`
    command (stand-ins on PATH that record how they were called) are found, and the build calls the packager."""
    import importlib.metadata as md

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls.txt"
    (fake_bin / "docker").write_text('#!/bin/sh\necho 27.1.1\n')  # `docker version --format ...`: a daemon answers
    (fake_bin / "monai-deploy").write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    for exe in ("docker", "monai-deploy"):
        (fake_bin / exe).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    real_version = md.version
    monkeypatch.setattr(md, "version", lambda dist: "4.2.0" if dist == "holoscan-cli" else real_version(dist))

    status = packager_status()
    found = _what_is_installed()
    assert found["daemon"] and found["holoscan_cli"] == "4.2.0" and status["ready"]
    _check_packager_status(status, found)
    assert status["command"] == [str(fake_bin / "monai-deploy"), "package"]
    out = tmp_path / "pkg"
    result = package_app(app_dir, out, build=True, tag="demo:1.0")
    assert result["build"]["ran"] and result["build"]["returncode"] == 0
    assert calls.read_text().split() == ["package", str(out), "-c", str(out / "app.yaml"), "-t", "demo:1.0",
                                         "--platform", "x86_64"]
