"""3D segmentation benchmark: dense vs channel-pruned spleen UNet, whole sliding-window inference, per runtime.

What it measures
    The MONAI model-zoo spleen UNet (``monai_prune.workflows.spleen_unet()``, seeded random weights: speed does
    not depend on the weights) in three variants — ``dense``, ``pruned0.5`` and ``pruned0.75``
    (``prune_channels`` with ratio 0.5 / 0.75) — served through every available backend (torch eager,
    torchscript, onnxruntime, openvino; fp32). For each (variant, backend, sw_batch_size in {1, 4}) it times
    the WHOLE ``monai.inferers.sliding_window_inference`` over one random ``--size``³ volume (default 160³)
    with roi ``--roi``³ (default 96³), overlap 0.25, gaussian blending — the call a MONAI pipeline makes, not
    one network call.

How it is timed
    One untimed warmup call per configuration, then ``--repeats`` rounds (default 5; ``--quick``: 2); each
    round runs every configuration once, so machine noise hits all of them alike, with a 0.5 s pause whenever
    the runtime changes. The reported latency is the median over rounds. MACs are per roi window (input
    1x1xroi³), counted by ``monai_prune.count_macs``.

Output
    A Markdown table (latency, speed-up vs dense torch eager and vs dense onnxruntime at the same
    sw_batch_size, MACs, params, size), one summary line per pruned variant (best backend at sw_batch_size 1
    vs the speed-up targets 2.5x / 4x, printed for information), and with ``--json PATH`` a JSON list of rows
    with keys variant, backend, precision, sw_batch_size, latency_s, macs, params, size_bytes,
    speedup_vs_dense_torch, speedup_vs_dense_ort, times_s.

Run (from the repository root)
    python benchmarks/seg3d.py --json bench_output/seg3d.json        # full run: several minutes on 2 cores
    python benchmarks/seg3d.py --quick --size 64 --roi 48            # tiny smoke run
    python benchmarks/seg3d.py --backends torch onnxruntime          # only some runtimes
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402

import _bench  # noqa: E402
from monai_prune.measure import sliding_window_latency  # noqa: E402
from monai_prune.workflows import spleen_unet  # noqa: E402

OVERLAP = 0.25
SW_BATCH_SIZES = (1, 4)


def main() -> None:
    args = _bench.parse_args(__doc__, size=160, roi=96)
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
    _bench.benchmark(args, dense, window, window, SW_BATCH_SIZES, measure, warm, title)


if __name__ == "__main__":
    main()
