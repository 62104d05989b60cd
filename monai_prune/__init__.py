"""monai-prune: make trained MONAI networks small and fast, measure what they lost, ship them."""

# The public names are loaded on first use (PEP 562 ``__getattr__``), so ``import monai_prune`` and the command line's
# ``--help`` do not pay for importing torch and MONAI (about a second). ``from monai_prune import prune_channels`` and
# ``monai_prune.count_macs`` work as before; they import the submodule that defines the name the first time.

import importlib
import logging
from typing import TYPE_CHECKING

from .errors import MonaiPruneError

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> the submodule (relative to this package) that defines it
_LAZY_NAMES = {
    "export_onnx": ".export", "export_openvino": ".export", "export_torchscript": ".export",
    "count_macs": ".measure", "count_params": ".measure", "file_size": ".measure",
    "sliding_window_latency": ".measure", "state_dict_bytes": ".measure",
    "ChannelPruningConfig": ".pruning", "PruningPlan": ".pruning", "apply_plan": ".pruning",
    "prune_channels": ".pruning",
    "QuantizationConfig": ".quantization", "calibration_data": ".quantization", "quantize": ".quantization",
    "Predictor": ".runtime", "available_backends": ".runtime",
}

# submodules that were attributes of the package after ``import monai_prune`` when it imported everything eagerly
# (``monai_prune.pruning.plan`` without importing it first); they stay reachable that way, imported on first use
_LAZY_SUBMODULES = frozenset({
    "distributed", "export", "fidelity", "fidelity_metrics", "importance", "layers", "measure", "pruning",
    "quantization", "report", "runtime", "sensitivity", "sparsity", "utils",
})

__all__ = [
    "ChannelPruningConfig", "MonaiPruneError", "Predictor", "PruningPlan", "QuantizationConfig", "apply_plan",
    "available_backends", "calibration_data", "quantize",
    "count_macs", "count_params", "export_onnx", "export_openvino", "export_torchscript", "file_size",
    "prune_channels", "sliding_window_latency", "state_dict_bytes",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from .export import export_onnx, export_openvino, export_torchscript
    from .measure import count_macs, count_params, file_size, sliding_window_latency, state_dict_bytes
    from .pruning import ChannelPruningConfig, PruningPlan, apply_plan, prune_channels
    from .quantization import QuantizationConfig, calibration_data, quantize
    from .runtime import Predictor, available_backends


def __getattr__(name: str):
    """Import a public name's submodule (or a submodule) on first access and cache the result in the package."""
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name], __name__), name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups do not come back here
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | _LAZY_SUBMODULES)
