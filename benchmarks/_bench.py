"""Shared machinery of the benchmark scripts (``seg3d.py``, ``cls2d.py``); not a public module.

It prepares the variants (dense and channel-pruned copies of one network, each exported once per runtime, and
quantized to int8 with :func:`monai_prune.quantization.quantize` for each int8 backend), builds one
:class:`monai_prune.runtime.Predictor` per (variant, backend, precision), times every configuration in
interleaved rounds, and prints/writes the results. The scripts only say what network, what input, what
calibration/validation data and what workload (whole sliding-window inference, or one network call) to time.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from monai_prune import count_macs, count_params, prune_channels, state_dict_bytes
from monai_prune.export import export_onnx, export_openvino, export_torchscript
from monai_prune.report import markdown_table
from monai_prune.quantization import CalibrationSet, QuantizedModel, quantize
from monai_prune.runtime import BACKENDS, INT8_BACKENDS, Predictor, available_backends
from monai_prune.utils import configure_logging

logger = logging.getLogger("monai_prune.benchmarks")
_LOGGERS = [logging.getLogger("monai_prune"), logging.getLogger()]  # log lines go above tqdm's progress bars

RATIOS = {"pruned0.5": 0.5, "pruned0.75": 0.75}
TARGETS = {"pruned0.5": 2.5, "pruned0.75": 4.0}  # wanted speed-up vs dense torch eager at sw_batch_size 1
PRECISIONS = ("fp32", "int8")
SWITCH_PAUSE_S = 0.5  # threads left spinning by one runtime slow the next one down
SIZE_OF = {"torch": "state dict", "torchscript": "model.ts", "onnxruntime": "model.onnx",
           "openvino": "model.xml+model.bin"}
INT8_SIZE_OF = {"onnxruntime": "model_int8.onnx", "openvino": "model_int8.xml+model_int8.bin"}
SIZE_NOTE = ("size_bytes: what each backend loads — torch: state dict as torch.save writes it; torchscript: traced "
             "model.ts (the benchmark runs a frozen trace of the same module); onnxruntime: model.onnx; "
             "openvino: model.xml + model.bin (fp32 IR converted from that model.onnx); int8 rows: the int8 file(s) "
             "quantize() wrote (model_int8.onnx, QDQ; model_int8.xml + .bin, NNCF).")
INT8_NOTE = ("int8 rows: post-training static quantization by monai_prune.quantization.quantize (calibration and "
             "held-out validation data as described above; quantizing is preparation and is not timed), served by "
             "the same Predictor and timed in the same rounds as the fp32 rows. 'vs own fp32' = the same variant's "
             "fp32 row on the same backend; agreement / max |dlogit| = argmax agreement and largest absolute output "
             "difference, int8 vs fp32 on the same backend, on the held-out validation inputs.")


def parse_args(description: str, size: int, roi: Optional[int] = None, calibration_samples: int = 8,
               add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> argparse.Namespace:
    """The common command line; ``add_arguments(parser)`` adds a script's own options.

    Sets ``args.rounds``, ``args.backends`` (installed and selected) and ``args.int8_backends`` (selected ones that
    quantize() supports and that are installed; empty with ``--no-int8``).
    """
    global SWITCH_PAUSE_S  # --pause sets it for run_rounds
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
    parser.add_argument("--no-int8", action="store_true",
                        help="skip the int8 rows (no calibration, no quantization): fp32 only")
    parser.add_argument("--calibration-samples", type=int, default=calibration_samples,
                        help=f"int8 calibration inputs (default {calibration_samples})")
    parser.add_argument("--pause", type=float, default=SWITCH_PAUSE_S,
                        help=f"seconds to wait when the runtime changes and between rounds (default {SWITCH_PAUSE_S}: "
                             "threads a runtime leaves spinning would slow the next one down)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    if args.pause < 0:
        parser.error("--pause must be >= 0")
    SWITCH_PAUSE_S = args.pause  # run_rounds reads it
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.calibration_samples < 1:
        parser.error("--calibration-samples must be at least 1")
    args.rounds = 2 if args.quick else args.repeats
    installed = available_backends()
    wanted = args.backends or list(BACKENDS)
    missing = [b for b in wanted if b not in installed]
    if missing and args.backends:
        parser.error(f"backend(s) {missing} not installed here (available: {installed})")
    args.backends = [b for b in wanted if b in installed]
    args.int8_backends = [] if args.no_int8 else [b for b in args.backends if b in INT8_BACKENDS]
    if "openvino" in args.int8_backends and importlib.util.find_spec("nncf") is None:
        logger.warning("openvino int8 rows skipped: quantizing for OpenVINO needs nncf "
                       "(pip install 'monai-prune[openvino]')")
        args.int8_backends.remove("openvino")
    return args




def setup() -> None:
    """Logging and the seed (``quantize`` itself keeps ONNX Runtime's root-logger warnings apart from ours)."""
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
    int8: Dict[str, QuantizedModel] = field(default_factory=dict)  # backend -> int8 artifact and its fidelity
    quantize_s: Dict[str, float] = field(default_factory=dict)  # backend -> seconds quantize() took (not timed)


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


def quantize_variants(variants: Sequence[Variant], backends: Sequence[str], calibration: CalibrationSet,
                      validation: Sequence[Any], work_dir: str) -> None:
    """int8 copy of every variant for every backend in ``backends`` (``quantize``; stored in ``variant.int8``).

    Preparation, not timed: quantize() also times fp32 vs int8 itself once (``repeats=1``), but the table's
    numbers come from the interleaved rounds only.
    """
    jobs = [(v, b) for v in variants for b in backends]
    with logging_redirect_tqdm(loggers=_LOGGERS):
        for v, backend in tqdm(jobs, desc="int8 quantization", unit="model", leave=False):
            start = time.perf_counter()
            out_dir = os.path.join(work_dir, v.name, f"int8_{backend}")
            v.int8[backend] = quantize(v.model, calibration, backend=backend, out_dir=out_dir, validation=validation,
                                       repeats=1)
            v.quantize_s[backend] = time.perf_counter() - start
            q = v.int8[backend]
            logger.info("%s: %s int8 in %.1f s: %d layers int8, %d fp32, %s bytes (fp32 %s), agreement %.4f, "
                        "max |dlogit| %.3g", v.name, backend, v.quantize_s[backend], len(q.int8_layers),
                        len(q.fp32_layers), q.size_bytes["int8"], q.size_bytes["fp32"], q.fidelity["agreement"],
                        q.fidelity["max_abs_logit"])
            gc.collect()


def build_predictors(variants: Sequence[Variant], backends: Sequence[str],
                     example: torch.Tensor) -> Dict[Tuple[str, str, str], Predictor]:
    """One predictor per (variant, backend, precision); int8 ones load the file quantize() wrote."""
    predictors = {}
    for backend in backends:
        for v in variants:
            source = v.files.get(backend, v.model)  # ONNX Runtime / OpenVINO load the exported file, no re-export
            predictors[v.name, backend, "fp32"] = Predictor(source, example, backend=backend)
            if backend in v.int8:
                predictors[v.name, backend, "int8"] = Predictor(v.int8[backend].path, example, backend=backend)
    return predictors


EVAL_PREFERENCE = ("onnxruntime", "openvino", "torchscript", "torch")  # fastest first, usually


def evaluate_variants(predictors: Dict[Tuple[str, str, str], Predictor],
                      evaluate: Callable[[Predictor], Dict[str, Any]]) -> Dict[Tuple[str, str, str], Dict[str, Any]]:
    """``evaluate(predictor)`` (e.g. accuracy on held-out data) once per variant, on its fp32 model through one
    backend (onnxruntime if selected, else the next of ``EVAL_PREFERENCE``); untimed, before the rounds.

    Every fp32 row of the variant gets the result plus ``evaluated_with`` (the backends run the same fp32
    function, so evaluating each would only repeat it); int8 rows get nothing here: ``quantize`` measured them on
    its validation data (the row's ``fidelity``).
    """
    results: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
    variants = list(dict.fromkeys(name for name, _, _ in predictors))
    with logging_redirect_tqdm(loggers=_LOGGERS):
        for name in tqdm(variants, desc="evaluation", unit="variant", leave=False):
            backend = next(b for b in EVAL_PREFERENCE if (name, b, "fp32") in predictors)
            start = time.perf_counter()
            found = evaluate(predictors[name, backend, "fp32"])
            logger.info("%s fp32 (evaluated with %s in %.0f s): %s", name, backend, time.perf_counter() - start,
                        ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in found.items()))
            for key in predictors:
                if key[0] == name and key[2] == "fp32":
                    results[key] = {**found, "evaluated_with": backend}
    return results


