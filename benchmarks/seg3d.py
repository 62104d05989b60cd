"""3D segmentation benchmark: dense vs channel-pruned spleen UNet, fp32 and int8, whole sliding-window inference.

What it measures
    The MONAI model-zoo spleen UNet (``monai_prune.workflows.spleen_unet()``, seeded random weights: speed does
    not depend on the weights) in three variants — ``dense``, ``pruned0.5`` and ``pruned0.75``
    (``prune_channels`` with ratio 0.5 / 0.75) — served through every available backend (torch eager,
    torchscript, onnxruntime, openvino) in fp32, and through onnxruntime and openvino in int8: each variant is
    quantized by ``monai_prune.quantization.quantize`` (ONNX Runtime QDQ / OpenVINO NNCF, static, min-max),
    calibrated on ``--calibration-samples`` roi-sized patches (default 8) cut by ``calibration_data`` from
    synthetic CT-like volumes (``monai_prune.data.synthetic_ct``, windowed -57..164 HU -> 0..1 as the spleen
    bundle does; half the patches centred on the labelled "organ"). For each (variant, backend, precision,
    sw_batch_size in {1, 4}) it times the WHOLE ``monai.inferers.sliding_window_inference`` over one random
    ``--size``³ volume (default 160³) with roi ``--roi``³ (default 96³), overlap 0.25, gaussian blending — the
    call a MONAI pipeline makes, not one network call.

    The weights are random, so Dice against labels means nothing here; what the int8 rows report is how closely
    int8 reproduces fp32 on the same backend, on 2 held-out patches from another synthetic volume: voxel argmax
    agreement and the largest absolute output difference (the JSON row's ``fidelity`` also has the per-class
    Dice between the int8 and fp32 label maps).

How it is timed
    Quantization is preparation and is not timed. One untimed warmup call per configuration, then ``--repeats``
    rounds (default 5; ``--quick``: 2); each round runs every configuration once (fp32 and int8 alike), so
    machine noise hits all of them alike, with a 0.5 s pause whenever the runtime changes. The reported latency
    is the median over rounds. MACs are per roi window (input 1x1xroi³), counted by ``monai_prune.count_macs``
    (int8 rows: the same network, so the same MACs).

Output
    With the window knob (default; ``--no-whole-volume`` leaves it out), every configuration is also timed with ONE
    window over the whole volume (roi = ``--size``\ ³, so no overlap): those rows have ``sw_batch_size`` 0 and
    ``window`` "whole"; and with MONAI's ``SimpleInferer`` (one network call on the whole volume, no sliding-window
    bookkeeping: the same output as one window, whose blending weights divide out): ``sw_batch_size`` -1. The line "Network target" then compares the fastest row (any window)
    with dense torch eager at its best sw_batch_size at the stock window (``--roi``, overlap 0.25), the issue's 8x
    target. The weights are random, so this benchmark cannot say what a window costs in accuracy: the
    window knob's per-class Dice on a trained model is measured by ``monai-prune search --roi-sizes whole``.

    A Markdown table (latency, speed-up vs dense torch eager fp32 and vs dense onnxruntime fp32 at the same
    sw_batch_size, for int8 rows also vs the same variant's fp32 on the same backend, MACs, params, size, and for
    int8 rows agreement / max |dlogit| vs fp32), one summary line per pruned variant (best fp32 backend at
    sw_batch_size 1 vs the pruning speed-up targets 2.5x / 4x, printed for information), one line per
    sw_batch_size naming the fastest (variant, backend, precision) with its speed-ups, and with ``--json PATH``
    a JSON list of rows with keys variant, backend, precision ("fp32"/"int8"), sw_batch_size, latency_s, macs,
    params, size_bytes, size_of, speedup_vs_dense_torch, speedup_vs_dense_ort, speedup_vs_own_fp32 (int8 rows),
    times_s; int8 rows add size_ratio_vs_fp32, agreement_vs_fp32, max_abs_logit_vs_fp32, int8_layers,
    fp32_layers, fidelity, calibration (sample count, shape, sha256) and quantize_s.

Run (from the repository root)
    python benchmarks/seg3d.py --json bench_output/seg3d.json        # full run: 10+ minutes on 2 cores
    python benchmarks/seg3d.py --size 128 --json bench_output/seg3d.json   # smaller volume, faster
    python benchmarks/seg3d.py --quick --size 64 --roi 48            # tiny smoke run
    python benchmarks/seg3d.py --backends torch onnxruntime          # only some runtimes
    python benchmarks/seg3d.py --no-int8                             # fp32 rows only
    python benchmarks/seg3d.py --no-whole-volume                     # the stock window only
"""

