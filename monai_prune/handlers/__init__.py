"""Ignite handlers that drop into MONAI ``SupervisedTrainer``/``SupervisedEvaluator`` workflows."""

from .pruning_handler import PruningHandler

__all__ = ["PruningHandler"]
