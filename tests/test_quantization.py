"""int8 post-training quantization: calibration from MONAI-style data, real int8 artifacts from ONNX Runtime and
OpenVINO/NNCF, per-layer report, fidelity and speed measured, tolerance-driven fp32 fallback, clear errors."""

import json
import os

import numpy as np
import pytest
import torch
from monai.data import Dataset, create_test_image_2d, create_test_image_3d
from monai.inferers import sliding_window_inference

import monai_prune as mp
from monai_prune.errors import ConfigError, InputError, QuantizationError
from monai_prune.quantization import QuantizationConfig, calibration_data, quantize
from helpers.networks import small_unet

ROI = (32, 32, 32)


def _items(n=4, size=48, seed=0):
    items = []
    for i in range(n):
        image, label = create_test_image_3d(size, size, size, rad_max=10, rad_min=4, num_seg_classes=1,
                                            random_state=np.random.RandomState(seed + i))
        items.append({"image": torch.as_tensor(image)[None], "label": torch.as_tensor(label)[None]})
    return items


@pytest.fixture(scope="module")
def data():
    items = _items()
    return calibration_data(items, 6, roi_size=ROI), calibration_data(_items(seed=50), 3, roi_size=ROI, seed=1)


def test_calibration_patches_follow_the_foreground_share_and_are_identified_by_content():
    items = _items()
    all_fg = calibration_data(Dataset(items), 8, roi_size=ROI, foreground_ratio=1.0)
    assert len(all_fg) == 8 and all_fg.shape == (1, 1, *ROI) and all_fg.foreground_patches == 8
    assert all_fg.describe()["sha256"] == all_fg.sha256 and "image" not in json.dumps(all_fg.describe())
    none_fg = calibration_data(items, 8, roi_size=ROI, foreground_ratio=0.0)
    assert none_fg.foreground_patches == 0
    again = calibration_data(items, 8, roi_size=ROI, foreground_ratio=1.0)
    assert again.sha256 == all_fg.sha256  # reproducible for a seed
    assert calibration_data(items, 8, roi_size=ROI, foreground_ratio=1.0, seed=3).sha256 != all_fg.sha256
    # foreground-centred patches contain the (single) foreground voxel; random ones mostly miss it
    image, label = torch.zeros(1, 64, 64, 64), torch.zeros(1, 64, 64, 64)
    image[0, 3, 3, 3], label[0, 3, 3, 3] = 5.0, 1
    centred = calibration_data([{"image": image, "label": label}], 6, roi_size=(16, 16, 16), foreground_ratio=1.0)
    assert all(float(s.max()) == 5.0 for s in centred)
    anywhere = calibration_data([{"image": image, "label": label}], 6, roi_size=(16, 16, 16), foreground_ratio=0.0)
    assert sum(float(s.max()) == 5.0 for s in anywhere) < 6
    # images smaller than the roi are zero-padded
    small = calibration_data([torch.ones(1, 20, 20, 20)], 1, roi_size=ROI)
    assert small.shape == (1, 1, *ROI) and float(small.samples[0].sum()) == 20 ** 3
    # whole images when no roi is given
    assert calibration_data([torch.rand(1, 16, 16, 16)] * 2, 3).shape == (1, 1, 16, 16, 16)


