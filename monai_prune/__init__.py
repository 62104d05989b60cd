"""monai-prune: make trained MONAI networks small and fast, measure what they lost, ship them."""

import logging

from .errors import MonaiPruneError
from .export import export_onnx, export_openvino, export_torchscript
from .measure import count_macs, count_params, file_size, sliding_window_latency, state_dict_bytes
from .pruning import ChannelPruningConfig, PruningPlan, apply_plan, prune_channels
from .quantization import QuantizationConfig, calibration_data, quantize
from .runtime import Predictor, available_backends

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ChannelPruningConfig", "MonaiPruneError", "Predictor", "PruningPlan", "QuantizationConfig", "apply_plan",
    "available_backends", "calibration_data", "quantize",
    "count_macs", "count_params", "export_onnx", "export_openvino", "export_torchscript", "file_size",
    "prune_channels", "sliding_window_latency", "state_dict_bytes",
]
