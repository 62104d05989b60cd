"""int8 quantization: calibration from MONAI data, post-training quantization on real CPU int8 backends,
quantization-aware training (NNCF -> OpenVINO int8), and per-layer int8 sensitivity (which layers to keep fp32)."""

from .calibration import CalibrationSet, calibration_data
from .ptq import QuantizationConfig, QuantizedModel, quantize
from .qat import export_qat_openvino, freeze_batchnorm, freeze_ranges, prepare_qat, restore_qat
from .sensitivity import QuantSensitivityResult, quantization_sensitivity

__all__ = ["CalibrationSet", "QuantizationConfig", "QuantizedModel", "calibration_data", "quantize",
           "prepare_qat", "restore_qat", "freeze_batchnorm", "freeze_ranges", "export_qat_openvino",
           "QuantSensitivityResult", "quantization_sensitivity"]
