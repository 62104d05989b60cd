"""int8 sensitivity, one layer at a time on ONNX Runtime: a small 2D segmentation net, trained briefly on MONAI's
synthetic circles, with one layer made int8-hostile on purpose. The analysis must find that layer, suggest keeping
it fp32, and ``quantize(keep_fp32=...)`` must then recover the metric; rows, cache, report and errors are checked."""

import copy
import importlib
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import create_test_image_2d
from torch import nn

from monai_prune.errors import ConfigError, InputError
from monai_prune.measure import count_macs
from monai_prune.quantization import (CalibrationSet, QuantSensitivityResult, calibration_data,
                                      quantization_sensitivity, quantize)
from monai_prune.quantization.sensitivity import ALL_LAYERS

LAYERS = ["conv1", "conv2", "conv3", "head"]


class Net(nn.Module):
    """Three 3x3 convolutions and a 1x1 head, two classes."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))))


def _images(n, seed):
    pairs = [create_test_image_2d(32, 32, num_objs=4, rad_max=8, rad_min=3, noise_max=0.3,
                                  random_state=np.random.RandomState(seed + i)) for i in range(n)]
    return torch.as_tensor(np.stack([p[0] for p in pairs]))[:, None].float(), torch.as_tensor(
        np.stack([p[1] for p in pairs]) > 0).long()


@pytest.fixture(scope="module")
def setup():
    """The net, made head-sensitive before 40 Adam steps of training: conv3's channel 0 is dead (weights 0, bias
    -0.1, so ReLU gives 0) and the head weighs it 1000. In fp32 that weight multiplies zeros (and, with a zero
    gradient, training leaves it alone); in int8 it sets the head's per-output-channel weight scale to 1000/127,
    so every real weight of the head rounds to 0."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small trains in a second on one thread, and can take 20 s on a busy two
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Net()
        with torch.no_grad():
            net.conv3.weight[0], net.conv3.bias[0], net.head.weight[:, 0] = 0.0, -0.1, 1000.0
        images, labels = _images(12, 0)
        optimizer = torch.optim.Adam(net.parameters(), 1e-2)
        for _ in range(40):
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.set_num_threads(threads)
    net.eval()
    assert float(net.head.weight[:, 0].detach().min()) == 1000.0  # the trap survived training
    calibration = calibration_data(list(images), 8)
    val_images, val_labels = _images(6, 100)
    with torch.no_grad():
        reference = net(val_images).argmax(1)
    return net, calibration, val_images, val_labels, reference


class Evaluate:
    """Foreground Dice against the labels and argmax agreement with torch fp32, on 6 held-out images; counts calls."""

    def __init__(self, images, labels, reference):
        self.images, self.labels, self.reference, self.calls = images, labels, reference, 0

    def __call__(self, predictor):
        self.calls += 1
        pred = predictor(self.images).argmax(1)
        inter = int(((pred == 1) & (self.labels == 1)).sum())
        dice = 2 * inter / max(int((pred == 1).sum()) + int((self.labels == 1).sum()), 1)
        return {"dice": dice, "agreement": float((pred == self.reference).float().mean())}


