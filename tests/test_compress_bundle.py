"""``monai-prune compress-bundle`` on a model-zoo-shaped bundle: a new bundle that the stock ``monai.bundle`` CLI
runs, with measured before -> after in its metadata and README, verified model files, the source untouched;
``monai-prune recipes``; clear errors that write nothing."""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import pytest
import torch

import monai_prune as mp
from monai_prune.bundle import list_recipes, verify_model_files
from monai_prune.cli import main
from monai_prune.errors import InputError
from monai_prune.fidelity import FidelityCard
from monai_prune.pruning import PruningPlan
from helpers.bundle_fixture import ROI, write_bundle

CLI = os.path.join(os.path.dirname(sys.executable), "monai-prune")
SHAPE = f"[1,1,{ROI[0]},{ROI[1]},{ROI[2]}]"


def _digests(root):
    found = {}
    for path in sorted(glob.glob(os.path.join(root, "**"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory):
    """The fixture bundle, trained dense by the stock CLI (its CheckpointSaver writes models/model.pt)."""
    root = write_bundle(str(tmp_path_factory.mktemp("src") / "spleen_tiny"), max_epochs=3)
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", f"{root}/configs/train.json",
                           "--bundle_root", root, "--meta_file", f"{root}/configs/metadata.json"],
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert os.path.isfile(os.path.join(root, "models", "model.pt"))
    return root


def test_recipes_command_lists_every_packaged_recipe_with_its_path(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    names = {r["name"] for r in list_recipes()}
    assert {"channel_pruning", "channel_pruning_kd", "magnitude_sparsity", "qat"} <= names
    for recipe in list_recipes():
        assert recipe["path"] in out and os.path.isfile(recipe["path"]) and recipe["description"]


@pytest.mark.parametrize("recipe, handler", [("channel_pruning", "PruningHandler"),
                                             ("magnitude_sparsity", "PruningHandler"),
                                             ("qat", "QuantizationAwareTrainingHandler"),
                                             ("channel_pruning_kd", "DistillationHandler")])
def test_every_recipe_builds_its_handlers_on_an_unmodified_bundle(tmp_path, recipe, handler):
    from monai.bundle import ConfigParser

    root = write_bundle(str(tmp_path / "b"), volumes=3)
    parser = ConfigParser()
    parser.read_config([os.path.join(root, "configs", "train.json"), mp.bundle.recipe_path(recipe)])
    parser["bundle_root"] = root
    if recipe.startswith("channel"):
        parser["prune#input_shape"] = json.loads(SHAPE)
    handlers = parser.get_parsed_content("train#handlers")
    assert handler in {type(h).__name__ for h in handlers}
    assert parser.get_parsed_content("ckpt_dir").endswith("models/compressed")  # never the dense model.pt


@pytest.mark.slow
def test_compress_bundle_writes_a_runnable_measured_bundle_and_leaves_the_source_alone(trained_bundle, tmp_path, capsys):
    src = trained_bundle
    before = _digests(src)
    out = str(tmp_path / "spleen_tiny_compressed")

    args = [CLI, "compress-bundle", src, "--recipe", "channel_pruning_kd", "--out", out, "--epochs", "3",
            "--repeats", "2", "--set", f"prune#input_shape={SHAPE}", "--set", "prune#start_epoch=0",
            "--set", "prune#end_epoch=1"]
    # the dry run checks the schedule against the epochs as the real run does: the recipe's end_epoch 10 does not fit
    # (in this process: the command line's own exit codes and output are what the real run below checks)
    code = main(args[1:7] + ["--dry-run"])
    captured = capsys.readouterr()
    assert code == 2 and "leaves no epoch after the last pruning step" in captured.err, captured.err[-2000:]
    code = main(args[1:] + ["--dry-run"])
    captured = capsys.readouterr()
    assert code == 0 and "would" in captured.out and not os.path.exists(out), captured.err[-2000:]

    done = subprocess.run(args + ["--int8", "onnxruntime", "--calibration", "4"], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert _digests(src) == before  # the source bundle is byte-identical
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary folder left behind

    models = os.path.join(out, "models")
    assert {"model.ts", "model.pt", "plan.json", "model.onnx", "model_int8.onnx"} <= set(os.listdir(models))
    metadata = json.load(open(os.path.join(out, "configs", "metadata.json")))
    c = metadata["compression"]
    assert metadata["version"] == "0.2.0" and "0.2.0" in metadata["changelog"] and "0.1.0" in metadata["changelog"]
    assert c["recipe"] == "channel_pruning_kd" and c["macs"]["after"] < 0.6 * c["macs"]["before"]
    assert c["params"]["after"] < c["params"]["before"] and c["latency_s"]["ratio"] > 0
    assert set(c["metrics"]) >= {"val_mean_dice"} and 0 <= c["metrics"]["val_mean_dice"]["after"] <= 1
    # per class, from the same evaluator outputs: the background is left out; with one foreground class the
    # per-class Dice is the evaluator's own mean Dice (MeanDice, include_background=False), before and after
    assert list(c["per_class"]) == ["spleen"] and c["validation_cases"] == 2
    assert set(c["per_class"]["spleen"]) == {"dice", "hd95", "volume_error_ml", "volume_error_pct"}
    assert c["units"] == {"hd95": "mm", "volume": "ml"} and c["per_class"]["spleen"]["hd95"]["before"] > 0
    assert c["backend_agreement"]["onnxruntime"]["argmax_agreement"] > 0.999  # the runtime serves the same model
    vs_dense = c["agreement_vs_dense"]  # voxel-wise, compressed vs the dense model's own predictions
    assert 0.5 < vs_dense["argmax_agreement"] <= 1 and vs_dense["elements"] > 0 and set(vs_dense["dice"]) == {"0", "1"}
    assert 1 <= len(c["worst_cases"]) <= 2 and {"case", "dice_before", "dice_after", "drop"} <= set(c["worst_cases"][0])
    for when in ("before", "after"):
        assert c["per_class"]["spleen"]["dice"][when] == pytest.approx(c["metrics"]["val_mean_dice"][when], abs=1e-4)
    # accuracy against the dense model, not only "in [0, 1]": half the MACs, fine-tuned 3 epochs with distillation
    # from the dense teacher, must keep the spleen Dice within 0.05 of dense on the 2 validation cases (coarse: 2 cases)
    spleen = c["per_class"]["spleen"]["dice"]
    assert spleen["after"] >= spleen["before"] - 0.05, spleen
    # latency of the whole sliding-window inferer on a validation volume, and of one network call
    assert c["latency_s"]["inferer"] == "SlidingWindowInferer" and c["latency_s"]["input_shape"] == [1, 1, 48, 48, 48]
    assert c["network_latency_s"]["input_shape"] == json.loads(SHAPE) and c["network_latency_s"]["ratio"] > 0
    assert len(c["calibration_sha256"]) == 64 and c["int8"]["backend"] == "onnxruntime"
    assert c["plan_checksum"] == PruningPlan.load(os.path.join(models, "plan.json")).checksum
    assert set(verify_model_files(out)) == set(os.listdir(models))
    configs = os.path.join(out, "configs")  # every config's sha256, for deploy to check before parsing
    assert metadata["config_files"] == {name: hashlib.sha256(open(os.path.join(configs, name), "rb").read()).hexdigest()
                                        for name in os.listdir(configs) if name != "metadata.json"}
    readme = open(os.path.join(out, "docs", "README.md")).read()
    assert "MACs per input" in readme and "val_mean_dice" in readme and "| spleen | Dice |" in readme
    assert "SlidingWindowInferer" in readme and "| spleen | HD95 (mm) |" in readme
    # the fidelity card: docs/fidelity_card.json (= metadata's), .md (= README's section, printed by the CLI)
    card = FidelityCard.load(os.path.join(out, "docs", "fidelity_card.json"))
    card_md = open(os.path.join(out, "docs", "fidelity_card.md")).read()
    assert card.to_dict() == c["fidelity_card"] and card.status == "UNGUARDED" and card.cases == 2
    assert card.headline().startswith("UNGUARDED: no guardrails declared; worst class Δ Dice")
    assert f"{c['per_class']['spleen']['dice']['delta']:+.4f} (spleen" in card.headline()
    assert card_md == card.to_markdown() and card.to_markdown(heading_level=3) in readme
    assert card_md in done.stdout and readme.startswith("# ")  # only a degraded README starts with the headline
    # nothing identifying: no data file names in what we wrote
    for text in (json.dumps(metadata), readme, card_md):
        assert "ct_0" not in text and "/data" not in text

    # model.ts carries metadata and inference config as ckpt_export does; plan + weights_only state give the same net
    extra = {"metadata.json": "", "inference.json": ""}
    ts = torch.jit.load(os.path.join(models, "model.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["compression"]["recipe"] == "channel_pruning_kd"
    net = PruningPlan.load(os.path.join(models, "plan.json")).build_network()
    net.load_state_dict(torch.load(os.path.join(models, "model.pt"), weights_only=True))
    x = torch.rand(1, 1, *ROI)
    with torch.no_grad():
        assert torch.allclose(ts(x), net.eval()(x), atol=1e-4)

    # the stock CLI runs the new inference.json: same pre/post-processing and checkpoint loader (not disabled), the
    # network built from the dense constructor + models/plan.json, into which the compressed model.pt loads
    infer = json.load(open(os.path.join(out, "configs", "inference.json")))
    assert infer["network_def"]["_target_"] == "monai_prune.apply_plan" and "_disabled_" not in infer["handlers"][0]
    os.symlink(os.path.join(src, "data"), os.path.join(out, "data"))
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                          f"{out}/configs/inference.json", "--bundle_root", out], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    preds = glob.glob(os.path.join(out, "eval", "*.nii.gz"))
    assert len(preds) == 2 and nib.load(preds[0]).shape[:3] == (48, 48, 48)

    # a tampered model file is refused
    tampered = str(tmp_path / "tampered")
    shutil.copytree(out, tampered, symlinks=True)
    with open(os.path.join(tampered, "models", "model.ts"), "ab") as f:
        f.write(b"x")
    with pytest.raises(InputError, match="sha256"):
        verify_model_files(tampered)


def test_compress_bundle_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    root = write_bundle(str(tmp_path / "b"), volumes=3)
    out = str(tmp_path / "out")

    def fails(args, match):
        assert main(["compress-bundle", *args]) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1, err
        assert not os.path.exists(out)

    fails([root, "--recipe", "channel_pruning", "--out", out], "train the bundle first")
    torch.save({"x": torch.ones(1)}, os.path.join(root, "models", "model.pt"))
    fails([root, "--recipe", "no_such_recipe", "--out", out], "unknown recipe")
    fails([root, "--recipe", "channel_pruning", "--out", out, "--set", "prune#sparsity=0.5"], "unknown keys")
    fails([root, "--recipe", "qat", "--out", out], "--int8")
    fails([root, "--recipe", "channel_pruning", "--out", out, "--set", "guardrails#max_drop=0.01"],
          "unknown guardrails")
    fails([root, "--recipe", "channel_pruning", "--out", out, "--set", "guardrails#max_delta_dice=high"],
          "non-negative number")
    fails([root, "--recipe", "channel_pruning", "--out", out, "--epochs", "2", "--set", "prune#end_epoch=1"],
          "no epoch after the last pruning step")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # the private work folder is gone too
    os.makedirs(str(tmp_path / "exists"))
    assert main(["compress-bundle", root, "--recipe", "channel_pruning", "--out", str(tmp_path / "exists")]) == 2
    assert "already exists" in capsys.readouterr().err
    meta = os.path.join(root, "configs", "metadata.json")
    data = json.load(open(meta))
    del data["network_data_format"]["outputs"]["pred"]
    json.dump(data, open(meta, "w"))
    fails([root, "--recipe", "channel_pruning", "--out", out], "outputs.pred")
    train_path = os.path.join(root, "configs", "train.json")
    train = json.load(open(train_path))
    del train["network_def"]
    json.dump(train, open(train_path, "w"))
    fails([root, "--recipe", "channel_pruning", "--out", out], "no network_def")
    os.remove(meta)
    fails([root, "--recipe", "channel_pruning", "--out", out], "no configs/metadata.json")


@pytest.mark.slow
def test_guardrails_refuse_a_degraded_bundle_unless_allowed_and_then_say_so(trained_bundle, tmp_path, capsys):
    out = str(tmp_path / "guarded")
    args = ["compress-bundle", trained_bundle, "--recipe", "channel_pruning", "--out", out, "--epochs", "2",
            "--repeats", "1",
            "--set", f"prune#input_shape={SHAPE}", "--set", "prune#start_epoch=0", "--set", "prune#end_epoch=0",
            "--set", "prune#final_sparsity=0.7", "--set", "guardrails#min_dice={\"spleen\": 0.999}",
            "--set", "guardrails#target_macs=0.9"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "class 'spleen': Dice" in err and "below its floor 0.9990" in err and "nothing was written" in err, err
    assert not os.path.exists(out) and not [p for p in os.listdir(tmp_path) if p.startswith(".")]

    assert main(args + ["--allow-degraded"]) == 0
    printed = capsys.readouterr().out
    readme = open(os.path.join(out, "docs", "README.md")).read()
    assert readme.startswith("**DEGRADED") and "class 'spleen'" in readme.splitlines()[0]
    metadata = json.load(open(os.path.join(out, "configs", "metadata.json")))
    card = FidelityCard.load(os.path.join(out, "docs", "fidelity_card.json"))
    assert card.status == "DEGRADED" and card.allowed_degraded
    assert card.to_dict() == metadata["compression"]["fidelity_card"]
    assert readme.splitlines()[0] == f"**{card.headline()}**" and f"**{card.headline()}**" in printed
    assert card.headline().startswith("DEGRADED: 1 guardrail broken — class 'spleen': Dice")
    assert "(written with --allow-degraded)" in card.headline() and "worst class Δ Dice" in card.headline()
    card_md = open(os.path.join(out, "docs", "fidelity_card.md")).read()
    assert '| min_dice | {"spleen": 0.999} | broken |' in card_md and "| target_macs | 0.9 | held |" in card_md
    assert card_md.splitlines()[0] == readme.splitlines()[0]
    guard = metadata["compression"]["guardrails"]
    assert guard["allowed_degraded"] and guard["declared"] == {"min_dice": {"spleen": 0.999}, "target_macs": 0.9}
    assert len(guard["broken"]) == 1  # the MACs budget holds (0.7 of the channels pruned)
    assert metadata["changelog"][metadata["version"]].startswith("DEGRADED")
