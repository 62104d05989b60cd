"""``tune_pipeline`` / ``monai-prune tune-pipeline``: sliding-window overlap, sw_batch_size, roi and inference
resolution of a compressed bundle, each measured for per-class Dice and end-to-end seconds.

A tiny bundle of our own in the shape ``compress-bundle`` writes (spleen-style ``configs/inference.json`` with a
16^3 window and ``"pixdim": "@pixdim"``, ``metadata.json`` with ``channel_def``, ``model_files`` and ``config_files``
sha256, ``models/model.ts``), on two synthetic 32^3 CT volumes. The network thresholds intensity (so the labels
have real foreground) plus a small convolution stack (so every window costs time).
"""

import json
import os

import pytest
import torch

from monai_prune.cli import main
from monai_prune.data import synthetic_ct, write_nifti
from monai_prune.deploy.pipeline_knobs import check_knob_values, dice, tune_pipeline
from monai_prune.errors import ConfigError, InputError
from helpers.tiny_bundle import PREPROCESSING, ThresholdNet, inference_config, make_bundle

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("knobs")
    images = [write_nifti(synthetic_ct(size=32, rad_max=8, seed=i)[0], str(base / f"ct_{i}.nii.gz")) for i in range(2)]
    return make_bundle(base / "bundle"), images, base


@pytest.fixture(scope="module")
def measured(tiny):
    bundle, images, _ = tiny
    return tune_pipeline(bundle, images, overlaps=[0.5, 0.0], sw_batch_sizes=[1], roi_sizes=["32,32,32"],
                         pixdims=[[3.0, 3.0, 3.0]], max_delta=0.5, repeats=2)


def by_knob(result, knob):
    return [r for r in result["rows"] if r["knob"] == knob]


def test_baseline_is_its_own_reference(tiny, measured):
    bundle, images, base_dir = tiny
    # SaveImaged was left out: nothing written next to the bundle or the images
    assert not os.path.exists(os.path.join(bundle, "eval"))
    assert sorted(os.listdir(base_dir)) == ["bundle", "ct_0.nii.gz", "ct_1.nii.gz"]
    base = by_knob(measured, "baseline")[0]
    assert measured["classes"] == ["organ"]
    assert base["dice"] == {"organ": 1.0} and base["delta_dice"] == {"organ": 0.0}
    assert base["worst_delta_dice"] == 0.0 and base["passed"] and base["set"] == []
    assert measured["baseline"] == {"overlap": 0.5, "sw_batch_size": 4, "roi": [16, 16, 16],
                                    "pixdim": [1.5, 1.5, 1.5]}
    # the baseline value 0.5 given again is not measured twice
    assert [r["value"] for r in by_knob(measured, "overlap")] == [0.0]


def test_knobs_are_measured(measured):
    base = by_knob(measured, "baseline")[0]
    coarse = by_knob(measured, "pixdim")[0]
    # 3 mm: the 32^3 volume becomes 16^3, one window instead of 27
    assert coarse["seconds"] < base["seconds"] and coarse["saving_pct"] > 0
    assert coarse["overrides"] == {"pixdim": [3.0, 3.0, 3.0]} and coarse["set"] == ["--set pixdim=[3.0,3.0,3.0]"]
    assert 0.0 < coarse["dice"]["organ"] < 1.0  # resampled twice: close to, not equal to, the reference
    no_overlap = by_knob(measured, "overlap")[0]
    assert no_overlap["seconds"] != base["seconds"] and no_overlap["seconds"] < base["seconds"]
    assert no_overlap["overrides"] == {"inferer#overlap": 0.0}
    roi = by_knob(measured, "roi")[0]
    assert roi["overrides"] == {"roi_size": [32, 32, 32]}
    assert by_knob(measured, "sw_batch_size")[0]["overrides"] == {"sw_batch_size": 1}
    for row in measured["rows"]:
        assert row["passed"] == all(d >= -0.5 for d in row["delta_dice"].values())
        assert abs(row["worst_delta_dice"] - min(row["delta_dice"].values())) < 1e-12
        assert row["dice"]["organ"] > 0.5


