"""``monai-prune time-pipeline``: a user's dense model (a ckpt_export-style TorchScript with its configs embedded) and
compressed bundle timed through the real CT app on a small DICOM series, DICOM in to SEG out, end to end and per
stage; the compressed SEG scored class by class against the dense SEG; ``--write-bundle`` writes a copy whose
fidelity card carries the end-to-end section, the source bundle untouched. Bad input is refused before anything runs.

The bundle is ``helpers/tiny_bundle.py``'s (a thresholding network, no training); the dense model thresholds a little
lower, so the two SEGs differ by a few boundary voxels: a Dice of exactly 1.0 would mean the SEGs were not compared.
"""

import hashlib
import json
import os
import statistics
import subprocess
import sys
import textwrap

import pytest
import torch

from monai_prune.cli import main
from monai_prune.data import synthetic_ct
from monai_prune.deploy.dicom import read_segmentation, write_ct_series
from monai_prune.deploy.models import select_model, verify_config_files, verify_model_files
from monai_prune.deploy.time_pipeline import time_pipeline
from monai_prune.fidelity import FidelityCard
from monai_prune.fidelity.metrics import dice
from helpers.repo_bundles import REPO, offline_env
from helpers.tiny_bundle import ThresholdNet, inference_config, make_bundle

CLI = os.path.join(os.path.dirname(sys.executable), "monai-prune")
CT_APP = os.path.join(REPO, "apps", "ct_seg_compressed", "app.py")
STAGES = ["start-up and imports", "DICOM load", "preprocessing", "network (sliding window)",
          "postprocessing (inversion to the input grid)", "DICOM SEG writing",
          "rest of the app (model load, graph set-up)"]


def tree_digest(folder):
    """sha256 over every file's relative path, mode and bytes, and every folder's path: any change shows."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        digest.update(os.path.relpath(root, folder).encode())
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(name.encode() + oct(os.stat(path).st_mode).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny compressed bundle with a fidelity card (also in its metadata, as compress-bundle writes it), a dense
    TorchScript with its metadata and inference config embedded (as ckpt_export writes it), a 32x32x16 CT series."""
    base = tmp_path_factory.mktemp("time_pipeline")
    bundle = make_bundle(base / "bundle")
    card = FidelityCard(title="tiny_organ_compressed 0.2.0", task="segmentation",
                        per_class={"organ": {"dice": {"before": 0.9, "after": 0.89, "delta": -0.01}}})
    os.makedirs(os.path.join(bundle, "docs"))
    card.to_json(os.path.join(bundle, "docs", "fidelity_card.json"))
    with open(os.path.join(bundle, "docs", "fidelity_card.md"), "w") as f:
        f.write(card.to_markdown())
    with open(os.path.join(bundle, "docs", "README.md"), "w") as f:  # as compress-bundle embeds the card
        f.write(f"# tiny_organ_compressed\n\n## Fidelity card\n\n{card.to_markdown(heading_level=3)}\n## Files\n")
    metadata_path = os.path.join(bundle, "configs", "metadata.json")
    with open(metadata_path) as f:
        metadata = json.load(f)
    metadata["compression"] = {"fidelity_card": card.to_dict()}  # metadata.json is not under config_files
    with open(metadata_path, "w") as f:
        json.dump(metadata, f)
    dense = str(base / "dense_model.ts")
    torch.manual_seed(1)
    torch.jit.save(torch.jit.script(ThresholdNet(0.58).eval()), dense,
                   _extra_files={"metadata.json": json.dumps(metadata), "inference.json": json.dumps(
                       inference_config())})
    hu, _ = synthetic_ct(size=32, rad_max=8, seed=0)
    series = str(base / "series")
    write_ct_series(hu[:, :, :16], series, spacing=(1.2, 1.2, 2.0))  # resampled to the bundle's 1.5 mm and back
    hu, _ = synthetic_ct(size=32, rad_max=8, seed=3)
    write_ct_series(hu[:, :, :12], str(base / "series2"), spacing=(1.0, 1.0, 2.5))  # another study
    return bundle, dense, series, base


