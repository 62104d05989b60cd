"""Pieces of compress-bundle that real model-zoo bundles broke (issue 16), checked without a training run."""

import copy
import json

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import UNet

from monai_prune.bundle import dense_network, validation_label_mode
from monai_prune.fidelity import FidelityCard, backend_agreement

NET = {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
       "strides": [2], "num_res_units": 1}


def test_the_dense_network_is_built_with_the_users_network_def_override():
    """A zoo config passing an argument newer MONAI removed (SwinUNETR img_size): the user's --set fixes it, and the
    dense model must be built from the fixed definition, not from train.json's."""
    train = {"network_def": {**NET, "img_size": [96, 96]}, "network": "$@network_def"}
    parser = ConfigParser(copy.deepcopy(train))
    with pytest.raises(Exception, match="img_size"):
        dense_network(parser)
    parser["network_def"] = dict(NET)  # --set network_def={...}
    definition, dense = dense_network(parser)
    assert definition == NET and isinstance(dense, UNet)
    assert dense is not parser.get_parsed_content("network")  # the trainer prunes its own instance
    parser = ConfigParser({"network_def": {**NET, "channels": [4, 16]}, "network": "$@network_def"})
    parser["network_def#channels"] = [8, 16]  # --set network_def#channels=[8,16]
    assert dense_network(parser)[1].model[0].conv.unit0.conv.out_channels == 8


def test_a_runtime_that_cannot_run_the_model_is_skipped_with_a_warning_in_the_card(tmp_path, caplog):
    net = UNet(2, 1, 2, (4, 8), (2,)).eval()
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"\x08\x07" + bytes(64))  # an ONNX file the runtime cannot load
    result = backend_agreement(net, [torch.rand(1, 1, 16, 16)], onnx_path=str(broken), backends=["onnxruntime"])
    assert set(result["onnxruntime"]) == {"error"} and "model.onnx" in result["onnxruntime"]["error"]
    assert "onnxruntime cannot run this model, skipped" in caplog.text
    card = FidelityCard.from_compression({"recipe": "channel_pruning", "per_class": {}, "backend_agreement": result})
    markdown = card.to_markdown()
    assert "| onnxruntime | **cannot run this model** |" in markdown
    assert any(note.startswith("onnxruntime cannot run this model and was skipped") for note in card.notes)


def test_the_label_mode_comes_from_the_bundles_validation_postprocessing():
    """BraTS (sigmoid, overlapping TC/WT/ET channels) is multi-label; a spleen-style softmax + argmax is not; the zoo
    configs refer to their postprocessing through ids, so it is read instantiated."""
    brats = {"validate": {"postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}]}}}
    spleen = {"post": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2}]},
        "validate": {"postprocessing": "@post"}}
    assert validation_label_mode({}, brats) == "multi_label"
    assert validation_label_mode({}, spleen) == "multi_class"
    assert validation_label_mode({}, {"validate": {}}) is None  # nothing declared: the data decide


def test_inference_only_set_values_reach_the_inference_config_and_never_the_training(tmp_path):
    """``--set inference#inferer#overlap=0.25`` (what tune-pipeline prints): written into configs/inference.json
    only; an id the inference config lacks is refused before anything runs."""
    from monai_prune.bundle import NOT_FOR_TRAINING, check_inference_overrides
    from monai_prune.bundle_configs import rewrite_configs
    from monai_prune.errors import ConfigError

    configs = tmp_path / "configs"
    configs.mkdir()
    inference = {"inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "overlap": 0.5},
                 "preprocessing": {"transforms": [{"_target_": "Spacingd", "pixdim": [1.5, 1.5, 2.0]}]}}
    (configs / "inference.json").write_text(json.dumps(inference))
    (configs / "train.json").write_text(json.dumps({"validate": {"inferer": {"overlap": 0.5}}}))
    overrides = {"inference#inferer#overlap": 0.25, "inference#preprocessing#transforms#0#pixdim": [2.0, 2.0, 2.0]}
    check_inference_overrides(str(tmp_path), overrides)
    assert all(k.startswith(NOT_FOR_TRAINING) for k in overrides)
    done = rewrite_configs(str(tmp_path), None, overrides)
    written = json.loads((configs / "inference.json").read_text())
    assert written["inferer"]["overlap"] == 0.25 and written["preprocessing"]["transforms"][0]["pixdim"] == [2, 2, 2]
    assert "inference-only" in done["inference.json"]
    assert json.loads((configs / "train.json").read_text())["validate"]["inferer"]["overlap"] == 0.5
    with pytest.raises(ConfigError, match="has no id 'inferer#overlapp'"):
        check_inference_overrides(str(tmp_path), {"inference#inferer#overlapp": 0.25})