def test_combined_row_and_ship_lines(measured):
    combined = by_knob(measured, "combined")
    assert combined, "several knobs passed and saved time: a combined row is measured"
    saved = [r for r in measured["rows"] if r["knob"] not in ("baseline", "combined") and r["passed"]
             and r["saving_pct"] > 0]
    assert set(combined[0]["value"]) == {r["knob"] for r in saved}
    assert combined[0]["baseline_seconds"] > 0
    passing = [r for r in measured["rows"] if r["knob"] != "baseline" and r["passed"]]
    assert len(measured["lines"]) == len(passing)
    text = measured["markdown"]
    assert "| knob | value | seconds | saving vs baseline | worst class ΔDice | Dice vs reference | pass |" in text
    pixdim_line = next(line for line in measured["lines"] if line.startswith("pixdim"))
    assert pixdim_line.startswith("pixdim 1.5x1.5x1.5 -> 3x3x3: worst ΔDice ")
    assert "--set pixdim=[3.0,3.0,3.0]" in pixdim_line and "records pixdim in configs/inference.json" in pixdim_line
    overlap_line = next(line for line in measured["lines"] if line.startswith("overlap"))
    assert "--set inference#inferer#overlap=0.0" in overlap_line and "fine-tuning unchanged" in overlap_line
    for line in measured["lines"]:
        assert f"- {line}" in text