@pytest.mark.slow
def test_time_pipeline_times_both_pipelines_scores_the_segs_and_writes_the_card_into_a_copy(tiny, tmp_path):
    bundle, dense, series, _ = tiny
    before = tree_digest(bundle)
    out, report, work = str(tmp_path / "timed_bundle"), str(tmp_path / "timing.json"), str(tmp_path / "work")
    done = subprocess.run([CLI, "time-pipeline", bundle, "--dense", dense, "--series", series, "--rounds", "1",
                           "--backend", "torchscript", "--precision", "fp32", "--work", work, "--json", report,
                           "--write-bundle", out], capture_output=True, text=True, timeout=600, env=offline_env())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    print(done.stdout)
    assert tree_digest(bundle) == before  # the source bundle, byte for byte (and mode for mode)

    # the printed table: end to end, first study, every stage, then the per-class Dice vs the dense SEG
    assert "| end to end (steady state) |" in done.stdout and "| first study |" in done.stdout
    assert all(f"| stage: {stage} |" in done.stdout for stage in STAGES)
    assert "| organ |" in done.stdout

    result = json.loads(open(report).read())
    pipeline = result["pipeline"]
    for key in ("end_to_end", "first_study"):
        assert pipeline[key]["before"] > 0 and pipeline[key]["after"] > 0, key
    assert list(pipeline["stages"]) == STAGES
    for stage, seconds in pipeline["stages"].items():
        low = 0.0 if stage.startswith("rest of the app") else 1e-6  # the rest is what the named stages leave
        assert seconds["before"] >= low and seconds["after"] >= low, (stage, seconds)
    dense_row, compressed_row = result["rows"]
    assert (dense_row["operator"], dense_row["backend"]) == ("stock", "torchscript")
    assert (compressed_row["operator"], compressed_row["backend"], compressed_row["precision"]) == (
        "compressed", "torchscript", "fp32")
    assert pipeline["end_to_end"] == {"before": dense_row["wall_s"], "after": compressed_row["wall_s"]}
    # one-shot: the wall is launch to exit, more than the app's own seconds (start-up and imports)
    assert dense_row["wall_s"] > dense_row["seconds_runs"][0]["app"] and dense_row["startup_s"] > 0
    assert result["machine"]["cpus"] >= 1 and result["settings"]["rounds"] == 1

    # accuracy: measured from the two SEGs (kept under --work), the one Dice of monai_prune
    organ = result["accuracy"]["dice_vs_dense"]["organ"]
    assert 0.5 < organ < 1.0  # the dense model thresholds lower: close, not equal
    seg_dense, seg_compressed = (read_segmentation(row["seg"], series) for row in result["rows"])
    assert organ == pytest.approx(dice(seg_compressed, seg_dense, empty=1.0, label=1))
    assert result["accuracy"]["voxel_agreement_vs_dense"] == pytest.approx(float((seg_compressed == seg_dense).mean()))
    assert f"organ {organ:.4f}" in pipeline["what"] and "before = the dense model (dense_model.ts)" in pipeline["what"]

    # the copy: its card carries the section (JSON, Markdown, metadata's copy); its sha256 records still verify
    card = FidelityCard.load(os.path.join(out, "docs", "fidelity_card.json"))
    assert card.pipeline_s == pipeline and card.per_class["organ"]["dice"]["after"] == 0.89
    markdown = open(os.path.join(out, "docs", "fidelity_card.md")).read()
    assert "## End to end: DICOM series to DICOM SEG with ct_seg_compressed" in markdown
    assert "| end to end (steady state) |" in markdown and "| stage: network (sliding window) |" in markdown
    metadata = json.load(open(os.path.join(out, "configs", "metadata.json")))
    assert metadata["compression"]["fidelity_card"]["pipeline_s"] == card.pipeline_s
    readme = open(os.path.join(out, "docs", "README.md")).read()
    assert card.to_markdown(heading_level=3) in readme and readme.endswith("## Files\n")
    assert "### End to end: DICOM series to DICOM SEG" in readme
    verify_model_files(out)
    verify_config_files(out)
    assert select_model(out, "torchscript", "fp32").sha256 == metadata["model_files"]["model.ts"]
    assert sorted(os.listdir(tmp_path)) == ["timed_bundle", "timing.json", "work"]  # no staging left beside OUT


