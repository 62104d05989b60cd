"""Post-training int8 quantization: ``quantize(model, calibration, QuantizationConfig(...))``.

The network is exported to ONNX (fp32, dynamic batch and spatial axes), then quantized by a real CPU int8 backend:

* ``"onnxruntime"``: ``onnxruntime.quantization.quantize_static`` (QDQ, int8 weights per channel, uint8
  activations; calibration min-max, percentile or entropy) -> ``model_int8.onnx``;
* ``"openvino"``: OpenVINO IR converted from the ONNX, quantized by NNCF PTQ -> ``model_int8.xml``/``.bin``.

Afterwards, measured and reported, never assumed:

* which layers run int8 and which stayed fp32 (by name: the torch module path, e.g. ``model.2.0.conv``);
* fidelity on held-out inputs, int8 vs fp32: voxel (or sample) argmax agreement, max |logit difference|, and
  per-class Dice between the int8 and fp32 segmentations; with ``max_delta`` the most sensitive layers (measured
  one by one) go back to fp32 until the tolerances hold, or a :class:`QuantizationError` says they cannot;
* speed on the target shape, int8 vs fp32 on the same backend: an int8 model slower than fp32 is flagged
  (``result.slower_than_fp32``, a warning in the log and in the report) and ``result.recommended`` says which file
  to serve for speed. With ``backend="auto"`` every installed backend is tried and the fastest int8 that meets the
  tolerances wins.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import BackendUnavailableError, ConfigError, InputError, QuantizationError
from ..export import export_onnx, export_openvino
from ..fidelity import dice_counts, pooled_dice
from ..measure import time_call
from ..runtime.registry import INT8_BACKENDS, REGISTRY, artifact_size
from ..utils import atomic_write_text, root_logging_for_others
from .calibration import CalibrationSet

logger = logging.getLogger(__name__)

QUANT_BACKENDS = INT8_BACKENDS
METHODS = {"onnxruntime": ("minmax", "percentile", "entropy"), "openvino": ("minmax",)}
DELTA_KEYS = ("max_abs_logit", "agreement", "dice", "accuracy", "auc")
WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
ONNX_INPUT = "input"  # the input name export_onnx gives


@dataclass
class QuantizationConfig:
    """How to quantize.

    Args:
        backend: ``"auto"`` (every installed backend, fastest int8 within tolerance), ``"onnxruntime"`` or
            ``"openvino"``.
        method: activation range calibration: ``"minmax"``; ONNX Runtime also ``"percentile"``, ``"entropy"``.
        per_channel: per-output-channel weight scales (recommended for convolutions).
        keep_fp32: layers never quantized, by torch module name (``"model.2.0.conv"``) or ONNX node name.
        max_delta: tolerances, int8 vs fp32 on the validation inputs: ``"max_abs_logit"`` (absolute),
            ``"agreement"`` (allowed drop of argmax agreement below 1), ``"dice"`` (allowed drop of the
            per-class Dice between int8 and fp32 segmentations below 1, or of the per-class Dice against the labels
            when validation has labels), and for classifiers with labels ``"accuracy"`` and ``"auc"`` (allowed
            drop of accuracy and of each class's one-vs-rest AUC, int8 vs fp32). Empty: measure and report only.
        max_fallback_layers: give up (``QuantizationError``) when more layers than this would have to stay fp32.
        out_dir: where ``model_fp32.onnx``, the int8 artifact and ``quantization.json`` go (default: a new
            temporary folder, kept).
        timing_fn: ``timing_fn(predictor)`` runs the workload to time (e.g. a whole ``sliding_window_inference``);
            default: one call on a calibration-shaped input.
        repeats: timed runs per variant (the median is kept).
    """

    backend: str = "auto"
    method: str = "minmax"
    per_channel: bool = True
    keep_fp32: List[str] = field(default_factory=list)
    max_delta: Dict[str, float] = field(default_factory=dict)
    max_fallback_layers: int = 8
    out_dir: Optional[str] = None
    timing_fn: Optional[Callable] = None
    repeats: int = 3

    def validate(self) -> None:
        if self.backend not in QUANT_BACKENDS + ("auto",):
            raise ConfigError(f"backend must be one of {QUANT_BACKENDS + ('auto',)}, got {self.backend!r}")
        methods = sorted({m for ms in METHODS.values() for m in ms})
        if self.method not in methods:
            raise ConfigError(f"method must be one of {methods}, got {self.method!r}")
        if self.backend != "auto" and self.method not in METHODS[self.backend]:
            raise ConfigError(f"the {self.backend} backend calibrates with {METHODS[self.backend]}, not {self.method!r}")
        unknown = [k for k in self.max_delta if k not in DELTA_KEYS]
        if unknown:
            raise ConfigError(f"max_delta keys must be among {DELTA_KEYS}, got {unknown}")
        bad = {k: v for k, v in self.max_delta.items() if not isinstance(v, (int, float)) or v < 0}
        if bad:
            raise ConfigError(f"max_delta values must be non-negative numbers, got {bad}")
        if not isinstance(self.max_fallback_layers, int) or self.max_fallback_layers < 0:
            raise ConfigError(f"max_fallback_layers must be a non-negative integer, got {self.max_fallback_layers!r}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be at least 1, got {self.repeats}")


@dataclass
class QuantizedModel:
    """The int8 artifact and what was measured about it."""

    path: str
    backend: str
    fp32_path: str
    int8_layers: List[str]
    fp32_layers: List[str]
    fallback_layers: List[str]
    fidelity: Dict[str, object]
    latency_s: Dict[str, float]
    size_bytes: Dict[str, int]
    calibration: Dict[str, object]
    config: Dict[str, object]
    warnings: List[str] = field(default_factory=list)
    candidates: Dict[str, Dict[str, object]] = field(default_factory=dict)
    report_path: Optional[str] = None

    @property
    def speedup(self) -> float:
        """fp32 latency / int8 latency on the same backend (> 1: int8 is faster)."""
        return self.latency_s["fp32"] / self.latency_s["int8"]

    @property
    def slower_than_fp32(self) -> bool:
        return self.latency_s["int8"] > self.latency_s["fp32"]

    @property
    def recommended(self) -> str:
        """The file to serve for speed: the int8 one, unless it measured slower than fp32."""
        return self.fp32_path if self.slower_than_fp32 else self.path

    def predictor(self, which: str = "int8", **kwargs):
        """A :class:`monai_prune.Predictor` over the int8 (or ``"fp32"``/``"recommended"``) file."""
        from ..runtime import Predictor

        if which not in ("int8", "fp32", "recommended"):
            raise ConfigError(f"which must be 'int8', 'fp32' or 'recommended', got {which!r}")
        path = {"int8": self.path, "fp32": self.fp32_path, "recommended": self.recommended}[which]
        return Predictor(path, backend=self.backend, **kwargs)

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data.update(speedup=self.speedup, slower_than_fp32=self.slower_than_fp32, recommended=self.recommended)
        return data


# ---------------------------------------------------------------------------------------------------- helpers
def onnx_weighted_layers(onnx_path: str) -> Dict[str, str]:
    """Weighted ONNX nodes (Conv, ConvTranspose, MatMul, Gemm) -> the torch module they come from.

    The exporter keeps parameter names as initializer names (``model.0.conv.unit0.conv.weight``), so the module
    is the weight's name without ``.weight``; where BatchNorm was folded into the weight (``onnx::Conv_12``) the
    module comes from the node's scope name (:func:`_scope_to_module`).
    """
    import onnx

    graph = onnx.load(onnx_path).graph
    initializers = {i.name for i in graph.initializer}
    layers = {}
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        weight = next((i for i in node.input[1:] if i in initializers and i.endswith(".weight")), None)
        layers[node.name] = weight[: -len(".weight")] if weight else _scope_to_module(node.name)
    return layers


def _scope_to_module(node: str) -> str:
    """``/model/model.1/submodule/submodule.0/conv/Conv`` -> ``model.1.submodule.0.conv``.

    The TorchScript-based exporter names nodes by module scope, writing a container's child ``i`` of attribute
    ``a`` as ``a`` followed by ``a.i``.
    """
    parts = node.strip("/").split("/")[:-1]
    path: List[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path) if path else node


def resolve_layers(names: Sequence[str], layers: Dict[str, str]) -> Dict[str, List[str]]:
    """Map torch module names (a layer or a whole block, ``model.2``) or ONNX node names to ONNX nodes."""
    found = {}
    for name in names:
        found[name] = [node for node, module in layers.items()
                       if node == name or module == name or module.startswith(name + ".")]
    missing = [n for n, nodes in found.items() if not nodes]
    if missing:
        sample = ", ".join(list(layers.values())[:5])
        raise ConfigError(f"keep_fp32 names layers this network does not have: {missing} (its layers are named "
                          f"like the torch modules: {sample}, …)")
    return found


def _ort_int8_layers(int8_path: str, layers: Sequence[str]) -> List[str]:
    """Layers whose weight enters through a DequantizeLinear in the QDQ model."""
    import onnx

    graph = onnx.load(int8_path).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in graph.node if n.name in set(layers) and len(n.input) > 1 and n.input[1] in dq_outputs]


def ov_int8_layers(ov_model, layers: Sequence[str]) -> List[str]:
    """Layers of the quantized OpenVINO model whose weights are int8 (:func:`_ov_weights_int8`; OpenVINO names an
    ONNX ``Conv`` node ``<onnx name>/WithoutBiases``)."""
    quantized = {op.get_friendly_name() for op in ov_model.get_ordered_ops()
                 if op.get_type_name() in _OV_WEIGHTED and _ov_weights_int8(op)}
    return [n for n in layers if n in quantized or f"{n}/WithoutBiases" in quantized]


def _session(path: str):
    from ..runtime import ort_session

    return ort_session(path)


class _Runner:
    """Runs an .onnx (ONNX Runtime) or .xml (OpenVINO) file on numpy input; compiled once per input shape."""

    def __init__(self, path: str, backend: str) -> None:
        self.path, self.backend = path, backend
        if backend == "onnxruntime":
            self._session = _session(path)
        else:
            import openvino as ov

            self._core = ov.Core()
            self._model = self._core.read_model(path)
            self._compiled: Dict[tuple, object] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "onnxruntime":
            return self._session.run(None, {self._session.get_inputs()[0].name: x})[0]
        key = tuple(x.shape)
        if key not in self._compiled:
            self._compiled[key] = self._core.compile_model(self._model, "CPU")
        compiled = self._compiled[key]
        return compiled(x)[compiled.output(0)]


def _classification(outputs: Sequence[np.ndarray], labels: Sequence[torch.Tensor]) -> Dict[str, object]:
    """Accuracy and per-class one-vs-rest AUC (MONAI's ``compute_roc_auc``) of logits against class labels."""
    from monai.metrics import compute_roc_auc

    logits = torch.as_tensor(np.concatenate(outputs))
    truth = torch.cat([lab.reshape(-1).long() for lab in labels])
    classes = logits.shape[1]
    result: Dict[str, object] = {"accuracy": float((logits.argmax(1) == truth).float().mean())}
    probs = torch.softmax(logits.float(), 1)
    auc = {}
    for c in range(classes):
        positive = truth == c
        if 0 < int(positive.sum()) < len(truth):  # AUC needs both positives and negatives
            auc[str(c)] = float(compute_roc_auc(probs[:, c], positive.long()))
    if auc:
        result["auc"] = auc
    return result


def _fidelity(fp32_outputs: Sequence[np.ndarray], int8: _Runner, inputs: Sequence[torch.Tensor],
              labels: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, object]:
    """int8 vs fp32 (outputs computed once per backend) on ``inputs``; with ``labels``, also each one's
    per-class Dice (segmentation) or accuracy and per-class AUC (classification) against the labels."""
    agree = total = 0
    max_abs = 0.0
    between: tuple = ({}, {})
    truth = {"fp32": ({}, {}), "int8": ({}, {})}
    int8_outputs = []
    for i, x in enumerate(inputs):
        a, b = fp32_outputs[i], int8(x.numpy())
        int8_outputs.append(b)
        max_abs = max(max_abs, float(np.abs(a - b).max()))
        pa, pb = a.argmax(1), b.argmax(1)
        agree += int((pa == pb).sum())
        total += pa.size
        if a.ndim > 2:  # segmentation: per-class Dice between the two label maps
            dice_counts(pb, pa, a.shape[1], *between)
            if labels is not None:
                ref = np.asarray(labels[i]).reshape(pa.shape)
                dice_counts(pa, ref, a.shape[1], *truth["fp32"])
                dice_counts(pb, ref, a.shape[1], *truth["int8"])
    result: Dict[str, object] = {"agreement": agree / total, "max_abs_logit": max_abs, "samples": len(inputs)}
    if between[1]:
        result["dice_vs_fp32"] = pooled_dice(*between)
    if labels is not None and truth["fp32"][1]:
        d32, d8 = pooled_dice(*truth["fp32"]), pooled_dice(*truth["int8"])
        result.update(dice_fp32=d32, dice_int8=d8, dice_drop=max(d32[c] - d8[c] for c in d32 if c != "0"))
    if labels is not None and fp32_outputs[0].ndim == 2:
        c32, c8 = _classification(fp32_outputs, labels), _classification(int8_outputs, labels)
        result.update(accuracy_fp32=c32["accuracy"], accuracy_int8=c8["accuracy"],
                      accuracy_drop=c32["accuracy"] - c8["accuracy"])
        if "auc" in c32:
            result.update(auc_fp32=c32["auc"], auc_int8=c8["auc"],
                          auc_drop=max(c32["auc"][c] - c8["auc"][c] for c in c32["auc"]))
    return result


def fidelity_violations(fidelity: Dict[str, object], max_delta: Dict[str, float]) -> Dict[str, float]:
    """How far each tolerance is exceeded (empty when all hold)."""
    over = {}
    if "max_abs_logit" in max_delta and fidelity["max_abs_logit"] > max_delta["max_abs_logit"]:
        over["max_abs_logit"] = fidelity["max_abs_logit"] - max_delta["max_abs_logit"]
    if "agreement" in max_delta and 1 - fidelity["agreement"] > max_delta["agreement"]:
        over["agreement"] = 1 - fidelity["agreement"] - max_delta["agreement"]
    if "dice" in max_delta and ("dice_drop" in fidelity or "dice_vs_fp32" in fidelity):
        # against labels when given (the Dice the user would lose), else against the fp32 segmentation
        worst = fidelity["dice_drop"] if "dice_drop" in fidelity else 1 - min(fidelity["dice_vs_fp32"].values())
        if worst > max_delta["dice"]:
            over["dice"] = worst - max_delta["dice"]
    for key in ("accuracy", "auc"):  # classification against labels
        if key in max_delta and f"{key}_drop" in fidelity and fidelity[f"{key}_drop"] > max_delta[key]:
            over[key] = fidelity[f"{key}_drop"] - max_delta[key]
    return over


def _error_score(fidelity: Dict[str, object]) -> float:
    """One number to rank layer sensitivity: disagreement plus (normalised) logit error."""
    dice = fidelity.get("dice_vs_fp32")
    return (1 - fidelity["agreement"]) + (1 - min(dice.values()) if dice else 0.0) + 1e-3 * fidelity["max_abs_logit"]


# ---------------------------------------------------------------------------------------------------- backends
def _quantize_ort(fp32_path: str, out_path: str, calibration: CalibrationSet, config: QuantizationConfig,
                  exclude: Sequence[str], only: Optional[Sequence[str]] = None,
                  calibration_cache: Optional[str] = None) -> str:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.method]
    # calibration_cache: a file for the activation ranges (written by the first call, read by the next ones), so
    # several node selections of one fp32 model are calibrated once; ONNX Runtime without the option recalibrates
    ranges = ({"calibration_cache_path": calibration_cache} if calibration_cache is not None
              and "calibration_cache_path" in inspect.signature(quantize_static).parameters else {})
    quantize_static(
        fp32_path, out_path, calibration.onnxruntime_reader(ONNX_INPUT),
        quant_format=QuantFormat.QDQ, per_channel=config.per_channel, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=list(exclude),
        nodes_to_quantize=list(only) if only is not None else None,
        extra_options={"CalibMovingAverage": False}, **ranges,
    )
    return out_path


def _quantize_ov(fp32_path: str, out_path: str, calibration: CalibrationSet, config: QuantizationConfig,
                 exclude: Sequence[str], only: Optional[Sequence[str]] = None, layers: Sequence[str] = ()):
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailableError("int8 for OpenVINO needs openvino and nncf: pip install 'monai-prune[openvino]'") from e
    model = ov.convert_model(fp32_path)
    _name_ov_layers_as_onnx(model, fp32_path, layers)
    excluded = set(exclude) | (set(layers) - set(only) if only is not None else set())
    excluded = {n for name in excluded for n in (name, f"{name}/WithoutBiases")}  # OpenVINO's name for a Conv
    scope = nncf.IgnoredScope(names=sorted(excluded), validate=False) if excluded else None
    kwargs = {"ignored_scope": scope} if scope else {}
    quantized = nncf.quantize(model, calibration.nncf_dataset(), subset_size=len(calibration),
                              preset=nncf.QuantizationPreset.MIXED, **kwargs)
    _drop_fp32_activation_quantizers(quantized)
    xml = out_path if out_path.endswith(".xml") else out_path + ".xml"
    ov.save_model(quantized, xml, compress_to_fp16=False)
    return xml


def _attached_to_excluded(fp32_onnx: str, layers: Sequence[str], exclude: Sequence[str]) -> List[str]:
    """Unweighted nodes (Add, Concat, PRelu, an unfolded BatchNormalization ...) that serve only fp32 layers.

    Both backends quantize the activations of unweighted nodes too, not only the weighted layers; excluding a Conv
    alone leaves the Add/Concat/activation around it quantized, so with every layer "kept" the model was still far
    from fp32 (issue 20). An unweighted node is excluded with its layers when every weighted layer it connects to
    (the nearest ones upstream and downstream, through other unweighted nodes) is excluded; a node shared with an
    int8 layer stays quantized, since the int8 layer reads or writes that tensor quantized anyway.
    """
    import onnx

    excluded = set(exclude)
    if not excluded:
        return []
    graph = onnx.load(fp32_onnx).graph
    weighted = set(layers)
    initializers = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: Dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def reach(node, step) -> set:
        found, seen, todo = set(), {node.name}, list(step(node))
        while todo:
            nxt = todo.pop()
            if nxt.name in seen:
                continue
            seen.add(nxt.name)
            if nxt.name in weighted:
                found.add(nxt.name)
            else:
                todo.extend(step(nxt))
        return found

    def up(n):
        return [producer[i] for i in n.input if i in producer and i not in initializers]

    def down(n):
        return [c for o in n.output for c in consumers.get(o, [])]

    return [n.name for n in graph.node if n.name not in weighted and n.name not in excluded
            and (reach(n, up) | reach(n, down)) <= excluded]


_OV_WEIGHTED = ("Convolution", "ConvolutionBackpropData", "MatMul", "GroupConvolution")


def _name_ov_layers_as_onnx(model, onnx_path: str, layers: Sequence[str]) -> None:
    """Give each weighted layer of the converted OpenVINO model the name of its ONNX node.

    The conversion renames a ConvTranspose whose bias and BatchNorm it folded in (``Multiply_2964``, followed by an
    Add named after the ONNX BatchNormalization), so NNCF's ignored scope and the int8 layer report could not find
    it by name. OpenVINO names a Conv ``<onnx name>/WithoutBiases``, which both already handle.
    """
    import onnx

    graph = onnx.load(onnx_path).graph
    weighted = set(layers)
    producer = {o: n.name for n in graph.node for o in n.output}
    # an unweighted ONNX node directly fed by a weighted one -> that weighted node (ConvTranspose -> BatchNorm)
    fed_by = {n.name: producer[n.input[0]] for n in graph.node
              if n.name not in weighted and n.input and producer.get(n.input[0]) in weighted}
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() not in _OV_WEIGHTED or name in weighted or name.endswith("/WithoutBiases"):
            continue
        for target in op.output(0).get_target_inputs():
            consumer = target.get_node().get_friendly_name()
            onnx_name = consumer if consumer in weighted else fed_by.get(consumer)
            if onnx_name is not None:
                op.set_friendly_name(onnx_name)
                break


def _ov_weights_int8(op) -> bool:
    """Whether the weights (input 1) of an OpenVINO layer are quantized: a FakeQuantize, or (as NNCF saves them)
    an int8 constant behind Convert and a scale Multiply."""
    node = op.input_value(1).get_node()
    for _ in range(4):
        if node.get_type_name() == "FakeQuantize":
            return True
        if node.get_input_size() == 0:
            return node.get_type_name() == "Constant" and node.get_output_element_type(0).get_type_name() in ("i8", "u8")
        node = node.input_value(0).get_node()
    return False


def _drop_fp32_activation_quantizers(model) -> None:
    """Bypass the activation FakeQuantize nodes of an NNCF-quantized OpenVINO model that serve only fp32 layers.

    NNCF's ignored scope matches names, and OpenVINO renames some layers on conversion (a ConvTranspose with its
    BatchNorm folded becomes ``Multiply_123``, the last Add takes the output's name), so quantizers around kept
    layers survived the names (issue 20). Decided on the graph instead: an activation quantizer goes when none of
    the weighted layers it connects to (nearest upstream and downstream, through unweighted ops) has int8 weights.
    """
    def neighbours(start, step):
        found, seen, todo = [], set(), list(step(start))
        while todo:
            node = todo.pop()
            if node.get_friendly_name() in seen or node.get_type_name() in ("Constant", "Parameter", "Result"):
                continue
            seen.add(node.get_friendly_name())
            if node.get_type_name() in _OV_WEIGHTED:
                found.append(node)
            else:
                todo.extend(step(node))
        return found

    def up(node):
        return [v.get_node() for v in node.input_values()]

    def down(node):
        return [t.get_node() for out in node.outputs() for t in out.get_target_inputs()]

    for fq in [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]:
        source = fq.input_value(0)
        if source.get_node().get_type_name() in ("Constant", "Convert"):
            continue  # a weight quantizer: kept layers have none
        layers = neighbours(fq, up) + neighbours(fq, down)
        if not any(_ov_weights_int8(layer) for layer in layers):
            for target in list(fq.output(0).get_target_inputs()):
                target.replace_source_output(source)
    model.validate_nodes_and_infer_types()


def run_backend(backend: str, fp32_onnx: str, out_dir: str, calibration: CalibrationSet, config: QuantizationConfig,
                 layers: Sequence[str], exclude: Sequence[str], only: Optional[Sequence[str]] = None,
                 tag: str = "", calibration_cache: Optional[str] = None) -> str:
    name = f"model_int8{tag}"
    fp32_layers = set(exclude) | (set(layers) - set(only) if only is not None else set())
    exclude = list(exclude) + _attached_to_excluded(fp32_onnx, layers, sorted(fp32_layers))
    if backend == "onnxruntime":  # calibration_cache: see _quantize_ort (OpenVINO/NNCF collects statistics each time)
        return _quantize_ort(fp32_onnx, os.path.join(out_dir, name + ".onnx"), calibration, config, exclude, only,
                             calibration_cache)
    return _quantize_ov(fp32_onnx, os.path.join(out_dir, name + ".xml"), calibration, config, exclude, only, layers)


def int8_layer_names(backend: str, path: str, layers: Sequence[str]) -> List[str]:
    if backend == "onnxruntime":
        return _ort_int8_layers(path, layers)
    import openvino as ov

    return ov_int8_layers(ov.Core().read_model(path), layers)


def fp32_model_file(backend: str, fp32_onnx: str, out_dir: str) -> str:
    if backend == "onnxruntime":
        return fp32_onnx
    xml = os.path.join(out_dir, "model_fp32.xml")
    if not os.path.exists(xml):
        export_openvino(fp32_onnx, xml)
    return xml


def _latency(path: str, backend: str, example: torch.Tensor, config: QuantizationConfig) -> float:
    from ..runtime import Predictor

    predictor = Predictor(path, example_input=example, backend=backend)
    work = config.timing_fn if config.timing_fn is not None else (lambda p: p(example))
    return time_call(lambda: work(predictor), repeats=config.repeats)["median_s"]  # the warm-up call compiles


def quant_backend_available(backend: str) -> bool:
    """``quantize`` can write an int8 model for ``backend`` here (its runtime, and NNCF for OpenVINO, installed)."""
    return REGISTRY[backend].int8_available()


def _quantize_one(backend, fp32_onnx, out_dir, calibration, validation, config, layers, keep,
                  labels=None) -> QuantizedModel:
    fp32_path = fp32_model_file(backend, fp32_onnx, out_dir)
    fp32_runner = _Runner(fp32_path, backend)
    reference = [fp32_runner(x.numpy()) for x in validation]
    excluded = list(keep)
    path = run_backend(backend, fp32_onnx, out_dir, calibration, config, list(layers), excluded)
    fidelity = _fidelity(reference, _Runner(path, backend), validation, labels)
    fallback: List[str] = []
    over = fidelity_violations(fidelity, config.max_delta)
    if over:
        logger.info("%s int8 misses the tolerances (%s): measuring each layer's sensitivity", backend, over)
        candidates = [n for n in int8_layer_names(backend, path, list(layers)) if n not in excluded]
        sensitivity = {}
        for i, layer in enumerate(candidates):  # quantize this layer alone, measure the damage
            alone = run_backend(backend, fp32_onnx, out_dir, calibration, config, list(layers), excluded, only=[layer],
                                 tag="_probe")
            sensitivity[layer] = _error_score(_fidelity(reference, _Runner(alone, backend), validation, labels))
        ranked = sorted(candidates, key=lambda n: -sensitivity[n])
        for layer in ranked:
            if len(fallback) >= config.max_fallback_layers:
                break
            fallback.append(layer)
            path = run_backend(backend, fp32_onnx, out_dir, calibration, config, list(layers), excluded + fallback)
            fidelity = _fidelity(reference, _Runner(path, backend), validation, labels)
            over = fidelity_violations(fidelity, config.max_delta)
            logger.info("kept %s in fp32 (sensitivity %.4g): %s", layers[layer], sensitivity[layer],
                        "tolerances hold" if not over else f"still over by {over}")
            if not over:
                break
        for probe in os.listdir(out_dir):
            if probe.startswith("model_int8_probe"):
                os.remove(os.path.join(out_dir, probe))
        if over:
            raise QuantizationError(
                f"{backend} int8 cannot meet max_delta={config.max_delta}: with the {len(fallback)} most sensitive "
                f"layers kept in fp32 ({', '.join(layers[n] for n in fallback)}) it is still over by {over}; "
                f"raise max_fallback_layers (now {config.max_fallback_layers}), loosen max_delta, or try another "
                "backend/method")
    int8 = int8_layer_names(backend, path, list(layers))
    example = calibration.samples[0]
    latency = {"fp32": _latency(fp32_path, backend, example, config), "int8": _latency(path, backend, example, config)}
    result = QuantizedModel(
        path=path, backend=backend, fp32_path=fp32_path, int8_layers=[layers[n] for n in int8],
        fp32_layers=[m for n, m in layers.items() if n not in set(int8)],
        fallback_layers=[layers[n] for n in fallback], fidelity=fidelity, latency_s=latency,
        size_bytes={"fp32": artifact_size(fp32_path), "int8": artifact_size(path)},
        calibration=calibration.describe(), config={k: v for k, v in asdict(config).items() if k != "timing_fn"},
    )
    if result.slower_than_fp32:
        message = (f"int8 on {backend} is SLOWER than fp32 ({latency['int8']:.4g} s vs {latency['fp32']:.4g} s, "
                   f"{result.speedup:.2f}x): serve {os.path.basename(result.fp32_path)} for speed; the int8 file is "
                   f"{result.size_bytes['fp32'] / result.size_bytes['int8']:.1f}x smaller")
        result.warnings.append(message)
        logger.warning(message)
    return result


def _check_labels(model: nn.Module, example: torch.Tensor, validation: Sequence[torch.Tensor],
                  labels: Sequence[torch.Tensor], max_delta: Dict[str, float]) -> None:
    """Labels fit the task the network's output shape says: one class per voxel (segmentation, output
    ``B x C x spatial``) or one class index per sample (classification, output ``B x C``)."""
    with torch.no_grad():
        out = model.eval()(example[:1])
    out = out[0] if isinstance(out, (tuple, list)) else out
    classifier = out.dim() == 2
    for lab, v in zip(labels, validation):
        wanted = v.shape[0] if classifier else v[0, 0].numel()
        if lab.numel() != wanted:
            kind = "one class index per sample" if classifier else "one value per voxel of its input"
            raise InputError(f"each validation label must have {kind} (got {lab.numel()} values for an input of "
                             f"shape {tuple(v.shape)})")
    if classifier and any(float(lab.min()) < 0 or float(lab.max()) >= out.shape[1] for lab in labels):
        raise InputError(f"classification labels must be class indices in [0, {out.shape[1]})")
    wrong = [k for k in max_delta if k in (("dice",) if classifier else ("accuracy", "auc"))]
    if wrong:
        task = "a classifier" if classifier else "a segmentation network"
        raise ConfigError(f"max_delta {wrong} does not apply to {task}")


def quantize(model: nn.Module, calibration: CalibrationSet, config: Optional[QuantizationConfig] = None,
             validation: Optional[Sequence[torch.Tensor]] = None, **options) -> QuantizedModel:
    """Quantize ``model`` to int8 with ``calibration`` data; returns the artifact and what was measured.

    Args:
        model: a (pruned or dense) ``torch.nn.Module``; it is not modified.
        calibration: from :func:`monai_prune.quantization.calibration_data`.
        config: a :class:`QuantizationConfig`; keyword ``options`` override its fields.
        validation: held-out inputs shaped like the calibration samples, for the fidelity check (a
            ``CalibrationSet`` from other data works), or ``(input, label)`` pairs / ``{"image", "label"}`` dicts:
            then per-class Dice (segmentation; a label map per input) or accuracy and per-class AUC
            (classification; a class index per sample) against the labels is measured for fp32 and int8, and
            ``max_delta["dice"]`` / ``["accuracy"]`` / ``["auc"]`` bound the drop. Default: the calibration
            samples, and the report says so.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"quantize expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(calibration, CalibrationSet):
        raise InputError("calibration must come from monai_prune.quantization.calibration_data(...)")
    if len(calibration) == 0:
        raise ConfigError("the calibration set is empty")
    config = QuantizationConfig(**{**asdict(config), **options}) if config is not None else QuantizationConfig(**options)
    config.validate()
    example = calibration.samples[0]
    warnings_ = []
    if validation is None:
        validation = calibration.samples
        warnings_.append("fidelity measured on the calibration samples: give validation= held-out data")
    labels = None
    pairs = [v for v in validation if isinstance(v, (tuple, list, dict))]
    if pairs:
        if len(pairs) != len(validation):
            raise InputError("validation mixes plain inputs and (input, label) pairs")
        labels = [torch.as_tensor(v["label"] if isinstance(v, dict) else v[1]) for v in validation]
        validation = [torch.as_tensor(v["image"] if isinstance(v, dict) else v[0]).float() for v in validation]
    validation = [v if v.dim() == example.dim() else v.unsqueeze(0) for v in validation]
    if labels is not None:
        _check_labels(model, example, validation, labels, config.max_delta)
    elif any(k in config.max_delta for k in ("accuracy", "auc")):
        raise ConfigError("max_delta 'accuracy'/'auc' are measured against labels: give validation= as "
                          "(input, class index) pairs")
    if not validation or any(tuple(v.shape[1:]) != tuple(example.shape[1:]) for v in validation):
        raise InputError(f"validation inputs must be shaped like the calibration samples {tuple(example.shape)}")
    out_dir = config.out_dir or tempfile.mkdtemp(prefix="monai_prune_int8_")
    os.makedirs(out_dir, exist_ok=True)
    fp32_onnx = export_onnx(model, example, os.path.join(out_dir, "model_fp32.onnx")).path
    layers = onnx_weighted_layers(fp32_onnx)
    keep = sorted({n for nodes in resolve_layers(config.keep_fp32, layers).values() for n in nodes})

    backends = [config.backend] if config.backend != "auto" else [b for b in QUANT_BACKENDS if quant_backend_available(b)
                                                                   and config.method in METHODS[b]]
    if config.backend != "auto" and not quant_backend_available(config.backend):
        raise BackendUnavailableError(f"backend {config.backend!r} is not installed: pip install 'monai-prune[openvino]'")
    results: Dict[str, QuantizedModel] = {}
    failures: Dict[str, str] = {}
    for backend in backends:
        try:
            # ONNX Runtime's tools log through the root logger, one "Expected bias ..." line per folded-BN Conv
            with root_logging_for_others(drop=("Expected bias",)):
                results[backend] = _quantize_one(backend, fp32_onnx, out_dir, calibration, validation, config, layers,
                                                 keep, labels)
        except QuantizationError as e:
            if config.backend != "auto":
                raise
            failures[backend] = str(e)
            logger.warning("auto: %s", e)
    if not results:
        raise QuantizationError("no backend met the tolerances: " + "; ".join(f"{b}: {m}" for b, m in failures.items()))
    best = min(results.values(), key=lambda r: r.latency_s["int8"])
    best.warnings = warnings_ + best.warnings
    best.candidates = {b: {"latency_s": r.latency_s, "fidelity": r.fidelity, "path": r.path,
                           "size_bytes": r.size_bytes} for b, r in results.items()}
    best.candidates.update({b: {"error": m} for b, m in failures.items()})
    if len(results) > 1:
        logger.info("auto: int8 on %s is the fastest (%s)", best.backend,
                    ", ".join(f"{b} {r.latency_s['int8']:.4g} s" for b, r in results.items()))
    best.report_path = atomic_write_text(os.path.join(out_dir, "quantization.json"),
                                         json.dumps(best.to_dict(), indent=1, default=str))
    logger.info("int8 (%s): %d layers int8, %d fp32; agreement %.4f, max |dlogit| %.3g; %.2fx vs fp32, %.1fx smaller",
                best.backend, len(best.int8_layers), len(best.fp32_layers), best.fidelity["agreement"],
                best.fidelity["max_abs_logit"], best.speedup, best.size_bytes["fp32"] / best.size_bytes["int8"])
    return best
