"""Ignite handlers that drop into MONAI ``SupervisedTrainer``/``SupervisedEvaluator`` workflows."""

from .distillation_handler import DistillationHandler
from .pruning_handler import PruningHandler

__all__ = ["DistillationHandler", "PruningHandler"]
