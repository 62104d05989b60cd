"""Training-time compression on the demo data: dense vs one-shot vs scheduled vs scheduled + distillation.

What it measures
    The demo's spleen-style 3D UNet (``SPLEEN_UNET_DEF``) trained on the demo's synthetic CT (same volumes, same
    seeds, ``monai_prune.demo.DemoConfig`` defaults) for ``--epochs`` epochs: the **dense** reference. Then three
    ways to reach the same channel sparsity (``--ratio``, fraction of every group's channels removed), each with the
    same fine-tuning budget (``--finetune-epochs`` in a stock ``SupervisedTrainer``, same learning rate and seed):

    * ``one-shot``: ``prune_channels(dense, ratio)`` then fine-tune;
    * ``scheduled``: ``PruningHandler`` with a cubic schedule over epochs 1..``--schedule-end`` while fine-tuning;
    * ``scheduled+KD``: the same plus ``DistillationHandler`` (teacher: the dense model, alpha 0.5, T 2);

    and a control: the dense model trained the same extra epochs without compression (the compressed variants
    get those epochs too, so compare them with the control, not only with the dense row).

    The fine-tuning of every variant is repeated with ``--seeds`` seeds (default 3: shuffling and crops differ; one
    seed swung scheduled+KD between 0.91 and 0.97 Dice) and the table gives the mean and the min-max. For each:
    mean foreground Dice on the held-out volumes (sliding window, roi as in the demo), the change vs
    dense, MACs per 96^3 window (``count_macs``) and their ratio, parameters, and the measured channel sparsity.
    CPU only; a full run takes a few minutes on 2 cores (``--quick``: tens of seconds, tiny data).

Run (from the repository root)
    python benchmarks/training_compression.py --json bench_output/training_compression.json
    python benchmarks/training_compression.py --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import torch

from monai_prune import count_macs, count_params, prune_channels
from monai_prune.data import write_ct_dataset
from monai_prune.demo import DemoConfig, compress_while_training, quick_config
from monai_prune.layers import channel_sparsity, layer_widths
from monai_prune.report import markdown_table
from monai_prune.utils import atomic_write_text, configure_logging
from monai_prune.workflows import segmentation_dice, spleen_unet, train_segmentation

logger = logging.getLogger("monai_prune.benchmarks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny data and budgets (a smoke run)")
    parser.add_argument("--epochs", type=int, default=None, help="dense training epochs (default: the demo's)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="fine-tuning budget of every variant")
    parser.add_argument("--schedule-end", type=int, default=None, help="last epoch of the cubic schedule")
    parser.add_argument("--ratio", type=float, default=0.5, help="channel sparsity to reach (default 0.5)")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per variant, different seeds (default 3)")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    parser.add_argument("--work-dir", default=None, help="where the synthetic data goes (default: a temp folder)")
    args = parser.parse_args()
    configure_logging()
    work = args.work_dir or tempfile.mkdtemp(prefix="monai_prune_tc_")
    config = quick_config(work) if args.quick else DemoConfig(out=work)
    config.ratio = args.ratio
    for key in ("epochs", "finetune_epochs", "schedule_end"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if config.schedule_end > config.finetune_epochs:
        parser.error("--schedule-end must not be after the last fine-tuning epoch")
    started = time.time()
    train = write_ct_dataset(os.path.join(work, "data", "train"), config.train_volumes, config.size, seed=config.seed)
    val = write_ct_dataset(os.path.join(work, "data", "val"), config.val_volumes, config.size, seed=config.seed + 1000)
    window = torch.zeros(1, 1, *config.bench_roi)
    example = torch.zeros(1, 1, *config.train_roi)

    torch.manual_seed(config.seed)
    dense = spleen_unet()
    logger.info("dense: training %d epochs", config.epochs)
    train_segmentation(dense, train, config.epochs, roi=config.train_roi, seed=config.seed)
    macs0, params0 = count_macs(dense, window), count_params(dense)
    runs: Dict[str, List[Dict[str, float]]] = {}

    def measure(name: str, net: torch.nn.Module, sparsity: float) -> None:
        macs, params = count_macs(net, window), count_params(net)
        runs.setdefault(name, []).append({
            "mean_dice": segmentation_dice(net, val, roi=config.infer_roi)["mean_dice"], "macs": macs,
            "macs_ratio": macs / macs0, "params": params, "params_ratio": params / params0,
            "channel_sparsity": sparsity})

    measure("dense", dense, 0.0)
    one_shot, plan = prune_channels(dense, example, ratio=config.ratio)
    for k in range(args.seeds):  # the fine-tuning runs differ by their seed (shuffling, crops): repeat them
        offset = 1 + 100 * k
        # control: the same extra training without compression, so that gains from the extra epochs are not
        # mistaken for gains from compression
        logger.info("seed %d/%d: dense +%d epochs (control)", k + 1, args.seeds, config.finetune_epochs)
        control = copy.deepcopy(dense)
        train_segmentation(control, train, config.finetune_epochs, roi=config.train_roi, lr=5e-4,
                           seed=config.seed + offset)
        measure(f"dense +{config.finetune_epochs} epochs (control)", control, 0.0)
        logger.info("seed %d/%d: one-shot %.2f, fine-tune %d epochs", k + 1, args.seeds, config.ratio,
                    config.finetune_epochs)
        tuned = copy.deepcopy(one_shot)
        train_segmentation(tuned, train, config.finetune_epochs, roi=config.train_roi, lr=5e-4,
                           seed=config.seed + offset)
        measure("one-shot", tuned, channel_sparsity(layer_widths(dense), layer_widths(tuned), plan.kept_layers))
        for name, distill in (("scheduled", False), ("scheduled+KD", True)):
            logger.info("seed %d/%d: %s, cubic schedule over epochs 1-%d of %d", k + 1, args.seeds, name,
                        config.schedule_end, config.finetune_epochs)
            net, found = compress_while_training(dense, train, config, example, distill=distill, seed_offset=offset)
            measure(name, net, found["metrics"]["prune_sparsity"])

    rows = []
    for name, results in runs.items():
        dice = [r["mean_dice"] for r in results]
        rows.append({**results[-1], "variant": name, "mean_dice": statistics.mean(dice), "dice_min": min(dice),
                     "dice_max": max(dice), "dice_runs": dice})
    dense_dice = rows[0]["mean_dice"]
    table = markdown_table(
        ["variant", "mean Dice (over seeds)", "min-max", "change vs dense", f"MACs per {tuple(config.bench_roi)} window",
         "MACs ratio", "params", "channel sparsity"],
        [[r["variant"], f"{r['mean_dice']:.4f}", f"{r['dice_min']:.4f}-{r['dice_max']:.4f}",
          f"{r['mean_dice'] - dense_dice:+.4f}", f"{r['macs'] / 1e9:.2f} G", f"{r['macs_ratio']:.3f}",
          f"{r['params'] / 1e6:.2f} M", f"{r['channel_sparsity']:.3f}"] for r in rows])
    print(f"\nDemo data: {config.train_volumes} training / {config.val_volumes} held-out volumes of {config.size}^3; "
          f"dense {config.epochs} epochs; every compressed variant {config.finetune_epochs} fine-tuning epochs "
          f"(schedules over epochs 1-{config.schedule_end}); fine-tuning repeated with {args.seeds} seed(s).\n")
    print(table)
    print(f"\nwall time {time.time() - started:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps({"config": {k: getattr(config, k) for k in (
            "train_volumes", "val_volumes", "size", "epochs", "finetune_epochs", "schedule_end", "ratio", "seed")},
            "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
