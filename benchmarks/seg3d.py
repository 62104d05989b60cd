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
"""

from __future__ import annotations

import os
import sys
from typing import List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402

import _bench  # noqa: E402
from monai_prune.data import synthetic_ct  # noqa: E402
from monai_prune.measure import sliding_window_latency  # noqa: E402
from monai_prune.quantization import CalibrationSet, calibration_data  # noqa: E402
from monai_prune.workflows import spleen_unet  # noqa: E402

OVERLAP = 0.25
SW_BATCH_SIZES = (1, 4)
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


def main() -> None:
    args = _bench.parse_args(__doc__, size=160, roi=96, calibration_samples=8)
    _bench.setup()
    if args.roi > args.size:
        raise SystemExit(f"--roi ({args.roi}) must not exceed --size ({args.size})")
    roi = (args.roi,) * 3
    dense = spleen_unet().eval()
    volume = torch.rand(1, 1, *(args.size,) * 3)
    window = torch.zeros(1, 1, *roi)

    def warm(predictor, sw_batch_size):
        with torch.no_grad():
            sliding_window_inference(volume, roi, sw_batch_size, predictor, overlap=OVERLAP)

    def measure(predictor, sw_batch_size):
        with torch.no_grad():
            result = sliding_window_latency(predictor, volume, roi, sw_batch_size=sw_batch_size, overlap=OVERLAP,
                                            repeats=1, warmup=0)
        return result["median_s"]

    title = (f"seg3d: spleen UNet, sliding_window_inference over {args.size}^3, roi {args.roi}^3, "
             f"overlap {OVERLAP}")
    notes = [f"int8 calibration: {args.calibration_samples} patches of {args.roi}^3 from {CALIBRATION_VOLUMES} "
             f"synthetic CT volumes ({args.size}^3); fidelity on {VALIDATION_PATCHES} held-out patches of another "
             "volume. Weights are seeded random: agreement says how closely int8 follows fp32, not Dice."]
    _bench.benchmark(args, dense, window, window, SW_BATCH_SIZES, measure, warm, title,
                     calibration=lambda: calibration_and_validation(args.size, roi, args.calibration_samples),
                     notes=notes if args.int8_backends else ())


if __name__ == "__main__":
    main()
