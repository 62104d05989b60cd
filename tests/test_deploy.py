"""MONAI Deploy apps on generated DICOM: the compressed spleen bundle turns a CT series into a DICOM SEG, the compressed
chest X-ray bundle turns a radiograph into a class + DICOM SR; bad input and tampered models are refused before the
graph starts with nothing written; the MAP-ready folder runs on its own; the Triton repository parses.

The bundles are the repository's own (``bundles/``), trained tiny with the stock ``monai.bundle`` CLI and compressed
with ``monai-prune compress-bundle``, once per module. Each app runs as a user runs it (``python app.py`` or
``monai-prune deploy run``, a process of its own) where a test checks the command line, its exit code or its log;
elsewhere it runs in this process as ``monai-prune serve`` runs each study (``helpers/apps.py``), which saves a
start-up of 6-10 s per run.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from monai_prune.deploy.dicom import dice, read_segmentation, segment_descriptions, write_ct_series, write_xray
from monai_prune.deploy.models import select_model
from monai_prune.deploy.runner import run_app
from monai_prune.cli import main
from monai_prune.export import export_onnx
from helpers.apps import ok_here, run_app_here
from helpers.dicom_studies import add_exam_summary, add_localizer, deidentify, realistic_study
from helpers.repo_bundles import CXR, REPO, SEG, bundle_cli, copy_bundle, make_data, offline, offline_env

CLI = os.path.join(os.path.dirname(sys.executable), "monai-prune")
CT_APP = os.path.join(REPO, "apps", "ct_seg_compressed", "app.py")
XRAY_APP = os.path.join(REPO, "apps", "xray_cls_compressed", "app.py")


def _run(cmd, cwd=None, env=None):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd, env=env or offline_env())
    return done.returncode, done.stdout + done.stderr


def _ok(cmd, **kwargs):
    code, log = _run(cmd, **kwargs)
    assert code == 0, f"{' '.join(map(str, cmd))}\n{log[-5000:]}"
    return log


def _compress(src, out, *args):
    """``monai-prune compress-bundle`` in this process (its own subprocess tests live in test_compress_bundle.py and
    test_zoo_bundle.py), with every download made impossible as in a subprocess under ``offline_env``."""
    with offline():
        code = main(["compress-bundle", src, "--out", out, "--repeats", "1", *args])  # latency: not tested here
    assert code == 0, f"compress-bundle {src} exited {code}"
    return out


def _seg_file(folder):
    found = glob.glob(os.path.join(folder, "*.dcm"))
    assert len(found) == 1, os.listdir(folder)
    return found[0]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def spleen(tmp_path_factory):
    """The spleen bundle trained tiny, its stock TorchScript export (the dense model for the dense app), the
    compressed bundle (channel pruning + distillation, OpenVINO int8 too) and a CT series of a labelled test volume."""
    tmp = tmp_path_factory.mktemp("deploy_seg")
    root = copy_bundle(SEG, tmp)
    make_data(root, "--train", "4", "--val", "2", "--test", "1", "--size", "48")
    small = ["--roi_size", "[32,32,32]", "--num_samples", "2"]
    bundle_cli(root, "run", "--config_file", "configs/train.json", "--epochs", "12", "--val_interval", "6", *small)
    # the dense bundle infers at its training patch size (ckpt_export embeds the file as it is, not overrides);
    # compress-bundle carries --set roi_size into the compressed bundle's inference.json the same way
    inference_json = os.path.join(root, "configs", "inference.json")
    config = json.load(open(inference_json))
    config["roi_size"] = [32, 32, 32]
    with open(inference_json, "w") as f:
        json.dump(config, f, indent=2)
    bundle_cli(root, "ckpt_export", "network", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt",
               "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json")
    compressed = _compress(root, str(tmp / "spleen_compressed"), "--recipe", "channel_pruning_kd", "--epochs", "3",
                           "--set", "roi_size=[32,32,32]", "--set", "num_samples=2", "--set", "prune#start_epoch=0",
                           "--set", "prune#end_epoch=1", "--int8", "openvino", "--calibration", "2",
                           "--input-shape", "1,1,32,32,32")
    image = nib.load(os.path.join(root, "data", "imagesTs", "ct_test_000.nii.gz"))
    label = np.asarray(nib.load(os.path.join(root, "data", "labelsTs", "ct_test_000_seg.nii.gz")).dataobj)
    series = str(tmp / "ct")
    write_ct_series(np.asarray(image.dataobj, dtype=np.float32), series,
                    spacing=tuple(float(z) for z in image.header.get_zooms()))
    return SimpleNamespace(root=root, dense_ts=os.path.join(root, "models", "model.ts"), compressed=compressed,
                           series=series, label=label, tmp=tmp)


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    """The chest X-ray bundle trained tiny, compressed (channel pruning, ONNX Runtime int8 too), and one test image
    as a DICOM DX radiograph."""
    tmp = tmp_path_factory.mktemp("deploy_cls")
    root = copy_bundle(CXR, tmp)
    data = make_data(root, "--train", "8", "--val", "4", "--test", "2", "--size", "64")
    bundle_cli(root, "run", "--config_file", "configs/train.json", "--epochs", "2", "--image_size", "[64,64]",
               "--batch_size", "4")
    compressed = _compress(root, str(tmp / "cxr_compressed"), "--recipe", "channel_pruning", "--epochs", "2",
                           "--set", "image_size=[64,64]", "--set", "batch_size=4", "--set", "prune#start_epoch=0",
                           "--set", "prune#end_epoch=0", "--int8", "onnxruntime", "--calibration", "2",
                           "--input-shape", "1,1,64,64")
    from PIL import Image

    png = os.path.join(root, "data", data["test"][0]["image"])
    pixels = np.asarray(Image.open(png))  # (rows, columns) as PIL gives it; MONAI's PILReader gives its transpose
    dx = str(tmp / "dx")
    write_xray(pixels.T.astype(np.uint16), os.path.join(dx, "image.dcm"))
    return SimpleNamespace(root=root, compressed=compressed, dx=dx, png=os.path.basename(png), tmp=tmp)


# ---------------------------------------------------------------------------------------------- segmentation
@pytest.mark.slow
def test_ct_app_writes_a_dicom_seg_that_matches_the_label_the_stock_operator_and_the_dense_app(spleen):
    out = {k: str(spleen.tmp / f"out_{k}") for k in ("compressed", "stock", "dense")}
    # the compressed bundle through monai-prune's operator (fp32, backend auto), via the CLI, with a NIfTI
    log = _ok([CLI, "deploy", "run", "ct_seg_compressed", "-i", spleen.series, "-o", out["compressed"],
               "-m", spleen.compressed, "--precision", "fp32", "--nifti"])
    # the SDK's own MonaiBundleInferenceOperator on the same bundle's model.ts, unchanged
    ok_here(CT_APP, "-i", spleen.series, "-o", out["stock"], "-m", spleen.compressed, "--operator", "stock")
    # the dense model: the source bundle's stock ckpt_export TorchScript
    ok_here(CT_APP, "-i", spleen.series, "-o", out["dense"], "-m", spleen.dense_ts)

    segs = {k: read_segmentation(_seg_file(v), spleen.series) for k, v in out.items()}
    for k, seg in segs.items():
        assert seg.shape == spleen.label.shape and set(np.unique(seg)) <= {0, 1}, k
    scores = {k: dice(seg, spleen.label) for k, seg in segs.items()}
    agreement = {k: dice(segs[k], segs["dense"]) for k in ("compressed", "stock")}
    print(f"\nDice vs label {scores}; Dice vs the dense app {agreement}; voxel agreement compressed/dense "
          f"{float((segs['compressed'] == segs['dense']).mean()):.4f}")
    assert scores["compressed"] > 0.6 and scores["dense"] > 0.6 and agreement["compressed"] > 0.6
    # same compressed weights through OpenVINO (ours) and TorchScript (stock): the same segmentation
    assert dice(segs["compressed"], segs["stock"]) > 0.99
    nifti = np.asarray(nib.load(os.path.join(out["compressed"], "segmentation.nii.gz")).dataobj)
    assert np.array_equal(nifti, segs["compressed"])  # the NIfTI is on the input's grid, voxel for voxel

    # the SEG and run.json say which model, version and backend produced them
    record = json.load(open(os.path.join(out["compressed"], "run.json")))
    metadata = json.load(open(os.path.join(spleen.compressed, "configs", "metadata.json")))
    assert record["model"]["sha256"] == metadata["model_files"][os.path.basename(record["model"]["path"])]
    assert record["model"]["version"] == metadata["version"] == "0.2.0"
    assert record["backend"] in ("openvino", "onnxruntime", "torchscript") and record["input"]["num_slices"] == 48
    assert {"dicom_loader", "series_to_volume", "compressed_inference.network", "dicom_seg_writer", "total"} <= \
        set(record["seconds"])
    ds = pydicom.dcmread(_seg_file(out["compressed"]))
    assert ds.Modality == "SEG"
    equipment = ds.ContributingEquipmentSequence[0]
    assert equipment.ManufacturerModelName == metadata["name"][:64] and equipment.SoftwareVersions == "0.2.0"
    assert equipment.DeviceUID == select_model(spleen.compressed, record["backend"], record["precision"]).dicom_uid
    (segment,) = segment_descriptions(_seg_file(out["compressed"]))
    assert segment["label"] == "spleen" and segment["algorithm_version"] == "0.2.0"
    # no patient identifiers, no study/series UIDs in the log
    source = pydicom.dcmread(sorted(glob.glob(os.path.join(spleen.series, "*.dcm")))[0])
    for secret in (source.StudyInstanceUID, source.SeriesInstanceUID, str(source.PatientID),
                   str(source.PatientName)):
        assert secret not in log


@pytest.mark.slow
def test_an_edited_config_never_runs_its_expressions_unless_the_user_opts_out(spleen, tmp_path):
    """A `$` expression slipped into the compressed bundle's inference.json after compression: the app refuses the
    bundle before parsing (exit 2, one line naming the file), the expression never runs; with
    --allow-edited-configs the same bundle runs it (so the check is what stopped it)."""
    bundle = str(tmp_path / "bundle")
    shutil.copytree(spleen.compressed, bundle)
    marker = tmp_path / "expression_ran.txt"
    path = os.path.join(bundle, "configs", "inference.json")
    config = json.load(open(path))
    config["roi_size"] = f"$__import__('pathlib').Path({str(marker)!r}).write_text('ran') and {config['roi_size']}"
    json.dump(config, open(path, "w"), indent=2)
    out = str(tmp_path / "out")
    code, log = run_app_here(CT_APP, "-i", spleen.series, "-o", out, "-m", bundle)
    errors = [line for line in log.splitlines() if "error" in line.lower()]
    assert code == 2 and "configs/inference.json does not match its sha256" in log, log[-3000:]
    assert len(errors) == 1 and "Traceback" not in log and not marker.exists() and not os.path.exists(out)
    ok_here(CT_APP, "-i", spleen.series, "-o", out, "-m", bundle, "--allow-edited-configs")
    assert marker.read_text() == "ran" and len(glob.glob(os.path.join(out, "*.dcm"))) == 1


def _seg_series_uid(path):
    return pydicom.dcmread(path, stop_before_pixels=True).ReferencedSeriesSequence[0].SeriesInstanceUID


@pytest.mark.slow
def test_ct_app_on_a_realistic_deidentified_export_segments_the_checked_series_once(spleen, tmp_path):
    """The spleen series inside a folder shaped like a real export (localizer, coronal reformat with more images,
    "Exam Summary" secondary capture, dose SR, a second smaller study), de-identified by removing the type 2
    attributes: the app segments, records and references the same series; a rerun replaces the result set."""
    root = tmp_path / "study"
    shutil.copytree(spleen.series, root / "spleen")
    study = pydicom.dcmread(sorted(glob.glob(str(root / "spleen" / "*.dcm")))[0])
    realistic_study(np.full((32, 32, 8), 40.0), root / "other")  # another study, its own localizer and summary
    add_localizer(root, study.StudyInstanceUID, study.PatientID)
    add_exam_summary(root, study.StudyInstanceUID, study.PatientID)
    deidentify(root)
    out = str(tmp_path / "out")
    for _ in range(2):  # the second run into the same folder replaces the first one's results
        ok_here(CT_APP, "-i", str(root), "-o", out, "-m", spleen.compressed, "--precision", "fp32")
    seg_file = _seg_file(out)  # exactly one SEG
    assert sorted(os.listdir(out)) == sorted([os.path.basename(seg_file), "run.json"])
    record = json.load(open(os.path.join(out, "run.json")))
    assert record["input"]["series_instance_uid"] == study.SeriesInstanceUID == _seg_series_uid(seg_file)
    assert record["input"]["num_slices"] == 48 and record["outputs"] + ["run.json"] == sorted(os.listdir(out))
    seg = read_segmentation(seg_file, str(root / "spleen"))
    assert dice(seg, spleen.label) > 0.6
    ds = pydicom.dcmread(seg_file, stop_before_pixels=True)
    assert ds.SeriesDescription.startswith("AI segmentation (Spleen CT segmentation, compressed")
    assert ds.PatientBirthDate == "" and ds.PatientID == ""  # type 2, left empty as the input had none
    other = glob.glob(str(root / "other" / "ct" / "*.dcm"))[0]
    named = str(tmp_path / "named")  # choosing another series by its UID is honoured end to end
    ok_here(CT_APP, "-i", str(root), "-o", named, "-m", spleen.compressed, "--precision", "fp32",
            "--series-uid", pydicom.dcmread(other).SeriesInstanceUID)
    assert _seg_series_uid(_seg_file(named)) == pydicom.dcmread(other).SeriesInstanceUID


def _reoriented_bundle(spleen, folder, drop):
    """The compressed spleen bundle with ``drop`` (transform names) removed from its inference config, recorded as
    compressed that way (config sha256 updated): a bundle that reorients without inverting."""
    from monai_prune.bundle import sha256

    shutil.copytree(spleen.compressed, folder)
    path = os.path.join(folder, "configs", "inference.json")
    config = json.load(open(path))
    for section in ("preprocessing", "postprocessing"):
        config[section]["transforms"] = [t for t in config[section]["transforms"] if t["_target_"] not in drop]
    json.dump(config, open(path, "w"), indent=2)
    meta_path = os.path.join(folder, "configs", "metadata.json")
    metadata = json.load(open(meta_path))
    metadata["config_files"]["inference.json"] = sha256(path)
    json.dump(metadata, open(meta_path, "w"), indent=2)
    return folder


@pytest.mark.slow
def test_a_bundle_that_reorients_without_inverting_writes_on_the_input_grid_or_nothing(spleen, tmp_path):
    flipped = _reoriented_bundle(spleen, str(tmp_path / "flipped"), {"Invertd", "Spacingd"})
    out = str(tmp_path / "out")
    log = ok_here(CT_APP, "-i", spleen.series, "-o", out, "-m", flipped, "--precision", "fp32")
    assert "put back on the input grid" in log
    seg_file = _seg_file(out)
    frames = pydicom.dcmread(seg_file).PerFrameFunctionalGroupsSequence
    positions = sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in frames)
    slices = sorted(float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in glob.glob(spleen.series + "/*.dcm"))
    seg = read_segmentation(seg_file, spleen.series)
    # one frame per source slice that holds a segment (empty frames are omitted), each at a source slice's position
    assert set(positions) <= set(slices) and len(positions) == int(seg.any(axis=(0, 1)).sum()) > 0
    assert dice(seg, spleen.label) > 0.6  # not mirrored
    resampled = _reoriented_bundle(spleen, str(tmp_path / "resampled"), {"Invertd"})
    code, log = run_app_here(CT_APP, "-i", spleen.series, "-o", str(tmp_path / "refused"), "-m", resampled)
    assert code != 0 and "is not on the input series' grid" in log and "add Invertd" in log, log[-3000:]
    assert not os.path.exists(tmp_path / "refused")


@pytest.mark.slow
def test_a_gantry_tilted_series_is_segmented_on_its_own_slices_by_the_bundles_postprocessing(spleen, tmp_path):
    """A series shaped like a real gantry-tilted CT export (Philips "STEREOTAXIS", tilt -18.5 degrees: the image
    columns tilted out of the axial plane, ImagePositionPatient stepping along z only, so the slices are sheared
    along their normal): the fast label inversion declines a grid that is not axis-aligned, the bundle's own
    postprocessing (Invertd) puts the labels back, and the SEG has a frame on each source slice it segments."""
    tilt = np.deg2rad(-18.5)
    tilted = tmp_path / "tilted"
    shutil.copytree(spleen.series, tilted)
    for path in sorted(glob.glob(str(tilted / "*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(tilt)), float(np.sin(tilt))]
        ds.GantryDetectorTilt = -18.5
        ds.save_as(path)
    out = str(tmp_path / "out")
    ok_here(CT_APP, "-i", str(tilted), "-o", out, "-m", spleen.compressed, "--precision", "fp32")
    record = json.load(open(os.path.join(out, "run.json")))
    assert record["stages"]["compressed_inference.postprocessing"] == "bundle"  # fast path declined
    seg_file = _seg_file(out)
    frames = pydicom.dcmread(seg_file).PerFrameFunctionalGroupsSequence
    positions = {tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient) for f in frames}
    slices = {tuple(round(float(v), 3) for v in pydicom.dcmread(p).ImagePositionPatient)
              for p in glob.glob(str(tilted / "*.dcm"))}
    seg = read_segmentation(seg_file, str(tilted))
    assert positions <= slices and len(positions) == int(seg.any(axis=(0, 1)).sum()) > 0
    upright = read_segmentation(_seg_file(str(spleen.tmp / "out_compressed")), spleen.series) \
        if os.path.isdir(spleen.tmp / "out_compressed") else spleen.label
    print(f"\ntilted: Dice vs label {dice(seg, spleen.label):.4f}, vs the upright series' SEG {dice(seg, upright):.4f}")
    assert dice(seg, spleen.label) > 0.5


@pytest.mark.slow
def test_ct_app_int8_and_onnxruntime_agree_with_fp32(spleen):
    ref = read_segmentation(_seg_file(str(spleen.tmp / "out_compressed")), spleen.series) \
        if os.path.isdir(spleen.tmp / "out_compressed") else None
    results = {}
    for name, args in (("int8", ["--precision", "int8"]), ("ort", ["--backend", "onnxruntime", "--precision", "fp32"])):
        out = str(spleen.tmp / f"out_{name}")
        ok_here(CT_APP, "-i", spleen.series, "-o", out, "-m", spleen.compressed, *args)
        results[name] = read_segmentation(_seg_file(out), spleen.series)
        record = json.load(open(os.path.join(out, "run.json")))
        assert record["precision"] == ("int8" if name == "int8" else "fp32")
        assert record["model"]["path"] == ("models/model_int8.xml" if name == "int8" else "models/model.onnx")
    assert dice(results["int8"], results["ort"]) > 0.95
    if ref is not None:
        assert dice(results["ort"], ref) > 0.99


def _fake_bundle(root):
    """A minimal compressed bundle: a tiny network's ONNX file with its sha256 in metadata.json."""
    from monai.networks.nets import UNet

    from monai_prune.bundle import sha256

    os.makedirs(os.path.join(root, "models"))
    os.makedirs(os.path.join(root, "configs"))
    net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=0).eval()
    export_onnx(net, torch.zeros(1, 1, 16, 16, 16), os.path.join(root, "models", "model.onnx"))
    metadata = {"name": "tiny", "version": "0.2.0",
                "model_files": {"model.onnx": sha256(os.path.join(root, "models", "model.onnx"))},
                "network_data_format": {"inputs": {"image": {"type": "image", "num_channels": 1,
                                                             "spatial_shape": [16, 16, 16]}},
                                        "outputs": {"pred": {"type": "image", "num_channels": 2,
                                                             "channel_def": {"0": "background", "1": "organ"}}}}}
    with open(os.path.join(root, "configs", "inference.json"), "w") as f:
        json.dump({"roi_size": [16, 16, 16]}, f)
    metadata["config_files"] = {"inference.json": sha256(os.path.join(root, "configs", "inference.json"))}
    with open(os.path.join(root, "configs", "metadata.json"), "w") as f:
        json.dump(metadata, f)
    return root


