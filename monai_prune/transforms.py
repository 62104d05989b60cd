"""Network transforms: MONAI-style callables that take a network and return the compressed one.

They compose with ``monai.transforms.Compose`` and work as ``$`` expressions in bundle configs, e.g. with
``"imports": ["$import torch", "$from monai_prune.transforms import PruneChannels"]``:
``"network": "$PruneChannels(ratio=0.5, example_input=torch.zeros(1, 1, 96, 96, 96))(@network_def)"``.
Each is a thin adapter over the library function that does the work.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Dict, Optional

import torch
from monai.transforms import Transform
from torch import nn

from .errors import ConfigError, InputError
from .pruning import PruningPlan, apply_plan, prune_channels
from .pruning.channel import pruning_config
from .sparsity import apply_masks, check_magnitude_args, check_nm, magnitude_masks, nm_masks


class PruneChannels(Transform):
    """``PruneChannels(ratio=0.5, example_input=x)(net)`` -> a channel-pruned copy of ``net``.

    Accepts every option of :func:`monai_prune.prune_channels` (``target_macs``, ``importance``, ``round_to``,
    ``ignore``, …), checked here so a bad value in a bundle config fails when the config is parsed. The plan of
    the last call is kept in ``self.plan`` (save it next to the weights).
    """

    def __init__(self, ratio: Optional[float] = None, example_input: Optional[torch.Tensor] = None,
                 **options: Any) -> None:
        if not isinstance(example_input, torch.Tensor):
            raise ConfigError("PruneChannels needs example_input=<tensor shaped like one network input>")
        own = set(inspect.signature(prune_channels).parameters) - {"options"}  # config, batches, loss_fn, ...
        pruning_config(ratio, options.get("config"), **{k: v for k, v in options.items() if k not in own})
        self.ratio, self.example_input, self.options = ratio, example_input, options
        self.plan: Optional[PruningPlan] = None

    def __call__(self, network: nn.Module) -> nn.Module:
        pruned, self.plan = prune_channels(network, self.example_input, ratio=self.ratio, **self.options)
        return pruned


class ApplyPlan(Transform):
    """``ApplyPlan("plan.json")(net)`` -> ``net`` rebuilt to the pruned architecture (load weights next)."""

    def __init__(self, plan: PruningPlan | str | Dict[str, Any]) -> None:
        if isinstance(plan, dict):
            plan = PruningPlan.from_dict(plan)
        if not isinstance(plan, (PruningPlan, str)):
            raise InputError(f"ApplyPlan expects a PruningPlan, a plan dict or a path, got {type(plan).__name__}")
        self.plan = plan if isinstance(plan, PruningPlan) else PruningPlan.load(plan)

    def __call__(self, network: nn.Module) -> nn.Module:
        return apply_plan(network, self.plan)


class SparsifyMagnitude(Transform):
    """``SparsifyMagnitude(sparsity=0.8, scope="global")(net)`` -> a copy of ``net`` with its smallest |w| zeroed."""

    def __init__(self, sparsity: float, scope: str = "local", include_bias: bool = False) -> None:
        check_magnitude_args(sparsity, scope)
        self.sparsity, self.scope, self.include_bias = sparsity, scope, include_bias
        self.masks: Dict[str, torch.Tensor] = {}

    def __call__(self, network: nn.Module) -> nn.Module:
        network = copy.deepcopy(network)
        self.masks = magnitude_masks(network, self.sparsity, scope=self.scope, include_bias=self.include_bias)
        apply_masks(network, self.masks)
        return network


class SparsifyNM(Transform):
    """``SparsifyNM(2, 4)(net)`` -> a copy of ``net`` with N of every M input-channel weights kept."""

    def __init__(self, n: int = 2, m: int = 4) -> None:
        check_nm(n, m)
        self.n, self.m = n, m
        self.masks: Dict[str, torch.Tensor] = {}

    def __call__(self, network: nn.Module) -> nn.Module:
        network = copy.deepcopy(network)
        self.masks = nm_masks(network, self.n, self.m)
        apply_masks(network, self.masks)
        return network