def test_bad_calibration_input_fails_before_quantization():
    with pytest.raises(ConfigError, match="empty"):
        calibration_data([], 4, roi_size=ROI)
    with pytest.raises(ConfigError, match="num_samples"):
        calibration_data(_items(1), 0, roi_size=ROI)
    bad = torch.rand(1, 40, 40, 40)
    bad[0, 3, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        calibration_data([bad], 2, roi_size=ROI)
    with pytest.raises(InputError, match="dimensions"):
        calibration_data([torch.rand(1, 40, 40)], 2, roi_size=ROI)
    with pytest.raises(InputError, match="different shapes"):
        calibration_data([torch.rand(1, 16, 16, 16), torch.rand(1, 20, 20, 20)], 2)
    with pytest.raises(InputError, match="calibration_data"):
        quantize(small_unet(), [torch.rand(1, 1, *ROI)])


def test_onnxruntime_int8_reports_layers_fidelity_and_speed(data, tmp_path):
    cal, val = data
    net = small_unet().eval()
    result = mp.quantize(net, cal, QuantizationConfig(backend="onnxruntime", keep_fp32=["model.2"],
                                                       out_dir=str(tmp_path)), validation=val.samples)
    assert result.path.endswith("model_int8.onnx") and os.path.isfile(result.path)
    assert result.int8_layers and all(not n.startswith("model.2.") for n in result.int8_layers)
    assert {"model.2.0.conv", "model.2.1.conv.unit0.conv"} <= set(result.fp32_layers)
    modules = dict(net.named_modules())
    assert all(n in modules for n in result.int8_layers + result.fp32_layers)  # reported by torch module name
    assert result.size_bytes["fp32"] / result.size_bytes["int8"] > 2.5
    f = result.fidelity
    assert 0.9 < f["agreement"] <= 1.0 and 0 < f["max_abs_logit"] < 1.0 and set(f["dice_vs_fp32"]) == {"0", "1"}
    assert result.latency_s["int8"] > 0 and result.latency_s["fp32"] > 0
    assert result.slower_than_fp32 == (result.latency_s["int8"] > result.latency_s["fp32"])
    assert any("SLOWER" in w for w in result.warnings) == result.slower_than_fp32
    assert result.recommended == (result.fp32_path if result.slower_than_fp32 else result.path)
    saved = json.loads(open(result.report_path).read())
    assert saved["calibration"]["sha256"] == cal.sha256 and saved["int8_layers"] == result.int8_layers
    # the int8 file runs through the foundation's Predictor in MONAI's sliding-window inferer
    volume = torch.as_tensor(_items(1, size=48, seed=9)[0]["image"])[None].float()
    with torch.no_grad():
        int8_out = sliding_window_inference(volume, ROI, 2, result.predictor("int8"), overlap=0.25)
        ref = sliding_window_inference(volume, ROI, 2, net, overlap=0.25)
    assert int8_out.shape == ref.shape
    assert (int8_out.argmax(1) == ref.argmax(1)).float().mean() > 0.9
    # the user's model was not touched
    assert not any(m.__class__.__name__.startswith("Quant") for m in net.modules())


def test_openvino_int8_is_real_int8(data, tmp_path):
    pytest.importorskip("nncf")
    cal, val = data
    result = quantize(small_unet().eval(), cal, backend="openvino", out_dir=str(tmp_path), validation=val.samples)
    assert result.backend == "openvino" and result.path.endswith(".xml") and os.path.isfile(result.path[:-4] + ".bin")
    assert len(result.int8_layers) >= 10  # the convolutions run int8 (FakeQuantize on their inputs)
    assert result.fidelity["agreement"] > 0.95
    assert result.size_bytes["fp32"] / result.size_bytes["int8"] > 2.5
    with torch.no_grad():
        out = result.predictor("int8")(val.samples[0])
    assert tuple(out.shape) == (1, 2, *ROI)


def test_tolerance_drives_fp32_fallback_or_a_clear_failure(data, tmp_path):
    cal, val = data
    net = small_unet().eval()
    base = quantize(net, cal, backend="onnxruntime", out_dir=str(tmp_path / "base"), validation=val.samples)
    assert base.fallback_layers == []
    tol = 0.6 * base.fidelity["max_abs_logit"]
    held = quantize(net, cal, backend="onnxruntime", out_dir=str(tmp_path / "held"), validation=val.samples,
                    max_delta={"max_abs_logit": tol}, max_fallback_layers=18)
    assert held.fallback_layers and held.fidelity["max_abs_logit"] <= tol < base.fidelity["max_abs_logit"]
    assert set(held.fallback_layers) <= set(held.fp32_layers)
    assert len(held.int8_layers) == len(base.int8_layers) - len(held.fallback_layers)
    assert not [f for f in os.listdir(tmp_path / "held") if "probe" in f]  # sensitivity probes cleaned up
    with pytest.raises(QuantizationError, match="most sensitive"):
        quantize(net, cal, backend="onnxruntime", out_dir=str(tmp_path / "never"), validation=val.samples,
                 max_delta={"max_abs_logit": 0.0}, max_fallback_layers=1)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_every_layer_kept_fp32_reproduces_fp32(data, tmp_path, backend):
    """The fallback's limit: with every weighted layer kept, nothing around them (Add, Concat, PReLU, an unfolded
    BatchNorm) stays quantized either, so the "int8" file computes what fp32 computes (issue 20)."""
    cal, val = data
    net = small_unet().eval()
    layers = ["model.0", "model.1", "model.2"]  # whole blocks: every Conv/ConvTranspose of the UNet
    kept = quantize(net, cal, backend=backend, out_dir=str(tmp_path), validation=val.samples, keep_fp32=layers)
    assert kept.int8_layers == [] and len(kept.fp32_layers) == 18
    assert kept.fidelity["max_abs_logit"] <= 1e-5 and kept.fidelity["agreement"] == 1.0
    if backend == "onnxruntime":
        import onnx

        ops = {n.op_type for n in onnx.load(kept.path).graph.node}
        assert not ops & {"QuantizeLinear", "DequantizeLinear"}, ops


def test_bad_quantization_config(data):
    cal, _ = data
    net = small_unet()
    for kwargs, match in (({"backend": "tensorrt"}, "backend must be"), ({"method": "magic"}, "method must be"),
                          ({"backend": "openvino", "method": "entropy"}, "calibrates with"),
                          ({"max_delta": {"hd95": 0.1}}, "max_delta keys"),
                          ({"max_delta": {"auc": 0.1}}, "against labels"),
                          ({"max_delta": {"dice": -1}}, "non-negative"),
                          ({"keep_fp32": ["model.9"]}, "does not have")):
        with pytest.raises(ConfigError, match=match):
            quantize(net, cal, backend=kwargs.pop("backend", "onnxruntime"), **kwargs)
    with pytest.raises(InputError, match="shaped like"):
        quantize(net, cal, backend="onnxruntime", validation=[torch.rand(1, 1, 16, 16, 16)])


def test_fidelity_against_labels_bounds_the_dice_drop(tmp_path):

    items = _items(4, size=32, seed=70)
    cal = calibration_data(items, 4, roi_size=ROI)
    net = small_unet().eval()
    pairs = [(i["image"][None].float(), i["label"]) for i in items]
    result = quantize(net, cal, backend="onnxruntime", out_dir=str(tmp_path), validation=pairs,
                      max_delta={"dice": 1.0})
    f = result.fidelity
    assert set(f["dice_fp32"]) == set(f["dice_int8"]) == {"0", "1"}
    assert f["dice_drop"] == pytest.approx(f["dice_fp32"]["1"] - f["dice_int8"]["1"])
    assert result.fallback_layers == []  # a drop of at most 1.0 always holds
    with pytest.raises(InputError, match="one value per voxel"):
        quantize(net, cal, backend="onnxruntime", validation=[(pairs[0][0], torch.zeros(5))])


def _classifier_data(n, seed):
    """2D images with (class 1) or without (class 0) a bright disc; (1x1x32x32 input, class index) pairs."""
    rng = np.random.RandomState(seed)
    pairs = []
    for i in range(n):
        image = rng.rand(1, 32, 32).astype(np.float32) * 0.3
        if i % 2:
            disc, _ = create_test_image_2d(32, 32, num_objs=1, rad_max=8, rad_min=5, noise_max=0.0, random_state=rng)
            image[0] += disc
        pairs.append((torch.as_tensor(image)[None], torch.tensor(i % 2)))
    return pairs


def test_classifier_fidelity_reports_accuracy_and_auc_against_labels(tmp_path):
    from monai.metrics import compute_roc_auc
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    net = DenseNet(spatial_dims=2, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
                   block_config=(2, 2), bn_size=2)
    train = _classifier_data(16, seed=0)
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(15):  # learns the disc / no-disc task well enough to have a meaningful AUC
        x = torch.cat([p[0] for p in train])
        y = torch.stack([p[1] for p in train])
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    net.eval()
    val = _classifier_data(12, seed=1)
    cal = calibration_data([p[0][0] for p in train], 8)
    result = quantize(net, cal, backend="onnxruntime", out_dir=str(tmp_path), validation=val,
                      max_delta={"accuracy": 1.0, "auc": 1.0})
    f = result.fidelity
    with torch.no_grad():
        logits = torch.cat([net(p[0]) for p in val])
    truth = torch.stack([p[1] for p in val])
    assert f["accuracy_fp32"] == pytest.approx(float((logits.argmax(1) == truth).float().mean()))
    assert f["accuracy_fp32"] > 0.5  # it did learn
    auc1 = float(compute_roc_auc(torch.softmax(logits, 1)[:, 1], truth))
    assert f["auc_fp32"]["1"] == pytest.approx(auc1, abs=1e-3)
    assert set(f["auc_int8"]) == {"0", "1"} and f["samples"] == 12
    assert f["accuracy_drop"] == pytest.approx(f["accuracy_fp32"] - f["accuracy_int8"])
    assert f["auc_drop"] == pytest.approx(max(f["auc_fp32"][c] - f["auc_int8"][c] for c in "01"))
    assert "dice_vs_fp32" not in f
    # tolerances: checked against the measured drops; segmentation-only keys are refused for a classifier
    from monai_prune.quantization.ptq import fidelity_violations

    assert fidelity_violations({**f, "accuracy_drop": 0.25}, {"accuracy": 0.1}) == {"accuracy": pytest.approx(0.15)}
    assert fidelity_violations({**f, "auc_drop": 0.0}, {"auc": 0.0}) == {}
    with pytest.raises(ConfigError, match="does not apply to a classifier"):
        quantize(net, cal, backend="onnxruntime", validation=val, max_delta={"dice": 0.1})
    with pytest.raises(InputError, match="one class index per sample"):
        quantize(net, cal, backend="onnxruntime", validation=[(val[0][0], torch.zeros(4))])
    with pytest.raises(InputError, match="class indices"):
        quantize(net, cal, backend="onnxruntime", validation=[(val[0][0], torch.tensor(5))])


def test_onnxruntime_quantizer_noise_is_not_shown(data, tmp_path, capfd, caplog):
    """ONNX Runtime's quantizer logs through the root logger, a line per 1-D norm weight ("Axis 1 is out-of-range
    for weight ...": it quantizes those per tensor) and advice to run its own pre-processing: nothing our user can
    act on, so none of it reaches the user's console or log."""
    from monai.networks.nets import UNet

    cal, _ = data
    net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=1, norm="instance").eval()  # InstanceNorm: 1-D affine weights
    quantize(net, cal, backend="onnxruntime", out_dir=str(tmp_path))
    shown = "".join(capfd.readouterr()) + caplog.text
    noise = [line for line in shown.splitlines() if "out-of-range for weight" in line or "pre-processing before" in line]
    assert noise == []
