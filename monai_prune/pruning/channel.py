"""Structured channel pruning of MONAI networks: ``prune_channels``.

torch-pruning's DepGraph finds the coupled layers and removes channels; this module adds what a MONAI user
needs around it: the fixes in :mod:`.monai_fixes`, input validation with clear errors, a target search over the
ratio, a forward-pass check after pruning, and a :class:`~.plan.PruningPlan` recording what was removed.
The caller's model is never modified: a deep copy is pruned.
"""

from __future__ import annotations

import copy
import logging
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, InputError, PruningError
from ..layers import PRUNABLE_TYPES
from ..measure import count_macs, count_params
from ..importance import gradients_from_scores
from ..sparsity import check_fraction
from ..utils import run_forward
from .monai_fixes import (
    ChannelCountingPReLUPruner,
    FrozenBlockPruner,
    decouple_channel_broadcasts,
    disable_inplace,
    exact_concat_sizes,
    find_output_head,
    find_transformer_blocks,
    record_widths,
)
from .zoo_support import (
    bounded_group_search,
    changed_outputs,
    output_tensors,
    output_widths,
    remember_input_widths,
    spatial_index_mappings,
    sync_stored_widths,
    traced_as_base,
)
from .plan import PruningPlan, architecture_signature, state_shapes

logger = logging.getLogger(__name__)

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


def _make_importance(config: ChannelPruningConfig):
    if config.importance == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if config.importance == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if config.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    if config.importance == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.RandomImportance()


def _check_example_input(example_input) -> None:
    """Only the kind of input is checked here: whether its shape fits is told by the first forward pass
    (:func:`count_macs` names the first layer that *ran*; the first one registered is not always the input layer,
    e.g. DiNTS registers its cells before its stem)."""
    if not isinstance(example_input, (torch.Tensor, tuple, list, dict)):
        raise InputError(f"example_input must be a tensor (B, C, *spatial), got {type(example_input).__name__}")


def _check_dense_output(model: nn.Module, example_input, output) -> None:
    """NaN/inf that the dense model already outputs would otherwise be blamed on the first pruned layer."""
    if all(not t.is_floating_point() or bool(torch.isfinite(t).all()) for t in output_tensors(output).values()):
        return
    tensors = [("parameter", *p) for p in model.named_parameters()] + [("buffer", *b) for b in model.named_buffers()]
    kind, name = next(((k, n) for k, n, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())),
                      (None, None))
    if name is not None:
        where = f"{kind} {name!r} holds non-finite values"
    elif isinstance(example_input, torch.Tensor) and not bool(torch.isfinite(example_input).all()):
        where = "example_input itself holds non-finite values"
    else:  # overflow: one more forward pass, only on this path, finds where
        layer = _run_and_locate_failure(copy.deepcopy(model).eval(), example_input)[1]
        where = "every parameter is finite; " + (f"layer {layer!r} is the first to output NaN/inf" if layer else
                                                 "an operation between the layers outputs NaN/inf")
    raise InputError(f"the dense model already outputs NaN/inf before pruning ({where}); reload a good checkpoint "
                     "(or fix the example_input) and prune again")


def _run_and_locate_failure(model: nn.Module, example_input) -> Tuple[Any, Optional[str], str]:
    """Run a forward pass; returns ``(output, layer, why)`` naming the first layer that raised or produced a
    non-finite output (``layer`` None and ``why`` empty when all is well)."""
    names = {m: n for n, m in model.named_modules()}
    current: List[str] = []
    bad: List[str] = []
    hooks = []
    for module in model.modules():
        if next(module.children(), None) is not None:
            continue
        hooks.append(module.register_forward_pre_hook(lambda m, i: current.append(names[m])))

        def check(m, i, o):
            if not bad and isinstance(o, torch.Tensor) and o.is_floating_point() and not torch.isfinite(o).all():
                bad.append(names[m])

        hooks.append(module.register_forward_hook(check))
    try:
        with torch.no_grad():
            output = run_forward(model, example_input)
        return (output, bad[0], "produced non-finite values") if bad else (output, None, "")
    except Exception as e:  # the point is to report where it broke
        return None, (current[-1] if current else None), f"raised {type(e).__name__}: {e}"
    finally:
        for h in hooks:
            h.remove()