@pytest.fixture(scope="module")
def analysis(setup, tmp_path_factory):
    net, calibration, images, labels, reference = setup
    cache = tmp_path_factory.mktemp("qsens") / "cache.json"
    before = copy.deepcopy(net.state_dict())
    evaluate = Evaluate(images, labels, reference)
    result = quantization_sensitivity(net, calibration, evaluate, cache=cache, progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the caller's net is untouched
    return result, evaluate, cache


def test_one_row_per_layer_real_int8_and_mac_shares(setup, analysis):
    net, *_ = setup
    result, evaluate, _ = analysis
    assert result.layers == LAYERS and [row["layer"] for row in result.table] == LAYERS
    assert evaluate.calls == result.evaluations == 1 + len(LAYERS) + 1  # fp32, each layer, all layers
    for row in result.table:  # each artifact runs exactly its own layer int8 (read back from the QDQ model)
        assert row["nodes"] == [f"/{row['layer']}/Conv"] and row["int8_nodes"] == row["nodes"]
    assert result.all_int8["layer"] == ALL_LAYERS and len(result.all_int8["int8_nodes"]) == len(LAYERS)
    _, per_layer = count_macs(net, setup[1].samples[0], per_layer=True)
    assert [row["macs"] for row in result.table] == [per_layer[n] for n in LAYERS]
    assert sum(row["macs_fraction"] for row in result.table) == pytest.approx(1.0)
    assert result.fp32["agreement"] == pytest.approx(1.0, abs=1e-4)  # fp32 on ONNX Runtime = torch


def test_the_int8_hostile_layer_is_found_kept_fp32_and_the_metric_recovers(setup, analysis, tmp_path):
    net, calibration, images, labels, reference = setup
    result, _, _ = analysis
    deltas = result.deltas("dice")
    print("Δdice per layer:", {k: round(v, 4) for k, v in deltas.items()}, "all int8:",
          round(result.all_int8["delta"]["dice"], 4), "fp32:", round(result.fp32["dice"], 4))
    assert result.ranked("dice")[0] == "head" and deltas["head"] < -0.3
    assert all(deltas[n] > -0.05 for n in LAYERS if n != "head")
    assert result.all_int8["delta"]["dice"] < -0.3
    suggested = result.suggest_keep_fp32(0.05)
    assert suggested == ["head"] and result.suggest_keep_fp32(0.05, metric="agreement") == ["head"]
    assert result.suggest_keep_fp32(1.0) == []
    evaluate = Evaluate(images, labels, reference)
    everything = quantize(net, calibration, backend="onnxruntime", repeats=1, out_dir=str(tmp_path / "all"))
    kept = quantize(net, calibration, backend="onnxruntime", keep_fp32=suggested, repeats=1,
                    out_dir=str(tmp_path / "kept"))
    assert kept.fp32_layers == ["head"] and sorted(kept.int8_layers) == ["conv1", "conv2", "conv3"]
    all_int8, recovered = evaluate(everything.predictor("int8")), evaluate(kept.predictor("int8"))
    print("quantize(): all int8", all_int8, "keep_fp32=head", recovered)
    # the reference row is what quantize() gives (ranges calibrated once there, per call here: the same model)
    assert all_int8 == pytest.approx(result.all_int8["metrics"], abs=1e-9)
    assert recovered["dice"] > all_int8["dice"] + 0.3 and recovered["dice"] > result.fp32["dice"] - 0.05


def test_cached_rerun_evaluates_nothing_and_a_fresh_run_calibrates_once(setup, analysis, monkeypatch):
    net, calibration, images, labels, reference = setup
    result, _, cache = analysis
    again = Evaluate(images, labels, reference)
    rerun = quantization_sensitivity(net, calibration, again, cache=cache, progress=False)
    assert again.calls == 0 and rerun.evaluations == 0
    assert rerun.table == result.table and rerun.all_int8 == result.all_int8 and rerun.fp32 == result.fp32
    subset = quantization_sensitivity(net, calibration, again, layers=["head"], cache=cache, progress=False)
    assert again.calls == 0 and subset.layers == ["head"] and subset.table == result.table[-1:]
    # other weights are another network: measured afresh
    changed = copy.deepcopy(net)
    with torch.no_grad():
        changed.conv1.bias += 0.01
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not the function
    calibrations = []
    create_calibrator = ort_quantize.create_calibrator
    monkeypatch.setattr(ort_quantize, "create_calibrator",
                        lambda *a, **k: calibrations.append(1) or create_calibrator(*a, **k))
    fresh = quantization_sensitivity(changed, calibration, again, layers=["conv1", "head"], cache=cache, progress=False)
    assert again.calls == fresh.evaluations == 4  # fp32, all int8, conv1, head
    if "calibration_cache_path" in inspect.signature(ort_quantize.quantize_static).parameters:
        assert len(calibrations) == 1, calibrations  # three int8 models from one calibration pass


def test_json_markdown_and_plot(analysis, tmp_path):
    result, _, _ = analysis
    loaded = QuantSensitivityResult.load(result.to_json(tmp_path / "qsens.json"))
    assert loaded.table == result.table and loaded.all_int8 == result.all_int8 and loaded.backend == "onnxruntime"
    assert loaded.suggest_keep_fp32(0.05) == ["head"]
    text = result.to_markdown()
    lines = text.splitlines()
    assert ALL_LAYERS in text and "Δdice" in text and "Δagreement" in text and "MACs" in text
    assert lines[4].startswith(f"| **{ALL_LAYERS}**") and lines[5].startswith("| `head`")  # most sensitive first
    png = result.plot(tmp_path / "qsens.png", max_delta=0.05)
    with open(png, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ConfigError, match="metric"):
        result.to_markdown("accuracy")
    with pytest.raises(ConfigError, match="max_delta"):
        result.suggest_keep_fp32(-0.1)
    with pytest.raises(InputError, match="not a quantization sensitivity"):
        (tmp_path / "other.json").write_text("{}")
        QuantSensitivityResult.load(tmp_path / "other.json")


def test_clear_errors(setup, analysis):
    net, calibration, images, labels, reference = setup
    _, _, cache = analysis
    evaluate = Evaluate(images, labels, reference)
    with pytest.raises(ConfigError, match="nope"):
        quantization_sensitivity(net, calibration, evaluate, layers=["conv1", "nope"], cache=cache, progress=False)
    with pytest.raises(ConfigError, match="empty"):
        quantization_sensitivity(net, CalibrationSet([], "0"), evaluate, progress=False)
    with pytest.raises(ConfigError, match="backend"):
        quantization_sensitivity(net, calibration, evaluate, backend="tensorrt", progress=False)
    with pytest.raises(InputError, match="calibration_data"):
        quantization_sensitivity(net, list(calibration.samples), evaluate, progress=False)
    with pytest.raises(InputError, match="evaluate returned"):
        quantization_sensitivity(net, calibration, lambda p: "good", layers=["head"], progress=False)
    assert evaluate.calls == 0


def test_monai_unet_blocks_and_onnx_node_names():
    """A MONAI 3D UNet (BatchNorm folded into its convolutions, transposed convolutions): a block name quantizes all
    its layers at once, an ONNX node name its one layer; rows carry the torch module's MACs."""
    from monai.networks.nets import UNet

    net = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1, norm="batch").eval()
    calibration = calibration_data([torch.rand(1, 16, 16, 16) for _ in range(3)], 3)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        reference = net(x).argmax(1)

    def agreement(predictor):
        return {"agreement": float((predictor(x).argmax(1) == reference).float().mean())}

    node = "/model/model.2/model.2.0/conv/ConvTranspose"
    result = quantization_sensitivity(net, calibration, agreement, layers=["model.1.submodule", node], progress=False)
    block, single = result.table
    assert len(block["nodes"]) == 6 and block["int8_nodes"] == block["nodes"]
    assert single["nodes"] == single["int8_nodes"] == [node]
    _, per_layer = count_macs(net, calibration.samples[0], per_layer=True)
    assert block["macs"] == sum(m for name, m in per_layer.items() if name.startswith("model.1.submodule."))
    assert single["macs"] == per_layer["model.2.0.conv"] and 0 < single["macs_fraction"] < 1
    assert len(result.all_int8["int8_nodes"]) == 10  # every Conv and ConvTranspose of the UNet
    assert all(-0.1 < row["delta"]["agreement"] <= 0.01 for row in result.table)