Config = Tuple[str, str, str, int]  # (variant, backend, precision, sw_batch_size)


def make_configs(variants: Sequence[Variant], backends: Sequence[str], sw_batch_sizes: Sequence[int]) -> List[Config]:
    """Every (variant, backend, precision, sw_batch_size) to time, backend-major (fp32 then int8 per backend)."""
    return [(v.name, b, p, sw) for b in backends for p in PRECISIONS for v in variants
            if p == "fp32" or b in v.int8 for sw in sw_batch_sizes]


def run_rounds(configs: Sequence[Config], predictors: Dict[Tuple[str, str, str], Predictor],
               measure: Callable[[Predictor, int], float], warm: Callable[[Predictor, int], None],
               rounds: int) -> Dict[Config, List[float]]:
    """One untimed warmup pass, then ``rounds`` passes, each over every configuration once (interleaved).

    ``configs`` are ``(variant, backend, precision, sw_batch_size)``, ordered backend-major so that the runtime
    changes as rarely as possible; at each change (and between rounds) the script pauses ``SWITCH_PAUSE_S``.
    fp32 and int8 rows go through the same ``measure``.
    """
    times: Dict[Config, List[float]] = {c: [] for c in configs}
    with logging_redirect_tqdm(loggers=_LOGGERS):
        for r in range(rounds + 1):
            label = "warmup" if r == 0 else f"round {r}/{rounds}"
            logger.info("%s over %d configurations", label, len(configs))
            previous = None
            for config in tqdm(configs, desc=label, unit="cfg", leave=False):
                variant, backend, precision, sw = config
                if backend != previous:
                    gc.collect()
                    time.sleep(SWITCH_PAUSE_S)
                    previous = backend
                predictor = predictors[variant, backend, precision]
                if r == 0:
                    warm(predictor, sw)
                else:
                    times[config].append(measure(predictor, sw))
            time.sleep(SWITCH_PAUSE_S)
    return times


