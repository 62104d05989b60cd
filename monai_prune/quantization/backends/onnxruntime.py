"""int8 on ONNX Runtime: ``onnxruntime.quantization.quantize_static`` on the fp32 ONNX export (QDQ, int8 weights
per channel, uint8 activations; calibration min-max, percentile or entropy) -> ``model_int8.onnx``, run by ONNX
Runtime. The module interface is described in :mod:`monai_prune.quantization.backends`."""

from __future__ import annotations

import inspect
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..calibration import CalibrationSet
from ..onnx_layers import ONNX_INPUT

NAME = "onnxruntime"
METHODS = ("minmax", "percentile", "entropy")
SUFFIX = ".onnx"


def quantize_file(fp32_onnx: str, out_path: str, calibration: CalibrationSet, method: str, per_channel: bool,
                  exclude: Sequence[str], only: Optional[Sequence[str]] = None, layers: Sequence[str] = (),
                  calibration_cache: Optional[str] = None) -> str:
    """Write the QDQ int8 model of ``fp32_onnx`` to ``out_path``, leaving the ``exclude`` nodes fp32 (and, with
    ``only``, every node but those). ``layers`` is not needed here: ONNX Runtime keeps the ONNX node names."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
    # calibration_cache: a file for the activation ranges (written by the first call, read by the next ones), so
    # several node selections of one fp32 model are calibrated once; ONNX Runtime without the option recalibrates
    ranges = ({"calibration_cache_path": calibration_cache} if calibration_cache is not None
              and "calibration_cache_path" in inspect.signature(quantize_static).parameters else {})
    quantize_static(
        fp32_onnx, out_path, calibration.onnxruntime_reader(ONNX_INPUT),
        quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, calibrate_method=calibrate, nodes_to_exclude=list(exclude),
        nodes_to_quantize=list(only) if only is not None else None,
        extra_options={"CalibMovingAverage": False}, **ranges,
    )
    return out_path


def int8_layers(path: str, layers: Sequence[str]) -> List[str]:
    """Layers whose weight enters through a DequantizeLinear in the QDQ model."""
    import onnx

    graph = onnx.load(path).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in graph.node if n.name in set(layers) and len(n.input) > 1 and n.input[1] in dq_outputs]


def fp32_file(fp32_onnx: str, out_dir: str) -> str:
    """The fp32 reference ONNX Runtime runs: the export itself."""
    return fp32_onnx


def runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """``run(x) -> output`` on numpy arrays: a CPU :class:`~monai_prune.runtime.Predictor` over ``path`` (an ONNX
    Runtime session with every graph optimisation and ``WeightBiasQuantization`` disabled)."""
    from ...runtime import Predictor

    predictor = Predictor(path, backend=NAME)

    def run(x: np.ndarray) -> np.ndarray:
        return predictor(x).numpy()

    return run


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__
