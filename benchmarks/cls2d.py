"""2D classification benchmark: dense vs channel-pruned DenseNet121, fp32 and int8, one image per call.

What it measures
    MONAI ``DenseNet121(spatial_dims=2, in_channels=3, out_channels=2)``, first trained briefly on synthetic
    data so that accuracy means something: class 1 images hold one bright disc, class 0 images none
    (``monai.data.create_test_image_2d``, uniform noise, replicated to 3 channels, ``--size``² pixels;
    ``--train-steps`` Adam steps of ``--train-batch`` images (default 20 x 8), then the BatchNorm statistics
    are re-estimated in one pass over 64 training images; everything seeded). ``--train-steps 0`` keeps the
    seeded random weights. Then three variants — ``dense``, ``pruned0.5`` and ``pruned0.75``
    (``prune_channels`` with ratio 0.5 / 0.75 of the TRAINED model, NOT fine-tuned afterwards: their accuracy
    shows what pruning alone costs) — served through every available backend (torch eager, torchscript,
    onnxruntime, openvino) in fp32, and through onnxruntime and openvino in int8 (``monai_prune.quantization.
    quantize``: ONNX Runtime QDQ / OpenVINO NNCF, static, min-max, calibrated on ``--calibration-samples``
    training images, default 32). Each configuration times ``predictor(x)`` on one random 1x3x``--size``² image
    (default 224², batch 1, no sliding window). ``sw_batch_size`` is 1 in every row; the key is kept so the rows
    have the same shape as ``seg3d.py``'s.

    Accuracy and AUC (class 1 vs 0) on ``--val-images`` held-out labelled images (default 200, half per class):
    each variant's fp32 model once (through onnxruntime when selected, else openvino, torchscript, torch: the
    backends run the same fp32 function; ``evaluated_with`` in the JSON), copied to its fp32 rows; for the int8
    rows ``quantize`` measures accuracy and AUC of the same backend's fp32 file and of the int8 file on the same
    held-out images (``fidelity`` in the JSON; the row's accuracy/AUC are the int8 ones).

How it is timed
    Training, quantization and evaluation are preparation and are not timed. One untimed warmup call per
    configuration, then ``--repeats`` rounds (default 5; ``--quick``: 2); each round runs every configuration
    once (fp32 and int8 alike) — ``time_call`` over a few back-to-back calls, keeping their median, since one
    call is short — with a 0.5 s pause whenever the runtime changes. The reported latency is the median over
    rounds. MACs are per image, counted by ``monai_prune.count_macs``.

Output
    The same Markdown table, summary lines and ``--json`` rows as ``seg3d.py`` (see there), plus accuracy and AUC
    columns (every row: keys ``accuracy``, ``auc``; int8 rows also ``accuracy_fp32``, ``accuracy_int8``,
    ``accuracy_change_pp``, ``auc_fp32``, ``auc_int8``, measured by ``quantize`` on the same backend), and one
    target line per int8 backend for the dense int8 model: speed-up vs dense onnxruntime fp32 (goal >= 1.25x),
    size vs its fp32 file (goal >= 3.5x smaller), accuracy change int8 - fp32 on the same backend (goal: at most
    0.5 percentage points either way — a gain is also int8 deciding differently from fp32; one image of 200 is
    0.5 pp), each "met" or "MISSED".

Run (from the repository root)
    python benchmarks/cls2d.py --json bench_output/cls2d.json
    python benchmarks/cls2d.py --quick --size 64 --train-steps 2 --val-images 20   # tiny smoke run
    python benchmarks/cls2d.py --no-int8                              # fp32 rows only
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.data import create_test_image_2d  # noqa: E402
from monai.metrics import compute_roc_auc  # noqa: E402
from monai.networks.nets import DenseNet121  # noqa: E402

import _bench  # noqa: E402
from monai_prune.measure import time_call  # noqa: E402
from monai_prune.quantization import calibration_data  # noqa: E402

logger = logging.getLogger("monai_prune.benchmarks")

CALLS_PER_ROUND = 5  # one 224² DenseNet call is tens of milliseconds: take the median of a few per round
NOISE_MAX = 1.0  # uniform background noise in [0, 1); the disc is 0.5..1 under max(disc, noise), then rescaled
LEARNING_RATE = 1e-3
BN_RECALIBRATION_IMAGES = 64
EVAL_BATCH = 25
TARGET_SPEEDUP, TARGET_SIZE_RATIO, TARGET_ACCURACY_CHANGE_PP = 1.25, 3.5, 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-steps", type=int, default=20,
                        help="Adam steps on synthetic data before benchmarking (default 20; 0: random weights)")
    parser.add_argument("--train-batch", type=int, default=8, help="images per training step (default 8)")
    parser.add_argument("--val-images", type=int, default=200,
                        help="held-out labelled images for accuracy/AUC (default 200, even)")


def disc_images(count: int, size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``count`` images (N, 3, size, size) and labels: class 1 (odd index) holds one bright disc, class 0 none."""
    rng = np.random.RandomState(seed)
    images, labels = [], []
    for i in range(count):
        label = i % 2
        image, _ = create_test_image_2d(size, size, num_objs=label, rad_max=max(size // 10, 3),
                                        rad_min=max(size // 20, 2), noise_max=NOISE_MAX, num_seg_classes=1,
                                        random_state=rng)
        images.append(np.repeat(image[None].astype(np.float32), 3, axis=0))
        labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def train(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int) -> None:
    """A short seeded training run, then BatchNorm running statistics re-estimated on training images (after so
    few steps the momentum-averaged statistics still lag the weights and eval-mode accuracy is near chance)."""
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    net.train()
    start = time.perf_counter()
    for step in range(steps):
        idx = order[(step * batch) % len(images):][:batch]
        loss = torch.nn.functional.cross_entropy(net(images[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 0 or step == steps - 1:
            logger.info("train step %d/%d: loss %.4f (%.0f s)", step + 1, steps, loss.item(),
                        time.perf_counter() - start)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the recalibration batches
    with torch.no_grad():
        for i in range(0, min(BN_RECALIBRATION_IMAGES, len(images)), 16):
            net(images[order[i:i + 16]])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()
    logger.info("trained %d steps x %d images in %.0f s", steps, batch, time.perf_counter() - start)


def accuracy_auc(logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    probs = torch.softmax(logits.float(), 1)[:, 1]
    return {"accuracy": float((logits.argmax(1) == labels).float().mean()),
            "auc": float(compute_roc_auc(probs, labels.long()))}


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: Optional[float], fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def target_lines(rows: Sequence[dict]) -> List[str]:
    """The issue's targets for the dense int8 model at sw_batch_size 1, per int8 backend, measured in this run."""
    lines = []
    for r in rows:
        if r["variant"] != "dense" or r["precision"] != "int8":
            continue
        speed, size, change = r["speedup_vs_dense_ort"], r["size_ratio_vs_fp32"], r["accuracy_change_pp"]
        checks = [
            f"speed-up vs dense onnxruntime fp32 {_bench._x(speed)} (goal >= {TARGET_SPEEDUP}x: "
            f"{'cannot tell' if speed is None else 'met' if speed >= TARGET_SPEEDUP else 'MISSED'})",
            f"{size:.2f}x smaller than its fp32 file (goal >= {TARGET_SIZE_RATIO}x: "
            f"{'met' if size >= TARGET_SIZE_RATIO else 'MISSED'})",
            f"accuracy {_pct(r['accuracy_fp32'])} fp32 -> {_pct(r['accuracy_int8'])} int8, change {change:+.2f} pp "
            f"(goal: |change| <= {TARGET_ACCURACY_CHANGE_PP} pp: "
            f"{'met' if abs(change) <= TARGET_ACCURACY_CHANGE_PP else 'MISSED'})",
            f"AUC {_num(r['auc_fp32'], '.4f')} -> {_num(r['auc_int8'], '.4f')}",
        ]
        lines.append(f"Target, dense int8 on {r['backend']}: " + "; ".join(checks) + ".")
    return lines


def main() -> None:
    args = _bench.parse_args(__doc__, size=224, calibration_samples=32, add_arguments=add_arguments)
    _bench.setup()
    if args.train_steps < 0 or args.train_batch < 1 or args.val_images < 2 or args.val_images % 2:
        raise SystemExit("--train-steps must be >= 0, --train-batch >= 1, --val-images even and >= 2")
    dense = DenseNet121(spatial_dims=2, in_channels=3, out_channels=2)
    train_images, train_labels = disc_images(max(args.train_steps * args.train_batch, BN_RECALIBRATION_IMAGES,
                                                 args.calibration_samples), args.size, seed=0)
    val_images, val_labels = disc_images(args.val_images, args.size, seed=1)
    if args.train_steps:
        train(dense, train_images, train_labels, args.train_steps, args.train_batch)
    dense.eval()
    image = torch.rand(1, 3, args.size, args.size)
    example = torch.zeros(1, 3, args.size, args.size)

    def warm(predictor, sw_batch_size):
        with torch.no_grad():
            predictor(image)

    def measure(predictor, sw_batch_size):
        with torch.no_grad():
            return time_call(lambda: predictor(image), repeats=CALLS_PER_ROUND, warmup=0)["median_s"]

    def evaluate(predictor) -> Dict[str, float]:
        with torch.no_grad():
            logits = torch.cat([predictor(val_images[i:i + EVAL_BATCH]) for i in range(0, len(val_images), EVAL_BATCH)])
        return accuracy_auc(logits, val_labels)

    def calibration():
        cal = calibration_data(list(train_images), num_samples=args.calibration_samples, seed=0)
        return cal, [(val_images[i:i + 1], val_labels[i:i + 1]) for i in range(len(val_images))]

    trained = (f"trained {args.train_steps} steps x {args.train_batch} images" if args.train_steps
               else "seeded random weights")
    title = (f"cls2d: DenseNet121 (2D, 3 -> 2 classes, {trained}), one {args.size}x{args.size} image per call")
    notes = [f"accuracy / AUC (class 1): on the same {args.val_images} held-out synthetic images (disc vs no disc, "
             "half each); fp32 rows: the variant's fp32 model, evaluated once (through onnxruntime if selected); int8 "
             "rows: the int8 file on its backend, as quantize() measured it. Pruned variants are pruned from the "
             "trained model and NOT fine-tuned."]
    if args.int8_backends:
        notes.append(f"int8 calibration: {args.calibration_samples} training images (whole images).")
    rows = _bench.benchmark(
        args, dense, example, example, (1,), measure, warm, title, calibration=calibration, evaluate=evaluate,
        extra_columns=[("accuracy", lambda r: _pct(r.get("accuracy"))), ("AUC", lambda r: _num(r.get("auc"), ".4f"))],
        notes=notes, finalize=_add_accuracy_fields)
    for line in target_lines(rows):
        print(line)


def _add_accuracy_fields(rows: List[dict]) -> None:
    """int8 rows: accuracy/AUC of fp32 and int8 on the same backend as quantize() measured them (flat keys); the
    row's own accuracy/AUC are the int8 ones."""
    for r in rows:
        if r["precision"] != "int8":
            continue
        f = r["fidelity"]
        r["accuracy_fp32"], r["accuracy_int8"] = f["accuracy_fp32"], f["accuracy_int8"]
        r["accuracy_change_pp"] = 100 * (f["accuracy_int8"] - f["accuracy_fp32"])
        r["auc_fp32"] = f.get("auc_fp32", {}).get("1")
        r["auc_int8"] = f.get("auc_int8", {}).get("1")
        r["accuracy"], r["auc"], r["evaluated_with"] = r["accuracy_int8"], r["auc_int8"], f"quantize ({r['backend']})"


if __name__ == "__main__":
    main()
