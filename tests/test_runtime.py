"""Predictor: every backend serves the pruned network through sliding_window_inference with the same answer."""

import pytest
import torch
from monai.inferers import sliding_window_inference

import monai_prune as mp
from monai_prune.errors import BackendUnavailableError, ConfigError, InputError
from monai_prune.export import export_onnx, export_torchscript
from monai_prune.runtime import Predictor, available_backends
from helpers.networks import small_unet

ROI = (32, 32, 32)


@pytest.fixture(scope="module")
def pruned():
    return mp.prune_channels(small_unet().eval(), torch.zeros(1, 1, *ROI), ratio=0.5)[0].eval()


@pytest.mark.parametrize("backend", ["torch", "torchscript", "onnxruntime", "openvino"])
def test_backends_agree_under_sliding_window(pruned, backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    volume = torch.rand(1, 1, 56, 48, 40)
    with torch.no_grad():
        expected = sliding_window_inference(volume, ROI, 3, pruned, overlap=0.25)
    predictor = Predictor(pruned, torch.zeros(1, 1, *ROI), backend=backend)
    got = sliding_window_inference(volume, ROI, 3, predictor, overlap=0.25)  # 3 windows a batch, fewer in the last
    assert predictor.backend == backend
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-3
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.999


def test_predictor_from_files(pruned, tmp_path):
    x = torch.zeros(1, 1, *ROI)
    export_torchscript(pruned, x, tmp_path / "model.ts")
    export_onnx(pruned, x, tmp_path / "model.onnx")
    with torch.no_grad():
        expected = pruned(torch.ones(2, 1, *ROI))
    for path, backend in ((tmp_path / "model.ts", "torchscript"), (tmp_path / "model.onnx", "onnxruntime")):
        predictor = Predictor(str(path), backend=backend)
        assert (predictor(torch.ones(2, 1, *ROI)) - expected).abs().max() < 1e-3


def test_auto_picks_the_fastest_measured(pruned):
    predictor = Predictor(pruned, torch.zeros(1, 1, *ROI), backend="auto", candidates=["torch", "onnxruntime"],
                          repeats=2)
    assert set(predictor.timings) == {"torch", "onnxruntime"}
    assert predictor.backend == min(predictor.timings, key=predictor.timings.get)
    assert predictor(torch.zeros(1, 1, *ROI)).shape == (1, 2, *ROI)


def test_auto_with_a_whole_inferer_as_workload(pruned):
    volume = torch.rand(1, 1, 48, 48, 48)
    predictor = Predictor(pruned, torch.zeros(1, 1, *ROI), backend="auto", candidates=["torch", "torchscript"],
                          timing_fn=lambda p: sliding_window_inference(volume, ROI, 2, p), repeats=1)
    assert predictor.backend in ("torch", "torchscript") and len(predictor.timings) == 2


def test_predictor_errors(pruned, tmp_path):
    with pytest.raises(ConfigError, match="backend must be one of"):
        Predictor(pruned, backend="tensorrt-magic")
    with pytest.raises(InputError, match="does not exist"):
        Predictor(str(tmp_path / "missing.onnx"), backend="onnxruntime")
    with pytest.raises(ConfigError, match="example_input"):
        Predictor(pruned, backend="onnxruntime")
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(BackendUnavailableError, match="torch backend"):
        Predictor(str(tmp_path / "model.onnx"), backend="torch")


def test_one_registry_says_what_each_backend_is_and_every_module_asks_it(tmp_path):
    import importlib.util

    from monai_prune.bundle import INT8_BACKENDS as BUNDLE_INT8
    from monai_prune.deploy.models import BACKENDS as DEPLOY_BACKENDS
    from monai_prune.deploy.triton import TRITON_BACKENDS as TRITON
    from monai_prune.quantization.ptq import QUANT_BACKENDS, quant_backend_available
    from monai_prune.runtime import (BACKENDS, INT8_BACKENDS, REGISTRY, TRITON_BACKENDS, Backend, artifact_size,
                                     available_backends, model_files)

    assert BACKENDS == ("torch", "torchscript", "onnxruntime", "openvino")
    assert INT8_BACKENDS == TRITON_BACKENDS == QUANT_BACKENDS == TRITON == ("onnxruntime", "openvino")
    assert BUNDLE_INT8 == INT8_BACKENDS + ("auto",) and DEPLOY_BACKENDS == ("auto", "torchscript", *INT8_BACKENDS)
    assert model_files("a/model.xml") == ["a/model.xml", "a/model.bin"] and model_files("m.onnx") == ["m.onnx"]
    (tmp_path / "m.xml").write_bytes(b"x" * 3)
    (tmp_path / "m.bin").write_bytes(b"y" * 5)
    assert artifact_size(str(tmp_path / "m.xml")) == 8
    assert "torch" in available_backends() and available_backends() == [b for b in BACKENDS if REGISTRY[b].available()]
    missing = Backend("x", ("no_such_package_for_monai_prune",), ".x", int8=True)
    assert not missing.available() and not missing.int8_available()
    has = {p: importlib.util.find_spec(p) is not None for p in ("openvino", "nncf")}
    assert quant_backend_available("openvino") == (has["openvino"] and has["nncf"])
