"""The spleen-style UNet and the small MONAI training/evaluation workflows of the demo, the benchmarks and the tests:
a re-export of :mod:`monai_prune.demo.training`, where they live, kept so that ``from monai_prune.workflows import
spleen_unet`` keeps working."""

from .demo.training import (  # noqa: F401 (the public names of this module)
    SPLEEN_UNET_DEF,
    segmentation_dice,
    spleen_unet,
    train_segmentation,
)

__all__ = ["SPLEEN_UNET_DEF", "segmentation_dice", "spleen_unet", "train_segmentation"]
