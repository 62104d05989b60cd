"""``monai-prune demo``: train a spleen-style 3D UNet on built-in synthetic CT, compress it while fine-tuning
(cubic channel-pruning schedule + distillation from the dense model, in a stock ``SupervisedTrainer``), export it,
quantize the pruned model to int8 (calibrated on training patches, checked against held-out labels, fastest
backend within a Dice tolerance), serve everything through every installed runtime and report dense vs pruned vs
int8, measured.

Everything runs on the CPU in a few minutes; nothing is downloaded.

The package, bottom up: ``data`` (the synthetic CT and 2D sets), ``training`` (the spleen UNet, MONAI training and
Dice), ``config`` (:class:`DemoConfig`), ``compress`` (pruned while fine-tuned), ``int8`` (the int8 step),
``report`` (``report.md`` and the plot), ``pipeline`` (:func:`run_demo`, the job step by step), and
``search_frontend`` (``monai-prune search`` on the same data). ``monai_prune.data``, ``monai_prune.workflows`` and
``monai_prune.search_workflow`` re-export their parts.
"""

# The public names load on first use (PEP 562), so importing one part (``monai_prune.data`` imports ``.data`` of this
# package) does not import the whole demo, and no library module that re-exports a part pulls in the others.

import importlib
from typing import TYPE_CHECKING

# public name -> the submodule (relative to this package) that defines it
_LAZY_NAMES = {
    "DemoConfig": ".config", "quick_config": ".config", "compress_while_training": ".compress",
    "int8_step": ".int8", "labelled_patches": ".int8", "run_demo": ".pipeline",
}

__all__ = ["DemoConfig", "compress_while_training", "int8_step", "labelled_patches", "quick_config", "run_demo"]

if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from .compress import compress_while_training
    from .config import DemoConfig, quick_config
    from .int8 import int8_step, labelled_patches
    from .pipeline import run_demo


def __getattr__(name: str):
    """Import a public name's submodule on first access and cache the name in the package."""
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_NAMES[name], __name__), name)
    globals()[name] = value  # later lookups do not come back here
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
