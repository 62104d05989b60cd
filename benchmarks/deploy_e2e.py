"""End to end deploy benchmark: a DICOM CT series in, a DICOM SEG out, dense vs compressed, one app process per run.

What it measures
    What a hospital sees: the wall time from launching ``apps/ct_seg_compressed/app.py`` (the MONAI Deploy App SDK
    graph DICOM loader -> series selector -> volume -> bundle inference -> DICOM SEG writer) to its exit with the
    SEG written, for one ``--size`` x ``--size`` x ``--slices`` CT series (default 256x256x160, 1.5 x 1.5 x 2.0 mm),
    plus the seconds per stage the app records in ``run.json`` (``app``: the SDK graph; ``*_inference``: the whole
    inference operator; ``compressed_inference.network``: the bundle's sliding-window inferer around the network).
    Every variant runs the bundle's own ``configs/inference.json`` (roi 96^3, sw_batch_size 4, overlap 0.5):

    * ``dense``: the dense model as a lone TorchScript file (``monai.bundle ckpt_export``, configs under extra/),
      on TorchScript through monai-prune's operator;
    * ``compressed`` on TorchScript, ONNX Runtime fp32, OpenVINO fp32 and OpenVINO int8 (NNCF), through
      monai-prune's operator (``--backend`` / ``--precision``);
    * ``compressed`` through the SDK's own ``MonaiBundleInferenceOperator`` on the compressed ``model.ts``
      (``--operator stock``).

    Each SEG is read back (``read_segmentation``) and scored: Dice vs the series' label volume, and Dice and voxel
    agreement vs the dense run's SEG.

Where the models come from (preparation, not timed)
    In a work folder: a copy of ``bundles/spleen_ct_segmentation_compressed`` (without data/models/eval), synthetic
    training data from its ``scripts/make_synthetic_data.py``, the dense model trained with the stock
    ``python -m monai.bundle run`` (small settings of ``bundles/build.sh``: 48^3 patches), compressed with
    ``monai-prune compress-bundle --recipe channel_pruning_kd --int8 openvino``, and the dense model exported with
    ``python -m monai.bundle ckpt_export``. The test series is ``monai_prune.data.synthetic_ct`` (the training
    data's spheres and Hounsfield-like intensities, 1.5 mm grid) sampled every 2 mm along z and written with
    ``write_ct_series``. With ``--work DIR`` the folder is kept, and a later run with the same preparation settings
    reuses its models.

How it is timed
    One untimed warm-up app run on a tiny series (so that no timed run pays for a cold file cache), then
    ``--rounds`` rounds (default 3); each round launches every variant once, starting one variant later than the
    previous round, with a short pause between runs. Reported: the median over rounds of the wall time and of every
    stage, and speed-ups vs the dense run (dense seconds / variant seconds). The machine is shared: read ratios,
    not absolute seconds.

Output
    A Markdown table (printed; with ``--json PATH`` also written to PATH with a ``.md`` beside it) and the rows as
    JSON: variant, operator, backend, precision, model, wall_s, wall_s_runs, startup_s, app_s, inference_s,
    network_s, seconds (median per stage), seconds_runs, speedup_vs_dense_wall / _inference / _network,
    dice_vs_label, dice_vs_dense, voxel_agreement_vs_dense, seg_voxels, seg; plus the machine, the settings and the
    preparation's seconds.

Run (from the repository root)
    python benchmarks/deploy_e2e.py --json bench_output/deploy_e2e.json   # 15-20 minutes on 2 busy cores
    python benchmarks/deploy_e2e.py --quick                                # smoke run, about 3 minutes
    python benchmarks/deploy_e2e.py --work /tmp/e2e --rounds 5             # keep (and later reuse) the models
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _bench  # noqa: E402
from monai_prune.data import synthetic_ct  # noqa: E402
from monai_prune.deploy.dicom import dice, read_segmentation, write_ct_series  # noqa: E402
from monai_prune.deploy.pipeline_timing import (STDERR_TAIL_LINES, AppRunError, Variant, add_speedups,  # noqa: E402
                                                machine, monai_prune_cli, pipeline_section, run_app, run_logged,
                                                run_rounds, summarize, tail, write_card_pipeline)
from monai_prune.report import markdown_table  # noqa: E402
from monai_prune.runtime import available_backends  # noqa: E402
from monai_prune.utils import atomic_write_text, configure_logging  # noqa: E402

logger = logging.getLogger("monai_prune.benchmarks")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "apps", "ct_seg_compressed", "app.py")
BUNDLE = os.path.join(ROOT, "bundles", "spleen_ct_segmentation_compressed")
NOT_COPIED = ("data", "models", "eval", "__pycache__")  # top-level bundle folders the work copy starts without
SPACING = (0.78, 0.78, 2.5)  # mm, a typical abdominal CT export: the bundle resamples to 1.5 x 1.5 x 2.0 and inverts
OBJECT_GRID_MM = 1.5  # the training data's grid: the series' objects keep their physical size
TRAIN_SMALL = ["--roi_size", "[48,48,48]", "--num_samples", "2"]  # bundles/build.sh's small settings
COMPRESS_SMALL = ["--set", "roi_size=[48,48,48]", "--set", "num_samples=2", "--set", "prune#start_epoch=0"]
# option: (default, --quick)
SETTINGS = {"size": (512, 96), "slices": (140, 24), "rounds": (3, 2), "epochs": (10, 1), "compress_epochs": (3, 2),
            "train_volumes": (6, 2), "val_volumes": (2, 1)}


VARIANTS = (
    Variant("dense-stock", "dense", "torchscript", "fp32", "stock"),  # the baseline: what users run today
    Variant("dense-torchscript", "dense", "torchscript", "fp32", "compressed"),
    Variant("compressed-stock-operator", "compressed", "torchscript", "fp32", "stock"),
    Variant("compressed-openvino-bundle-post", "compressed", "openvino", "fp32", "compressed",
            bundle_postprocessing=True),
    Variant("compressed-onnxruntime", "compressed", "onnxruntime", "fp32", "compressed"),
    Variant("compressed-openvino", "compressed", "openvino", "fp32", "compressed"),
    Variant("compressed-openvino-int8", "compressed", "openvino", "int8", "compressed"),
    Variant("resident-openvino", "compressed", "openvino", "fp32", "compressed", resident=True),
    Variant("resident-openvino-int8", "compressed", "openvino", "int8", "compressed", resident=True),
    # the compressed bundle with the pipeline setting tune-pipeline measured and shipped (--write-bundle)
    Variant("resident-openvino-int8-tuned", "tuned", "openvino", "int8", "compressed", resident=True),
)
TUNING_SERIES = (256, 70, 11)  # rows/columns, slices, seed: another (smaller) series of the same kind


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 96x96x24 series, 2 rounds, 1 training epoch, 2 compression epochs, "
                             "2+1 training volumes (explicit options still win)")
    parser.add_argument("--size", type=int, help="rows and columns of the CT series (default 512)")
    parser.add_argument("--slices", type=int, help="slices of the CT series (default 140)")
    parser.add_argument("--rounds", type=int, help="timed rounds over all variants (default 3)")
    parser.add_argument("--epochs", type=int, help="dense training epochs (default 10)")
    parser.add_argument("--val-interval", type=int, default=2, help="dense validation interval (default 2)")
    parser.add_argument("--compress-epochs", type=int, help="compress-bundle fine-tuning epochs, >= 2 (default 3)")
    parser.add_argument("--train-volumes", type=int, help="synthetic training volumes (default 6)")
    parser.add_argument("--val-volumes", type=int, help="synthetic validation volumes (default 2)")
    parser.add_argument("--data-size", type=int, default=64, help="edge of the training volumes (default 64)")
    parser.add_argument("--calibration", type=int, default=4, help="int8 calibration samples (default 4)")
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS[1:]], default=None,
                        help="only these compressed variants (dense always runs: it is the reference)")
    parser.add_argument("--work", default=None, help="work folder, kept (default: a temporary folder, removed)")
    parser.add_argument("--json", default=None, help="write the result as JSON here, and a Markdown file beside it")
    parser.add_argument("--tune-roi", nargs="+", default=["64,64,64", "96,96,96"], metavar="X,Y,Z",
                        help="sliding-window sizes tune-pipeline measures for the tuned variant, on a separate tuning "
                             "series against the dense model (default 64,64,64 96,96,96)")
    parser.add_argument("--no-card", action="store_true",
                        help="do not write the end-to-end ratios into the benchmarked compressed bundle's fidelity "
                             "card (docs/fidelity_card.json and .md; the bundle is the one this run prepared)")
    args = parser.parse_args()
    for key, (full, quick) in SETTINGS.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if min(args.size, args.slices, args.rounds, args.epochs, args.val_interval, args.train_volumes,
           args.val_volumes, args.calibration) < 1:
        parser.error("sizes, counts, epochs and rounds must be at least 1")
    if args.compress_epochs < 2:
        parser.error("--compress-epochs must be at least 2 (the channels are pruned over epochs 0-1, then the "
                     "final architecture is fine-tuned)")
    if args.data_size < 48:
        parser.error("--data-size must be at least 48 (the training patch)")
    return args


def select_variants(args) -> List[Variant]:
    """The variants asked for whose runtime is installed (int8 OpenVINO also needs nncf to be made)."""
    installed = available_backends()
    chosen = [VARIANTS[0]] + [v for v in VARIANTS[1:] if args.variants is None or v.name in args.variants]
    runnable = []
    for v in chosen:
        missing = v.backend not in installed or (v.precision == "int8" and importlib.util.find_spec("nncf") is None)
        if missing:
            logger.warning("%s skipped: %s is not installed", v.name, "nncf" if v.backend in installed else v.backend)
        else:
            runnable.append(v)
    return runnable


# ---------------------------------------------------------------------------------------------------- preparation
def prepare_models(args, work: str, int8: bool) -> Dict[str, Any]:
    """Bundle copy, synthetic data, dense training, compression, dense export (skipped when ``work`` already holds
    the models of the same settings); returns the paths and the seconds each step took."""
    settings = {k: getattr(args, k) for k in ("epochs", "val_interval", "compress_epochs", "train_volumes",
                                              "val_volumes", "data_size", "calibration")}
    settings["int8"] = int8
    settings["inference_roi"] = TRAIN_SMALL[1]
    paths = {"bundle": os.path.join(work, "bundle"), "compressed": os.path.join(work, "compressed"),
             "dense": os.path.join(work, "dense_model.ts")}
    record_path = os.path.join(work, "prepared.json")
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record.get("settings") == settings and all(os.path.exists(p) for p in paths.values()):
            logger.info("reusing the models prepared in %s", work)
            return {**paths, "seconds": record["seconds"], "reused": True}
    for folder in (paths["bundle"], paths["compressed"]):
        shutil.rmtree(folder, ignore_errors=True)
    for file in (paths["dense"], record_path):
        if os.path.exists(file):
            os.remove(file)
    shutil.copytree(BUNDLE, paths["bundle"],
                    ignore=lambda folder, names: NOT_COPIED if os.path.samefile(folder, BUNDLE) else ())
    logs, py, bundle = os.path.join(work, "logs"), sys.executable, paths["bundle"]
    # dense and compressed infer with the same sliding-window roi (the training patch): compress-bundle carries
    # --set roi_size into the compressed inference.json, and ckpt_export embeds the dense file as it is
    inference_json = os.path.join(bundle, "configs", "inference.json")
    with open(inference_json) as f:
        inference = json.load(f)
    inference["roi_size"] = json.loads(TRAIN_SMALL[1])
    with open(inference_json, "w") as f:
        json.dump(inference, f, indent=2)
    steps = {
        "data": [py, "scripts/make_synthetic_data.py", "--train", str(args.train_volumes), "--val",
                 str(args.val_volumes), "--test", "0", "--size", str(args.data_size)],
        "train_dense": [py, "-m", "monai.bundle", "run", "--config_file", "configs/train.json", "--epochs",
                        str(args.epochs), "--val_interval", str(min(args.val_interval, args.epochs)), *TRAIN_SMALL],
        "compress": [*monai_prune_cli(), "compress-bundle", bundle, "--recipe", "channel_pruning_kd", "--out",
                     paths["compressed"], "--epochs", str(args.compress_epochs), *COMPRESS_SMALL,
                     # pruned over epochs 0-1 when there are 3+ epochs (else at epoch 0), then fine-tuned
                     "--set", f"prune#end_epoch={min(1, args.compress_epochs - 2)}",
                     *(["--int8", "openvino", "--calibration", str(args.calibration)] if int8 else [])],
        "export_dense": [py, "-m", "monai.bundle", "ckpt_export", "network", "--filepath", paths["dense"],
                         "--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json", "--config_file",
                         "configs/inference.json"],
    }
    seconds = {}
    for name, cmd in steps.items():
        logger.info("preparing: %s", name)
        seconds[name] = round(run_logged(cmd, logs, f"prepare_{name}", cwd=bundle), 2)
        logger.info("preparing: %s took %.0f s", name, seconds[name])
    atomic_write_text(record_path, json.dumps({"settings": settings, "seconds": seconds}, indent=1))
    return {**paths, "seconds": seconds, "reused": False}


def prepare_tuned(args, work: str, models: Dict[str, Any]) -> Optional[str]:
    """``monai-prune tune-pipeline --write-bundle``: the compressed bundle's sliding-window size measured on a
    separate tuning series against the dense model (per-class ΔDice <= 0.01) and shipped as ``work/tuned``; None
    (the tuned variant is skipped, and the reason logged) when no setting kept the guardrail and saved time."""
    tuned, record_path = os.path.join(work, "tuned"), os.path.join(work, "tuned.json")
    settings = {"tune_roi": args.tune_roi, "series": TUNING_SERIES, "repeats": 3,
                "compressed_seconds": models["seconds"]}
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record.get("settings") == settings and (record.get("tuned") is None or os.path.isdir(tuned)):
            logger.info("reusing the tuned bundle of an earlier run: %s", record.get("tuned") or record["why"])
            return record.get("tuned")
    shutil.rmtree(tuned, ignore_errors=True)
    size, slices, seed = TUNING_SERIES
    series = os.path.join(work, "tuning_series")
    ct_series(size, slices, series, seed=seed)
    cmd = [*monai_prune_cli(), "tune-pipeline", models["compressed"], "--images", series, "--dense",
           models["dense"], "--backend", "openvino", "--precision", "int8", "--roi", *args.tune_roi,
           "--max-delta", "0.01", "--repeats", "3", "--json", os.path.join(work, "tune_pipeline.json"),
           "--write-bundle", tuned]
    logger.info("preparing: tune-pipeline on a %dx%dx%d tuning series", size, size, slices)
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    with open(os.path.join(logs, "prepare_tune.out"), "wb") as out, open(os.path.join(logs, "prepare_tune.err"),
                                                                         "wb") as err:
        code = subprocess.call(cmd, stdout=out, stderr=err, cwd=logs)
    why = None
    if code != 0:
        lines = tail(os.path.join(logs, "prepare_tune.err"), STDERR_TAIL_LINES).splitlines()
        why = next((line for line in reversed(lines) if "error:" in line), lines[-1] if lines else f"exit {code}")
        logger.warning("no tuned variant: %s", why)
    atomic_write_text(record_path, json.dumps({"settings": settings, "tuned": None if code else tuned, "why": why},
                                              indent=1))
    return None if code else tuned


def ct_series(size: int, slices: int, folder: str, seed: int = 7) -> np.ndarray:
    """Write a ``size x size x slices`` CT series with ``SPACING`` to ``folder``; returns its label volume.

    The training data's spheres and intensities (``synthetic_ct`` on a 1.5 mm grid) over the series' physical
    extent, resampled to the series' grid (trilinear for the Hounsfield units, nearest for the label), so that the
    objects keep their physical size and the bundle's Spacingd/Invertd have real work to do."""
    import torch.nn.functional as F

    extent = [size * SPACING[0], size * SPACING[1], slices * SPACING[2]]
    grid = [max(16, int(round(e / OBJECT_GRID_MM))) for e in extent]
    edge = max(grid)
    # the training volumes hold 4 spheres per 64^3; a count growing with the area keeps a large series a few
    # percent "organ"
    hu, label = synthetic_ct(size=edge, num_objs=max(4, 4 * (edge // 64) ** 2), seed=seed)
    hu, label = hu[:grid[0], :grid[1], :grid[2]], label[:grid[0], :grid[1], :grid[2]]
    shape = (size, size, slices)
    hu = F.interpolate(torch.from_numpy(np.ascontiguousarray(hu))[None, None], size=shape, mode="trilinear",
                       align_corners=False)[0, 0].numpy()
    label = F.interpolate(torch.from_numpy(np.ascontiguousarray(label)).float()[None, None], size=shape,
                          mode="nearest")[0, 0].numpy().astype(np.uint8)
    shutil.rmtree(folder, ignore_errors=True)
    write_ct_series(hu, folder, spacing=SPACING)
    return label


# ---------------------------------------------------------------------------------------------------- results
def make_rows(variants: Sequence[Variant], runs: Dict[str, List[Dict[str, Any]]], label: np.ndarray,
              series: str) -> List[Dict[str, Any]]:
    rows = [summarize(v, runs[v.name]) for v in variants]
    dense = rows[0]
    segs = {row["variant"]: read_segmentation(row["seg"], series) for row in rows}
    add_speedups(rows, stages=("network", "postprocessing"))
    for row in rows:
        seg = segs[row["variant"]]
        row.update(dice_vs_label=dice(seg, label), dice_vs_dense=dice(seg, segs[dense["variant"]]),
                   voxel_agreement_vs_dense=float(np.mean(seg == segs[dense["variant"]])),
                   seg_voxels=int((seg > 0).sum()))
    return rows


def _s(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _x(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def table(rows: Sequence[Dict[str, Any]]) -> str:
    header = ["variant", "backend", "precision", "postprocessing", "wall s (steady)", "first study s", "start-up s",
              "DICOM load s", "pre s", "network s", "post s", "SEG write s", "other s",
              "speed-up (steady wall)", "speed-up (first study)", "speed-up (network)", "speed-up (post)",
              "Dice vs dense SEG", "Dice vs label"]
    body = []
    for r in rows:
        st = r["stages_s"]
        body.append([r["variant"], r["backend"], r["precision"], r["postprocessing"].replace(" on the input grid", ""),
                     _s(r["wall_s"]), _s(r["first_study_s"]), _s(r["startup_s"]), _s(st.get("load")),
                     _s(st.get("preprocessing")), _s(st.get("network")), _s(st.get("postprocessing")),
                     _s(st.get("seg_write")), _s(st.get("app_other")), _x(r["speedup_vs_dense_wall"]),
                     _x(r["speedup_vs_dense_first_study"]), _x(r["speedup_vs_dense_network"]),
                     _x(r["speedup_vs_dense_postprocessing"]), f"{r['dice_vs_dense']:.4f}",
                     f"{r['dice_vs_label']:.4f}"])
    return markdown_table(header, body)


def targets(rows: Sequence[Dict[str, Any]], max_delta: float = 0.01) -> List[str]:
    """The issue's end-to-end targets, met or missed, under two readings of "ΔDice <= ``max_delta`` against the
    dense model": the variant's Dice vs the label drops by at most ``max_delta`` from the dense run's (accuracy
    held), and, stricter, the variant's SEG agrees with the dense SEG at Dice >= 1 - ``max_delta`` (same output)."""
    dense = rows[0]
    guardrails = {
        f"Dice vs label within {max_delta} of dense": lambda r: r["dice_vs_label"] >= dense["dice_vs_label"] - max_delta,
        f"Dice vs the dense SEG >= {1 - max_delta:.2f}": lambda r: r["dice_vs_dense"] >= 1.0 - max_delta,
    }
    lines = []
    for guardrail, keeps in guardrails.items():
        kept = [r for r in rows[1:] if keeps(r)]
        for key, goal, what in (("speedup_vs_dense_wall", 4.0, "steady-state end to end"),
                                ("speedup_vs_dense_first_study", 2.0, "first study (launch to SEG)")):
            best = max(kept, key=lambda r: r[key] or 0.0, default=None)
            if best is None:
                lines.append(f"[{guardrail}] {what}: no variant kept this guardrail (target >= {goal:.0f}x: missed)")
                continue
            verdict = "met" if (best[key] or 0) >= goal else "missed"
            lines.append(f"[{guardrail}] {what}: {_x(best[key])} vs dense-stock with {best['variant']} (target >= "
                         f"{goal:.0f}x: {verdict}; Dice vs label {best['dice_vs_label']:.4f} vs dense "
                         f"{dense['dice_vs_label']:.4f}, Dice vs dense SEG {best['dice_vs_dense']:.4f})")
    return lines


def card_pipeline(rows: Sequence[Dict[str, Any]], what: str, max_delta: float = 0.01) -> Optional[Dict[str, Any]]:
    """:attr:`FidelityCard.pipeline_s` from the benchmark: the dense stock pipeline (before) against the fastest
    steady-state variant whose Dice vs the label stays within ``max_delta`` of dense (after); None when none does."""
    dense = rows[0]
    kept = [r for r in rows[1:] if r["wall_s"] and r["dice_vs_label"] >= dense["dice_vs_label"] - max_delta]
    if not kept:
        return None
    best = min(kept, key=lambda r: r["wall_s"])
    post = best["postprocessing"].replace(" on the input grid", "")
    return pipeline_section(dense, best, f"{what}; after = {best['variant']} ({best['backend']} {best['precision']}, "
                                         f"{post} postprocessing), Dice vs label {best['dice_vs_label']:.4f} vs dense "
                                         f"{dense['dice_vs_label']:.4f}, Dice vs the dense SEG "
                                         f"{best['dice_vs_dense']:.4f}")


def tuned_line(tuned: Optional[str], record: str) -> str:
    """What the tuned variant's bundle ships (its metadata's changelog note), or why there is none."""
    if tuned is None:
        why = None
        if os.path.isfile(record):
            with open(record) as f:
                why = json.load(f).get("why")
        return f"Tuned variant: none ({why or 'not asked for'})."
    with open(os.path.join(tuned, "configs", "metadata.json")) as f:
        metadata = json.load(f)
    return "Tuned variant (`monai-prune tune-pipeline --write-bundle`, on a separate tuning series): " + next(
        iter(metadata["changelog"].values()))


def compression_line(compressed: str) -> str:
    with open(os.path.join(compressed, "configs", "metadata.json")) as f:
        c = json.load(f).get("compression", {})
    metrics = ", ".join(f"{k} {v['before']:.4f} -> {v['after']:.4f}" for k, v in c.get("metrics", {}).items()
                        if v.get("after") is not None)
    return (f"Compressed bundle: MACs x{c['macs']['after'] / c['macs']['before']:.3f}, params "
            f"x{c['params']['after'] / c['params']['before']:.3f} of dense ({c.get('recipe')}, {c.get('epochs')} "
            f"fine-tuning epochs; validation {metrics or 'n/a'}).")


def main() -> None:
    args = parse_args()
    configure_logging()
    started = time.perf_counter()
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="monai_prune_deploy_e2e_")
    os.makedirs(work, exist_ok=True)
    variants = select_variants(args)
    # the int8 model is made whenever it can be, so that --variants does not change (and redo) the preparation
    int8 = "openvino" in available_backends() and importlib.util.find_spec("nncf") is not None
    models = prepare_models(args, work, int8=int8)
    if any(v.model == "tuned" for v in variants):
        models["tuned"] = prepare_tuned(args, work, models)
        if models["tuned"] is None:
            variants = [v for v in variants if v.model != "tuned"]
    series = os.path.join(work, "series")
    label = ct_series(args.size, args.slices, series)
    logger.info("wrote a %dx%dx%d CT series (%.2f%% labelled voxels) to %s", args.size, args.size, args.slices,
                100 * float(label.mean()), series)
    warm_series = os.path.join(work, "warmup_series")
    ct_series(64, 16, warm_series)
    logger.info("untimed warm-up run")
    run_app(APP, variants[0], models, warm_series, os.path.join(work, "runs", "warmup"), os.path.join(work, "logs"),
            "warmup")
    shutil.rmtree(os.path.join(work, "runs"), ignore_errors=True)
    before = _bench._cpu_seconds()
    runs = run_rounds(APP, variants, models, [series], work, args.rounds, pause=_bench.SWITCH_PAUSE_S,
                      log=logger.info)
    after = _bench._cpu_seconds()
    rows = make_rows(variants, runs, label, series)
    host = machine()
    title = (f"deploy_e2e: apps/ct_seg_compressed, DICOM CT {args.size}x{args.size}x{args.slices} "
             f"({SPACING[0]} x {SPACING[1]} x {SPACING[2]} mm, resampled to the bundle's 1.5 x 1.5 x 2.0 mm and "
             "inverted) -> DICOM SEG")
    notes = [
        f"Machine: {host['cpu']}, {host['cpus']} CPUs, torch {host['torch']} with {host['torch_threads']} intra-op "
        "threads (the app processes use the same defaults). The machine is shared with other work: read the "
        "ratios, not the absolute seconds.",
        _bench._foreign_load(before, after),
        f"{args.rounds} round(s), variants interleaved (order rotated each round) after one untimed warm-up run; "
        "medians over rounds. One-shot variants: wall s = launch of `python app.py` to its exit, every round "
        "(first study = steady). Resident variants (`monai-prune serve --watch`, one process for all rounds): first "
        "study s = process launch to the first SEG (start-up, imports, model load and compile included); wall s "
        "(steady) = median from dropping a study into the inbox to its result, rounds 2 on. Stages from run.json: "
        "start-up = wall minus the runner's total (interpreter, imports); DICOM load = loader + selector + volume; "
        "pre/network/post = the inference operator's pre-processing, inferer (sliding window around the network) "
        "and post-processing (incl. the inversion to the input grid: the bundle's Invertd on every float channel, "
        "or monai-prune's fast labels); SEG write = the DICOM SEG writer; other = the rest of the graph (model "
        "load, config parsing). Speed-ups: dense-stock seconds / variant seconds.",
        "Baseline dense-stock: the dense model (TorchScript from `monai.bundle ckpt_export`) through the SDK's own "
        "MonaiBundleInferenceOperator, as a MONAI Deploy user runs a zoo bundle today.",
        compression_line(models["compressed"]),
        tuned_line(models.get("tuned"), os.path.join(work, "tuned.json")),
        "Dice vs dense SEG: the variant's SEG against the dense-stock run's SEG (foreground; the guardrail is a "
        "Dice drop of at most 0.01 against the dense model's own output); Dice vs label: against the series' label "
        f"volume ({100 * float(label.mean()):.2f}% of the voxels are labelled).",
        "Targets: " + "; ".join(targets(rows)) + ".",
        f"Preparation (not timed): {', '.join(f'{k} {v:.0f} s' for k, v in models['seconds'].items())}"
        f"{' (reused from an earlier run)' if models['reused'] else ''}; benchmark wall time "
        f"{time.perf_counter() - started:.0f} s.",
    ]
    if not args.no_card:
        what = (f"DICOM CT {args.size}x{args.size}x{args.slices} to DICOM SEG with apps/ct_seg_compressed, "
                f"benchmarks/deploy_e2e.py on {host['cpus']} CPUs ({args.rounds} rounds, medians); before = the "
                "dense TorchScript model through the SDK's stock operator")
        pipeline = card_pipeline(rows, what)
        model = next((v.model for v in variants if pipeline and v.name == pipeline["variant"]), "compressed")
        card = write_card_pipeline(models[model], pipeline)
        notes.append(f"End-to-end and per-stage ratios written into the fidelity card {card}." if card else
                     "No variant kept Dice vs label within 0.01 of dense: the fidelity card was left as it was.")
    text = f"## {title}\n\n{table(rows)}\n\n" + "\n\n".join(notes) + "\n"
    print(f"\n{text}")
    if args.json:
        result = {"machine": host, "settings": vars(args), "series": {"shape": [args.size, args.size, args.slices],
                                                                       "spacing": SPACING},
                  "preparation_s": models["seconds"], "preparation_reused": models["reused"],
                  "foreign_load": notes[1], "targets": targets(rows), "wall_s": time.perf_counter() - started,
                  "rows": rows}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=1))
        atomic_write_text(os.path.splitext(args.json)[0] + ".md", text)
        logger.info("wrote %s and %s", args.json, os.path.splitext(args.json)[0] + ".md")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except AppRunError as e:  # a preparation step or an app run failed: the tail of its stderr
        raise SystemExit(f"deploy_e2e: {e}\n--- last {STDERR_TAIL_LINES} lines of {e.log} ---\n{tail(e.log)}"
                         "--- end of stderr ---")