def make_rows(variants: Sequence[Variant], configs: Sequence[Config], times: Dict[Config, List[float]],
              evaluations: Optional[Dict[Tuple[str, str, str], Dict[str, Any]]] = None) -> List[dict]:
    by_name = {v.name: v for v in variants}
    latency = {c: statistics.median(t) for c, t in times.items()}
    rows = []
    for config in configs:
        name, backend, precision, sw = config
        v = by_name[name]
        torch_ref = latency.get(("dense", "torch", "fp32", sw))
        ort_ref = latency.get(("dense", "onnxruntime", "fp32", sw))
        row = {
            "variant": name, "backend": backend, "precision": precision, "sw_batch_size": sw,
            "latency_s": latency[config], "macs": v.macs, "params": v.params,
            "speedup_vs_dense_torch": torch_ref / latency[config] if torch_ref else None,
            "speedup_vs_dense_ort": ort_ref / latency[config] if ort_ref else None,
            "speedup_vs_own_fp32": None, "times_s": times[config],
        }
        if precision == "int8":
            q = v.int8[backend]
            own = latency.get((name, backend, "fp32", sw))
            row.update(
                size_bytes=q.size_bytes["int8"], size_of=INT8_SIZE_OF[backend],
                speedup_vs_own_fp32=own / latency[config] if own else None,
                size_ratio_vs_fp32=q.size_bytes["fp32"] / q.size_bytes["int8"],
                agreement_vs_fp32=q.fidelity["agreement"], max_abs_logit_vs_fp32=q.fidelity["max_abs_logit"],
                int8_layers=len(q.int8_layers), fp32_layers=len(q.fp32_layers), fidelity=q.fidelity,
                calibration=q.calibration, quantize_s=v.quantize_s[backend],
            )
        else:
            row.update(size_bytes=v.size_bytes[backend], size_of=SIZE_OF[backend])
        row.update((evaluations or {}).get((name, backend, precision), {}))
        rows.append(row)
    order = {v.name: i for i, v in enumerate(variants)}
    rows.sort(key=lambda row: (row["sw_batch_size"], order[row["variant"]], BACKENDS.index(row["backend"]),
                               PRECISIONS.index(row["precision"])))
    return rows