from __future__ import annotations

import os
import sys
from typing import List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.inferers import SimpleInferer, sliding_window_inference  # noqa: E402

import _bench  # noqa: E402
from monai_prune.data import synthetic_ct  # noqa: E402
from monai_prune.measure import sliding_window_latency, time_call  # noqa: E402
from monai_prune.quantization import CalibrationSet, calibration_data  # noqa: E402
from monai_prune.workflows import spleen_unet  # noqa: E402

OVERLAP = 0.25
SW_BATCH_SIZES = (1, 4)
WHOLE_VOLUME = 0  # the sw_batch_size column's code for the window knob: one window over the whole volume
SIMPLE_INFERER = -1  # ... and for the inferer knob: MONAI's SimpleInferer, one network call on the whole volume
NETWORK_TARGET = 8.0  # issue 18: the network part >= 8x faster than dense torch eager at its best sw_batch_size
HU_WINDOW = (-57.0, 164.0)  # the spleen bundle's ScaleIntensityRanged window -> 0..1
CALIBRATION_VOLUMES = 2
VALIDATION_PATCHES = 2


def ct_volume(size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A synthetic CT-like volume preprocessed as the spleen bundle does (channel first), and its label."""
    hu, label = synthetic_ct(size=size, seed=seed)
    low, high = HU_WINDOW
    image = np.clip((hu - low) / (high - low), 0.0, 1.0)
    return torch.from_numpy(image[None]).float(), torch.from_numpy(label[None])


def calibration_and_validation(size: int, roi: Sequence[int],
                               samples: int) -> Tuple[CalibrationSet, List[torch.Tensor]]:
    """Calibration patches from ``CALIBRATION_VOLUMES`` volumes; held-out patches from another volume."""
    calibration = calibration_data([ct_volume(size, seed) for seed in range(CALIBRATION_VOLUMES)],
                                   num_samples=samples, roi_size=roi, seed=0)
    held_out = calibration_data([ct_volume(size, seed=1000)], num_samples=VALIDATION_PATCHES, roi_size=roi, seed=1)
    return calibration, held_out.samples  # plain inputs: random weights make labels meaningless here


def window_options(parser) -> None:
    parser.add_argument("--no-whole-volume", dest="whole_volume", action="store_false",
                        help="leave out the rows with one window over the whole volume (the window knob)")


def window_of(sw_batch_size: int, roi: Tuple[int, ...], size: int) -> Tuple[Tuple[int, ...], int]:
    """``(roi, sw_batch_size)`` a configuration's code stands for: :data:`WHOLE_VOLUME` and :data:`SIMPLE_INFERER`
    are one ``size``³ window."""
    return ((size,) * 3, 1) if sw_batch_size in (WHOLE_VOLUME, SIMPLE_INFERER) else (roi, sw_batch_size)


def add_window_fields(rows: List[dict], roi: int, size: int) -> None:
    """Each row's ``window`` and its speed-up over dense torch eager at its best sw_batch_size at the stock window
    (``speedup_vs_dense_torch_best_stock``: the reference of the issue's network target)."""
    stock = [r["latency_s"] for r in rows if r["variant"] == "dense" and r["backend"] == "torch"
             and r["precision"] == "fp32" and r["sw_batch_size"] > 0]
    best = min(stock) if stock else None
    names = {WHOLE_VOLUME: f"whole {size}^3 (one window)", SIMPLE_INFERER: f"whole {size}^3, SimpleInferer"}
    for r in rows:
        r["window"] = names.get(r["sw_batch_size"], f"{roi}^3")
        r["speedup_vs_dense_torch_best_stock"] = best / r["latency_s"] if best else None


def target_line(rows: List[dict]) -> str:
    """The issue's network target: the fastest row against dense torch eager at its best stock sw_batch_size."""
    measured = [r for r in rows if r.get("speedup_vs_dense_torch_best_stock")]
    if not measured:
        return "Network target: cannot tell (dense torch eager was not timed)."
    best = max(measured, key=lambda r: r["speedup_vs_dense_torch_best_stock"])
    speedup = best["speedup_vs_dense_torch_best_stock"]
    stock = max((r for r in measured if r["sw_batch_size"] > 0),
                key=lambda r: r["speedup_vs_dense_torch_best_stock"], default=None)
    text = (f"Network target (>= {NETWORK_TARGET:.0f}x vs dense torch eager at its best sw_batch_size, stock window): "
            f"{speedup:.2f}x with {best['variant']} / {best['backend']} / {best['precision']}, window "
            f"{best['window']}: {'met' if speedup >= NETWORK_TARGET else 'MISSED'}")
    if stock is not None and stock is not best:
        text += (f"; at the stock window the best is {stock['speedup_vs_dense_torch_best_stock']:.2f}x "
                 f"({stock['variant']} / {stock['backend']} / {stock['precision']}, sw_batch_size "
                 f"{stock['sw_batch_size']})")
    return text + ". Random weights: the window's cost in Dice is measured by monai-prune search --roi-sizes whole."


def main() -> None:
    args = _bench.parse_args(__doc__, size=160, roi=96, calibration_samples=8, add_arguments=window_options)
    _bench.setup()
    if args.roi > args.size:
        raise SystemExit(f"--roi ({args.roi}) must not exceed --size ({args.size})")
    roi = (args.roi,) * 3
    dense = spleen_unet().eval()
    volume = torch.rand(1, 1, *(args.size,) * 3)
    example = torch.zeros(1, 1, *roi)

    def warm(predictor, code):
        window, sw_batch_size = window_of(code, roi, args.size)
        with torch.no_grad():
            if code == SIMPLE_INFERER:
                SimpleInferer()(volume, predictor)
            else:
                sliding_window_inference(volume, window, sw_batch_size, predictor, overlap=OVERLAP)

    def measure(predictor, code):
        window, sw_batch_size = window_of(code, roi, args.size)
        with torch.no_grad():
            if code == SIMPLE_INFERER:
                return time_call(lambda: SimpleInferer()(volume, predictor), repeats=1, warmup=0)["median_s"]
            result = sliding_window_latency(predictor, volume, window, sw_batch_size=sw_batch_size, overlap=OVERLAP,
                                            repeats=1, warmup=0)
        return result["median_s"]

    title = (f"seg3d: spleen UNet, sliding_window_inference over {args.size}^3, roi {args.roi}^3, "
             f"overlap {OVERLAP}")
    notes = [] if not args.int8_backends else [
        f"int8 calibration: {args.calibration_samples} patches of {args.roi}^3 from {CALIBRATION_VOLUMES} synthetic CT "
        f"volumes ({args.size}^3); fidelity on {VALIDATION_PATCHES} held-out patches of another volume. Weights are "
        "seeded random: agreement says how closely int8 follows fp32, not Dice."]
    if args.whole_volume:
        notes.append(f"sw_batch_size 0 = the window knob: one {args.size}^3 window over the whole volume (no overlap); "
                     "-1 = MONAI's SimpleInferer, one network call on the whole volume (the same output); their "
                     "speed-up vs dense torch fp32 is against dense torch eager with the same knob.")
    codes = SW_BATCH_SIZES + ((WHOLE_VOLUME, SIMPLE_INFERER) if args.whole_volume else ())
    rows = _bench.benchmark(args, dense, example, example, codes, measure, warm, title,
                            calibration=lambda: calibration_and_validation(args.size, roi, args.calibration_samples),
                            notes=notes, extra_columns=(("window", lambda r: r["window"]),),
                            finalize=lambda rows: add_window_fields(rows, args.roi, args.size))
    print(target_line(rows))


if __name__ == "__main__":
    main()
