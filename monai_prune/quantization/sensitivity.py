"""Quantization sensitivity: int8 one layer at a time on a real backend and measure what the metric loses.

The network is exported to ONNX once; then, for every layer (a weighted ONNX node — Conv, ConvTranspose, MatMul,
Gemm — named by its torch module, as ``keep_fp32`` expects), an int8 model with only that layer quantized is built
by the backend's own static quantizer (ONNX Runtime QDQ, or OpenVINO/NNCF) and run through a
:class:`~monai_prune.runtime.Predictor`: real int8 inference, not simulation. ``evaluate`` scores the fp32 model
on the same backend once, every single-layer int8 model, and the all-layers int8 model (the reference row: what
:func:`~monai_prune.quantization.quantize` gives without ``keep_fp32``). With ONNX Runtime the activation ranges are
calibrated once and reused for every layer.

The table puts each layer's metric change beside its share of the network's MACs (cost against risk);
:meth:`QuantSensitivityResult.suggest_keep_fp32` lists the layers whose solo int8 drop exceeds a tolerance, ready
for ``quantize(..., keep_fp32=...)``. Results are cached in a JSON file (the format of
:func:`monai_prune.sensitivity.sensitivity_analysis`'s cache; both can share one file), so a re-run with the same
network, weights, calibration, backend and evaluation evaluates nothing new.
"""

from __future__ import annotations

import copy
import gc
import logging
import numbers
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .._markdown import markdown_table
from .._plotting import new_figure, save_png
from ..errors import BackendUnavailableError, ConfigError, InputError
from ..export import export_onnx
from ..measure import count_macs
from ..pruning.plan import architecture_signature
from ..runtime import Predictor
from ..sensitivity_common import (CACHE_FORMAT, JsonResult, ResultCache, evaluation_id, measure_candidates,
                                  numeric_metrics, weights_digest)
from ..utils import root_logging_for_others
from .backends import backend_version, fp32_model_file, int8_layer_names, quant_backend_available, run_backend
from .calibration import CalibrationSet
from .onnx_layers import onnx_weighted_layers, resolve_layers
from .ptq import QUANT_BACKENDS, QuantizationConfig

logger = logging.getLogger(__name__)

ALL_LAYERS = "(all layers int8)"  # the reference row's name

EvaluatePredictor = Callable[[Any], Dict[str, float]]