def _x(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


Column = Tuple[str, Callable[[dict], str]]  # (header, row -> cell)


def table(rows: Sequence[dict], extra_columns: Sequence[Column] = ()) -> str:
    """The Markdown table; int8 columns (speed-up vs own fp32, agreement, max |dlogit|) when int8 rows exist."""
    header = ["variant", "backend", "precision", "sw_batch_size", "latency_s", "speed-up vs dense torch fp32",
              "speed-up vs dense onnxruntime fp32"]
    int8 = any(r["precision"] == "int8" for r in rows)
    if int8:
        header.append("speed-up vs own fp32")
    header += ["MACs (G)", "params (M)", "size_bytes"]
    if int8:
        header += ["agreement int8 vs fp32", "max abs dlogit"]
    header += [h for h, _ in extra_columns]
    body = []
    for r in rows:
        cells = [r["variant"], r["backend"], r["precision"], r["sw_batch_size"], f"{r['latency_s']:.4f}",
                 _x(r["speedup_vs_dense_torch"]), _x(r["speedup_vs_dense_ort"])]
        if int8:
            cells.append(_x(r["speedup_vs_own_fp32"]) if r["precision"] == "int8" else "-")
        cells += [f"{r['macs'] / 1e9:.3f}", f"{r['params'] / 1e6:.3f}", r["size_bytes"]]
        if int8:
            cells += ([f"{r['agreement_vs_fp32']:.4f}", f"{r['max_abs_logit_vs_fp32']:.3g}"]
                      if r["precision"] == "int8" else ["-", "-"])
        cells += [fn(r) for _, fn in extra_columns]
        body.append(cells)
    return markdown_table(header, body)


def summary_lines(rows: Sequence[dict]) -> List[str]:
    """One line per pruned variant: fastest fp32 backend at sw_batch_size 1 and the pruning speed-up target
    (information only; fp32 rows, so the line measures pruning alone), then the fastest combination of
    variant, backend and precision per sw_batch_size (:func:`fastest_lines`)."""
    lines = []
    for name, target in TARGETS.items():
        candidates = [r for r in rows if r["variant"] == name and r["sw_batch_size"] == 1 and r["precision"] == "fp32"]
        if not candidates:
            continue
        best = min(candidates, key=lambda r: r["latency_s"])
        speedup = best["speedup_vs_dense_torch"]
        if speedup is None:
            verdict = "cannot tell (dense torch eager was not measured)"
        else:
            verdict = "met" if speedup >= target else "NOT met"
        lines.append(f"{name}: best backend {best['backend']} (fp32, {best['latency_s']:.4f} s), {_x(speedup)} vs "
                     f"dense torch eager at sw_batch_size 1; target >= {target}x: {verdict}")
    return lines + fastest_lines(rows)


def fastest_lines(rows: Sequence[dict]) -> List[str]:
    """The fastest (variant, backend, precision) per sw_batch_size, with its ratios vs the dense fp32 references."""
    lines = []
    for sw in sorted({r["sw_batch_size"] for r in rows}):
        best = min((r for r in rows if r["sw_batch_size"] == sw), key=lambda r: r["latency_s"])
        lines.append(f"Fastest at sw_batch_size {sw}: {best['variant']} / {best['backend']} / {best['precision']} "
                     f"({best['latency_s']:.4f} s): {_x(best['speedup_vs_dense_torch'])} vs dense torch eager fp32, "
                     f"{_x(best['speedup_vs_dense_ort'])} vs dense onnxruntime fp32 (same run).")
    return lines


def _cpu_seconds() -> Optional[Tuple[float, float, float]]:
    """(wall, busy CPU seconds of the whole machine, CPU seconds of this process and of its finished child
    processes, e.g. the app runs of ``deploy_e2e.py``) — Linux only, else None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # everything but idle and iowait
    own = os.times()
    return (time.monotonic(), busy / os.sysconf("SC_CLK_TCK"),
            own.user + own.system + own.children_user + own.children_system)


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
              sw_batch_sizes: Sequence[int], measure, warm, title: str,
              calibration: Optional[Callable[[], Tuple[CalibrationSet, Sequence[Any]]]] = None,
              evaluate: Optional[Callable[[Predictor], Dict[str, Any]]] = None,
              extra_columns: Sequence[Column] = (), notes: Sequence[str] = (),
              finalize: Optional[Callable[[List[dict]], None]] = None) -> List[dict]:
    """Prepare, time, print the table and summary, write JSON; returns the rows.

    Args:
        calibration: ``calibration() -> (calibration set, validation)`` for the int8 rows (called only when
            ``args.int8_backends`` is not empty); validation is what ``quantize(validation=...)`` takes.
        evaluate: ``evaluate(predictor) -> {field: value}``, run once per variant on its fp32 model before the
            rounds (untimed, :func:`evaluate_variants`); the fields join the variant's fp32 rows.
        extra_columns: ``(header, row -> cell)`` appended to the table.
        notes: lines printed under the table.
        finalize: ``finalize(rows)`` adds a script's own fields to the rows before they are printed and written.
    """
    logger.info("backends: %s; int8 on: %s; %d timed round(s)", ", ".join(args.backends),
                ", ".join(args.int8_backends) or "none", args.rounds)
    with tempfile.TemporaryDirectory(prefix="monai_prune_bench_") as tmp:
        work_dir = args.work_dir or tmp
        variants = prepare_variants(dense, prune_input, macs_input, args.backends, work_dir)
        if args.int8_backends and calibration is not None:
            calibration_set, validation = calibration()
            quantize_variants(variants, args.int8_backends, calibration_set, validation, work_dir)
        configs = make_configs(variants, args.backends, sw_batch_sizes)
        with torch.no_grad():
            predictors = build_predictors(variants, args.backends, prune_input)
            evaluations = evaluate_variants(predictors, evaluate) if evaluate is not None else None
            before = _cpu_seconds()
            times = run_rounds(configs, predictors, measure, warm, args.rounds)
            after = _cpu_seconds()
        del predictors
    rows = make_rows(variants, configs, times, evaluations)
    if finalize is not None:
        finalize(rows)
    print(f"\n## {title}\n")
    print(table(rows, extra_columns))
    print(f"\nMedian of {args.rounds} interleaved round(s) after one warmup call per configuration; torch "
          f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs.")
    print(_foreign_load(before, after))
    print(SIZE_NOTE)
    if any(r["precision"] == "int8" for r in rows):
        print(INT8_NOTE)
    for note in notes:
        print(note)
    print()
    for line in summary_lines(rows):
        print(line)
    if args.json:
        write_json(args.json, rows)
    return rows