def _never_built(**kwargs):
    raise AssertionError("the app must not be built for a refused input")


def test_bad_inputs_and_models_are_refused_before_the_graph_starts_with_nothing_written(tmp_path, capsys):
    bundle = _fake_bundle(str(tmp_path / "bundle"))
    vol = np.full((16, 16, 12), -100.0, dtype=np.float32)
    good = str(tmp_path / "good")
    files = write_ct_series(vol, good)

    def refused(input_folder, model, message):
        out = str(tmp_path / "out")
        code = run_app(_never_built, ["*.dcm"], "CT", ["app.py", "-i", input_folder, "-o", out, "-m", model])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert not os.path.exists(out)  # not even the empty folder the SDK's argument parser makes

    os.makedirs(tmp_path / "empty")
    refused(str(tmp_path / "empty"), bundle, "empty")
    os.makedirs(tmp_path / "text")
    for i in range(3):
        (tmp_path / "text" / f"note{i}.txt").write_text("not an image")
    refused(str(tmp_path / "text"), bundle, "No DICOM")
    truncated = str(tmp_path / "truncated")
    shutil.copytree(good, truncated)
    path = os.path.join(truncated, os.path.basename(files[3]))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    refused(truncated, bundle, "truncated")
    mr = str(tmp_path / "mr")
    write_ct_series(vol, mr, modality="MR", series_description="T1 axial")
    refused(mr, bundle, "MR")
    uneven = str(tmp_path / "uneven")
    shutil.copytree(good, uneven)
    moved = pydicom.dcmread(os.path.join(uneven, os.path.basename(files[5])))
    moved.ImagePositionPatient[2] = float(moved.ImagePositionPatient[2]) + 1.0
    moved.save_as(os.path.join(uneven, os.path.basename(files[5])))
    refused(uneven, bundle, "spacing")

    tampered = str(tmp_path / "tampered")
    shutil.copytree(bundle, tampered)
    with open(os.path.join(tampered, "models", "model.onnx"), "ab") as f:
        f.write(b"\0")
    refused(good, tampered, "sha256")
    missing = str(tmp_path / "missing")
    shutil.copytree(bundle, missing)
    os.remove(os.path.join(missing, "models", "model.onnx"))
    refused(good, missing, "missing")
    lone = str(tmp_path / "lone.onnx")
    shutil.copy(os.path.join(bundle, "models", "model.onnx"), lone)
    refused(good, lone, "carries no bundle configs")


