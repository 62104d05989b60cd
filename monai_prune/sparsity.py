"""Unstructured magnitude sparsity and N:M sparsity: masks that zero weights without changing shapes.

Zeros give no speed with dense CPU kernels (a 90%-sparse UNet measured here ran as fast as the dense one); they
give smaller compressed files and, for N:M (2:4), the sparse tensor cores of recent GPUs. Masks are plain bool
tensors keyed by parameter name, applied with :func:`apply_masks` and kept applied during training by
:class:`MaskKeeper` (re-applied after every optimizer step, so pruned weights stay zero).

* local magnitude: in each layer, zero the ``sparsity`` fraction of weights with the smallest |w|
  (the seed formula w' = w * 1{|w| >= tau});
* global magnitude: one threshold tau over all selected layers;
* N:M: in every group of M consecutive input channels (per output channel and kernel position), keep the N
  largest |w|.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

from .errors import ConfigError
from .layers import CONV_TRANSPOSE_TYPES, PRUNABLE_TYPES

logger = logging.getLogger(__name__)


def check_fraction(name: str, value, meaning: str, low_closed: bool = True, high_closed: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a real number (not a bool, not NaN) in the interval from 0 to 1
    (``low_closed``/``high_closed`` say whether 0 and 1 belong to it). Used for every fraction-valued argument."""
    interval = f"{'[' if low_closed else '('}0, 1{']' if high_closed else ')'}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ConfigError(f"{name} must be in {interval} ({meaning}), got {value!r} (a {type(value).__name__}); "
                          f"pass a number such as 0.5")
    above_low = 0 < value or (low_closed and value == 0)
    below_high = value < 1 or (high_closed and value == 1)
    if not (math.isfinite(value) and above_low and below_high):
        raise ConfigError(f"{name} must be in {interval} ({meaning}), got {value!r}")


def check_nm(n, m) -> None:
    """Raise :class:`ConfigError` unless ``n``, ``m`` are integers (not bools) with 0 < n < m."""
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (n, m)) or not 0 < n < m:
        raise ConfigError(f"N:M sparsity needs integers 0 < N < M (e.g. n=2, m=4), got n={n!r}, m={m!r}")


def check_magnitude_args(sparsity, scope: str) -> None:
    """Raise :class:`ConfigError` unless ``sparsity`` is in [0, 1) and ``scope`` is ``"local"`` or ``"global"``."""
    check_fraction("sparsity", sparsity, "the fraction of weights zeroed")
    if scope not in ("local", "global"):
        raise ConfigError(f"scope must be 'local' or 'global', got {scope!r}")


def _layer_names(modules: Dict[str, nn.Module], layers: Optional[Iterable[str]]) -> List[str]:
    if isinstance(layers, str):
        raise ConfigError(f"layers must be a list of layer names, got the string {layers!r}; write layers=[{layers!r}]")
    return list(layers) if layers is not None else [n for n, m in modules.items() if isinstance(m, PRUNABLE_TYPES)]


def _targets(model: nn.Module, layers: Optional[Iterable[str]], include_bias: bool) -> Dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    names = _layer_names(modules, layers)
    missing = [n for n in names if n not in modules or not isinstance(modules[n], PRUNABLE_TYPES)]
    if missing:
        raise ConfigError(f"layers must name Conv/Linear layers of this network; not found or not prunable: {missing}")
    if not names:
        raise ConfigError("this network has no Conv/Linear layer to sparsify")
    params = {}
    for name in names:
        params[f"{name}.weight" if name else "weight"] = modules[name].weight
        if include_bias and modules[name].bias is not None:
            params[f"{name}.bias" if name else "bias"] = modules[name].bias
    return params


