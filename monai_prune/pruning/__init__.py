"""Structured channel pruning (torch-pruning + MONAI fixes) and the replayable pruning plan."""

from .channel import IMPORTANCE_CRITERIA, ChannelPruningConfig, prune_channels
from .plan import PruningPlan, apply_plan, architecture_signature, replay_steps

__all__ = ["ChannelPruningConfig", "IMPORTANCE_CRITERIA", "PruningPlan", "apply_plan", "architecture_signature",
           "prune_channels"]
from .inplace import apply_plan_inplace, prune_channels_inplace, rebuild_optimizer  # noqa: E402

__all__ += ["apply_plan_inplace", "prune_channels_inplace", "rebuild_optimizer", "replay_steps"]
