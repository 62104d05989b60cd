"""Every file monai-prune writes keeps the user's umask (issue 15): temporary files are 0600 and temporary folders
0700 when created, so artifacts written through them must be given the mode a plain ``open()`` would have had."""

import json
import os
import stat

import pytest
import torch

from monai_prune.cli import main

NET = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
       "channels": [4, 8], "strides": [2], "num_res_units": 1}


@pytest.fixture
def umask():
    previous = os.umask(0o022)

    def set_mask(mask):
        os.umask(mask)
        return mask

    yield set_mask
    os.umask(previous)


def _modes(folder):
    return {os.path.relpath(os.path.join(d, f), folder): stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode)
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_prune_artifacts_follow_the_umask(tmp_path, umask, mask):
    from monai.bundle import ConfigParser

    umask(mask)
    weights = tmp_path / "model.pt"
    torch.save(ConfigParser({"n": NET}).get_parsed_content("n").state_dict(), weights)
    out = tmp_path / "out"
    assert main(["prune", "--network", json.dumps(NET), "--weights", str(weights), "--input-shape", "1,1,32,32",
                 "--ratio", "0.5", "--out", str(out)]) == 0
    modes = _modes(out)
    assert {"plan.json", "model.pt", "model.ts", "model.onnx", "summary.json"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~mask}, {k: oct(v) for k, v in modes.items()}
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~mask


def test_int8_and_openvino_artifacts_follow_the_umask(tmp_path, umask):
    from monai.networks.nets import UNet

    from monai_prune.quantization import calibration_data, quantize

    umask(0o022)
    net = UNet(2, 1, 2, (4, 8), (2,), num_res_units=1).eval()
    items = [{"image": torch.rand(1, 32, 32), "label": (torch.rand(1, 32, 32) > 0.5).float()} for _ in range(2)]
    cal = calibration_data(items, 2, roi_size=(32, 32))
    for backend in ("onnxruntime", "openvino"):
        quantize(net, cal, backend=backend, out_dir=str(tmp_path / backend), repeats=1)
        modes = _modes(tmp_path / backend)
        assert "quantization.json" in modes and len(modes) >= 3
        assert set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items()}
