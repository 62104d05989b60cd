"""Ignite handlers that drop into MONAI ``SupervisedTrainer``/``SupervisedEvaluator`` workflows."""

from .compression_stats_handler import CompressionStatsHandler
from .distillation_handler import DistillationHandler
from .pruning_handler import PruningHandler

__all__ = ["CompressionStatsHandler", "DistillationHandler", "PruningHandler"]
