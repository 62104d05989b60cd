"""``monai-prune compress-bundle`` (in-process) end to end on bundles written in the structure of the real model-zoo
``brats_mri_segmentation`` (multi-label sigmoid outputs, overlapping TC/WT/ET, a 240x240x160 validation window the
user shrinks with ``--set``) and ``swin_unetr_btcv_segmentation`` (a ``network_def`` that MONAI 1.5+ cannot build,
replaced with ``--set network_def=...``); tests/zoo_structures.py writes them. Each dense model is trained first with
the stock ``python -m monai.bundle run`` as a user would."""

import json
import os
import subprocess
import sys

import pytest
import torch

from monai_prune.fidelity import FidelityCard
from monai_prune.pruning import PruningPlan
from helpers.repo_bundles import offline, offline_env
from helpers.zoo_structures import (BRATS_LABELS, BRATS_NETWORK, ROI, SWIN_NETWORK, write_brats_bundle, write_brats_data,
                            write_swin_bundle)

pytestmark = pytest.mark.slow


def _run(cmd, cwd=None, timeout=900):
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=offline_env())
    return done.returncode, done.stdout, done.stderr


def _stock_train(root, *args):
    code, out, err = _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json", *args],
                          cwd=root, timeout=600)
    assert code == 0 and os.path.isfile(os.path.join(root, "models", "model.pt")), (out + err)[-4000:]


