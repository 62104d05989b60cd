"""int8 quantization: calibration from MONAI data, post-training quantization on real CPU int8 backends, and
quantization-aware training (NNCF -> OpenVINO int8)."""

from .calibration import CalibrationSet, calibration_data
from .ptq import QuantizationConfig, QuantizedModel, quantize
from .qat import export_qat_openvino, freeze_batchnorm, freeze_ranges, prepare_qat, restore_qat

__all__ = ["CalibrationSet", "QuantizationConfig", "QuantizedModel", "calibration_data", "quantize",
           "prepare_qat", "restore_qat", "freeze_batchnorm", "freeze_ranges", "export_qat_openvino"]