@pytest.mark.slow
def test_resident_after_is_one_serve_process_over_two_studies_its_first_timed_from_launch(tiny, tmp_path):
    bundle, dense, series, base = tiny
    work = tmp_path / "work"
    studies = [series, str(base / "series2")]
    result = time_pipeline(CT_APP, bundle, dense, studies, rounds=2, backend="torchscript", precision="fp32",
                           resident=True, work=str(work))
    dense_row, resident = result["rows"]
    assert len(dense_row["wall_s_runs"]) == 4 and dense_row["startup_s"] > 0  # one app process per study
    assert resident["resident"] and resident["startup_s"] == 0.0 and len(resident["wall_s_runs"]) == 3
    for row in (dense_row, resident):  # studies of different sizes are never mixed in one median: per series, summed
        by_series = {}
        for seconds, index in zip(row["wall_s_runs"], row["wall_s_runs_series"]):
            by_series.setdefault(index, []).append(seconds)
        assert sorted(by_series) == [0, 1]
        assert row["wall_s"] == pytest.approx(sum(statistics.median(v) for v in by_series.values()))
    # the first study pays for the launch, imports and model load; the steady state does not
    assert resident["first_study_s"] > max(resident["wall_s_runs"])
    pipeline = result["pipeline"]
    assert pipeline["first_study"]["after"] == resident["first_study_s"]
    assert pipeline["end_to_end"]["after"] < pipeline["end_to_end"]["before"]  # no start-up per study
    assert "one monai-prune serve process (resident)" in pipeline["what"] and result["written"] is None
    assert "2 series x 2 round(s); seconds: the median per series, summed over the series" in pipeline["what"]
    served = [json.loads(line) for line in open(work / "served" / resident["variant"] / "serve.jsonl")]
    assert [(line["exit_code"], line["first"]) for line in served] == [(0, True)] + [(0, False)] * 3  # one process
    # each study's SEGs compared on that study; the card reports the worse one
    per_series = result["accuracy"]["per_series"]
    assert [p["series"] for p in per_series] == studies
    assert all(0.5 < p["dice"]["organ"] < 1.0 for p in per_series)
    assert result["accuracy"]["dice_vs_dense"]["organ"] == min(p["dice"]["organ"] for p in per_series)
    assert "| class | Dice vs dense SEG (worst series) | series 1 | series 2 |" in result["markdown"]


def _refused(capsys, argv, *words):
    code = main(["time-pipeline", *argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    # one error line, last (a log line may come before it, e.g. a file the DICOM check skipped), no traceback
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:] and lines[-1].startswith("monai-prune time-pipeline: error: "), lines
    assert not any("Traceback" in line for line in lines), lines
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


def test_bad_input_is_one_line_and_exit_2_before_anything_runs(tiny, tmp_path, capsys):
    bundle, dense, series, _ = tiny
    before = tree_digest(bundle)
    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    good = ["--dense", dense, "--series", series, "--rounds", "1", "--work", work, "--write-bundle", out]

    def args(**change):
        argv = [bundle, *good]
        for flag, value in change.items():
            flag = "--" + flag.replace("_", "-")
            argv[argv.index(flag) + 1] = value
        return argv

    existing = tmp_path / "existing"
    existing.mkdir()
    _refused(capsys, args(write_bundle=str(existing)), f"--write-bundle {existing} exists")
    _refused(capsys, args(write_bundle=os.path.join(bundle, "inside")), "inside the source bundle")
    _refused(capsys, args(series=str(tmp_path / "nowhere")), "does not exist")
    not_dicom = tmp_path / "notes"
    not_dicom.mkdir()
    (not_dicom / "notes.txt").write_text("not DICOM")
    _refused(capsys, args(series=str(not_dicom)), "No DICOM image", "notes.txt")
    weights = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, weights)
    _refused(capsys, args(dense=str(weights)), "neither a TorchScript file", "nor a bundle folder")
    _refused(capsys, args(dense=str(tmp_path / "missing.ts")), "missing.ts does not exist")
    _refused(capsys, args(dense=str(not_dicom)), "neither a compressed bundle")  # a folder, but no bundle
    _refused(capsys, args(rounds="0"), "--rounds must be at least 1")
    _refused(capsys, [*args(rounds="1"), "--resident"], "--resident needs a steady state", "--rounds 2")
    _refused(capsys, args(work=os.path.join(bundle, "work")), "--work")
    _refused(capsys, [series, *good], "not a compressed bundle folder")
    assert sorted(os.listdir(tmp_path)) == ["existing", "model.pt", "notes"]  # no OUT, no work folder, no staging
    assert os.listdir(existing) == [] and tree_digest(bundle) == before


STAND_IN_APP = textwrap.dedent('''
    import sys
    print("loading the model ...", file=sys.stderr)
    print("stand_in_app: error: the model does not fit this series", file=sys.stderr)
    sys.exit(1)
''')


def test_a_failing_app_run_is_one_line_with_the_end_of_its_stderr(tiny, tmp_path, capsys):
    bundle, dense, series, _ = tiny
    app = tmp_path / "stand_in_app" / "app.py"
    app.parent.mkdir()
    app.write_text(STAND_IN_APP)
    work = str(tmp_path / "work")
    err = _refused(capsys, [bundle, "--dense", dense, "--series", series, "--app", str(app), "--rounds", "1",
                            "--work", work], "warmup failed with exit code 1",
                   "stand_in_app: error: the model does not fit this series", "warmup.err")
    assert "--operator stock" in err  # the command that failed
    assert not os.path.exists(os.path.join(work, "runs", "warmup"))