def test_edited_configs_and_bad_arguments_are_one_line_before_anything_is_parsed(tmp_path, capsys):
    bundle = _fake_bundle(str(tmp_path / "bundle"))
    os.makedirs(tmp_path / "empty")
    empty = str(tmp_path / "empty")

    def run(model, *extra):
        out = str(tmp_path / "out")
        capsys.readouterr()  # only what the app prints (earlier tests may have set monai_prune's log to stderr)
        code = run_app(_never_built, ["*.dcm"], "CT", ["app.py", "-i", empty, "-o", out, "-m", model, *extra])
        err = capsys.readouterr().err
        assert not os.path.exists(out)
        return code, err

    def variant(name, edit):
        folder = str(tmp_path / name)
        shutil.copytree(bundle, folder)
        edit(os.path.join(folder, "configs"))
        return folder

    def append(path, text):
        with open(path, "a") as f:
            f.write(text)

    edited = variant("edited", lambda c: append(os.path.join(c, "inference.json"), " "))
    added = variant("added", lambda c: append(os.path.join(c, "evil.json"), "{}"))
    removed = variant("removed", lambda c: os.remove(os.path.join(c, "inference.json")))

    def unrecorded(configs):
        path = os.path.join(configs, "metadata.json")
        metadata = json.load(open(path))
        del metadata["config_files"]
        json.dump(metadata, open(path, "w"))

    old = variant("old", unrecorded)
    for model, message in ((edited, "configs/inference.json does not match its sha256"),
                           (added, "configs/evil.json was added after compression"),
                           (removed, "configs/inference.json listed in metadata.json is missing"),
                           (old, "records no config_files sha256")):
        code, err = run(model)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], err
        assert "missing" in message or "--allow-edited-configs" in lines[0], err
    code, err = run(edited, "--allow-edited-configs")  # the opt-out: configs pass, the empty study is what stops it
    assert code == 2 and "empty" in err and "sha256" not in err
    code, err = run(bundle, "--backend", "tensorrt")
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "invalid choice: 'tensorrt'" in err, err
    code, err = run(bundle, "--num-threads", "many")
    assert code == 2 and "invalid int value: 'many'" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_the_real_app_exits_2_on_an_empty_study_and_writes_nothing(tmp_path):
    bundle = _fake_bundle(str(tmp_path / "bundle"))
    os.makedirs(tmp_path / "empty")
    out = str(tmp_path / "out")
    code, log = _run([sys.executable, CT_APP, "-i", str(tmp_path / "empty"), "-o", out, "-m", bundle])
    assert code == 2 and "ct_seg_compressed: error:" in log and "empty" in log, log[-2000:]
    assert not os.path.exists(out)


