"""Ignite handlers that drop into MONAI ``SupervisedTrainer``/``SupervisedEvaluator`` workflows."""

from .compression_stats_handler import CompressionStatsHandler
from .distillation_handler import DistillationHandler
from .pruning_handler import PruningHandler
from .regularization_handler import SparsityRegularizationHandler

__all__ = ["CompressionStatsHandler", "DistillationHandler", "PruningHandler", "SparsityRegularizationHandler"]