def _resolve_names(model: nn.Module, names: Iterable[str], what: str) -> Dict[str, nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        sample = ", ".join(list(n for n in modules if n)[:8])
        raise ConfigError(f"{what} names layers this network does not have: {missing} (layer names look like: {sample}, …)")
    return {n: modules[n] for n in names}


def _taylor_gradients(model, taylor) -> None:
    """Put gradients on ``model`` for torch-pruning's Taylor criterion: from accumulated scores or from batches."""
    batches, loss_fn, scores = taylor
    if scores is not None:
        gradients_from_scores(model, scores)
        return
    if batches is None or loss_fn is None:
        raise ConfigError("importance='taylor' needs batches=[(input, target), ...] and loss_fn=... to compute "
                          "gradients, or taylor_scores= accumulated during training")
    model.zero_grad(set_to_none=True)
    seen = 0
    for batch in tqdm(batches, desc="Taylor importance (batches)", leave=False):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise InputError("each Taylor batch must be an (input, target) pair")
        inputs, target = batch
        loss = loss_fn(run_forward(model, inputs), target)
        loss.backward()
        seen += 1
    if seen == 0:
        raise ConfigError("importance='taylor' got an empty batches iterable")


def _record_group(group, dg, names: Dict[nn.Module, str]) -> Dict[str, Any]:
    root_dep, root_idxs = group[0].dep, tp._helpers.to_plain_idxs(group[0].idxs)
    root = root_dep.target.module
    before = dg.get_pruner_of_module(root).get_out_channels(root)
    removed = {int(i) for i in root_idxs}
    ops = []
    for dep, idxs in group:
        target = dep.target
        plain = [int(i) for i in tp._helpers.to_plain_idxs(idxs)]
        side = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
        if target.type == tp.ops.OPTYPE.PARAMETER:
            ops.append({"kind": "parameter", "module": dg._param_to_name[target.module], "side": side,
                        "dim": int(target.pruning_dim), "idxs": plain})
        elif target.module in names:
            ops.append({"module": names[target.module], "side": side, "pruner": type(dep.handler.__self__).__name__,
                        "dim": int(target.pruning_dim), "idxs": plain})
    return {"root": names.get(root, str(root)), "channels_before": int(before),
            "kept": [i for i in range(before) if i not in removed], "ops": ops}


def _prune_once(model, example_input, ratio: float, config: ChannelPruningConfig, taylor, network_def):
    # seeded for "random" importance and tie-breaks, without touching the caller's RNG (a training run goes on)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _prune_seeded(model, example_input, ratio, config, taylor, network_def)


def _prune_seeded(model, example_input, ratio: float, config: ChannelPruningConfig, taylor, network_def):
    work = copy.deepcopy(model).eval()
    inplace_flags = {m: m.inplace for m in work.modules() if isinstance(getattr(m, "inplace", None), bool)}
    disable_inplace(work)
    ignore_names = list(config.ignore)
    transformer_blocks = find_transformer_blocks(work)
    prelu = ChannelCountingPReLUPruner()
    frozen = FrozenBlockPruner({type(m) for n, m in work.named_modules() if n in transformer_blocks})
    reference = record_widths(work, example_input, prelu, frozen)  # also the reference output
    head = find_output_head(work, set(output_widths(reference).values()))
    remember_input_widths(work, example_input)
    ignored = _resolve_names(work, ignore_names + head + transformer_blocks, "ignore")
    if transformer_blocks:
        logger.info("left intact (attention/MLP pruning of transformer blocks is not supported yet): %s",
                    ", ".join(f"{n} ({type(ignored[n]).__name__})" for n in transformer_blocks))
    logger.debug("output head kept whole: %s", head)

    if config.importance == "taylor":
        _taylor_gradients(work, taylor)
    customized = {nn.PReLU: prelu, **{t: frozen for t in frozen.block_types}}
    ratio_dict = {m: config.layer_ratios[n] for n, m in _resolve_names(work, config.layer_ratios, "layer_ratios").items()}
    not_layers = [n for n, m in zip(config.layer_ratios, ratio_dict) if not isinstance(m, PRUNABLE_TYPES)]
    if not_layers:
        raise ConfigError(f"layer_ratios must name Conv/Linear layers (the root of a channel group), not blocks: {not_layers}")
    try:
        with exact_concat_sizes(), spatial_index_mappings(), frozen.shortcut(work), traced_as_base(work), \
                bounded_group_search():
            pruner = tp.pruner.MetaPruner(
                work, example_input, importance=_make_importance(config), pruning_ratio=ratio,
                pruning_ratio_dict=ratio_dict or None, ignored_layers=list(ignored.values()), round_to=config.round_to,
                global_pruning=config.global_pruning, max_pruning_ratio=config.max_layer_ratio,
                customized_pruners=customized, root_module_types=[tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR],
            )
        decouple_channel_broadcasts(pruner.DG)
    except PruningError:  # a group search that does not end: its message names the layers
        raise
    except Exception as e:
        raise PruningError(f"torch-pruning could not trace this {type(model).__name__}: {type(e).__name__}: {e}") from e

    names = {m: n for n, m in work.named_modules()}
    groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types))
    if not groups:
        raise ConfigError(
            f"this {type(model).__name__} has no prunable channel group (every Conv/Linear is ignored, is the output "
            "head, or sits in a transformer block)"
        )
    steps = []
    try:
        for group in pruner.step(interactive=True):
            steps.append(_record_group(group, pruner.DG, names))
            group.prune()
    except Exception as e:
        raise PruningError(f"torch-pruning failed while removing channels: {type(e).__name__}: {e}") from e
    finally:
        work.zero_grad(set_to_none=True)
    for module, flag in inplace_flags.items():
        module.inplace = flag
    synced = sync_stored_widths(work, example_input)
    if synced:
        logger.info("stored channel counts updated to the pruned widths: %s", ", ".join(synced))

    out, layer, why = _run_and_locate_failure(work, example_input)
    if layer is not None or why:
        raise PruningError(f"the pruned network no longer runs: layer {layer!r} {why}; add it to ignore=[...] and retry")
    changed = changed_outputs(reference, out)
    if changed:
        what = "; ".join(f"{k or 'output'} {v}" for k, v in changed.items())
        raise PruningError(
            f"pruning changed the output ({what}); a layer producing the output was pruned: name it in "
            f"ignore=[...] (head detected: {head})"
        )
    cfg = asdict(config)
    cfg["ratio_applied"] = ratio
    plan = PruningPlan(
        network=f"{type(model).__module__}.{type(model).__qualname__}",
        source_signature=architecture_signature(model),
        pruned_shapes=state_shapes(work),
        steps=steps,
        example_input_shape=list(example_input.shape) if isinstance(example_input, torch.Tensor) else None,
        network_def=network_def,
        config=cfg,
        kept_layers=sorted(set(head + transformer_blocks + ignore_names)),
    )
    return work, plan