# ---------------------------------------------------------------------------------------------- classification
@pytest.mark.slow
def test_xray_app_classifies_a_dicom_radiograph_as_the_bundle_does_a_png_and_writes_an_sr(chest):
    out = str(chest.tmp / "out")
    log = _ok([sys.executable, XRAY_APP, "-i", chest.dx, "-o", out, "-m", chest.compressed, "--precision", "fp32"])
    result = json.load(open(os.path.join(out, "result.json")))
    assert result["class_name"] in ("no_lesion", "lesion") and set(result["probabilities"]) == {"no_lesion", "lesion"}
    assert result["class_name"] == max(result["probabilities"], key=result["probabilities"].get)
    assert result["model"]["version"] == "0.2.0" and len(result["model"]["sha256"]) == 64

    # the stock bundle CLI on the PNG the DICOM was made from, with the compressed bundle's inference.json
    os.symlink(os.path.join(chest.root, "data"), os.path.join(chest.compressed, "data"))
    bundle_cli(chest.compressed, "run", "--config_file", "configs/inference.json")
    stock = {p["image"]: p for p in json.load(open(os.path.join(chest.compressed, "eval", "predictions.json")))}
    expected = stock[chest.png]
    assert result["class_index"] == expected["class_index"]
    for name, p in expected["probabilities"].items():
        assert result["probabilities"][name] == pytest.approx(p, abs=1e-4)

    sr = pydicom.dcmread(_seg_file(out))
    assert sr.Modality == "SR"
    texts = [item.TextValue for item in sr.ContentSequence if "TextValue" in item]
    assert any(result["class_name"] in t and result["model"]["name"][:20] in t for t in texts), texts
    source = pydicom.dcmread(os.path.join(chest.dx, "image.dcm"))
    assert sr.StudyInstanceUID == source.StudyInstanceUID  # the SR belongs to the radiograph's study
    assert source.StudyInstanceUID not in log and str(source.PatientID) not in log

    # int8 (ONNX Runtime) runs too and says so
    out8 = str(chest.tmp / "out_int8")
    ok_here(XRAY_APP, "-i", chest.dx, "-o", out8, "-m", chest.compressed, "--precision", "int8")
    record = json.load(open(os.path.join(out8, "run.json")))
    assert record["precision"] == "int8" and record["model"]["path"] == "models/model_int8.onnx"
    int8 = json.load(open(os.path.join(out8, "result.json")))
    for name, p in expected["probabilities"].items():  # int8 moves the probabilities a little, not the picture
        assert int8["probabilities"][name] == pytest.approx(p, abs=0.1)