def test_a_mid_network_layer_kept_fp32_really_runs_fp32(setup):
    """The same trap in the middle (conv1's channel 0 dead, conv2 weighs it 1000): the analysis names conv2, and
    keep_fp32=["conv2"] recovers the Dice through the int8 Predictor. ONNX Runtime's WeightBiasQuantization would
    quietly quantize a kept Conv between DequantizeLinear and QuantizeLinear; monai_prune's sessions disable it."""
    net, calibration, images, labels, _ = setup
    net = copy.deepcopy(net)
    with torch.no_grad():
        net.conv1.weight[0], net.conv1.bias[0], net.conv2.weight[:, 0] = 0.0, -0.1, 1000.0
        net.head.weight[:, 0] = net.conv3.weight.new_tensor(0.0)  # the head trap off: one hostile layer
        reference = net(images).argmax(1)
    evaluate = Evaluate(images, labels, reference)
    result = quantization_sensitivity(net, calibration, evaluate, progress=False)
    assert result.suggest_keep_fp32(0.05) == ["conv2"]
    everything = evaluate(quantize(net, calibration, backend="onnxruntime", repeats=1).predictor("int8"))
    kept = evaluate(quantize(net, calibration, backend="onnxruntime", keep_fp32=["conv2"], repeats=1).predictor("int8"))
    assert kept["agreement"] > 0.98 and kept["agreement"] - everything["agreement"] > 0.1