def prune_channels(
    model: nn.Module,
    example_input,
    ratio: Optional[float] = None,
    *,
    config: Optional[ChannelPruningConfig] = None,
    batches: Optional[Sequence] = None,
    loss_fn: Optional[Callable] = None,
    network_def: Optional[Dict[str, Any]] = None,
    taylor_scores: Optional[Dict[str, torch.Tensor]] = None,
    **options,
) -> Tuple[nn.Module, PruningPlan]:
    """Physically remove channels from a copy of ``model``; returns ``(pruned_model, plan)``.

    Args:
        model: the trained network (MONAI ``UNet``, ``SegResNet``, ``DenseNet121``, …). It is not modified.
        example_input: a tensor shaped like one network input, e.g. ``torch.randn(1, 1, 96, 96, 96)``.
        ratio: fraction of channels to remove per group, in [0, 1). Or pass ``target_macs=``/``target_params=``.
        config: a :class:`ChannelPruningConfig`; keyword ``options`` (``importance``, ``round_to``,
            ``layer_ratios``, ``ignore``, ``global_pruning``, ``target_macs``, …) override its fields.
        batches, loss_fn: ``(input, target)`` batches and a loss, for ``importance="taylor"``.
        taylor_scores: alternatively, per-parameter sums of |w * dL/dw| accumulated during training
            (:class:`monai_prune.importance.TaylorAccumulator`), for ``importance="taylor"``.
        network_def: the network's constructor in MONAI bundle syntax (``{"_target_": ..., ...}``), stored in
            the plan so :meth:`PruningPlan.build_network` can rebuild it.

    The pruned copy is in eval mode, gives an output of the original shape and dtype on ``example_input`` and
    has fewer channels; the plan replays it on a fresh network with :func:`apply_plan`.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"prune_channels expects a torch.nn.Module, got {type(model).__name__}")
    config = pruning_config(ratio, config, **options)
    taylor = (batches, loss_fn, taylor_scores)
    _check_example_input(example_input)
    was_training = model.training
    dense: List[Any] = []
    hook = model.register_forward_hook(lambda module, inputs, output: dense.append(output))
    try:
        macs0 = count_macs(model, example_input)  # one eval-mode forward pass: checks the input fits, gives the output
    finally:
        hook.remove()
    _check_dense_output(model, example_input, dense[0] if dense else None)
    params0 = count_params(model)
    if config.ratio is not None:
        pruned, plan = _prune_once(model, example_input, config.ratio, config, taylor, network_def)
    else:
        pruned, plan = _search_ratio(model, example_input, config, taylor, network_def, macs0, params0)
    macs1, params1 = count_macs(pruned, example_input), count_params(pruned)
    plan.stats = {"macs_before": macs0, "macs_after": macs1, "params_before": params0, "params_after": params1,
                  "groups_pruned": plan.num_groups}
    logger.info("pruned %s: %d groups, MACs %.3gG -> %.3gG (%.1f%%), params %.3gM -> %.3gM",
                type(model).__name__, plan.num_groups, macs0 / 1e9, macs1 / 1e9, 100 * macs1 / max(macs0, 1),
                params0 / 1e6, params1 / 1e6)
    pruned.train(was_training)
    return pruned, plan


def _search_ratio(model, example_input, config, taylor, network_def, macs0, params0, steps: int = 5):
    """Find the smallest uniform ratio whose MACs/params fraction meets the target.

    A coarse scan first (the fraction is not monotonic near the top: torch-pruning skips groups that would be
    left with one channel), then bisection inside the first bracket that crosses the target.
    """
    key, target = ("macs", config.target_macs) if config.target_macs is not None else ("params", config.target_params)
    measure = (lambda m: count_macs(m, example_input) / macs0) if key == "macs" else (lambda m: count_params(m) / params0)
    hi = min(0.95, config.max_layer_ratio)
    grid = [round(r, 3) for r in np.arange(0.1, hi + 1e-9, 0.1)] or [hi]
    lo, best, lowest = 0.0, None, (1.0, 0.0)
    progress = tqdm(total=len(grid) + steps, desc=f"searching ratio for target_{key}={target}", leave=False)
    for ratio in grid:
        candidate = _prune_once(model, example_input, ratio, config, taylor, network_def)
        fraction = measure(candidate[0])
        progress.update()
        lowest = min(lowest, (fraction, ratio))
        if fraction <= target:
            best, hi = candidate, ratio
            break
        lo = ratio
    if best is None:
        progress.close()
        raise ConfigError(f"target_{key}={target} cannot be reached: the smallest fraction found was {lowest[0]:.3f} "
                          f"(ratio {lowest[1]}; the head and ignored layers stay); ask for at least {lowest[0]:.3f}")
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = _prune_once(model, example_input, mid, config, taylor, network_def)
        fraction = measure(candidate[0])
        logger.debug("ratio %.4f keeps %.4f of %s", mid, fraction, key)
        progress.update()
        if fraction <= target:
            hi, best = mid, candidate
        else:
            lo = mid
    progress.close()
    best[1].config[f"target_{key}_reached"] = measure(best[0])
    best[1].config["ratio_applied"] = hi
    return best
