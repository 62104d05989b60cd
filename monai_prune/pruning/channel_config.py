"""How to prune channels: :class:`ChannelPruningConfig`, its validation (:func:`pruning_config`) and the
torch-pruning importance criterion it names (:func:`make_importance`)."""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch_pruning as tp

from ..errors import ConfigError, InputError
from ..sparsity import check_fraction

IMPORTANCE_CRITERIA = ("l1", "l2", "taylor", "bn_scale", "random")


@dataclass
class ChannelPruningConfig:
    """How to prune channels.

    Args:
        ratio: fraction of channels to remove in each prunable group, in [0, 1).
        target_macs: alternatively, the MACs to keep as a fraction of the original (0, 1); the ratio is searched.
        target_params: likewise for the parameter count.
        importance: ``"l1"``/``"l2"`` weight magnitude, ``"taylor"`` (|w * dL/dw| over a few batches, needs
            ``batches`` and ``loss_fn``), ``"bn_scale"`` (|gamma| of the normalisation layers), ``"random"``.
        round_to: keep channel counts a multiple of this (e.g. 8 for SIMD kernels).
        layer_ratios: per-layer overrides ``{layer_name: ratio}`` (the ratio of the group that layer roots).
        ignore: names of layers (or whole blocks) never to prune, in addition to the detected output head.
        global_pruning: rank channels across all groups instead of the same ratio in each.
        max_layer_ratio: never remove more than this fraction of one group (caps global pruning and the target
            search; torch-pruning skips groups asked for more).
        seed: seed for ``"random"`` importance and any tie-break.
    """

    ratio: Optional[float] = None
    target_macs: Optional[float] = None
    target_params: Optional[float] = None
    importance: str = "l1"
    round_to: Optional[int] = None
    layer_ratios: Dict[str, float] = field(default_factory=dict)
    ignore: List[str] = field(default_factory=list)
    global_pruning: bool = False
    max_layer_ratio: float = 0.9
    seed: int = 0

    def validate(self) -> None:
        given = [k for k in ("ratio", "target_macs", "target_params") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError("give exactly one of ratio (fraction of channels removed per group, in [0, 1)), "
                              f"target_macs or target_params (fraction of the original to keep, in (0, 1)); got "
                              f"{given or 'none'}")
        if self.ratio is not None:
            check_fraction("ratio", self.ratio, "fraction of channels removed per group")
        for key in ("target_macs", "target_params"):
            value = getattr(self, key)
            if value is not None and _is_number(value) and value >= 1:
                raise ConfigError(f"{key} must be in (0, 1) (the fraction of the original to keep), got {value}; a "
                                  "target at or above the model's own size needs no pruning")
            if value is not None:
                check_fraction(key, value, "the fraction of the original to keep", low_closed=False)
        if not isinstance(self.importance, str) or self.importance not in IMPORTANCE_CRITERIA:
            raise ConfigError(f"importance must be one of {IMPORTANCE_CRITERIA}, got {self.importance!r}")
        if self.round_to is not None and not (_is_integer(self.round_to) and self.round_to >= 1):
            raise ConfigError(f"round_to must be a positive integer (e.g. 8), got {self.round_to!r}")
        if not isinstance(self.layer_ratios, dict):
            raise ConfigError(f"layer_ratios must be a dict {{layer name: ratio in [0, 1)}}, got a "
                              f"{type(self.layer_ratios).__name__}")
        for name, r in self.layer_ratios.items():
            check_fraction(f"layer_ratios[{name!r}]", r, "fraction of that group's channels removed")
        if not isinstance(self.ignore, (list, tuple)) or not all(isinstance(n, str) for n in self.ignore):
            example = f"; write ignore=[{self.ignore!r}]" if isinstance(self.ignore, str) else ""
            raise ConfigError(f"ignore must be a list of layer names, got {self.ignore!r}{example}")
        if not isinstance(self.global_pruning, (bool, np.bool_)):
            raise ConfigError(f"global_pruning must be True or False, got {self.global_pruning!r}")
        check_fraction("max_layer_ratio", self.max_layer_ratio, "the most of one group's channels removed",
                       low_closed=False, high_closed=True)
        if not _is_integer(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def pruning_config(ratio: Optional[float] = None, config: Optional[ChannelPruningConfig] = None,
                   **options) -> ChannelPruningConfig:
    """A validated copy of ``config`` (or the defaults) with ``ratio`` and the keyword ``options`` applied: what
    :func:`prune_channels` runs with. Raises :class:`ConfigError` for an unknown option or a bad value."""
    if config is not None and not isinstance(config, ChannelPruningConfig):
        raise InputError(f"config must be a ChannelPruningConfig, got {type(config).__name__}; or pass its fields "
                         "as keyword arguments")
    fields = ChannelPruningConfig.__dataclass_fields__
    unknown = [k for k in options if k not in fields]
    if unknown:
        raise ConfigError(f"unknown pruning option(s) {unknown}; known: {sorted(fields)}")
    config = copy.deepcopy(config) if config is not None else ChannelPruningConfig()
    if ratio is not None:
        config.ratio = ratio
    for key, value in options.items():
        setattr(config, key, value)
    config.validate()
    return config


def make_importance(config: ChannelPruningConfig):
    """The torch-pruning importance object of ``config.importance``."""
    if config.importance == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if config.importance == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if config.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    if config.importance == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.RandomImportance()
