"""Sensitivity analysis: prune one channel group at a time and measure what the metric loses.

For every prunable group (named by the layer that roots it, as ``layer_ratios`` expects) and every ratio, a copy of
the network is pruned with only that group pruned (ratio 0 everywhere else) and evaluated on a small validation
set. The table of metric changes, MACs and parameter fractions shows which layers are sensitive, and
:meth:`SensitivityResult.suggest_layer_ratios` turns it into per-layer ratios (less pruning where sensitive).
Results are cached in a JSON file, so a re-run with the same network, weights, input, config and evaluation
evaluates nothing new.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ._markdown import markdown_table
from ._plotting import new_figure, save_png
from .errors import ConfigError, InputError, PruningError
from .layers import layer_out_dim
from .pruning.channel import ChannelPruningConfig, prune_channels
from .pruning.plan import architecture_signature, state_shapes
from .sensitivity_common import (CACHE_FORMAT, JsonResult, ResultCache, evaluation_id, measure_candidates,
                                 numeric_metrics, weights_digest)

logger = logging.getLogger(__name__)

# the ratio of the dry prune that lists the groups: every group of two or more channels loses at least one
_DRY_RUN_RATIO = 0.5

Evaluate = Callable[[nn.Module], Dict[str, float]]


def _single_group_config(config: Optional[ChannelPruningConfig]) -> ChannelPruningConfig:
    """The caller's config with ratio 0 everywhere (each cell then sets one group's ratio through layer_ratios)."""
    base = copy.deepcopy(config) if config is not None else ChannelPruningConfig()
    if base.importance == "taylor":
        raise ConfigError("sensitivity analysis needs an importance computed from the weights alone "
                          "('l1', 'l2', 'bn_scale' or 'random'); 'taylor' needs batches for every cell")
    if base.layer_ratios or base.global_pruning or base.target_macs is not None or base.target_params is not None:
        logger.info("sensitivity analysis ignores layer_ratios, global_pruning and targets: one group is pruned at a time")
    base.ratio, base.target_macs, base.target_params = 0.0, None, None
    base.layer_ratios, base.global_pruning = {}, False
    base.validate()
    return base


def prunable_layers(model: nn.Module, example_input, config: Optional[ChannelPruningConfig] = None) -> List[str]:
    """Names of the layers that root the prunable channel groups, in the network's module order.

    These are the names ``layer_ratios`` expects: a dry prune (on a copy, at ratio 0.5 without ``round_to``)
    records the root of every group torch-pruning can shrink; the output head, ignored layers, transformer blocks
    and one-channel groups are not among them.
    """
    listing = replace(config, importance="l1") if config is not None else None  # groups do not depend on importance
    dry = _single_group_config(listing)
    dry.ratio, dry.round_to = _DRY_RUN_RATIO, None
    _, plan = prune_channels(model, example_input, config=dry)
    roots = {step["root"] for step in plan.steps}
    return [name for name, _ in model.named_modules() if name in roots]


def _input_signature(example_input) -> Any:
    if isinstance(example_input, torch.Tensor):
        return [list(example_input.shape), str(example_input.dtype)]
    if isinstance(example_input, (list, tuple)):
        return [_input_signature(x) for x in example_input]
    if isinstance(example_input, dict):
        return {k: _input_signature(v) for k, v in sorted(example_input.items())}
    return type(example_input).__name__


def _check_isolated(model: nn.Module, pruned: nn.Module, plan, layer: str) -> None:
    """Only the group rooted at ``layer`` may have changed: compare every parameter/buffer shape."""
    roots = [step["root"] for step in plan.steps]
    touched = {op["module"] for step in plan.steps for op in step["ops"]}
    before, after = state_shapes(model), state_shapes(pruned)
    changed = [k for k in before if before[k] != after.get(k) and k not in touched and k.rpartition(".")[0] not in touched]
    if roots not in ([], [layer]) or changed:
        raise PruningError(f"pruning group {layer!r} alone also pruned groups {roots} / tensors {changed[:5]}; "
                           "the sensitivity of this network's groups cannot be measured one at a time")


@dataclass
class SensitivityResult(JsonResult):
    """The measured table. ``table`` rows: ``layer``, ``ratio``, ``channels_before``, ``channels_kept``,
    ``macs_fraction``, ``params_fraction`` (of the dense network), ``metrics`` and ``delta`` (pruned − dense,
    negative = worse), and ``error`` (why pruning that cell failed; then metrics/delta are None)."""

    dense: Dict[str, float]
    ratios: List[float]
    layers: List[str]
    table: List[Dict[str, Any]] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)
    evaluations: int = 0  # evaluate calls this run made (0 when everything came from the cache)

    _required = ("dense", "ratios", "layers", "table")
    _what = "sensitivity result"

    def _metric(self, metric: Optional[str]) -> str:
        if metric is None:
            return next(iter(self.dense))
        if metric not in self.dense:
            raise ConfigError(f"metric {metric!r} is not among the measured metrics {sorted(self.dense)}")
        return metric

    def _cell(self, layer: str, ratio: float) -> Dict[str, Any]:
        return next(row for row in self.table if row["layer"] == layer and row["ratio"] == ratio)

    def deltas(self, metric: Optional[str] = None) -> List[List[float]]:
        """Δmetric as a layers × ratios matrix (NaN where pruning failed)."""
        metric = self._metric(metric)
        return [[math.nan if self._cell(layer, r)["delta"] is None else self._cell(layer, r)["delta"][metric]
                 for r in self.ratios] for layer in self.layers]

    def to_markdown(self, metric: Optional[str] = None) -> str:
        """Layers × ratios of Δmetric, then the MACs kept (fraction of dense) at each ratio."""
        metric = self._metric(metric)
        header = (["layer", "channels"] + [f"Δ{metric} @{r:g}" for r in self.ratios]
                  + [f"MACs @{r:g}" for r in self.ratios])
        rows = []
        for layer, deltas in zip(self.layers, self.deltas(metric)):
            cells = [self._cell(layer, r) for r in self.ratios]
            rows.append([f"`{layer}`", cells[0]["channels_before"]]
                        + ["failed" if math.isnan(d) else f"{d:+.4f}" for d in deltas]
                        + ["n/a" if c["macs_fraction"] is None else f"{c['macs_fraction']:.3f}" for c in cells])
        caption = (f"Dense {metric} = {self.dense[metric]:.4f}. Δ = pruned − dense with only that layer's group pruned "
                   "(negative = worse); MACs = fraction of the dense network's MACs kept.")
        return caption + "\n\n" + markdown_table(header, rows)

    def plot(self, path: str | os.PathLike, metric: Optional[str] = None, curves: bool = True) -> str:
        """PNG: a heat map of Δmetric (layers × ratios, annotated, with a colour bar) and, with ``curves``, Δmetric
        against the ratio for every layer. Returns the path."""
        import numpy as np

        metric = self._metric(metric)
        data = np.array(self.deltas(metric), dtype=float)
        limit = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 0.0
        limit = limit or 1e-6
        height = max(3.0, 0.35 * len(self.layers) + 1.5)
        fig, axes = new_figure(13 if curves else 7.5, height, 1, 2 if curves else 1, squeeze=False)
        ax = axes[0][0]
        image = ax.imshow(np.ma.masked_invalid(data), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                text = "failed" if math.isnan(data[i, j]) else f"{data[i, j]:+.3f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if abs(data[i, j]) > 0.6 * limit else "black")
        ax.set_xticks(range(len(self.ratios)), [f"{r:g}" for r in self.ratios])
        ax.set_yticks(range(len(self.layers)), self.layers, fontsize=7)
        ax.set_xlabel("ratio of the group's channels removed")
        ax.set_title(f"Δ{metric} (dense {self.dense[metric]:.3f}), one group pruned at a time", fontsize=9)
        fig.colorbar(image, ax=ax, label=f"Δ{metric} (negative = worse)")
        if curves:
            ax = axes[0][1]
            for layer, row in zip(self.layers, data):
                ax.plot(self.ratios, row, marker="o", label=layer)
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_xlabel("ratio of the group's channels removed")
            ax.set_ylabel(f"Δ{metric}")
            ax.set_title(f"Δ{metric} against the ratio, per layer", fontsize=9)
            ax.grid(alpha=0.3)
            if len(self.layers) <= 16:  # beyond that the heat map's labels are the legend
                ax.legend(fontsize=6, loc="lower left")
        save_png(fig, path)
        return str(path)

    def suggest_layer_ratios(self, target_ratio: float, max_delta: float, metric: Optional[str] = None) -> Dict[str, float]:
        """Per-layer ratios for ``layer_ratios``: for each layer, the largest ratio ≤ ``target_ratio`` at which the
        measured Δmetric stays ≥ ``-max_delta``.

        Between two measured ratios Δmetric is interpolated linearly (so a layer that keeps the tolerance at 0.25 and
        breaks it at 0.5 gets the ratio where the line crosses ``-max_delta``); above the largest measured ratio
        nothing is extrapolated. A layer whose smallest measured ratio already breaks the tolerance (or failed to
        prune) gets 0: keep it whole. Below the smallest measured ratio the layer is assumed no more sensitive.
        """
        metric = self._metric(metric)
        if not (0.0 < target_ratio < 1.0):
            raise ConfigError(f"target_ratio must be in (0, 1) (fraction of channels removed), got {target_ratio}")
        if not (isinstance(max_delta, numbers.Real) and max_delta >= 0):
            raise ConfigError(f"max_delta is the largest drop of {metric} allowed, a number ≥ 0; got {max_delta!r}")
        order = sorted(range(len(self.ratios)), key=lambda j: self.ratios[j])
        suggested = {}
        for layer, deltas in zip(self.layers, self.deltas(metric)):
            points = [(self.ratios[j], deltas[j]) for j in order]
            suggested[layer] = math.floor(_allowed_ratio(points, target_ratio, -max_delta) * 1e4 + 1e-6) / 1e4
        return suggested


def _allowed_ratio(points: Sequence[tuple], target: float, floor: float) -> float:
    def ok(d):
        return not math.isnan(d) and d >= floor

    if not points or not ok(points[0][1]):
        return 0.0
    allowed = points[0][0]
    for (r0, d0), (r1, d1) in zip(points, points[1:]):
        if r0 >= target:
            break
        if ok(d1):
            allowed = r1
            continue
        allowed = r0 if math.isnan(d1) else r0 + (r1 - r0) * (d0 - floor) / (d0 - d1)
        break
    return min(allowed, target)


def sensitivity_analysis(
    model: nn.Module,
    example_input,
    evaluate: Evaluate,
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    layers: Optional[Sequence[str]] = None,
    config: Optional[ChannelPruningConfig] = None,
    cache: Optional[str | os.PathLike] = None,
    progress: bool = True,
    evaluate_id: Optional[str] = None,
) -> SensitivityResult:
    """Prune each group alone at each ratio and measure the metric change; see the module docstring.

    Args:
        model: the trained network; it is not modified (each cell prunes a copy).
        example_input: a tensor shaped like one network input (for tracing and for MACs).
        evaluate: ``evaluate(model) -> {"dice": ..., ...}``, metrics where higher is better; it gets a copy in eval
            mode under ``torch.no_grad()``, once dense and once per (layer, ratio) that removes channels.
        ratios: fractions of one group's channels to remove, each in (0, 1) and ≤ ``config.max_layer_ratio``.
        layers: root layer names to analyse (default: all of :func:`prunable_layers`).
        config: a :class:`ChannelPruningConfig` for the importance, ``round_to``, ``ignore``, seed and cap; its
            ratio, targets, ``layer_ratios`` and ``global_pruning`` are not used.
        cache: a JSON file keeping every measured cell, keyed by architecture, weights, input shape, layer, ratio,
            pruning config and ``evaluate_id``; a re-run with the same inputs evaluates nothing new.
        progress: show a tqdm progress bar.
        evaluate_id: names what ``evaluate`` measures (data, metric) for the cache; default: its qualified name.
            Change it whenever the evaluation changes under the same name.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"sensitivity_analysis expects a torch.nn.Module, got {type(model).__name__}")
    if not callable(evaluate):
        raise InputError(f"evaluate must be a callable evaluate(model) -> dict of metrics, got {type(evaluate).__name__}")
    base = _single_group_config(config)
    ratios = [float(r) for r in ratios]
    bad = [r for r in ratios if not (0.0 < r < 1.0)]
    if not ratios or bad:
        raise ConfigError(f"ratios must be fractions of a group's channels in (0, 1), got {ratios or 'none'}")
    if max(ratios) > base.max_layer_ratio:
        raise ConfigError(f"ratio {max(ratios)} exceeds max_layer_ratio={base.max_layer_ratio} (torch-pruning would cap "
                          "it silently); raise config.max_layer_ratio or drop that ratio")
    ratios = sorted(set(ratios))
    store = ResultCache(cache)
    common = {"format": CACHE_FORMAT, "architecture": architecture_signature(model), "weights": weights_digest(model),
              "input": _input_signature(example_input),
              "config": {k: getattr(base, k) for k in ("importance", "round_to", "ignore", "seed", "max_layer_ratio")}}
    evaluate_id = evaluate_id or evaluation_id(evaluate)

    key = ResultCache.key(kind="layers", **common)
    available = store.get(key)
    if available is None:
        available = prunable_layers(model, example_input, base)
        store.put(key, available)
    layers = list(available) if layers is None else list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
    unknown = [n for n in layers if n not in available]
    if unknown or not layers:
        raise ConfigError(f"layers {unknown or '(none)'} do not root a prunable channel group; "
                          f"prunable layers: {available}")

    calls = [0]

    def measure(net: nn.Module, who: str) -> Dict[str, float]:
        calls[0] += 1
        with torch.no_grad():
            return numeric_metrics(evaluate(net.eval()), who)

    key = ResultCache.key(kind="dense", evaluate=evaluate_id, **common)
    dense = store.get(key)
    if dense is None:
        dense = measure(copy.deepcopy(model), "dense")  # a copy: whatever evaluate does stays off the caller's model
        store.put(key, dense)

    modules = dict(model.named_modules())

    def cell(layer: str, ratio: float):
        return (f"{layer} @{ratio:g}",
                ResultCache.key(kind="cell", evaluate=evaluate_id, layer=layer, ratio=ratio, **common),
                lambda: _measure_cell(model, example_input, layer, ratio, base, dense, measure, modules))

    table = measure_candidates(
        store, [cell(layer, ratio) for layer in layers for ratio in ratios], "sensitivity (layer × ratio)", progress,
        _quiet(prune_channels.__module__),
        lambda label, row: logger.debug("sensitivity %s: %s", label, row["delta"] or row["error"]))
    logger.info("sensitivity: %d layers × %d ratios, %d evaluate calls (the rest from the cache)",
                len(layers), len(ratios), calls[0])
    info = {"evaluate_id": evaluate_id, "config": common["config"], "input": common["input"],
            "architecture": common["architecture"], "weights": common["weights"]}
    return SensitivityResult(dense=dense, ratios=ratios, layers=layers, table=table, info=info, evaluations=calls[0])


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Hold a logger at WARNING: ``prune_channels`` logs one INFO line per cell, the progress bar says enough."""
    quieted = logging.getLogger(name)
    level = quieted.level
    quieted.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        quieted.setLevel(level)


def _measure_cell(model, example_input, layer, ratio, base, dense, measure, modules) -> Dict[str, Any]:
    row: Dict[str, Any] = {"layer": layer, "ratio": ratio, "channels_before": layer_out_dim(modules[layer]),
                           "channels_kept": None, "macs_fraction": None, "params_fraction": None,
                           "metrics": None, "delta": None, "error": None}
    try:
        pruned, plan = prune_channels(model, example_input, config=base, layer_ratios={layer: ratio})
    except PruningError as e:
        logger.warning("sensitivity: pruning %s at %g failed: %s", layer, ratio, e)
        row["error"] = str(e)
        return row
    _check_isolated(model, pruned, plan, layer)
    stats = plan.stats
    row["macs_fraction"] = stats["macs_after"] / max(stats["macs_before"], 1)
    row["params_fraction"] = stats["params_after"] / max(stats["params_before"], 1)
    if plan.steps:
        row["channels_kept"] = len(plan.steps[0]["kept"])
        metrics = measure(pruned, f"{layer!r} at ratio {ratio:g}")
        missing = sorted(set(dense) - set(metrics))
        if missing:
            raise InputError(f"evaluate returned {sorted(metrics)} for the pruned model but {sorted(dense)} for the "
                             f"dense one (missing {missing}); it must return the same metrics every time")
    else:  # too few channels to remove any at this ratio (or round_to): the network is the dense one
        row["channels_kept"], metrics = row["channels_before"], dict(dense)
    row["metrics"] = {k: metrics[k] for k in dense}
    row["delta"] = {k: metrics[k] - dense[k] for k in dense}
    return row
