"""Small MONAI training/evaluation workflows used by the demo, the benchmarks and the tests.

They are ordinary MONAI: ``SupervisedTrainer`` with ``DiceCELoss`` and a progress bar, sliding-window
inference, ``DiceMetric``. Nothing here is specific to pruning; the demo prunes between two calls.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .data import ct_transforms

logger = logging.getLogger("monai_prune.workflows")  # the name it has always had


SPLEEN_UNET_DEF = {
    "_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
    "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch",
}


def spleen_unet(channels: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "batch") -> nn.Module:
    """The network of the MONAI model-zoo ``spleen_ct_segmentation`` bundle (``SPLEEN_UNET_DEF``)."""
    from monai.networks.nets import UNet

    args = {k: v for k, v in SPLEEN_UNET_DEF.items() if k != "_target_"}
    return UNet(**{**args, "channels": tuple(channels), "strides": tuple(args["strides"]), "norm": norm})


def train_segmentation(
    network: nn.Module,
    items: List[Dict[str, str]],
    epochs: int,
    roi: Sequence[int] = (48, 48, 48),
    lr: float = 1e-3,
    batch_size: int = 2,
    num_samples: int = 2,
    progress: bool = True,
    seed: int = 0,
    handlers: Optional[Callable[[nn.Module, torch.optim.Optimizer], Sequence[Any]]] = None,
) -> List[float]:
    """Train ``network`` in place with MONAI's ``SupervisedTrainer``; returns the loss of every iteration.

    ``handlers(network, optimizer)`` may return handlers (``attach(engine)``) for the trainer, e.g. a
    :class:`~monai_prune.handlers.PruningHandler` and a :class:`~monai_prune.handlers.DistillationHandler`.
    """
    from monai.data import CacheDataset, DataLoader
    from monai.engines import SupervisedTrainer
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    set_determinism(seed)
    dataset = CacheDataset(items, ct_transforms(roi, train=True, num_samples=num_samples), progress=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    trainer = SupervisedTrainer(
        device=next(network.parameters()).device, max_epochs=epochs, train_data_loader=loader, network=network,
        optimizer=optimizer, loss_function=DiceCELoss(to_onehot_y=True, softmax=True), amp=False,
        train_handlers=list(handlers(network, optimizer)) if handlers is not None else None,
    )
    losses: List[float] = []

    def keep_loss(engine):
        losses.append(float(engine.state.output[0]["loss"]))

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, keep_loss)
    if progress:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=True).attach(trainer, output_transform=lambda out: {"loss": out[0]["loss"]})
    trainer.run()
    set_determinism(None)
    network.eval()
    return losses


def segmentation_dice(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    items: List[Dict[str, str]],
    roi: Sequence[int] = (64, 64, 64),
    sw_batch_size: int = 2,
    overlap: float = 0.25,
) -> Dict[str, object]:
    """Foreground Dice of ``predictor`` over ``items`` through MONAI's sliding-window inferer.

    Returns ``{"mean_dice": float, "per_case": [...], "predictions": [argmax label volumes]}``.
    """
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    transform = ct_transforms(roi, train=False)
    metric = DiceMetric(include_background=False, reduction="none")
    per_case, predictions = [], []
    with torch.no_grad():
        for item in items:
            data = transform(item)
            image, label = data["image"][None], data["label"][None]
            logits = sliding_window_inference(image, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian")
            pred = logits.argmax(1, keepdim=True)
            score = metric(one_hot(pred, 2), one_hot(label.long(), 2))
            per_case.append(float(score.nanmean()))
            predictions.append(pred[0, 0].to(torch.uint8))
    return {"mean_dice": sum(per_case) / len(per_case), "per_case": per_case, "predictions": predictions}