# ---------------------------------------------------------------------------------------------- packaging
@pytest.mark.slow
def test_packaged_ct_app_runs_from_its_folder_and_the_triton_repository_parses(spleen, tmp_path):
    from monai_prune.deploy.package import check_package
    from monai_prune.deploy.triton import check_triton_repository

    folder, triton = str(tmp_path / "map"), str(tmp_path / "triton")
    log = _ok([CLI, "package", "ct_seg_compressed", "--out", folder, "--model", spleen.compressed,
               "--name", "spleen_ct", "--triton-repo", triton])
    assert "Docker" in log or "holoscan-cli" in log  # says what is missing to build the image here
    report = check_package(folder)
    assert report["ok"] and report["requirements"]["pinned"] >= 10 and not report["requirements"]["mismatches"]
    assert "torch==" in open(os.path.join(folder, "requirements.txt")).read()
    assert check_triton_repository(triton)["spleen_ct"]["backend"] == "onnxruntime"

    env = {k: v for k, v in offline_env().items() if k != "PYTHONPATH"}
    out = str(tmp_path / "out")
    _ok([sys.executable, "app.py", "-i", spleen.series, "-o", out, "-m", "models/spleen_ct"], cwd=folder, env=env)
    seg = read_segmentation(_seg_file(out), spleen.series)
    assert dice(seg, spleen.label) > 0.5
    record = json.load(open(os.path.join(out, "run.json")))
    assert record["model"]["sha256"] == json.load(open(os.path.join(spleen.compressed, "configs", "metadata.json"))
                                                  )["model_files"][os.path.basename(record["model"]["path"])]


