"""int8 quantization: calibration from MONAI data, post-training quantization on real CPU int8 backends."""

from .calibration import CalibrationSet, calibration_data
from .ptq import QuantizationConfig, QuantizedModel, quantize

__all__ = ["CalibrationSet", "QuantizationConfig", "QuantizedModel", "calibration_data", "quantize"]
