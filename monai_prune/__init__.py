"""monai-prune: make trained MONAI networks small and fast, measure what they lost, ship them."""

import logging

from .errors import MonaiPruneError
from .measure import count_macs, count_params, file_size, sliding_window_latency, state_dict_bytes
from .pruning import ChannelPruningConfig, PruningPlan, apply_plan, prune_channels

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ChannelPruningConfig", "MonaiPruneError", "PruningPlan", "apply_plan", "count_macs", "count_params",
    "file_size", "prune_channels", "sliding_window_latency", "state_dict_bytes",
]
