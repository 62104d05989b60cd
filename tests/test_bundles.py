"""The two bundles in ``bundles/``, driven by stock ``python -m monai.bundle`` commands, offline.

Every test works on a copy of a bundle in ``tmp_path`` with tiny synthetic data written by the bundle's own
``scripts/make_synthetic_data.py``. Subprocesses run with an unreachable HTTP(S) proxy, so a command that tried to
download anything (the metadata schema included) would fail.
"""

import copy
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess

import jsonschema
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

import monai_prune as mp
from monai_prune.cli import main
from helpers.repo_bundles import BUNDLES_DIR, CXR, REPO, SEG, bundle_cli as _bundle, copy_bundle as _copy, load_config as _load, \
    make_data as _make_data, offline

SCHEMA = os.path.join(BUNDLES_DIR, "schema", "meta_schema.json")
BUNDLES = [SEG, CXR]
RECIPE = os.path.join(os.path.dirname(mp.__file__), "recipes", "channel_pruning_kd.json")
CONFIGS = ["metadata.json", "train.json", "evaluate.json", "inference.json", "compress.json", "use_compressed.json"]
SEG_TINY = ["--roi_size", "[32,32,32]", "--num_samples", "2"]
CXR_TINY = ["--image_size", "[64,64]", "--batch_size", "4"]


# Compressed accuracy floor, absolute, per class: the compressed model may lose at most this much against the dense
# model it was compressed from. Why 0.05: these tiny runs (2 dense and 3 compression epochs on 4 synthetic volumes,
# scored on 2) give coarse scores, so a tighter floor would test noise; a broken compression (wrong channels kept,
# weights not carried over, the dense checkpoint not loaded) loses far more than that.
MAX_PER_CLASS_DROP = 0.05


def _best_key_metric(log, name):
    """The last "Key metric: <name> best value: x" line of a MONAI StatsHandler log: the score of the checkpoint that
    the key-metric CheckpointSaver kept (for a compression run: the best of the final architecture, since the
    PruningHandler restarts best-metric tracking whenever the architecture changes)."""
    values = re.findall(rf"Key metric: {name} best value: ([0-9.eE+-]+)", log)
    assert values, f"no 'Key metric: {name}' line in the log"
    return float(values[-1])


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


