"""Structured channel pruning of MONAI networks: ``prune_channels``.

torch-pruning's DepGraph finds the coupled layers and removes channels; this module adds what a MONAI user
needs around it: the fixes in :mod:`.monai_fixes`, input validation with clear errors, a target search over the
ratio, a forward-pass check after pruning, and a :class:`~.plan.PruningPlan` recording what was removed.
The caller's model is never modified: a deep copy is pruned.

The configuration and importance criteria are in :mod:`.channel_config`, the checks around a run (input, dense
output, the first failing layer) in :mod:`.forward_checks`; the DepGraph tracing and the channel surgery are here.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, InputError, PruningError
from ..layers import PRUNABLE_TYPES
from ..measure import count_macs, count_params
from ..importance import gradients_from_scores
from ..utils import run_forward
from .channel_config import IMPORTANCE_CRITERIA, ChannelPruningConfig, make_importance, pruning_config  # noqa: F401
from .forward_checks import check_dense_output, check_example_input, resolve_names, run_and_locate_failure
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
    output_widths,
    remember_input_widths,
    spatial_index_mappings,
    sync_stored_widths,
    traced_as_base,
)
from .plan import PruningPlan, architecture_signature, state_shapes

logger = logging.getLogger(__name__)

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
    ignored = resolve_names(work, ignore_names + head + transformer_blocks, "ignore")
    if transformer_blocks:
        logger.info("left intact (attention/MLP pruning of transformer blocks is not supported yet): %s",
                    ", ".join(f"{n} ({type(ignored[n]).__name__})" for n in transformer_blocks))
    logger.debug("output head kept whole: %s", head)

    if config.importance == "taylor":
        _taylor_gradients(work, taylor)
    pruner = _trace(work, type(model).__name__, example_input, ratio, config, list(ignored.values()), prelu, frozen)

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

    out, layer, why = run_and_locate_failure(work, example_input)
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


def _trace(work: nn.Module, network: str, example_input, ratio: float, config: ChannelPruningConfig,
           ignored: List[nn.Module], prelu, frozen):
    """torch-pruning's MetaPruner on ``work`` (DepGraph traced with the MONAI fixes in place)."""
    customized = {nn.PReLU: prelu, **{t: frozen for t in frozen.block_types}}
    ratio_dict = {m: config.layer_ratios[n] for n, m in resolve_names(work, config.layer_ratios, "layer_ratios").items()}
    not_layers = [n for n, m in zip(config.layer_ratios, ratio_dict) if not isinstance(m, PRUNABLE_TYPES)]
    if not_layers:
        raise ConfigError(f"layer_ratios must name Conv/Linear layers (the root of a channel group), not blocks: {not_layers}")
    try:
        with exact_concat_sizes(), spatial_index_mappings(), frozen.shortcut(work), traced_as_base(work), \
                bounded_group_search():
            pruner = tp.pruner.MetaPruner(
                work, example_input, importance=make_importance(config), pruning_ratio=ratio,
                pruning_ratio_dict=ratio_dict or None, ignored_layers=ignored, round_to=config.round_to,
                global_pruning=config.global_pruning, max_pruning_ratio=config.max_layer_ratio,
                customized_pruners=customized, root_module_types=[tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR],
            )
        decouple_channel_broadcasts(pruner.DG)
    except PruningError:  # a group search that does not end: its message names the layers
        raise
    except Exception as e:
        raise PruningError(f"torch-pruning could not trace this {network}: {type(e).__name__}: {e}") from e
    return pruner


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
    check_example_input(example_input)
    was_training = model.training
    dense: List[Any] = []
    hook = model.register_forward_hook(lambda module, inputs, output: dense.append(output))
    try:
        macs0 = count_macs(model, example_input)  # one eval-mode forward pass: checks the input fits, gives the output
    finally:
        hook.remove()
    check_dense_output(model, example_input, dense[0] if dense else None)
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
