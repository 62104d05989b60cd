"""Exports: TorchScript with embedded files, ONNX checked by ONNX Runtime, atomic writes."""

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

import monai_prune as mp
from monai_prune.errors import ExportError, InputError
from monai_prune.export import export_onnx, export_openvino, export_torchscript, read_torchscript_extra_files
from helpers.networks import small_unet

X = torch.randn(1, 1, 32, 32, 32)


@pytest.fixture(scope="module")
def pruned():
    return mp.prune_channels(small_unet().eval(), X, ratio=0.5)[0]


def test_torchscript_roundtrip_with_bundle_files(pruned, tmp_path):
    meta = {"version": "0.1.0", "network_data_format": {"inputs": {}}}
    result = export_torchscript(pruned, X, tmp_path / "model.ts", extra_files={"metadata.json": meta,
                                                                                   "inference.json": "{}"})
    assert result.max_abs_diff == 0.0 and result.size_bytes == os.path.getsize(tmp_path / "model.ts")
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        assert torch.equal(loaded(X), pruned(X))
        # another spatial size works too (traced convolutions are size-agnostic)
        assert loaded(torch.randn(2, 1, 48, 48, 48)).shape == (2, 2, 48, 48, 48)
    files = read_torchscript_extra_files(tmp_path / "model.ts", ["metadata.json", "inference.json"])
    assert json.loads(files["metadata.json"]) == meta
    # stored the way monai.bundle ckpt_export does: under extra/ in the archive
    import zipfile

    names = zipfile.ZipFile(tmp_path / "model.ts").namelist()
    # ... with the archive's root folder named after the file, where MONAI Deploy looks (<stem>/extra/<config>)
    assert "model/extra/metadata.json" in names and "model/extra/inference.json" in names, names
    assert [p.name for p in tmp_path.iterdir()] == ["model.ts"]  # no temporary left beside it


def test_onnx_dynamic_axes_and_agreement(pruned, tmp_path):
    result = export_onnx(pruned, X, tmp_path / "model.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 48, 48, 48)
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, pruned(x).numpy(), atol=1e-4)


def test_openvino_ir(pruned, tmp_path):
    pytest.importorskip("openvino")
    export_onnx(pruned, X, tmp_path / "model.onnx")
    result = export_openvino(tmp_path / "model.onnx", tmp_path / "model.xml")
    assert os.path.exists(tmp_path / "model.bin") and result.size_bytes > os.path.getsize(tmp_path / "model.xml")
    # fp32 weights: the .bin holds 4 bytes per parameter (fp16 would be 2)
    assert os.path.getsize(tmp_path / "model.bin") >= 4 * mp.count_params(pruned) * 0.95


def test_failed_export_leaves_the_previous_file_untouched(pruned, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous artifact")
    with pytest.raises(ExportError, match="not written"):
        export_onnx(pruned, X, target, atol=-1.0)  # every diff fails a negative tolerance
    assert target.read_bytes() == b"previous artifact"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no temp files left behind


def test_export_argument_errors(pruned, tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        export_torchscript(pruned, X, tmp_path)
    with pytest.raises(InputError, match="example_input"):
        export_onnx(pruned, [1, 2], tmp_path / "m.onnx")