def _compress(capsys, src, out, data, *sets):
    """``compress-bundle`` as a user runs it on these bundles (in this process, offline: its command line runs in
    test_zoo_bundle.py): pruned at epoch 0 to 0.3, one more epoch, the local data, plus the bundle's own ``--set``
    values. Returns (exit code, stdout, stderr)."""
    from monai_prune.cli import main

    args = ["prune#start_epoch=0", "prune#end_epoch=0", "prune#final_sparsity=0.3", f"dataset_dir={data}", *sets]
    with offline():
        code = main(["compress-bundle", src, "--recipe", "channel_pruning", "--out", out, "--epochs", "2",
                     "--repeats", "1", *[part for value in args for part in ("--set", value)]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _metadata(out):
    with open(os.path.join(out, "configs", "metadata.json")) as f:
        return json.load(f)


def _compressed_net(out):
    net = PruningPlan.load(os.path.join(out, "models", "plan.json")).build_network()
    net.load_state_dict(torch.load(os.path.join(out, "models", "model.pt"), weights_only=True))
    return net.eval()


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    base = tmp_path_factory.mktemp("brats")
    data = str(base / "brats_data")
    src = write_brats_bundle(str(base / "brats_mri_segmentation"), write_brats_data(data, cases=6), epochs=4)
    _stock_train(src, "--dataset_dir", data, "--validate#inferer#roi_size", json.dumps(ROI))
    return {"src": src, "data": data, "base": base}


def test_brats_dry_run_times_the_window_the_user_set(brats, capsys):
    from monai_prune.cli import main

    src, data = brats["src"], brats["data"]
    args = ["compress-bundle", src, "--recipe", "channel_pruning", "--out", str(brats["base"] / "dry"),
            "--epochs", "2", "--set", "prune#start_epoch=0", "--set", "prune#end_epoch=0", "--dry-run"]
    code = main(args)  # the zoo's own window: the metadata says "8*n", so validate#inferer#roi_size
    out = capsys.readouterr().out
    assert code == 0 and "(1, 4, 240, 240, 160) (from the train config's validate#inferer#roi_size)" in out, out
    code = main(args + ["--set", f"dataset_dir={data}", "--set", "validate#inferer#roi_size=[32,32,32]"])
    out = capsys.readouterr().out
    assert code == 0 and "(1, 4, 32, 32, 32) (from --set validate#inferer#roi_size)" in out, out
    assert not os.path.exists(brats["base"] / "dry")


def test_brats_multi_label_bundle_compresses_with_per_channel_fidelity(brats, capsys):
    src, data = brats["src"], brats["data"]
    out = str(brats["base"] / "brats_compressed")
    code, stdout, err = _compress(capsys, src, out, data, "validate#inferer#roi_size=[32,32,32]")
    assert code == 0, (stdout + err)[-5000:]  # before: argmax(): does not support bool input, in fidelity
    c = _metadata(out)["compression"]
    # three overlapping sigmoid channels, each scored as its own binary mask (background is not a channel here)
    assert list(c["per_class"]) == list(BRATS_LABELS.values())
    card = FidelityCard.load(os.path.join(out, "docs", "fidelity_card.json"))
    markdown = card.to_markdown()
    assert card.cases == 2 and all(name in markdown for name in BRATS_LABELS.values())
    # accuracy against the dense model, channel by channel (2 validation cases, a few epochs: coarse bounds)
    dice = {name: c["per_class"][name]["dice"] for name in BRATS_LABELS.values()}
    assert dice["Whole tumor"]["before"] > 0.5, dice  # the trained dense weights were loaded and evaluated
    for name, d in dice.items():
        assert d["after"] >= d["before"] - 0.1 and d["delta"] == pytest.approx(d["after"] - d["before"]), (name, d)
    # the evaluator's own metrics (MeanDice on SplitDimd's outputs) measured before and after
    assert {"val_mean_dice", "val_mean_dice_tc", "val_mean_dice_wt", "val_mean_dice_et"} <= set(c["metrics"])
    vs_dense = c["agreement_vs_dense"]  # multi-label: per-channel binary agreement, not an argmax
    assert vs_dense["label_mode"] == "multi_label" and set(vs_dense["dice"]) == {"0", "1", "2"}
    assert 0.5 < vs_dense["mask_agreement"] <= 1
    # the window the user set is what was timed, and the network the plan builds is smaller, same output
    assert c["network_latency_s"]["input_shape"] == [1, 4, *ROI] and c["macs"]["after"] < c["macs"]["before"]
    net = _compressed_net(out)
    with torch.no_grad():
        assert net(torch.rand(1, 4, *ROI)).shape == (1, 3, *ROI)
    from monai.networks.nets import SegResNet

    dense_def = {k: v for k, v in BRATS_NETWORK.items() if k != "_target_"}
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in SegResNet(**dense_def).parameters())


@pytest.fixture(scope="module")
def swin(tmp_path_factory):
    from helpers.bundle_fixture import write_zoo_data

    base = tmp_path_factory.mktemp("swin")
    data = write_zoo_data(str(base / "btcv_data"), volumes=4, tests=0)
    src = write_swin_bundle(str(base / "swin_unetr_btcv_segmentation"), epochs=1)
    from monai.bundle import ConfigParser

    with open(os.path.join(src, "configs", "train.json")) as f:
        published = ConfigParser(json.load(f))
    with pytest.raises(Exception) as info:  # the zoo's network_def does not build on this MONAI: users override it
        published.get_parsed_content("network_def")
    assert "img_size" in repr(info.value) + repr(info.value.__cause__)
    _stock_train(src, "--dataset_dir", data, "--network_def", json.dumps(SWIN_NETWORK))
    return {"src": src, "data": data, "base": base}


def test_swin_unetr_network_def_override_is_what_gets_built_and_compressed(swin, capsys):
    src, data = swin["src"], swin["data"]
    out = str(swin["base"] / "swin_compressed")
    code, stdout, err = _compress(capsys, src, out, data, f"network_def={json.dumps(SWIN_NETWORK)}")
    assert code == 0, (stdout + err)[-5000:]  # before: the dense model was built from the zoo's network_def
    metadata = _metadata(out)
    c = metadata["compression"]
    assert c["macs"]["after"] < c["macs"]["before"] and list(c["per_class"]) == ["spleen"]
    # the dense model the user trained with the override is the one evaluated (one tiny epoch: its Dice is low)
    assert 0 <= c["per_class"]["spleen"]["dice"]["before"] <= 1 and c["agreement_vs_dense"]["elements"] > 0
    # the compressed bundle's configs build the override's network (no img_size), and model.pt loads into it
    with open(os.path.join(out, "configs", "train.json")) as f:
        dense_def = json.load(f)["network_def"]
    assert "img_size" not in json.dumps(dense_def)
    net = _compressed_net(out)
    with torch.no_grad():
        assert net(torch.rand(1, 1, *ROI)).shape == (1, 2, *ROI)
    # every runtime either served the model (agreement measured) or is named in the card as skipped: never lost
    card = FidelityCard.load(os.path.join(out, "docs", "fidelity_card.json"))
    assert card.cases >= 1
    for backend, result in c["backend_agreement"].items():
        assert "argmax_agreement" in result or "mask_agreement" in result or result.get("error"), (backend, result)