def test_cli_prints_table_and_writes_json(tiny, capsys, tmp_path):
    bundle, images, _ = tiny
    dense = str(tmp_path / "dense.ts")  # a different network: its labels (threshold 0.55) are the reference
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(ThresholdNet(0.55).eval()), dense)
    out = tmp_path / "knobs.json"
    code = main(["tune-pipeline", bundle, "--images", images[0], "--dense", dense, "--overlap", "0.25",
                 "--max-delta", "0.05", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| overlap | 0.5 -> 0.25 |" in printed and "dense.ts" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["knob"] for r in rows] == ["baseline", "overlap"]
    assert 0.5 < rows[0]["dice"]["organ"] < 1.0  # the compressed baseline against the dense reference
    assert rows[0]["delta_dice"] == {"organ": 0.0}
    assert rows[1]["delta_dice"]["organ"] == pytest.approx(rows[1]["dice"]["organ"] - rows[0]["dice"]["organ"])
    if rows[1]["passed"]:
        assert "--set inference#inferer#overlap=0.25" in printed


@pytest.mark.parametrize("args, words", [
    (["--overlap", "1.0"], ["overlap 1.0", "[0, 1)"]),
    (["--overlap", "half"], ["overlap", "'half'"]),
    (["--sw-batch-size", "0"], ["sw_batch_size 0", "positive integer"]),
    (["--sw-batch-size", "2.5"], ["sw_batch_size", "integers"]),
    (["--roi", "16,0,16"], ["roi 16,0,16", "positive integers"]),
    (["--roi", "16,16"], ["roi 16x16", "roi_size has 3"]),
    (["--roi", "16,16,x"], ["roi 16,16,x", "integers separated by commas"]),
    (["--pixdim", "1.5,2"], ["pixdim 1.5,2", "3 positive numbers"]),
    (["--pixdim", "1.5,-2,2"], ["pixdim 1.5,-2,2", "3 positive numbers"]),
    ([], ["no knob values"]),
])
def test_bad_values_are_one_line_errors(tiny, capsys, args, words):
    bundle, images, _ = tiny
    code = main(["tune-pipeline", bundle, "--images", images[0], *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("monai-prune tune-pipeline: error: ")
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_image_and_edited_config(tiny, capsys, tmp_path):
    bundle, images, _ = tiny
    code = main(["tune-pipeline", bundle, "--images", str(tmp_path / "nope.nii.gz"), "--overlap", "0.25"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nope.nii.gz does not exist" in err and len(err.splitlines()) == 1
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read or preprocess image .*garbage.nii.gz"):
        tune_pipeline(bundle, [str(garbage)], overlaps=[0.25])
    edited = make_bundle(tmp_path / "edited")
    with open(os.path.join(edited, "configs", "inference.json"), "a") as f:
        f.write(" ")
    with pytest.raises(InputError, match="inference.json does not match its sha256"):
        tune_pipeline(edited, images[:1], overlaps=[0.25])


def test_unsupported_knobs_name_what_is_missing(tiny, tmp_path):
    _, images, _ = tiny
    simple = make_bundle(tmp_path / "simple", inference_config(inferer={"_target_": "SimpleInferer"}))
    with pytest.raises(ConfigError, match="`inferer` is SimpleInferer, not a SlidingWindowInferer.*--overlap"):
        tune_pipeline(simple, images[:1], overlaps=[0.25], sw_batch_sizes=[2])
    no_spacing = dict(PREPROCESSING, transforms=[t for t in PREPROCESSING["transforms"]
                                                 if t["_target_"] != "Spacingd"])
    flat = make_bundle(tmp_path / "flat", inference_config(preprocessing=no_spacing))
    with pytest.raises(ConfigError, match="no Spacingd transform: the pixdim knob"):
        tune_pipeline(flat, images[:1], pixdims=["2,2,2"])
    config = inference_config()
    config["postprocessing"]["transforms"] = [t for t in config["postprocessing"]["transforms"]
                                              if t["_target_"] != "Invertd"]
    uninverted = make_bundle(tmp_path / "uninverted", config)
    with pytest.raises(ConfigError, match="pixdim 3x3x3: the labels of ct_0.nii.gz are .* not bring predictions back"):
        tune_pipeline(uninverted, images[:1], pixdims=["3,3,3"], warmup=0)


def test_values_and_dice_helpers():
    assert check_knob_values(overlaps=["0.25", 0.25, 0.1], roi_sizes=["96x96x96", [96, 96, 96]]) == {
        "overlap": [0.25, 0.1], "roi": [[96, 96, 96]]}
    assert check_knob_values(pixdims=["1.5,1.5,2", [2, 2, 2]]) == {"pixdim": [[1.5, 1.5, 2.0], [2.0, 2.0, 2.0]]}
    assert check_knob_values(roi_sizes=[64, 64, 64], sw_batch_sizes=["2", 4]) == {
        "sw_batch_size": [2, 4], "roi": [[64, 64, 64]]}  # a flat list of numbers is one size
    with pytest.raises(ConfigError, match="max_delta"):
        tune_pipeline("unused", ["unused"], overlaps=[0.1], max_delta=-0.1)
    empty = torch.zeros(4, dtype=torch.bool)
    assert dice(empty, empty) == 1.0  # both agree the class is absent
    assert dice(torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([1, 0, 0, 0]).bool()) == pytest.approx(2 / 3)


def _tree(root):
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, files in os.walk(root) for n in files}


def test_write_bundle_ships_the_measured_setting_and_the_copy_runs_it(tiny, measured, tmp_path, capsys):
    """``--write-bundle``: a copy whose inference.json (and model.ts's embedded copy) runs the chosen setting, whose
    sha256 records pass deploy's checks, and whose metadata and card say what the setting saved and cost; the source
    is byte-identical; a second write, an --out inside the source, or a setting that failed writes nothing."""
    from monai_prune.deploy.models import select_model
    from monai_prune.deploy.tuned_bundle import chosen_setting, write_tuned_bundle
    from monai_prune.export import read_torchscript_extra_files
    from monai_prune.fidelity import FidelityCard

    bundle, images, _ = tiny
    before = _tree(bundle)
    row = chosen_setting(measured)
    assert row["knob"] == "combined" and row["passed"]  # the combined row passed (measured's max_delta is loose)
    assert row["saving_pct"] > 5.0  # only a saving above the timing noise (5% by default) ships
    with pytest.raises(ConfigError, match="saved more than 100%"):
        chosen_setting(measured, min_saving_pct=100.0)  # no setting saves all of its time: nothing ships
    with pytest.raises(ConfigError, match="nothing to ship"):
        write_tuned_bundle(measured, str(tmp_path / "never_floor"), min_saving_pct=100.0)
    assert not os.path.exists(tmp_path / "never_floor")
    out = str(tmp_path / "tuned")
    card = FidelityCard(title="tiny", task="segmentation",
                        per_class={"organ": {"dice": {"before": 0.9, "after": 0.9, "delta": 0.0}}})
    os.makedirs(os.path.join(bundle, "docs"), exist_ok=True)
    card.to_json(os.path.join(bundle, "docs", "fidelity_card.json"))
    with open(os.path.join(bundle, "configs", "metadata.json")) as f:
        source_metadata = json.load(f)
    source_metadata["changelog"] = {"0.2.0": "compressed"}  # as compress-bundle writes one
    with open(os.path.join(bundle, "configs", "metadata.json"), "w") as f:
        json.dump(source_metadata, f)
    before = _tree(bundle)
    assert write_tuned_bundle(measured, out) == out
    assert _tree(bundle) == before

    with open(os.path.join(out, "configs", "inference.json")) as f:
        shipped = json.load(f)
    for key, value in row["overrides"].items():
        node = shipped
        for part in key.split("#"):
            node = node[part]
        assert node == value, key
    embedded = json.loads(read_torchscript_extra_files(os.path.join(out, "models", "model.ts"),
                                                       ["inference.json"])["inference.json"])
    assert embedded == shipped  # the SDK's stock operator reads this copy
    select_model(out, "torchscript", "fp32")  # every model and config sha256 checks out on the copy
    with open(os.path.join(out, "configs", "metadata.json")) as f:
        metadata = json.load(f)
    knobs = metadata["compression"]["pipeline_knobs"]
    assert knobs["overrides"] == row["overrides"] and knobs["saving_pct"] == pytest.approx(row["saving_pct"])
    assert knobs["delta_dice"] == row["delta_dice"] and knobs["max_delta"] == 0.5
    assert metadata["version"] == "0.2.1" and list(metadata["changelog"]) == ["0.2.1", "0.2.0"]
    assert metadata["changelog"]["0.2.0"] == "compressed"  # the earlier entry is kept
    note = metadata["changelog"]["0.2.1"]
    assert note.startswith("Pipeline setting shipped by monai-prune tune-pipeline: ") and "% fewer seconds" in note
    shipped_card = FidelityCard.load(os.path.join(out, "docs", "fidelity_card.json"))
    assert shipped_card.notes[-1] == note and note in open(os.path.join(out, "docs", "fidelity_card.md")).read()
    # the shipped bundle measured again: its own setting is now the tuned one (a roi of 32 is the whole image)
    again = tune_pipeline(out, images[:1], overlaps=[0.5], sw_batch_sizes=[4], roi_sizes=["16,16,16"],
                          pixdims=[[1.5, 1.5, 1.5]], max_delta=0.5, warmup=0)
    shipped_knobs = {knob: again["baseline"][knob] for knob, key in again["knob_ids"].items()
                     if key in row["overrides"]}
    assert shipped_knobs == {knob: row["value"][knob] for knob in row["value"]}, (shipped_knobs, row["value"])

    with pytest.raises(ConfigError, match="exists"):
        write_tuned_bundle(measured, out)
    with pytest.raises(ConfigError, match="lies inside the source bundle"):
        write_tuned_bundle(measured, os.path.join(bundle, "tuned"))
    failed = dict(row, passed=False)
    with pytest.raises(ConfigError, match="did not pass the guardrail"):
        write_tuned_bundle(measured, str(tmp_path / "never"), failed)
    strict = dict(measured, rows=[dict(r, passed=r["knob"] == "baseline") for r in measured["rows"]])
    with pytest.raises(ConfigError, match="nothing to ship"):
        write_tuned_bundle(strict, str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never") and _tree(bundle) == before
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no work folder left behind
    assert main(["tune-pipeline", bundle, "--images", images[0], "--overlap", "0.25", "--write-bundle", out]) == 2
    assert "exists" in capsys.readouterr().err  # refused before anything is measured
