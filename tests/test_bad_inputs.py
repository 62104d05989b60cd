"""Every bad input is one clear line (issue 15): a wrong kind or value, a wrong input shape, a corrupt model file
or a dense model that is already broken raises one of our errors naming what was wrong, what was expected and
what to do, instead of a raw TypeError, a torch internal or a C++ trace. Files given are left as they were."""

import math
import re
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet

import monai_prune as mp
from monai_prune.errors import ConfigError, InputError, MonaiPruneError
from monai_prune.runtime import Predictor, available_backends
from monai_prune.sparsity import magnitude_masks, nm_masks
from monai_prune.transforms import PruneChannels, SparsifyMagnitude, SparsifyNM

X = torch.randn(1, 1, 16, 16, 16)
THREE_CHANNELS = torch.randn(1, 3, 16, 16, 16)
TWO_D = torch.randn(1, 1, 16, 16)


def tiny_unet() -> UNet:
    return UNet(3, 1, 2, (4, 8), (2,)).eval()


def assert_one_line(error: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(error.value) and isinstance(error.value, MonaiPruneError)


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------- 1, 2: numbers given to prune_channels
@pytest.mark.parametrize("ratio, shown", [("0.5", r"got '0\.5' \(a str\); pass a number"),
                                          (True, r"got True \(a bool\)"), (math.nan, "got nan")])
def test_ratio_of_the_wrong_kind(ratio, shown):
    with pytest.raises(ConfigError, match=r"^ratio must be in \[0, 1\) \(fraction of channels removed per group\), "
                                          + shown) as error:
        mp.prune_channels(tiny_unet(), X, ratio=ratio)
    assert_one_line(error)


def test_no_ratio_says_what_to_give():
    with pytest.raises(ConfigError, match=r"exactly one of ratio \(.*in \[0, 1\)\), target_macs or target_params"):
        mp.prune_channels(tiny_unet(), X, ratio=None)


@pytest.mark.parametrize("key", ["target_macs", "target_params"])
@pytest.mark.parametrize("value, shown", [("x", r"got 'x' \(a str\)"), (-0.5, "got -0.5"), (0, "got 0"),
                                          (True, r"got True \(a bool\)"), (math.nan, "got nan")])
def test_target_of_the_wrong_kind(key, value, shown):
    expected = rf"^{key} must be in \(0, 1\) \(the fraction of the original to keep\), {shown}"
    with pytest.raises(ConfigError, match=expected):
        mp.prune_channels(tiny_unet(), X, **{key: value})
    with pytest.raises(ConfigError, match=expected):  # the network transform checks when a bundle config is parsed
        PruneChannels(example_input=X, **{key: value})


@pytest.mark.parametrize("options, message", [
    ({"round_to": True}, r"round_to must be a positive integer \(e\.g\. 8\), got True"),
    ({"round_to": 2.5}, "round_to must be a positive integer"),
    ({"max_layer_ratio": "0.9"}, r"max_layer_ratio must be in \(0, 1\] .*got '0\.9' \(a str\)"),
    ({"max_layer_ratio": 0}, r"max_layer_ratio must be in \(0, 1\]"),
    ({"layer_ratios": ["model.0.conv"]}, r"layer_ratios must be a dict \{layer name: ratio in \[0, 1\)\}, got a list"),
    ({"layer_ratios": {"model.0.conv": "0.5"}}, r"layer_ratios\['model\.0\.conv'\] must be in \[0, 1\)"),
    ({"ignore": "model.0"}, r"ignore must be a list of layer names, got 'model\.0'; write ignore=\['model\.0'\]"),
    ({"global_pruning": "yes"}, "global_pruning must be True or False, got 'yes'"),
    ({"seed": "7"}, "seed must be an integer, got '7'"),
    ({"importance": ["l1"]}, "importance must be one of"),
])
def test_other_options_of_the_wrong_kind(options, message):
    with pytest.raises(ConfigError, match=message) as error:
        mp.prune_channels(tiny_unet(), X, ratio=0.5, **options)
    assert_one_line(error)
    with pytest.raises(ConfigError, match=message):
        PruneChannels(ratio=0.5, example_input=X, **options)


def test_config_of_the_wrong_kind():
    with pytest.raises(InputError, match="config must be a ChannelPruningConfig, got dict"):
        mp.prune_channels(tiny_unet(), X, config={"ratio": 0.5})


# ----------------------------------------------------------------- 1: numbers given to the sparsity API
@pytest.mark.parametrize("sparsity, shown", [("0.5", r"got '0\.5' \(a str\)"), (True, r"got True \(a bool\)"),
                                             (math.nan, "got nan"), (math.inf, "got inf")])
def test_sparsity_of_the_wrong_kind(sparsity, shown):
    expected = r"^sparsity must be in \[0, 1\) \(the fraction of weights zeroed\), " + shown
    with pytest.raises(ConfigError, match=expected):
        magnitude_masks(tiny_unet(), sparsity)
    with pytest.raises(ConfigError, match=expected):
        SparsifyMagnitude(sparsity)


@pytest.mark.parametrize("n, m", [("2", 4), (2.0, 4), (True, 4), (2, None), (4, 2)])
def test_nm_of_the_wrong_kind(n, m):
    expected = re.escape(f"N:M sparsity needs integers 0 < N < M (e.g. n=2, m=4), got n={n!r}, m={m!r}")
    with pytest.raises(ConfigError, match=expected):
        nm_masks(tiny_unet(), n, m)
    with pytest.raises(ConfigError, match=expected):
        SparsifyNM(n, m)


def test_layers_given_as_one_string():
    for call in (lambda: magnitude_masks(tiny_unet(), 0.5, layers="model.0.conv"),
                 lambda: nm_masks(tiny_unet(), 2, 4, layers="model.0.conv")):
        with pytest.raises(ConfigError, match=r"layers must be a list of layer names, got the string 'model\.0\.conv'; "
                                              r"write layers=\['model\.0\.conv'\]"):
            call()


# ----------------------------------------------------------------- 3: count_macs on an input that does not fit
def test_count_macs_names_the_channels_expected():
    with pytest.raises(InputError, match=r"^the network cannot run on an example_input of shape \(1, 3, 16, 16, 16\): "
                                         r"its first layer 'model\.0\.conv' \(Conv3d\) expects 1 input channel, got 3; "
                                         r"pass a tensor of shape \(B, 1, D, H, W\)$") as error:
        mp.count_macs(tiny_unet(), THREE_CHANNELS)
    assert_one_line(error)
    assert isinstance(error.value.__cause__, RuntimeError)


def test_count_macs_names_the_rank_expected():
    """A 4-D tensor passes the first Conv3d (as an unbatched volume) and fails deep inside: the first layer says why."""
    with pytest.raises(InputError, match=r"example_input of shape \(1, 1, 16, 16\): its first layer 'model\.0\.conv' "
                                         r"\(Conv3d\) expected a 5-D tensor, got a 4-D one; pass a tensor of shape "
                                         r"\(B, 1, D, H, W\)$") as error:
        mp.count_macs(tiny_unet(), TWO_D)
    assert isinstance(error.value.__cause__, RuntimeError)


# ----------------------------------------------------------------- 4, 5: Predictor
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    net = tiny_unet()
    mp.export_torchscript(net, X, folder / "model.ts")
    mp.export_onnx(net, X, folder / "model.onnx")
    if "openvino" in available_backends():
        mp.export_openvino(folder / "model.onnx", folder / "model.xml")
    return folder


def _predictor(backend: str, source: str, files: Path) -> Predictor:
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    if source == "module":
        return Predictor(tiny_unet(), X, backend=backend)
    return Predictor(str(files / source), backend=backend)


@pytest.mark.parametrize("backend, source", [("torch", "module"), ("torchscript", "module"),
                                             ("torchscript", "model.ts"), ("onnxruntime", "model.onnx"),
                                             ("openvino", "model.xml"), ("openvino", "model.onnx")])
def test_predictor_names_the_input_it_expects(backend, source, files):
    predictor = _predictor(backend, source, files)
    shown = "UNet" if source == "module" else re.escape(str(files / source))
    prefix = rf"^Predictor \({backend}, {shown}\) cannot run on an input of shape "
    with pytest.raises(InputError, match=prefix + r"\(1, 3, 16, 16, 16\): the model expects 1 input channel, got 3; "
                                                  r"pass a tensor of shape \(B, 1, D, H, W\)$") as error:
        predictor(THREE_CHANNELS)
    assert_one_line(error)
    with pytest.raises(InputError, match=prefix + r"\(1, 1, 16, 16\): the model expected a 5-D tensor, got a 4-D one"):
        predictor(TWO_D)
    assert predictor(X).shape == (1, 2, 16, 16, 16)  # and a good input still runs


def _truncated(files: Path, tmp_path: Path, name: str, missing: str = "") -> Path:
    """A copy of the exported files in ``tmp_path``, ``name`` cut to half its bytes and ``missing`` left out."""
    for path in files.iterdir():
        if path.name != missing:
            data = path.read_bytes()
            (tmp_path / path.name).write_bytes(data[: len(data) // 2] if path.name == name else data)
    return tmp_path


@pytest.mark.parametrize("backend, source, cut, missing, message", [
    ("torchscript", "model.ts", "model.ts", "",
     r"model\.ts is corrupt or truncated \(RuntimeError: PytorchStreamReader failed reading zip archive.*\); "
     r"export it again with export_torchscript$"),
    ("onnxruntime", "model.onnx", "model.onnx", "",
     r"model\.onnx is corrupt or truncated \(DecodeError: .*\); export it again with export_onnx$"),
    ("openvino", "model.onnx", "model.onnx", "", r"model\.onnx is corrupt or truncated \(DecodeError"),
    ("auto", "model.onnx", "model.onnx", "", r"model\.onnx is corrupt or truncated \(DecodeError"),
    ("openvino", "model.xml", "model.xml", "",
     r"model\.xml \(with model\.bin\) is corrupt or truncated \(RuntimeError: .*\); export it again with "
     r"export_openvino$"),
    ("openvino", "model.xml", "model.bin", "",
     r"model\.xml \(with model\.bin\) is corrupt or truncated \(RuntimeError: Incorrect weights in bin file!\)"),
    ("openvino", "model.xml", "", "model.bin",
     r"model\.xml needs its weights file .*model\.bin, which does not exist; keep the \.bin next to the \.xml"),
])
def test_corrupt_model_file_is_named(backend, source, cut, missing, message, files, tmp_path):
    if backend == "openvino" and "openvino" not in available_backends():
        pytest.skip("openvino not installed")
    folder = _truncated(files, tmp_path, cut, missing)
    before = snapshot(folder)
    with pytest.raises(InputError, match=rf"^{re.escape(str(folder))}/{message}") as error:
        Predictor(str(folder / source), X if backend == "auto" else None, backend=backend)
    assert_one_line(error)
    assert snapshot(folder) == before  # nothing written beside it, nothing changed


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(InputError, match=rf"^model file {re.escape(str(tmp_path))}/model\.ts does not exist; give the "
                                         r"path of a \.ts, \.onnx or \.xml model file"):
        Predictor(str(tmp_path / "model.ts"), backend="torchscript")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- 6: the dense model is already broken
def _same(a: torch.nn.Module, b_state: dict) -> bool:
    return all(torch.allclose(v, b_state[k], equal_nan=True) if v.is_floating_point() else torch.equal(v, b_state[k])
               for k, v in a.state_dict().items())


def test_nan_weight_is_blamed_on_the_dense_model():
    model = tiny_unet()
    with torch.no_grad():
        model.model[1].submodule.conv.weight[0, 0, 0, 0, 0] = math.nan  # the bottom layer, not the first
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match=r"^the dense model already outputs NaN/inf before pruning \(parameter "
                                         r"'model\.1\.submodule\.conv\.weight' holds non-finite values\); reload a "
                                         r"good checkpoint \(or fix the example_input\) and prune again$") as error:
        mp.prune_channels(model, X, ratio=0.5)
    assert_one_line(error)
    assert _same(model, before)


def test_inf_buffer_and_nan_input_are_named():
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3), torch.nn.BatchNorm3d(8), torch.nn.Conv3d(8, 2, 1)).eval()
    with torch.no_grad():
        model[1].running_var[3] = -math.inf
    with pytest.raises(InputError, match=r"\(buffer '1\.running_var' holds non-finite values\)"):
        mp.prune_channels(model, X, ratio=0.5)
    bad_input = X.clone()
    bad_input[0, 0, 0, 0, 0] = math.nan
    with pytest.raises(InputError, match=r"\(example_input itself holds non-finite values\)"):
        mp.prune_channels(tiny_unet(), bad_input, ratio=0.5)


def test_overflow_with_finite_weights_names_the_layer():
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.Conv3d(4, 2, 1)).eval()
    with torch.no_grad():
        for layer in model:
            layer.weight.fill_(1e30)
    with pytest.raises(InputError, match=r"before pruning \(every parameter is finite; layer '1' is the first to "
                                         r"output NaN/inf\)"):
        mp.prune_channels(model, X.abs() + 1, ratio=0.5)
