"""Ignite handlers that drop into MONAI ``SupervisedTrainer``/``SupervisedEvaluator`` workflows."""

from .compression_stats_handler import CompressionStatsHandler
from .dense_weights import load_dense_weights, state_checksum, weights_state
from .distillation_handler import DistillationHandler
from .pruning_handler import PruningHandler
from .qat_handler import QuantizationAwareTrainingHandler
from .regularization_handler import SparsityRegularizationHandler

__all__ = ["CompressionStatsHandler", "DistillationHandler", "PruningHandler", "QuantizationAwareTrainingHandler",
           "SparsityRegularizationHandler", "load_dense_weights", "state_checksum", "weights_state"]