@dataclass
class QuantSensitivityResult(JsonResult):
    """The measured table.

    ``table`` has one row per layer, in the network's order: ``layer`` (torch module name, or the name asked for),
    ``nodes`` (its ONNX nodes), ``int8_nodes`` (those the int8 artifact really runs int8, read back from it; empty
    when the backend left the layer fp32 — then nothing was evaluated and the delta is 0), ``macs`` and
    ``macs_fraction`` (of the whole network), ``metrics`` and ``delta`` (int8 − fp32 on the same backend, negative =
    worse). ``all_int8`` is the same record for the model with every layer int8.
    """

    fp32: Dict[str, float]
    layers: List[str]
    table: List[Dict[str, Any]]
    all_int8: Dict[str, Any]
    backend: str
    info: Dict[str, Any] = field(default_factory=dict)
    evaluations: int = 0  # evaluate calls this run made (0 when everything came from the cache)

    _required = ("fp32", "layers", "table", "all_int8", "backend")
    _what = "quantization sensitivity result"

    def _metric(self, metric: Optional[str]) -> str:
        if metric is None:
            return next(iter(self.fp32))
        if metric not in self.fp32:
            raise ConfigError(f"metric {metric!r} is not among the measured metrics {sorted(self.fp32)}")
        return metric

    def deltas(self, metric: Optional[str] = None) -> Dict[str, float]:
        """``{layer: Δmetric}`` with only that layer int8 (negative = worse), in the network's order."""
        metric = self._metric(metric)
        return {row["layer"]: row["delta"][metric] for row in self.table}

    def ranked(self, metric: Optional[str] = None) -> List[str]:
        """The layers, most sensitive (largest drop of ``metric``) first."""
        deltas = self.deltas(metric)
        return sorted(deltas, key=lambda layer: deltas[layer])

    def suggest_keep_fp32(self, max_delta: float, metric: Optional[str] = None) -> List[str]:
        """The layers whose int8 alone drops ``metric`` by more than ``max_delta`` (most sensitive first), to pass as
        ``quantize(..., keep_fp32=...)``.

        Drops measured one layer at a time do not simply add up: check the quantized model (``quantize`` measures its
        fidelity, and ``max_delta=`` there falls back further when needed).
        """
        metric = self._metric(metric)
        if not (isinstance(max_delta, numbers.Real) and not isinstance(max_delta, bool) and max_delta >= 0):
            raise ConfigError(f"max_delta is the largest drop of {metric} allowed, a number ≥ 0; got {max_delta!r}")
        deltas = self.deltas(metric)
        return [layer for layer in self.ranked(metric) if deltas[layer] < -max_delta]

    def to_markdown(self, metric: Optional[str] = None) -> str:
        """One row per layer, most sensitive first (by ``metric``, default the first), after the all-int8 row:
        share of MACs, Δ of every metric, and how many of the layer's nodes ran int8."""
        metric = self._metric(metric)
        names = list(self.fp32)
        header = ["layer", "MACs"] + [f"Δ{m}" for m in names] + ["int8 nodes"]

        def cells(row, label):
            share = "n/a" if row.get("macs_fraction") is None else f"{100 * row['macs_fraction']:.1f}%"
            return ([label, share] + [f"{row['delta'][m]:+.4f}" for m in names]
                    + [f"{len(row['int8_nodes'])}/{len(row['nodes'])}"])

        order = {layer: i for i, layer in enumerate(self.ranked(metric))}
        rows = [cells(self.all_int8, f"**{ALL_LAYERS}**")]
        rows += [cells(row, f"`{row['layer']}`") for row in sorted(self.table, key=lambda r: order[r["layer"]])]
        fp32 = ", ".join(f"{m} = {v:.4f}" for m, v in self.fp32.items())
        caption = (f"{self.backend} int8, one layer at a time. fp32 on {self.backend}: {fp32}. Δ = int8 − fp32 "
                   "(negative = worse); MACs = the layer's share of the network's multiply-accumulates.")
        return caption + "\n\n" + markdown_table(header, rows)

    def plot(self, path: str | os.PathLike, metric: Optional[str] = None, max_delta: Optional[float] = None) -> str:
        """PNG: a horizontal bar of Δmetric per layer, most sensitive at the top, each labelled with its share of the
        MACs; the all-int8 model as a grey reference bar and, with ``max_delta``, the tolerance as a dashed line
        (layers beyond it in red: the ones :meth:`suggest_keep_fp32` returns). Returns the path."""
        metric = self._metric(metric)
        deltas = self.deltas(metric)
        order = self.ranked(metric)
        rows = {row["layer"]: row for row in self.table}
        labels = [f"{ALL_LAYERS}"] + [f"{layer}  ({100 * (rows[layer]['macs_fraction'] or 0):.1f}% MACs)"
                                      for layer in order]
        values = [self.all_int8["delta"][metric]] + [deltas[layer] for layer in order]
        over = set(self.suggest_keep_fp32(max_delta, metric)) if max_delta is not None else set()
        colours = ["0.55"] + ["tab:red" if layer in over else "tab:blue" for layer in order]
        fig, ax = new_figure(8, max(3.0, 0.3 * len(labels) + 1.5))
        positions = list(range(len(labels)))[::-1]  # the reference on top, then the most sensitive layer
        ax.barh(positions, values, color=colours)
        for y, value in zip(positions, values):  # the value beside each bar: small drops are thin bars
            ax.annotate(f"{value:+.4f}", (value, y), xytext=(-3 if value < 0 else 3, 0), textcoords="offset points",
                        ha="right" if value < 0 else "left", va="center", fontsize=6)
        ax.margins(x=0.12)
        ax.set_yticks(positions, labels, fontsize=7)
        ax.axvline(0.0, color="black", lw=0.8)
        if max_delta is not None:
            ax.axvline(-max_delta, color="tab:red", ls="--", lw=1, label=f"tolerance −{max_delta:g}")
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel(f"Δ{metric}, int8 − fp32 (negative = worse)")
        ax.set_title(f"{self.backend} int8 one layer at a time: Δ{metric} (fp32 {self.fp32[metric]:.4f})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        save_png(fig, path)
        return str(path)


class _Workspace:
    """The fp32 ONNX export and its layer map, made on first need (a fully cached run exports nothing)."""

    def __init__(self, model: nn.Module, example, backend: str, config: QuantizationConfig,
                 calibration: CalibrationSet) -> None:
        self.model, self.example, self.backend = model, example, backend
        self.config, self.calibration = config, calibration
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self._net: Optional[nn.Module] = None
        self._onnx: Optional[str] = None
        self._macs: Optional[tuple] = None

    @property
    def net(self) -> nn.Module:
        """A CPU copy in eval mode (the export moves a network to the CPU; the caller's stays where it is)."""
        if self._net is None:
            self._net = copy.deepcopy(self.model).cpu().eval()
        return self._net

    @property
    def folder(self) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="monai_prune_qsens_")
        return self._tmp.name

    @property
    def fp32_onnx(self) -> str:
        if self._onnx is None:
            self._onnx = export_onnx(self.net, self.example, os.path.join(self.folder, "model_fp32.onnx")).path
        return self._onnx

    def onnx_layers(self) -> Dict[str, str]:
        return onnx_weighted_layers(self.fp32_onnx)

    def fp32_file(self) -> str:
        return fp32_model_file(self.backend, self.fp32_onnx, self.folder)

    def int8_file(self, all_nodes: Sequence[str], only: Optional[Sequence[str]]) -> str:
        # the ranges file lives in this run's folder: calibrated by the first quantization, reused by the others
        return run_backend(self.backend, self.fp32_onnx, self.folder, self.calibration, self.config, list(all_nodes),
                            [], only=only, tag="_probe",
                            calibration_cache=os.path.join(self.folder, "activation_ranges.json"))

    def macs(self, modules: Sequence[str]) -> tuple:
        if self._macs is None:
            self._macs = count_macs(self.net, self.example, per_layer=True)
        total, per_layer = self._macs
        mine = sum(per_layer.get(m, 0) for m in set(modules))
        return mine, (mine / total if total else None)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def quantization_sensitivity(
    model: nn.Module,
    calibration: CalibrationSet,
    evaluate: EvaluatePredictor,
    layers: Optional[Sequence[str]] = None,
    backend: str = "onnxruntime",
    cache: Optional[str | os.PathLike] = None,
    progress: bool = True,
    evaluate_id: Optional[str] = None,
    config: Optional[QuantizationConfig] = None,
) -> QuantSensitivityResult:
    """int8-quantize each layer alone on ``backend`` and measure the metric change; see the module docstring.

    Args:
        model: the trained network; it is not modified.
        calibration: from :func:`monai_prune.quantization.calibration_data` (the same set ``quantize`` will use).
        evaluate: ``evaluate(predictor) -> {"dice": ..., ...}``, metrics where higher is better; ``predictor`` is a
            :class:`monai_prune.Predictor` (``predictor(batch) -> tensor``, usable in ``sliding_window_inference``)
            over the fp32 model on ``backend`` once, then over each int8 model.
        layers: what to quantize alone, one row each: torch module names (a layer, or a block such as ``model.1``
            for all its layers at once) or ONNX node names, as ``keep_fp32`` takes them. Default: every weighted
            layer (Conv, ConvTranspose, MatMul, Gemm), in the network's order.
        backend: ``"onnxruntime"`` or ``"openvino"`` (sensitivities belong to one backend's int8).
        cache: a JSON file keeping every measured row, keyed by architecture, weights, input shape, backend and its
            version, calibration content (sha256), quantization method, layer and ``evaluate_id``; a re-run with the
            same inputs evaluates (and quantizes) nothing new.
        progress: show a tqdm progress bar.
        evaluate_id: names what ``evaluate`` measures (data, metric) for the cache; default: its qualified name.
            Change it whenever the evaluation changes under the same name.
        config: a :class:`QuantizationConfig` for ``method`` and ``per_channel`` (its backend, ``keep_fp32`` and
            ``max_delta`` are not used here).
    """
    config = _checked(model, calibration, evaluate, backend, config)
    started = time.perf_counter()
    example = calibration.samples[0]
    store = ResultCache(cache)
    common = {"format": CACHE_FORMAT, "architecture": architecture_signature(model), "weights": weights_digest(model),
              "input": list(calibration.shape), "backend": backend, "backend_version": backend_version(backend),
              "calibration": calibration.sha256,
              "quantization": {"method": config.method, "per_channel": config.per_channel}}
    evaluate_id = evaluate_id or evaluation_id(evaluate)
    work = _Workspace(model, example, backend, config, calibration)
    try:
        key = ResultCache.key(kind="quant_layers", **common)
        onnx_layers = store.get(key)
        if onnx_layers is None:
            onnx_layers = work.onnx_layers()
            store.put(key, onnx_layers)
        selected = _select(layers, onnx_layers)

        calls = [0]

        def measure(path: str, who: str) -> Dict[str, float]:
            calls[0] += 1
            predictor = Predictor(path, backend=backend)
            try:
                with torch.no_grad():
                    return numeric_metrics(evaluate(predictor), who)
            finally:
                del predictor
                gc.collect()

        key = ResultCache.key(kind="quant_fp32", evaluate=evaluate_id, **common)
        fp32 = store.get(key)
        if fp32 is None:
            fp32 = measure(work.fp32_file(), f"fp32 ({backend})")
            store.put(key, fp32)

        every = list(onnx_layers)

        def job(name: str, nodes: Sequence[str]):
            return (name, ResultCache.key(kind="quant_cell", evaluate=evaluate_id, layer=name, nodes=sorted(nodes),
                                          **common),
                    lambda: _measure_row(work, name, nodes, every, onnx_layers, fp32, measure))

        # ONNX Runtime's quantizer logs through the root logger; its per-call advice says nothing about the result
        rows = measure_candidates(
            store, [job(ALL_LAYERS, every)] + [job(name, nodes) for name, nodes in selected.items()],
            f"int8 sensitivity ({backend}, one layer at a time)", progress,
            root_logging_for_others(drop=("Expected bias", "Please consider")),
            lambda name, row: logger.debug("int8 sensitivity %s: %s", name, row["delta"]))
    finally:
        work.close()
    logger.info("int8 sensitivity (%s): %d layers + the all-int8 model, %d evaluate calls (the rest from the cache)",
                backend, len(selected), calls[0])
    info = {"evaluate_id": evaluate_id, "backend_version": common["backend_version"],
            "calibration": calibration.describe(), "quantization": common["quantization"], "input": common["input"],
            "architecture": common["architecture"], "weights": common["weights"],
            "seconds": round(time.perf_counter() - started, 3)}
    return QuantSensitivityResult(fp32=fp32, layers=list(selected), table=rows[1:], all_int8=rows[0], backend=backend,
                                  info=info, evaluations=calls[0])