def _summary(log):
    """The summary line ``monai-prune serve`` prints (JSON) among the log lines."""
    return json.loads([line for line in log.splitlines() if line.startswith('{"studies"')][-1])


@pytest.mark.slow
def test_serve_runs_studies_in_one_process_with_the_labels_of_the_bundles_own_postprocessing(spleen, tmp_path):
    """``monai-prune serve``: one process, the model loaded once; a bad study is reported and skipped; a watched
    inbox is served when a study is ready, and SIGTERM mid-study lets it finish. The fast label inversion gives the SEG
    the bundle's own postprocessing (Invertd on float channels) gives, on a series the bundle must resample."""
    image = nib.load(os.path.join(spleen.root, "data", "imagesTs", "ct_test_000.nii.gz"))
    hu = np.asarray(image.dataobj, dtype=np.float32)
    studies = {name: str(tmp_path / "in" / name) for name in ("s1", "s2", "bad", "air")}
    write_ct_series(hu, studies["s1"], spacing=(1.1, 0.9, 2.5))  # not the bundle's 1.5 x 1.5 x 2: resampled
    shutil.copytree(studies["s1"], studies["s2"])
    os.makedirs(studies["bad"])
    with open(os.path.join(studies["bad"], "notes.txt"), "w") as f:
        f.write("not DICOM")
    write_ct_series(np.full_like(hu, -1000.0), studies["air"], spacing=(1.1, 0.9, 2.5))  # nothing to segment
    out = str(tmp_path / "served")
    cmd = [CLI, "serve", "ct_seg_compressed", "-m", spleen.compressed, "-o", out, "--study",
           studies["s1"], studies["bad"], studies["s2"], studies["air"], "--", "--precision", "fp32"]
    code, log = _run(cmd)
    assert code == 1, log[-4000:]  # one study failed: reported, the others served
    summary = _summary(log)
    assert summary["studies"] == 4 and summary["failed"] == 1 and summary["first_study_s"] > 0
    assert log.count("already loaded on openvino in this process: reused") == 2  # s2 and air: no second model load
    lines = [json.loads(line) for line in open(os.path.join(out, "serve.jsonl"))]
    assert [(os.path.basename(r["study"]), r["exit_code"], r["first"]) for r in lines] == [
        ("s1", 0, True), ("bad", 2, False), ("s2", 0, False), ("air", 0, False)]
    assert not os.path.exists(os.path.join(out, "bad"))  # a refused study writes nothing
    record = json.load(open(os.path.join(out, "s1", "run.json")))
    assert record["stages"]["compressed_inference.postprocessing"].startswith("fast (softmax+argmax, trilinear")
    served = read_segmentation(_seg_file(os.path.join(out, "s1")), studies["s1"])
    assert np.array_equal(served, read_segmentation(_seg_file(os.path.join(out, "s2")), studies["s2"]))
    # the bundle's own postprocessing, one-shot: the same labels
    ok_here(CT_APP, "-i", studies["s1"], "-o", str(tmp_path / "bundle_post"), "-m", spleen.compressed,
            "--precision", "fp32", "--bundle-postprocessing")
    bundle_post = json.load(open(tmp_path / "bundle_post" / "run.json"))
    assert bundle_post["stages"]["compressed_inference.postprocessing"] == "bundle"
    reference = read_segmentation(_seg_file(str(tmp_path / "bundle_post")), studies["s1"])
    assert served.any() and int((served != reference).sum()) <= 2, int((served != reference).sum())
    # nothing segmented: a valid SEG with every frame (empty frames are omitted only when a segment exists)
    air = pydicom.dcmread(_seg_file(os.path.join(out, "air")))
    assert int(air.NumberOfFrames) == hu.shape[2]
    assert int(pydicom.dcmread(_seg_file(os.path.join(out, "s1"))).NumberOfFrames) < hu.shape[2]

    # (a restart serving nothing twice is tested on a stand-in app in test_serve.py: no second model load needed)
    # a watched inbox: a study with a .ready file is served, then the server stops when idle
    inbox = tmp_path / "inbox"
    shutil.copytree(studies["s1"], inbox / "s3")
    (inbox / "s3" / ".ready").touch()
    # ... and SIGTERM while the app runs it (the SDK's graph is running): the study finishes, then the server exits 0
    proc = subprocess.Popen([CLI, "serve", "ct_seg_compressed", "-m", spleen.compressed, "-o", out, "--watch",
                             str(inbox), "--poll", "0.2", "--", "--precision", "fp32"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=offline_env())
    deadline = time.time() + 300
    while not glob.glob(os.path.join(out, ".s3.staging-*")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and _summary(log)["studies"] == 1 and "SIGTERM received" in log, log[-3000:]
    assert [r["exit_code"] for r in map(json.loads, open(os.path.join(out, "serve.jsonl")))][-1] == 0
    assert np.array_equal(read_segmentation(_seg_file(os.path.join(out, "s3")), str(inbox / "s3")), served)