def _keep_largest(values: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping exactly round((1 - sparsity) * n) entries with the largest magnitude."""
    flat = values.abs().flatten()
    n_zero = int(round(sparsity * flat.numel()))
    mask = torch.ones_like(flat, dtype=torch.bool)
    if n_zero > 0:
        mask[torch.argsort(flat, stable=True)[:n_zero]] = False
    return mask.view_as(values)


def _scored(params: Dict[str, torch.Tensor], scores: Optional[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """|w| per parameter, or the given importance scores (e.g. accumulated Taylor |w * dL/dw|) where present."""
    if scores is None:
        return {name: p.detach().abs() for name, p in params.items()}
    bad = [n for n, p in params.items() if n in scores and scores[n].shape != p.shape]
    if bad:
        raise ConfigError(f"importance scores do not match the parameter shapes of {bad[:5]}")
    return {name: (scores[name].to(p.device) if name in scores else p.detach().abs()) for name, p in params.items()}


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "local", layers: Optional[Iterable[str]] = None,
                    include_bias: bool = False, scores: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Masks zeroing the ``sparsity`` fraction of least important weights, per layer or globally.

    Importance is |w|, or ``scores`` (per-parameter tensors shaped like the weights, e.g. the accumulated Taylor
    scores of :class:`monai_prune.importance.TaylorAccumulator`).
    """
    check_magnitude_args(sparsity, scope)
    params = _targets(model, layers, include_bias)
    with torch.no_grad():
        values = _scored(params, scores)
        if scope == "local":
            return {name: _keep_largest(v, sparsity) for name, v in values.items()}
        flat = torch.cat([v.flatten() for v in values.values()])
        keep = _keep_largest(flat, sparsity)
        masks, offset = {}, 0
        for name, p in params.items():
            masks[name] = keep[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        return masks


def nm_masks(model: nn.Module, n: int = 2, m: int = 4, layers: Optional[Iterable[str]] = None,
             scores: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """N:M masks along input channels: in each run of ``m`` input channels keep the ``n`` largest |w|
    (or largest ``scores``, per-parameter tensors shaped like the weights).

    Layers with fewer than ``m`` input channels per group (e.g. the first convolution of a 1-channel CT net)
    are skipped; a layer with more that ``m`` does not divide is an error.
    """
    check_nm(n, m)
    n, m = int(n), int(m)  # numpy integers pass the check; torch.topk wants a Python int
    modules = dict(model.named_modules())
    names = _layer_names(modules, layers)
    masks: Dict[str, torch.Tensor] = {}
    skipped: List[str] = []
    values = _scored(_targets(model, names, include_bias=False), scores)  # also validates the names
    for layer in names:
        name = f"{layer}.weight" if layer else "weight"
        w = values[name]
        in_dim = 0 if isinstance(modules[layer], CONV_TRANSPOSE_TYPES) else 1  # ConvTranspose weights are (in, out, ...)
        channels = w.shape[in_dim]
        if channels < m:
            skipped.append(name)
            continue
        if channels % m:
            raise ConfigError(f"N:M sparsity {n}:{m}: {name} has {channels} input channels, which {m} does not "
                              f"divide; leave the layer out (layers=[...]) or choose M among its divisors")
        moved = w.movedim(in_dim, -1)  # (..., in)
        groups = moved.reshape(*moved.shape[:-1], channels // m, m)
        top = groups.topk(n, dim=-1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        masks[name] = keep.reshape(moved.shape).movedim(-1, in_dim)
    if skipped:
        logger.info("N:M %d:%d skipped layers with fewer than %d input channels: %s", n, m, m, ", ".join(skipped))
    if not masks:
        raise ConfigError(f"no layer of this network has at least {m} input channels for N:M sparsity")
    return masks


def apply_masks(model: nn.Module, masks: Dict[str, torch.Tensor]) -> None:
    """Zero the masked weights of ``model`` in place."""
    params = dict(model.named_parameters())
    unknown = [k for k in masks if k not in params]
    if unknown:
        raise ConfigError(f"masks name parameters this network does not have: {unknown[:5]}")
    with torch.no_grad():
        for name, mask in masks.items():
            if mask.shape != params[name].shape:
                raise ConfigError(f"mask for {name} has shape {tuple(mask.shape)}, the weight {tuple(params[name].shape)}")
            params[name].mul_(mask.to(params[name].device))


def measured_sparsity(model: nn.Module, names: Iterable[str]) -> float:
    """Fraction of exactly-zero values among the named parameters."""
    params = dict(model.named_parameters())
    total = zeros = 0
    for name in names:
        total += params[name].numel()
        zeros += int((params[name] == 0).sum())
    return zeros / total if total else 0.0


class MaskKeeper:
    """Re-applies masks after every ``optimizer.step()`` so pruned weights stay zero; ``remove()`` stops it."""

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer], masks: Dict[str, torch.Tensor]):
        self.model, self.masks = model, masks
        apply_masks(model, masks)
        self._hook = None
        if optimizer is not None:
            self._hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: apply_masks(self.model, self.masks))

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
