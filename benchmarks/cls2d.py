"""2D classification benchmark: dense vs channel-pruned DenseNet121, one image per call, per runtime.

What it measures
    MONAI ``DenseNet121(spatial_dims=2, in_channels=3, out_channels=2)`` (seeded random weights: speed does
    not depend on the weights) in three variants — ``dense``, ``pruned0.5`` and ``pruned0.75``
    (``prune_channels`` with ratio 0.5 / 0.75) — served through every available backend (torch eager,
    torchscript, onnxruntime, openvino; fp32). Each configuration times ``predictor(x)`` on one random
    1x3x``--size``² image (default 224², batch 1, no sliding window). ``sw_batch_size`` is 1 in every row; the
    key is kept so the rows have the same shape as ``seg3d.py``'s.

How it is timed
    One untimed warmup call per configuration, then ``--repeats`` rounds (default 5; ``--quick``: 2); each
    round runs every configuration once — ``time_call`` over a few back-to-back calls, keeping their median,
    since one call is short — with a 0.5 s pause whenever the runtime changes. The reported latency is the
    median over rounds. MACs are per image, counted by ``monai_prune.count_macs``.

Output
    The same Markdown table, summary lines and ``--json`` rows as ``seg3d.py`` (see there).

Run (from the repository root)
    python benchmarks/cls2d.py --json bench_output/cls2d.json
    python benchmarks/cls2d.py --quick --size 64                     # tiny smoke run
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from monai.networks.nets import DenseNet121  # noqa: E402

import _bench  # noqa: E402
from monai_prune.measure import time_call  # noqa: E402

CALLS_PER_ROUND = 5  # one 224² DenseNet call is tens of milliseconds: take the median of a few per round


def main() -> None:
    args = _bench.parse_args(__doc__, size=224)
    _bench.setup()
    dense = DenseNet121(spatial_dims=2, in_channels=3, out_channels=2).eval()
    image = torch.rand(1, 3, args.size, args.size)
    example = torch.zeros(1, 3, args.size, args.size)

    def warm(predictor, sw_batch_size):
        with torch.no_grad():
            predictor(image)

    def measure(predictor, sw_batch_size):
        with torch.no_grad():
            return time_call(lambda: predictor(image), repeats=CALLS_PER_ROUND, warmup=0)["median_s"]

    title = f"cls2d: DenseNet121 (2D, 3 -> 2 classes), one {args.size}x{args.size} image per call"
    _bench.benchmark(args, dense, example, example, (1,), measure, warm, title)


if __name__ == "__main__":
    main()