# ---------------------------------------------------------------------------------------------- layout, metadata


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_layout_and_consistency(name):
    root = os.path.join(BUNDLES_DIR, name)
    for f in CONFIGS + ["logging.conf"]:
        assert os.path.isfile(os.path.join(root, "configs", f)), f
    for f in ("docs/README.md", "LICENSE", "scripts/make_synthetic_data.py"):
        assert os.path.isfile(os.path.join(root, f)), f
    with open(os.path.join(root, "LICENSE")) as f:
        license_text = f.read()
    assert "Apache License" in license_text and "Version 2.0" in license_text and len(license_text) > 10000

    meta, train, infer = (_load(name, "configs", f) for f in ("metadata.json", "train.json", "inference.json"))
    # the zoo's ids, and one network definition everywhere
    for cfg in (train, infer):
        assert {"network_def", "network", "bundle_root", "device", "initialize", "run"} <= set(cfg)
    assert train["network_def"] == infer["network_def"]
    io = meta["network_data_format"]
    assert io["inputs"]["image"]["num_channels"] == train["network_def"]["in_channels"]
    assert io["outputs"]["pred"]["num_channels"] == train["network_def"]["out_channels"]
    assert len(io["inputs"]["image"]["spatial_shape"]) == train["network_def"]["spatial_dims"]
    assert meta["version"] in meta["changelog"] and "monai-prune" in meta["required_packages_version"]
    assert "synthetic" in meta["data_source"] and "no patient data" in meta["data_source"]
    # the weights, data and outputs are produced by running the bundle and are git-ignored, never committed
    for produced in ("models/model.pt", "models/compressed/plan.json", "data/dataset.json", "eval/metrics.csv"):
        path = os.path.join("bundles", name, produced)
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0, path
    tracked = subprocess.run(["git", "ls-files", os.path.join("bundles", name)], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    assert not [t for t in tracked if t.endswith((".pt", ".ts", ".onnx", ".nii.gz", ".png"))]


def test_classification_postprocessing_ends_with_a_class_label():
    """What MONAI Deploy's bundle operator runs after the network: inference.json's post-processing (Load/Save
    transforms dropped) on the logits; it must leave a class index in ``pred``, named by the metadata."""
    infer = _load(CXR, "configs", "inference.json")
    names = _load(CXR, "configs", "metadata.json")["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert infer["class_names"] == [names[str(i)] for i in range(len(names))]
    last = infer["postprocessing"]["transforms"][-1]
    assert last["_target_"] == "AsDiscreted" and last["keys"] == "pred" and last["argmax"] is True
    post = ConfigParser(infer).get_parsed_content("postprocessing")
    out = post({"pred": torch.tensor([0.3, 2.0])})
    assert out["pred"].shape == (1,) and names[str(int(out["pred"].item()))] == "lesion"
    assert torch.allclose(out["probabilities"].sum(), torch.tensor(1.0))
    out = post({"pred": torch.tensor([1.0, -1.0])})
    assert names[str(int(out["pred"].item()))] == "no_lesion"


@pytest.mark.parametrize("name", BUNDLES)
def test_schema_accepts_the_metadata_and_rejects_incomplete_ones(name, tmp_path):
    with open(SCHEMA) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    meta = _load(name, "configs", "metadata.json")
    jsonschema.validate(meta, schema)
    broken = []
    for path in (["network_data_format", "outputs", "pred", "num_channels"], ["network_data_format", "inputs", "image"],
                 ["required_packages_version"], ["data_source"]):
        bad = copy.deepcopy(meta)
        node = bad
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        broken.append(bad)
    wrong_type = copy.deepcopy(meta)
    wrong_type["network_data_format"]["inputs"]["image"]["spatial_shape"] = "96x96"
    broken.append(wrong_type)
    for i, bad in enumerate(broken):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        # the stock verify_metadata (in-process here) says so too, with the schema at --filepath, not downloaded
        path = tmp_path / f"bad_{i}.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            verify_metadata(meta_file=str(path), filepath=SCHEMA, hash_val=_md5(SCHEMA))


@pytest.mark.parametrize("name", BUNDLES)
def test_stock_verify_metadata_and_verify_net_in_out_offline(name, caplog):
    root = os.path.join(BUNDLES_DIR, name)
    log = _bundle(root, "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", SCHEMA,
                  "--hash_val", _md5(SCHEMA))
    assert "skipped downloading" in log and "metadata is verified with no error" in log
    # inference.json is what deployment parses; its network_def equals train.json's (test above). The stock command's
    # function in this process (it downloads nothing; the command line is the one above): a mismatch raises
    with caplog.at_level(logging.INFO):
        verify_net_in_out("network", meta_file=os.path.join(root, "configs", "metadata.json"),
                          config_file=os.path.join(root, "configs", "inference.json"), device="cpu")
    assert "data shape of network is verified with no error" in caplog.text


@pytest.mark.parametrize("name", BUNDLES)
def test_compress_overlay_parameters(name):
    """configs/compress.json on top of the packaged recipe: the recipe's inputs set for this bundle."""
    root = os.path.join(BUNDLES_DIR, name)
    parser = ConfigParser(ConfigParser.load_config_files(
        [os.path.join(root, "configs", "train.json"), RECIPE, os.path.join(root, "configs", "compress.json")]))
    meta = _load(name, "configs", "metadata.json")["network_data_format"]["inputs"]["image"]
    assert parser.get_parsed_content("prune#input_shape") == [1, meta["num_channels"], *meta["spatial_shape"]]
    assert parser.get_parsed_content("ckpt_dir").endswith("/models/compressed")
    assert parser.get_parsed_content("dense_ckpt").endswith("/models/model.pt")
    assert any("@dense_loader(" in step for step in parser["initialize"])  # loads before the teacher snapshot
    assert parser["prune#start_epoch"] <= parser["prune#end_epoch"] < parser["epochs"]
    assert parser["val_interval"] == 1  # the compressed "best" checkpoint needs a validation after the last step
    handlers = [h.replace("::", "#") for h in parser["train#handlers"] if isinstance(h, str)]  # MONAI writes "::"
    assert handlers == ["@distill#handler", "@prune#handler"]  # appended after the bundle's own handlers


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_spleen_bundle_trains_infers_and_compresses(tmp_path):
    root = _copy(SEG, tmp_path)
    data = _make_data(root, "--train", "4", "--val", "2", "--test", "1", "--size", "48")
    assert len(data["training"]) == 4 and len(data["validation"]) == 2 and len(data["test"]) == 1

    # dense training: the stock CheckpointSaver writes models/model.pt, loadable with weights_only
    log = _bundle(root, "run", "--config_file", "configs/train.json", "--epochs", "2", "--val_interval", "1",
                  *SEG_TINY)
    assert "val_mean_dice" in log
    dense_dice = _best_key_metric(log, "val_mean_dice")  # the Dice of the kept models/model.pt
    dense_path = os.path.join(root, "models", "model.pt")
    dense = ConfigParser({"n": _load(SEG, "configs", "train.json")["network_def"]}).get_parsed_content("n")
    dense.load_state_dict(torch.load(dense_path, weights_only=True))

    # stock inference writes a label volume on the input's grid (Invertd undoes the resampling)
    _bundle(root, "run", "--config_file", "configs/inference.json", "--roi_size", "[32,32,32]")
    image = nib.load(os.path.join(root, "data", "imagesTs", "ct_test_000.nii.gz"))
    pred = nib.load(os.path.join(root, "eval", "ct_test_000_seg.nii.gz"))
    assert pred.shape == image.shape == (48, 48, 48)
    assert np.allclose(pred.affine, image.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}

    # compression: train.json + packaged recipe + compress.json, started from the dense weights
    before = _sha(dense_path)
    log = _bundle(root, "run", "--config_file", f"['configs/train.json','{RECIPE}','configs/compress.json']",
                  "--epochs", "3", "--prune#start_epoch", "0", "--prune#end_epoch", "1", *SEG_TINY)
    assert "Restored all variables from ./models/model.pt" in log  # the dense weights were the starting point
    last = [line for line in log.splitlines() if "prune_sparsity" in line][-1]
    assert "prune_sparsity: 0.5000" in last and "kd_agreement" in last, last
    assert _sha(dense_path) == before
    # accuracy floor: one foreground class (spleen), so its Dice is val_mean_dice (include_background=False); both
    # measured by train.json's own validation (same cases, same sliding window), each for the checkpoint it kept
    compressed_dice = _best_key_metric(log, "val_mean_dice")
    assert compressed_dice >= dense_dice - MAX_PER_CLASS_DROP, (dense_dice, compressed_dice)
    plan = mp.PruningPlan.load(os.path.join(root, "models", "compressed", "plan.json"))
    net = plan.build_network()
    net.load_state_dict(torch.load(os.path.join(root, "models", "compressed", "model.pt"), weights_only=True))
    x = torch.zeros(1, 1, 32, 32, 32)
    assert mp.count_macs(net, x) < 0.5 * mp.count_macs(dense, x)
    assert mp.count_params(net) < 0.5 * mp.count_params(dense)

    # the compressed model through the stock evaluate and inference configs (use_compressed.json swaps it in)
    overlays = "['configs/train.json','configs/evaluate.json','configs/use_compressed.json']"
    _bundle(root, "run", "--config_file", overlays, "--roi_size", "[32,32,32]")
    with open(os.path.join(root, "eval", "compressed", "metrics.csv")) as f:
        metrics = dict(line.strip().split(",") for line in f if line.strip())
    # the stock evaluate.json (Invertd: Dice on the input's own grid) measures the compressed model above the floor too
    assert float(metrics["val_mean_dice"]) >= dense_dice - MAX_PER_CLASS_DROP, (dense_dice, metrics["val_mean_dice"])
    _bundle(root, "run", "--config_file", "['configs/inference.json','configs/use_compressed.json']",
            "--roi_size", "[32,32,32]")
    pred = nib.load(os.path.join(root, "eval", "compressed", "ct_test_000_seg.nii.gz"))
    assert pred.shape == image.shape and set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}


@pytest.mark.slow
def test_chest_xray_bundle_trains_and_infers_class_labels(tmp_path, capsys):
    root = _copy(CXR, tmp_path)
    data = _make_data(root, "--train", "8", "--val", "4", "--test", "2", "--size", "64")
    assert sorted({item["label"] for item in data["training"]}) == [0, 1]

    log = _bundle(root, "run", "--config_file", "configs/train.json", "--epochs", "1", *CXR_TINY)
    assert "val_auc" in log and "val_accuracy" in log
    net = ConfigParser({"n": _load(CXR, "configs", "train.json")["network_def"]}).get_parsed_content("n")
    net.load_state_dict(torch.load(os.path.join(root, "models", "model.pt"), weights_only=True))

    # the stock TorchScript export (what MONAI Deploy loads) carries the metadata and computes the same logits
    _bundle(root, "ckpt_export", "network", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt",
            "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json")
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(os.path.join(root, "models", "model.ts"), _extra_files=extra)
    exported_io = json.loads(extra["metadata.json"])["network_data_format"]["outputs"]["pred"]
    assert exported_io["channel_def"] == {"0": "no_lesion", "1": "lesion"}
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net.eval()(x), atol=1e-5)

    _bundle(root, "run", "--config_file", "configs/inference.json", "--image_size", "[64,64]")
    _check_class_predictions(root)

    # monai-prune compress-bundle on the classification bundle: bundle ids and recipe ids in --set, the example
    # input (prune#input_shape) from the metadata, per-class sensitivity/AUC before -> after
    out = str(tmp_path / "cxr_compressed")
    with offline():  # in this process (no second start-up), with every download made impossible
        code = main(["compress-bundle", root, "--recipe", "channel_pruning", "--out", out, "--epochs", "2",
                     "--repeats", "1", "--set", "image_size=[64,64]", "--set", "batch_size=4",
                     "--set", "prune#start_epoch=0", "--set", "prune#end_epoch=0",
                     "--set", "prune#final_sparsity=0.5"])
    assert code == 0, capsys.readouterr().err[-4000:]
    c = json.load(open(os.path.join(out, "configs", "metadata.json")))["compression"]
    assert c["macs"]["after"] < 0.5 * c["macs"]["before"] and c["validation_cases"] == 4
    assert set(c["per_class"]) == {"no_lesion", "lesion"} and set(c["per_class"]["lesion"]) == {"sensitivity", "auc"}
    assert c["latency_s"]["inferer"] == "SimpleInferer" and c["latency_s"]["input_shape"] == [1, 1, 64, 64]
    assert {"val_accuracy", "val_auc"} <= set(c["metrics"])
    # per-class scores of the dense and the compressed model on the same validation cases, both measured. No floor
    # here: after 1 dense epoch on 8 images the classifier is at chance (measured: it calls all 4 validation cases
    # no_lesion, accuracy 0.5 before and after), and AUC over 2 + 2 cases moves in steps of 0.25, so a floor would
    # test noise; the accuracy floor of this suite is the segmentation bundle's Dice (test above).
    for cls, scores in c["per_class"].items():
        for metric, m in scores.items():
            assert m["before"] is not None and m["after"] is not None, (cls, metric, m)
            assert m["delta"] == pytest.approx(m["after"] - m["before"]), (cls, metric, m)
    # the compressed bundle's inference.json (network from model.ts) still ends with a class label
    shutil.copytree(os.path.join(root, "data"), os.path.join(out, "data"))
    _bundle(out, "run", "--config_file", "configs/inference.json", "--image_size", "[64,64]")
    _check_class_predictions(out)


def _check_class_predictions(root):
    with open(os.path.join(root, "eval", "predictions.csv")) as f:
        rows = list(csv.reader(f))
    assert [os.path.basename(r[0]) for r in rows] == ["cxr_test_000.png", "cxr_test_001.png"]
    with open(os.path.join(root, "eval", "predictions.json")) as f:
        results = json.load(f)
    names = ["no_lesion", "lesion"]
    for row, result in zip(rows, results):
        index, probs = int(float(row[1])), [float(p) for p in row[2:]]
        assert index in (0, 1) and len(probs) == 2 and abs(sum(probs) - 1) < 1e-5
        assert index == int(np.argmax(probs))
        assert result["class_index"] == index and result["class_name"] == names[index]
        assert result["probabilities"] == pytest.approx(dict(zip(names, probs)))
