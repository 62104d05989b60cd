"""Pruning a network inside a running training: same module objects, optimizer kept consistent.

A trainer holds references to its network and optimizer, so progressive pruning cannot hand back a copy. Here
the channels are chosen on a copy (``prune_channels``), the resulting plan is replayed on the live network's own
modules, and the optimizer's parameter groups and per-parameter state (Adam moments, momentum buffers) are
rebuilt for the kept channels: the state tensors are pruned by replaying the same plan on a shadow copy whose
parameters hold them, so every layer type is sliced exactly as its weights were. LR schedulers keep working:
they hold the optimizer, not the parameters.
"""

from __future__ import annotations

import copy
from typing import Dict, Optional

import torch
from torch import nn

from ..distributed import broadcast_from_rank0
from ..errors import PlanMismatchError
from .channel import prune_channels
from .plan import PruningPlan, replay_steps


def _prune_state_like_params(before: nn.Module, plan: PruningPlan, values: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Prune tensors shaped like parameters (keyed by parameter name) the way the plan prunes the parameters."""
    shadow = copy.deepcopy(before)
    with torch.no_grad():
        for name, param in shadow.named_parameters():
            param.grad = None
            param.data = values[name].detach().clone() if name in values else torch.zeros_like(param)
    replay_steps(shadow, plan)
    return {name: p.data for name, p in shadow.named_parameters() if name in values}


def rebuild_optimizer(
    optimizer: torch.optim.Optimizer, old_names: Dict[int, str], before: nn.Module, after: nn.Module,
    plan: PruningPlan,
) -> None:
    """Point ``optimizer`` at ``after``'s parameters and slice its state for the kept channels.

    ``old_names`` maps ``id()`` of the parameter objects the optimizer holds now to their names in the network;
    ``before`` is a copy of the network taken before pruning; ``after`` is the pruned live network.
    """
    new_params = dict(after.named_parameters())
    _check_optimizer(optimizer, old_names)
    # state tensors shaped like their parameter are pruned like it; scalars (Adam's step) are kept
    per_key: Dict[str, Dict[str, torch.Tensor]] = {}
    scalars: Dict[str, Dict[str, object]] = {}
    for param, state in optimizer.state.items():
        name = old_names[id(param)]
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape == param.shape:
                per_key.setdefault(key, {})[name] = value
            else:
                scalars.setdefault(name, {})[key] = value
    sliced = {key: _prune_state_like_params(before, plan, values) for key, values in per_key.items()}
    new_state = {}
    for group in optimizer.param_groups:
        names = [old_names[id(p)] for p in group["params"]]
        group["params"] = [new_params[n] for n in names]
        for name in names:
            state = dict(scalars.get(name, {}))
            state.update({key: values[name].to(new_params[name].device)
                          for key, values in sliced.items() if name in values})
            if state:
                new_state[new_params[name]] = state
    optimizer.state.clear()
    optimizer.state.update(new_state)


def _check_optimizer(optimizer: torch.optim.Optimizer, names: Dict[int, str]) -> None:
    if any(id(p) not in names for g in optimizer.param_groups for p in g["params"]):
        raise PlanMismatchError("the optimizer holds parameters that are not the network's; build it from "
                                "network.parameters() (nothing was pruned)")


def apply_plan_inplace(model: nn.Module, plan: PruningPlan, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Replay ``plan`` on ``model`` itself and, with ``optimizer``, rebuild its groups and state to match."""
    old_names = {id(p): n for n, p in model.named_parameters()}
    if optimizer is not None:
        _check_optimizer(optimizer, old_names)
    before = copy.deepcopy(model) if optimizer is not None else None
    replay_steps(model, plan)
    if optimizer is not None:
        rebuild_optimizer(optimizer, old_names, before, model, plan)


def prune_channels_inplace(
    model: nn.Module,
    example_input,
    ratio: float,
    optimizer: Optional[torch.optim.Optimizer] = None,
    plan: Optional[PruningPlan] = None,
    **options,
) -> PruningPlan:
    """Remove ``ratio`` of the channels of every group of ``model`` itself; returns the (accumulated) plan.

    With ``optimizer``, its parameter groups and state are rebuilt for the pruned parameters. Under an initialised
    process group the channels are chosen on rank 0 and broadcast. With ``plan``
    (what earlier steps returned), the new steps are appended so one plan rebuilds the final network from the
    original constructor.
    """
    if optimizer is not None:
        _check_optimizer(optimizer, {id(p): n for n, p in model.named_parameters()})
    # under torchrun every rank must remove the same channels: rank 0 decides, the others receive its plan
    step_plan = broadcast_from_rank0(lambda: prune_channels(model, example_input, ratio=ratio, **options)[1])
    apply_plan_inplace(model, step_plan, optimizer)
    return plan.extend(step_plan) if plan is not None else step_plan
