"""Shared machinery of the benchmark scripts (``seg3d.py``, ``cls2d.py``); not a public module.

It prepares the variants (dense and channel-pruned copies of one network, each exported once per runtime),
builds one :class:`monai_prune.runtime.Predictor` per (variant, backend), times every configuration in
interleaved rounds, and prints/writes the results. The scripts only say what network, what input and what
workload (whole sliding-window inference, or one network call) to time.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from monai_prune import count_macs, count_params, prune_channels, state_dict_bytes
from monai_prune.export import export_onnx, export_openvino, export_torchscript
from monai_prune.report import markdown_table
from monai_prune.runtime import BACKENDS, Predictor, available_backends
from monai_prune.utils import configure_logging

logger = logging.getLogger("monai_prune.benchmarks")

RATIOS = {"pruned0.5": 0.5, "pruned0.75": 0.75}
TARGETS = {"pruned0.5": 2.5, "pruned0.75": 4.0}  # wanted speed-up vs dense torch eager at sw_batch_size 1
PRECISION = "fp32"
SWITCH_PAUSE_S = 0.5  # threads left spinning by one runtime slow the next one down
SIZE_OF = {"torch": "state dict", "torchscript": "model.ts", "onnxruntime": "model.onnx",
           "openvino": "model.xml+model.bin"}
SIZE_NOTE = ("size_bytes: what each backend loads — torch: state dict as torch.save writes it; torchscript: traced "
             "model.ts (the benchmark runs a frozen trace of the same module); onnxruntime: model.onnx; "
             "openvino: model.xml + model.bin (fp32 IR converted from that model.onnx).")


def parse_args(description: str, size: int, roi: Optional[int] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds over all configurations (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 rounds only (add --size to also shrink the input)")
    parser.add_argument("--size", type=int, default=size, help=f"input edge length in voxels/pixels (default {size})")
    if roi is not None:
        parser.add_argument("--roi", type=int, default=roi, help=f"sliding-window roi edge (default {roi})")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                        help="restrict to these backends (default: every available one)")
    parser.add_argument("--json", default=None, help="write the result rows as a JSON list to this path")
    parser.add_argument("--work-dir", default=None, help="where exported models go (default: a temporary folder)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.rounds = 2 if args.quick else args.repeats
    installed = available_backends()
    wanted = args.backends or list(BACKENDS)
    missing = [b for b in wanted if b not in installed]
    if missing and args.backends:
        parser.error(f"backend(s) {missing} not installed here (available: {installed})")
    args.backends = [b for b in wanted if b in installed]
    return args


def setup() -> None:
    configure_logging()
    torch.manual_seed(0)


@dataclass
class Variant:
    name: str
    model: nn.Module
    macs: int
    params: int
    files: Dict[str, str] = field(default_factory=dict)  # backend -> file it loads
    size_bytes: Dict[str, int] = field(default_factory=dict)  # backend -> bytes


def prepare_variants(dense: nn.Module, prune_input: torch.Tensor, macs_input: torch.Tensor, backends: Sequence[str],
                     work_dir: str) -> List[Variant]:
    """Dense + pruned copies, each exported once for the backends that load a file; MACs, params, sizes."""
    dense = dense.eval()
    models = {"dense": dense}
    for name, ratio in RATIOS.items():  # outside no_grad: torch-pruning traces the graph through autograd
        start = time.perf_counter()
        models[name], _ = prune_channels(dense, prune_input, ratio=ratio)
        logger.info("%s: prune_channels(ratio=%s) took %.1f s", name, ratio, time.perf_counter() - start)
    with torch.no_grad():
        return [_export_variant(name, m, prune_input, macs_input, backends, work_dir) for name, m in models.items()]


def _export_variant(name: str, model: nn.Module, prune_input: torch.Tensor, macs_input: torch.Tensor,
                    backends: Sequence[str], work_dir: str) -> Variant:
    model = model.eval()
    v = Variant(name, model, count_macs(model, macs_input), count_params(model))
    folder = os.path.join(work_dir, name)
    os.makedirs(folder, exist_ok=True)
    v.size_bytes["torch"] = state_dict_bytes(model)
    if "torchscript" in backends:
        ts = export_torchscript(model, prune_input, os.path.join(folder, "model.ts"))
        v.size_bytes["torchscript"] = ts.size_bytes
    if "onnxruntime" in backends or "openvino" in backends:
        onnx = export_onnx(model, prune_input, os.path.join(folder, "model.onnx"))
        v.files["onnxruntime"], v.size_bytes["onnxruntime"] = onnx.path, onnx.size_bytes
        if "openvino" in backends:
            ir = export_openvino(onnx.path, os.path.join(folder, "model.xml"))
            v.files["openvino"], v.size_bytes["openvino"] = ir.path, ir.size_bytes
    logger.info("%s: %.3g GMACs, %.3g M params", name, v.macs / 1e9, v.params / 1e6)
    return v


def build_predictors(variants: Sequence[Variant], backends: Sequence[str],
                     example: torch.Tensor) -> Dict[Tuple[str, str], Predictor]:
    predictors = {}
    for backend in backends:
        for v in variants:
            source = v.files.get(backend, v.model)  # ONNX Runtime / OpenVINO load the exported file, no re-export
            predictors[v.name, backend] = Predictor(source, example, backend=backend)
    return predictors


def run_rounds(configs: Sequence[Tuple[str, str, int]], predictors: Dict[Tuple[str, str], Predictor],
               measure: Callable[[Predictor, int], float], warm: Callable[[Predictor, int], None],
               rounds: int) -> Dict[Tuple[str, str, int], List[float]]:
    """One untimed warmup pass, then ``rounds`` passes, each over every configuration once (interleaved).

    ``configs`` are ``(variant, backend, sw_batch_size)``, ordered backend-major so that the runtime changes
    as rarely as possible; at each change (and between rounds) the script pauses ``SWITCH_PAUSE_S``.
    """
    times: Dict[Tuple[str, str, int], List[float]] = {c: [] for c in configs}
    with logging_redirect_tqdm(loggers=[logging.getLogger("monai_prune")]):
        for r in range(rounds + 1):
            label = "warmup" if r == 0 else f"round {r}/{rounds}"
            logger.info("%s over %d configurations", label, len(configs))
            previous = None
            for config in tqdm(configs, desc=label, unit="cfg", leave=False):
                variant, backend, sw = config
                if backend != previous:
                    gc.collect()
                    time.sleep(SWITCH_PAUSE_S)
                    previous = backend
                if r == 0:
                    warm(predictors[variant, backend], sw)
                else:
                    times[config].append(measure(predictors[variant, backend], sw))
            time.sleep(SWITCH_PAUSE_S)
    return times


def make_rows(variants: Sequence[Variant], configs, times) -> List[dict]:
    by_name = {v.name: v for v in variants}
    latency = {c: statistics.median(t) for c, t in times.items()}
    rows = []
    for config in configs:
        name, backend, sw = config
        v = by_name[name]
        torch_ref, ort_ref = latency.get(("dense", "torch", sw)), latency.get(("dense", "onnxruntime", sw))
        rows.append({
            "variant": name, "backend": backend, "precision": PRECISION, "sw_batch_size": sw,
            "latency_s": latency[config], "macs": v.macs, "params": v.params, "size_bytes": v.size_bytes[backend],
            "size_of": SIZE_OF[backend],
            "speedup_vs_dense_torch": torch_ref / latency[config] if torch_ref else None,
            "speedup_vs_dense_ort": ort_ref / latency[config] if ort_ref else None,
            "times_s": times[config],
        })
    order = {v.name: i for i, v in enumerate(variants)}
    rows.sort(key=lambda row: (row["sw_batch_size"], order[row["variant"]], BACKENDS.index(row["backend"])))
    return rows


def _x(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def table(rows: Sequence[dict]) -> str:
    header = ["variant", "backend", "precision", "sw_batch_size", "latency_s", "speed-up vs dense torch",
              "speed-up vs dense onnxruntime", "MACs (G)", "params (M)", "size_bytes"]
    body = [[r["variant"], r["backend"], r["precision"], r["sw_batch_size"], f"{r['latency_s']:.4f}",
             _x(r["speedup_vs_dense_torch"]), _x(r["speedup_vs_dense_ort"]), f"{r['macs'] / 1e9:.3f}",
             f"{r['params'] / 1e6:.3f}", r["size_bytes"]] for r in rows]
    return markdown_table(header, body)


def summary_lines(rows: Sequence[dict]) -> List[str]:
    """One line per pruned variant: fastest backend at sw_batch_size 1 and the speed-up target (information only)."""
    lines = []
    for name, target in TARGETS.items():
        candidates = [r for r in rows if r["variant"] == name and r["sw_batch_size"] == 1]
        if not candidates:
            continue
        best = min(candidates, key=lambda r: r["latency_s"])
        speedup = best["speedup_vs_dense_torch"]
        if speedup is None:
            verdict = "cannot tell (dense torch eager was not measured)"
        else:
            verdict = "met" if speedup >= target else "NOT met"
        lines.append(f"{name}: best backend {best['backend']} ({best['latency_s']:.4f} s), {_x(speedup)} vs dense "
                     f"torch eager at sw_batch_size 1; target >= {target}x: {verdict}")
    return lines


def _cpu_seconds() -> Optional[Tuple[float, float, float]]:
    """(wall, busy CPU seconds of the whole machine, CPU seconds of this process) — Linux only, else None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # everything but idle and iowait
    own = os.times()
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def _foreign_load(before, after) -> str:
    """How many CPUs other processes kept busy while this benchmark timed (they skew every number)."""
    if before is None or after is None:
        return "CPU use by other processes: unknown."
    wall = after[0] - before[0]
    others = max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall
    return f"Other processes kept {others:.2f} of {os.cpu_count()} CPUs busy on average while this timed."


