"""int8 on OpenVINO: the fp32 ONNX export converted to OpenVINO IR and quantized by NNCF post-training quantization
-> ``model_int8.xml``/``.bin``, run by OpenVINO. The module interface is described in
:mod:`monai_prune.quantization.backends`."""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ...errors import BackendUnavailableError
from ...export import export_openvino
from ..calibration import CalibrationSet

NAME = "openvino"
METHODS = ("minmax",)
SUFFIX = ".xml"
OV_WEIGHTED = ("Convolution", "ConvolutionBackpropData", "MatMul", "GroupConvolution")


def quantize_file(fp32_onnx: str, out_path: str, calibration: CalibrationSet, method: str, per_channel: bool,
                  exclude: Sequence[str], only: Optional[Sequence[str]] = None, layers: Sequence[str] = (),
                  calibration_cache: Optional[str] = None) -> str:
    """Write the NNCF-quantized IR of ``fp32_onnx`` to ``out_path`` (``.xml``), leaving the ``exclude`` nodes fp32
    (and, with ``only``, every one of ``layers`` but those). ``method``, ``per_channel`` and ``calibration_cache``
    are not used: NNCF's MIXED preset decides the scheme, and it collects its statistics each time."""
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailableError("int8 for OpenVINO needs openvino and nncf: pip install 'monai-prune[openvino]'") from e
    model = ov.convert_model(fp32_onnx)
    name_layers_as_onnx(model, fp32_onnx, layers)
    excluded = set(exclude) | (set(layers) - set(only) if only is not None else set())
    excluded = {n for name in excluded for n in (name, f"{name}/WithoutBiases")}  # OpenVINO's name for a Conv
    scope = nncf.IgnoredScope(names=sorted(excluded), validate=False) if excluded else None
    kwargs = {"ignored_scope": scope} if scope else {}
    quantized = nncf.quantize(model, calibration.nncf_dataset(), subset_size=len(calibration),
                              preset=nncf.QuantizationPreset.MIXED, **kwargs)
    drop_fp32_activation_quantizers(quantized)
    xml = out_path if out_path.endswith(".xml") else out_path + ".xml"
    ov.save_model(quantized, xml, compress_to_fp16=False)
    return xml


def int8_layers(path: str, layers: Sequence[str]) -> List[str]:
    """The ``layers`` the IR at ``path`` runs with int8 weights."""
    import openvino as ov

    return ov_int8_layers(ov.Core().read_model(path), layers)


def ov_int8_layers(ov_model, layers: Sequence[str]) -> List[str]:
    """Layers of the quantized OpenVINO model whose weights are int8 (:func:`weights_int8`; OpenVINO names an
    ONNX ``Conv`` node ``<onnx name>/WithoutBiases``)."""
    quantized = {op.get_friendly_name() for op in ov_model.get_ordered_ops()
                 if op.get_type_name() in OV_WEIGHTED and weights_int8(op)}
    return [n for n in layers if n in quantized or f"{n}/WithoutBiases" in quantized]


def fp32_file(fp32_onnx: str, out_dir: str) -> str:
    """The fp32 reference OpenVINO runs: ``model_fp32.xml`` in ``out_dir``, converted once."""
    xml = os.path.join(out_dir, "model_fp32.xml")
    if not os.path.exists(xml):
        export_openvino(fp32_onnx, xml)
    return xml


def runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """``run(x) -> output`` on numpy arrays: the IR compiled for the CPU once per input shape, with the fp32
    precision hint that :class:`~monai_prune.runtime.Predictor` (what serves the model) uses. Without it OpenVINO
    runs the layers that are not int8 in bf16 on CPUs with AMX/AVX512-BF16, and the fidelity measured here would
    not be that of the deployed model (nor would the fp32 reference be fp32)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    compiled: Dict[tuple, object] = {}

    def run(x: np.ndarray) -> np.ndarray:
        key = tuple(x.shape)
        if key not in compiled:
            compiled[key] = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        model_for_shape = compiled[key]
        return model_for_shape(x)[model_for_shape.output(0)]

    return run


def version() -> str:
    import nncf
    import openvino

    return f"openvino {openvino.__version__}, nncf {nncf.__version__}"


def name_layers_as_onnx(model, onnx_path: str, layers: Sequence[str]) -> None:
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
        if op.get_type_name() not in OV_WEIGHTED or name in weighted or name.endswith("/WithoutBiases"):
            continue
        for target in op.output(0).get_target_inputs():
            consumer = target.get_node().get_friendly_name()
            onnx_name = consumer if consumer in weighted else fed_by.get(consumer)
            if onnx_name is not None:
                op.set_friendly_name(onnx_name)
                break


def weights_int8(op) -> bool:
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


def drop_fp32_activation_quantizers(model) -> None:
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
            if node.get_type_name() in OV_WEIGHTED:
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
        if not any(weights_int8(layer) for layer in layers):
            for target in list(fq.output(0).get_target_inputs()):
                target.replace_source_output(source)
    model.validate_nodes_and_infer_types()
