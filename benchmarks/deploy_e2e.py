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
import glob
import importlib.util
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _bench  # noqa: E402
from monai_prune.data import synthetic_ct  # noqa: E402
from monai_prune.deploy.dicom import dice, read_segmentation, write_ct_series  # noqa: E402
from monai_prune.report import markdown_table  # noqa: E402
from monai_prune.runtime import available_backends  # noqa: E402
from monai_prune.utils import atomic_write_text, configure_logging  # noqa: E402

logger = logging.getLogger("monai_prune.benchmarks")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "apps", "ct_seg_compressed", "app.py")
BUNDLE = os.path.join(ROOT, "bundles", "spleen_ct_segmentation_compressed")
NOT_COPIED = ("data", "models", "eval", "__pycache__")  # top-level bundle folders the work copy starts without
SPACING = (1.5, 1.5, 2.0)  # mm, the bundle's pixdim: the series needs no resampling
TRAIN_SMALL = ["--roi_size", "[48,48,48]", "--num_samples", "2"]  # bundles/build.sh's small settings
COMPRESS_SMALL = ["--set", "roi_size=[48,48,48]", "--set", "num_samples=2", "--set", "prune#start_epoch=0",
                  "--set", "prune#end_epoch=1"]
STDERR_TAIL_LINES = 40
# option: (default, --quick)
SETTINGS = {"size": (256, 64), "slices": (160, 32), "rounds": (3, 1), "epochs": (10, 1), "compress_epochs": (3, 2),
            "train_volumes": (6, 2), "val_volumes": (2, 1)}


@dataclass(frozen=True)
class Variant:
    name: str
    model: str  # "dense" (lone model.ts) or "compressed" (bundle folder)
    backend: str
    precision: str
    operator: str  # "compressed" (monai-prune's operator) or "stock" (the SDK's MonaiBundleInferenceOperator)

    def app_args(self) -> List[str]:
        if self.operator == "stock":  # the runner forces TorchScript fp32 for the SDK's operator
            return ["--operator", "stock"]
        return ["--backend", self.backend, "--precision", self.precision, "--operator", self.operator]


VARIANTS = (
    Variant("dense", "dense", "torchscript", "fp32", "compressed"),
    Variant("compressed-torchscript", "compressed", "torchscript", "fp32", "compressed"),
    Variant("compressed-onnxruntime", "compressed", "onnxruntime", "fp32", "compressed"),
    Variant("compressed-openvino", "compressed", "openvino", "fp32", "compressed"),
    Variant("compressed-openvino-int8", "compressed", "openvino", "int8", "compressed"),
    Variant("compressed-stock-operator", "compressed", "torchscript", "fp32", "stock"),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64x64x32 series, 1 round, 1 training epoch, 2 compression epochs, "
                             "2+1 training volumes (explicit options still win)")
    parser.add_argument("--size", type=int, help="rows and columns of the CT series (default 256)")
    parser.add_argument("--slices", type=int, help="slices of the CT series (default 160)")
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


# ---------------------------------------------------------------------------------------------------- processes
def _tail(path: str, lines: int = STDERR_TAIL_LINES) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def run_logged(cmd: Sequence[str], log_dir: str, name: str, cwd: str) -> float:
    """Run ``cmd`` with stdout/stderr in ``log_dir/name.{out,err}``; wall seconds from launch to exit. A failure
    ends the benchmark (exit 1) with the command, its exit code and the tail of its stderr."""
    os.makedirs(log_dir, exist_ok=True)
    out, err = os.path.join(log_dir, f"{name}.out"), os.path.join(log_dir, f"{name}.err")
    with open(out, "wb") as fout, open(err, "wb") as ferr:
        start = time.perf_counter()
        code = subprocess.call(list(cmd), stdout=fout, stderr=ferr, cwd=cwd)
        seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"deploy_e2e: {name} failed with exit code {code}:\n  {' '.join(cmd)}\n"
                         f"--- last {STDERR_TAIL_LINES} lines of {err} ---\n{_tail(err)}--- end of stderr ---")
    return seconds


def monai_prune_cli() -> List[str]:
    script = os.path.join(os.path.dirname(sys.executable), "monai-prune")
    if os.path.isfile(script):
        return [script]
    return [sys.executable, "-c", "import sys; from monai_prune.cli import main; sys.exit(main())"]


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