def _checked(model: nn.Module, calibration: CalibrationSet, evaluate: EvaluatePredictor, backend: str,
             config: Optional[QuantizationConfig]) -> QuantizationConfig:
    """The arguments checked; the config to quantize with (``backend``'s, nothing kept fp32, no tolerances)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"quantization_sensitivity expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(calibration, CalibrationSet):
        raise InputError("calibration must come from monai_prune.quantization.calibration_data(...)")
    if len(calibration) == 0:
        raise ConfigError("the calibration set is empty: the int8 activation ranges are measured on it")
    if not callable(evaluate):
        raise InputError(f"evaluate must be a callable evaluate(predictor) -> dict of metrics, got "
                         f"{type(evaluate).__name__}")
    if backend not in QUANT_BACKENDS:
        raise ConfigError(f"backend must be one of {QUANT_BACKENDS} (one backend: its int8 is what is measured), "
                          f"got {backend!r}")
    if config is not None and (config.keep_fp32 or config.max_delta):
        logger.info("quantization sensitivity ignores keep_fp32 and max_delta: one layer is quantized at a time")
    config = QuantizationConfig(**{**(asdict(config) if config is not None else {}), "backend": backend,
                                   "keep_fp32": [], "max_delta": {}})
    config.validate()
    if not quant_backend_available(backend):
        raise BackendUnavailableError(f"backend {backend!r} is not installed: pip install 'monai-prune[openvino]'")
    return config


def _select(layers: Optional[Sequence[str]], onnx_layers: Dict[str, str]) -> Dict[str, List[str]]:
    """``{row name: its ONNX nodes}``: every weighted layer by default, else the names asked for (modules, blocks or
    ONNX nodes, as ``keep_fp32`` resolves them)."""
    if layers is None:
        grouped: Dict[str, List[str]] = {}
        for node, module in onnx_layers.items():
            grouped.setdefault(module, []).append(node)
        if not grouped:
            raise ConfigError("the network has no weighted layer (Conv, ConvTranspose, MatMul, Gemm) to quantize")
        return grouped
    names = list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
    if not names:
        raise ConfigError("layers is empty: give layer names, or None for every weighted layer")
    unknown = []
    for name in names:
        try:
            resolve_layers([name], onnx_layers)
        except ConfigError:
            unknown.append(name)
    if unknown:
        modules = list(dict.fromkeys(onnx_layers.values()))
        raise ConfigError(f"layers {unknown} are not layers of this network: give torch module names (a layer or a "
                          f"block) or ONNX node names; its weighted layers: {modules[:12]}"
                          f"{' …' if len(modules) > 12 else ''}")
    return {name: nodes for name, nodes in resolve_layers(names, onnx_layers).items()}


def _measure_row(work: _Workspace, name: str, nodes: Sequence[str], every: Sequence[str], onnx_layers: Dict[str, str],
                 fp32: Dict[str, float], measure) -> Dict[str, Any]:
    only = None if name == ALL_LAYERS else list(nodes)
    path = work.int8_file(every, only)
    int8_nodes = int8_layer_names(work.backend, path, list(nodes))
    macs, fraction = work.macs([onnx_layers[n] for n in nodes])
    row: Dict[str, Any] = {"layer": name, "nodes": list(nodes), "int8_nodes": int8_nodes, "macs": macs,
                           "macs_fraction": fraction, "metrics": None, "delta": None}
    if int8_nodes:
        metrics = measure(path, "all-int8" if only is None else f"{name!r} int8")
        missing = sorted(set(fp32) - set(metrics))
        if missing:
            raise InputError(f"evaluate returned {sorted(metrics)} for an int8 model but {sorted(fp32)} for fp32 "
                             f"(missing {missing}); it must return the same metrics every time")
    else:  # the backend kept every node of this layer fp32: the model is the fp32 one
        logger.warning("int8 sensitivity: %s left %s in fp32 (nothing to measure)", work.backend, name)
        metrics = dict(fp32)
    row["metrics"] = {k: metrics[k] for k in fp32}
    row["delta"] = {k: metrics[k] - fp32[k] for k in fp32}
    return row