def write_json(path: str, rows: Sequence[dict]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(list(rows), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logger.info("wrote %s (%d rows)", path, len(rows))


def benchmark(args, dense: nn.Module, prune_input: torch.Tensor, macs_input: torch.Tensor,
              sw_batch_sizes: Sequence[int], measure, warm, title: str) -> List[dict]:
    """Prepare, time, print the table and summary, write JSON; returns the rows."""
    logger.info("backends: %s; %d timed round(s)", ", ".join(args.backends), args.rounds)
    with tempfile.TemporaryDirectory(prefix="monai_prune_bench_") as tmp:
        work_dir = args.work_dir or tmp
        variants = prepare_variants(dense, prune_input, macs_input, args.backends, work_dir)
        configs = [(v.name, b, sw) for b in args.backends for v in variants for sw in sw_batch_sizes]
        with torch.no_grad():
            predictors = build_predictors(variants, args.backends, prune_input)
            before = _cpu_seconds()
            times = run_rounds(configs, predictors, measure, warm, args.rounds)
            after = _cpu_seconds()
        del predictors
    rows = make_rows(variants, configs, times)
    print(f"\n## {title}\n")
    print(table(rows))
    print(f"\nMedian of {args.rounds} interleaved round(s) after one warmup call per configuration; torch "
          f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs.")
    print(_foreign_load(before, after))
    print(SIZE_NOTE + "\n")
    for line in summary_lines(rows):
        print(line)
    if args.json:
        write_json(args.json, rows)
    return rows