def ct_series(size: int, slices: int, folder: str, seed: int = 7) -> np.ndarray:
    """Write a ``size x size x slices`` CT series with ``SPACING`` to ``folder``; returns its label volume.

    The training data's spheres and intensities (``synthetic_ct``, 1.5 mm isotropic) sampled every 2 mm along z,
    so that the objects keep their physical size at the bundle's pixdim."""
    step = SPACING[2] / SPACING[0]
    z = np.rint(np.arange(slices) * step).astype(int)
    edge = max(size, int(z[-1]) + 1)
    # the training volumes hold 4 spheres per 64^3; a count growing with the area, not the volume, keeps a large
    # series a few percent "organ"
    hu, label = synthetic_ct(size=edge, num_objs=max(4, 4 * (edge // 64) ** 2), seed=seed)
    hu, label = hu[:size, :size, z], label[:size, :size, z]
    shutil.rmtree(folder, ignore_errors=True)
    write_ct_series(hu, folder, spacing=SPACING)
    return label


# ---------------------------------------------------------------------------------------------------- timing
def run_app(variant: Variant, models: Dict[str, Any], series: str, out: str, logs: str, name: str) -> Dict[str, Any]:
    """One app process on ``series`` into ``out`` (a new folder); its wall seconds, run.json and SEG file."""
    cmd = [sys.executable, APP, "-i", series, "-o", out, "-m", models[variant.model], *variant.app_args()]
    wall = run_logged(cmd, logs, name, cwd=logs)  # the app's own files go to -o; nothing lands in the repository
    with open(os.path.join(out, "run.json")) as f:
        record = json.load(f)
    segs = sorted(glob.glob(os.path.join(out, "*.dcm")))
    if not segs:
        raise SystemExit(f"deploy_e2e: {name} exited 0 but wrote no DICOM SEG in {out}")
    return {"wall_s": wall, "record": record, "seg": segs[0]}


def run_rounds(variants: Sequence[Variant], models: Dict[str, Any], series: str, work: str,
               rounds: int) -> Dict[str, List[Dict[str, Any]]]:
    """``rounds`` rounds over every variant, round ``r`` starting at variant ``r`` (rotated order)."""
    runs: Dict[str, List[Dict[str, Any]]] = {v.name: [] for v in variants}
    logs = os.path.join(work, "logs")
    for r in range(rounds):
        order = [variants[(r + i) % len(variants)] for i in range(len(variants))]
        for v in order:
            time.sleep(_bench.SWITCH_PAUSE_S)
            result = run_app(v, models, series, os.path.join(work, "runs", f"round{r}", v.name), logs,
                             f"round{r}_{v.name}")
            runs[v.name].append(result)
            logger.info("round %d/%d %s: %.1f s wall, %.1f s in the app", r + 1, rounds, v.name, result["wall_s"],
                        result["record"]["seconds"].get("app", float("nan")))
    return runs


# ---------------------------------------------------------------------------------------------------- results
def _inference_key(seconds: Dict[str, float]) -> Optional[str]:
    return next((k for k in ("compressed_inference", "stock_bundle_inference") if k in seconds), None)


def make_rows(variants: Sequence[Variant], runs: Dict[str, List[Dict[str, Any]]], label: np.ndarray,
              series: str) -> List[Dict[str, Any]]:
    rows = []
    for v in variants:
        results = runs[v.name]
        stages = sorted({k for r in results for k in r["record"]["seconds"]})
        seconds_runs = {k: [r["record"]["seconds"][k] for r in results if k in r["record"]["seconds"]]
                        for k in stages}
        seconds = {k: statistics.median(t) for k, t in seconds_runs.items()}
        inference = _inference_key(seconds)
        record = results[-1]["record"]
        rows.append({
            "variant": v.name, "operator": v.operator, "backend": record["backend"],
            "precision": record["precision"], "model": record["model"],
            "wall_s": statistics.median(r["wall_s"] for r in results), "wall_s_runs": [r["wall_s"] for r in results],
            "seconds": seconds, "seconds_runs": seconds_runs,
            "startup_s": statistics.median(r["wall_s"] - r["record"]["seconds"]["total"] for r in results),
            "app_s": seconds.get("app"), "inference_s": seconds.get(inference) if inference else None,
            "network_s": seconds.get("compressed_inference.network"),
            "seg": results[-1]["seg"],
        })
    dense = rows[0]
    segs = {row["variant"]: read_segmentation(row["seg"], series) for row in rows}
    for row in rows:
        for key in ("wall", "inference", "network"):
            ref, own = dense[f"{key}_s"], row[f"{key}_s"]
            row[f"speedup_vs_dense_{key}"] = ref / own if ref and own else None
        seg = segs[row["variant"]]
        row.update(dice_vs_label=dice(seg, label), dice_vs_dense=dice(seg, segs["dense"]),
                   voxel_agreement_vs_dense=float(np.mean(seg == segs["dense"])), seg_voxels=int((seg > 0).sum()))
    return rows


def _s(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _x(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def table(rows: Sequence[Dict[str, Any]]) -> str:
    header = ["variant", "operator", "backend", "precision", "wall s", "startup s", "app s", "inference op s",
              "network s",
              "speed-up vs dense (wall)", "speed-up vs dense (inference op)", "speed-up vs dense (network)",
              "SEG Dice vs label", "Dice vs dense SEG", "voxel agreement vs dense"]
    body = [[r["variant"], r["operator"], r["backend"], r["precision"], _s(r["wall_s"]), _s(r["startup_s"]),
             _s(r["app_s"]),
             _s(r["inference_s"]), _s(r["network_s"]), _x(r["speedup_vs_dense_wall"]),
             _x(r["speedup_vs_dense_inference"]), _x(r["speedup_vs_dense_network"]), f"{r['dice_vs_label']:.4f}",
             f"{r['dice_vs_dense']:.4f}", f"{r['voxel_agreement_vs_dense']:.5f}"] for r in rows]
    return markdown_table(header, body)


def machine() -> Dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


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
    series = os.path.join(work, "series")
    label = ct_series(args.size, args.slices, series)
    logger.info("wrote a %dx%dx%d CT series (%.2f%% labelled voxels) to %s", args.size, args.size, args.slices,
                100 * float(label.mean()), series)
    warm_series = os.path.join(work, "warmup_series")
    ct_series(64, 16, warm_series)
    logger.info("untimed warm-up run")
    run_app(variants[0], models, warm_series, os.path.join(work, "runs", "warmup"), os.path.join(work, "logs"),
            "warmup")
    shutil.rmtree(os.path.join(work, "runs"), ignore_errors=True)
    before = _bench._cpu_seconds()
    runs = run_rounds(variants, models, series, work, args.rounds)
    after = _bench._cpu_seconds()
    rows = make_rows(variants, runs, label, series)
    host = machine()
    title = (f"deploy_e2e: apps/ct_seg_compressed, DICOM CT {args.size}x{args.size}x{args.slices} "
             f"({SPACING[0]} x {SPACING[1]} x {SPACING[2]} mm) -> DICOM SEG, one process per run")
    notes = [
        f"Machine: {host['cpu']}, {host['cpus']} CPUs, torch {host['torch']} with {host['torch_threads']} intra-op "
        "threads (the app processes use the same defaults). The machine is shared with other work: read the "
        "ratios, not the absolute seconds.",
        _bench._foreign_load(before, after),
        f"Median of {args.rounds} round(s), variants interleaved (order rotated each round) after one untimed "
        "warm-up run. wall s: launch of `python app.py` to its exit (imports, model load, DICOM read, inference, "
        "SEG written); startup s: wall s minus run.json 'total' (interpreter start and imports before the app's "
        "runner starts); app s: the SDK graph (run.json 'app'); inference op s: the whole inference operator "
        "(loading the model on its first compute — OpenVINO compiles it there —, bundle pre-processing, inferer, "
        "post-processing); network s: the bundle's sliding-window inferer around the network (monai-prune's "
        "operator only; the SDK's operator is not split). Speed-ups: dense seconds / variant seconds.",
        compression_line(models["compressed"]),
        "Dice vs label: the SEG read back against the series' label volume (foreground). Agreement vs dense: Dice "
        "and fraction of equal voxels between the variant's and the dense run's SEG (the fraction is dominated by "
        f"background: {100 * float(label.mean()):.2f}% of the voxels are labelled).",
        f"Preparation (not timed): {', '.join(f'{k} {v:.0f} s' for k, v in models['seconds'].items())}"
        f"{' (reused from an earlier run)' if models['reused'] else ''}; benchmark wall time "
        f"{time.perf_counter() - started:.0f} s.",
    ]
    text = f"## {title}\n\n{table(rows)}\n\n" + "\n\n".join(notes) + "\n"
    print(f"\n{text}")
    if args.json:
        result = {"machine": host, "settings": vars(args), "series": {"shape": [args.size, args.size, args.slices],
                                                                       "spacing": SPACING},
                  "preparation_s": models["seconds"], "preparation_reused": models["reused"],
                  "foreign_load": notes[1], "wall_s": time.perf_counter() - started, "rows": rows}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=1))
        atomic_write_text(os.path.splitext(args.json)[0] + ".md", text)
        logger.info("wrote %s and %s", args.json, os.path.splitext(args.json)[0] + ".md")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
