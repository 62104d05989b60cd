"""Quantization-aware training (QAT) that ends in a real CPU int8 artifact: NNCF fake-quantization -> OpenVINO IR.

NNCF (``nncf.quantize`` on a torch model) inserts fake-quantizers in front of every convolution's weight and
activations, initialised from calibration data (min-max, per-channel weights). The network then trains with them:
weights learn to live on the int8 grid and the quantizer scales are trained too. ``ov.convert_model`` turns the
fake-quantized network into an OpenVINO IR whose ``FakeQuantize`` nodes the OpenVINO CPU plugin executes as int8.

Everything here works **in place** on the network the trainer already holds (same module and parameter objects),
so a MONAI trainer, evaluator, ``CheckpointSaver`` and our pruning/distillation handlers keep their references:

* :func:`prepare_qat` inserts and calibrates the quantizers;
* :func:`freeze_batchnorm` makes BatchNorm layers use (and keep) their running statistics, even though MONAI's
  trainer puts the network in train mode every iteration;
* :func:`freeze_ranges` stops training the quantizer scales;
* :func:`export_qat_openvino` writes the int8 IR (``.xml`` + ``.bin``) and reports which layers run int8.

Why not ONNX Runtime: NNCF's fake-quantizers export as OpenVINO ``FakeQuantize`` nodes that ONNX Runtime does not
run; OpenVINO is their runtime (post-training int8 for ONNX Runtime is :func:`monai_prune.quantize`).
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from typing import Any, Dict, Iterable, List, Sequence

import torch
from torch import nn

from ..errors import BackendUnavailableError, ConfigError, InputError
from ..export import ExportResult, save_openvino_ir
from .calibration import CalibrationSet

logger = logging.getLogger(__name__)

HOOKS = "__nncf_hooks"  # the attribute under which NNCF stores its quantizers in the model
_BN_FREEZE = "_monai_prune_bn_frozen"


def _nncf():
    try:
        import nncf
        import nncf.torch  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError("quantization-aware training needs nncf and openvino: "
                                      "pip install 'monai-prune[openvino]'") from e
    return nncf


def is_qat(model: nn.Module) -> bool:
    """True once :func:`prepare_qat` (or a restored QAT state) put fake-quantizers into ``model``."""
    return any(name == HOOKS for name, _ in model.named_children())


def quantizer_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The trainable parameters of the fake-quantizers (their scales / ranges)."""
    if not is_qat(model):
        return []
    return [p for p in getattr(model, HOOKS).parameters() if p.requires_grad]


def quantizer_count(model: nn.Module) -> int:
    """How many fake-quantizers (weights and activations) the model has."""
    if not is_qat(model):
        return 0
    return sum(1 for m in getattr(model, HOOKS).modules() if hasattr(m, "num_bits"))


def _inputs(calibration: Any) -> List[torch.Tensor]:
    if isinstance(calibration, CalibrationSet):
        return list(calibration.samples)
    if isinstance(calibration, torch.Tensor):
        return [calibration]
    try:
        samples = [torch.as_tensor(x).float() for x in calibration]
    except TypeError as e:
        raise InputError("calibration must be a CalibrationSet (monai_prune.quantization.calibration_data) or a "
                         "list of network-input tensors") from e
    return samples


def _ignored_scope(nncf, keep_fp32: Sequence[str]):
    """Torch module names (``model.2`` or ``model.1.submodule.0.conv``) -> an NNCF ignored scope: NNCF names a torch
    operation by its module path with ``/`` separators (``model/1/submodule/0/conv/conv3d/0``)."""
    if not keep_fp32:
        return None
    patterns = [f"^{name.replace('.', '/')}/.*" for name in keep_fp32]
    return nncf.IgnoredScope(patterns=patterns, validate=False)


def prepare_qat(model: nn.Module, calibration: Any, keep_fp32: Sequence[str] = (),
                preset: str = "mixed") -> Dict[str, Any]:
    """Insert NNCF fake-quantizers into ``model`` in place and initialise their ranges from ``calibration``.

    Args:
        model: the network (pruned or dense), not wrapped in ``DistributedDataParallel``. Its module and parameter
            objects stay the same; the (bias-corrected) weights are updated in place and the quantizers are added
            under ``model.__nncf_hooks``.
        calibration: a :class:`~monai_prune.quantization.CalibrationSet` or a list of input batches.
        keep_fp32: torch module names whose convolutions stay fp32 (a block name covers everything inside it).
        preset: ``"mixed"`` (symmetric weights, asymmetric activations: best for PReLU/ReLU networks) or
            ``"performance"`` (symmetric everywhere).

    Returns the NNCF quantizer config (JSON-serialisable): with it :func:`restore_qat` rebuilds the quantizers on
    a fresh network, e.g. to load a QAT checkpoint.
    """
    nncf = _nncf()
    if not isinstance(model, nn.Module):
        raise InputError(f"prepare_qat expects a torch.nn.Module, got {type(model).__name__}")
    if is_qat(model):
        raise ConfigError("the network already has fake-quantizers (QAT was prepared before)")
    if preset not in ("mixed", "performance"):
        raise ConfigError(f"preset must be 'mixed' or 'performance', got {preset!r}")
    samples = _inputs(calibration)
    if not samples:
        raise ConfigError("the calibration set for QAT is empty")
    bad = [i for i, x in enumerate(samples) if not torch.isfinite(x).all()]
    if bad:
        raise InputError(f"calibration inputs {bad[:5]} contain NaN or Inf values")
    device = next(model.parameters()).device
    samples = [x.to(device) for x in samples]
    was_training = model.training
    model.eval()
    preset_enum = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}[preset]
    scope = _ignored_scope(nncf, keep_fp32)
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), preset=preset_enum,
                              **({"ignored_scope": scope} if scope is not None else {}))
    config = nncf.torch.get_config(quantized)
    restore_qat(model, config)
    model.load_state_dict(quantized.state_dict())  # copies into the existing tensors: the optimizer's stay valid
    model.train(was_training)
    logger.info("QAT: %d fake-quantizers inserted and calibrated on %d batches (%s preset)%s", quantizer_count(model),
                len(samples), preset, f", kept fp32: {', '.join(keep_fp32)}" if keep_fp32 else "")
    return config


def restore_qat(model: nn.Module, config: Dict[str, Any]) -> nn.Module:
    """Rebuild the fake-quantizers described by ``config`` (from :func:`prepare_qat`) on ``model``, in place, so a
    QAT state dict loads into it."""
    _nncf()
    from nncf.torch import load_from_config

    if is_qat(model):
        raise ConfigError("the network already has fake-quantizers")
    return load_from_config(model, config)


def freeze_batchnorm(model: nn.Module) -> int:
    """From now on every BatchNorm layer normalises with its running statistics and stops updating them, also in
    ``train()`` mode (the usual last phase of QAT: the int8 model sees the statistics it was trained with).
    Returns how many layers were frozen."""
    frozen = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not getattr(module, _BN_FREEZE, False):
            module.register_forward_pre_hook(_use_running_stats)
            setattr(module, _BN_FREEZE, True)
            frozen += 1
    return frozen


def _use_running_stats(module: nn.Module, args: Any) -> None:
    module.training = False  # the trainer calls network.train() every iteration; this runs after it


def freeze_ranges(model: nn.Module) -> int:
    """Stop training the quantizer scales/ranges; returns how many parameters were frozen."""
    params = quantizer_parameters(model)
    for p in params:
        p.requires_grad_(False)
        p.grad = None  # a zeroed (not None) gradient would still let Adam's momentum move the scale
    return len(params)


def add_to_optimizer(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> None:
    """Train ``params`` (the quantizer scales) with ``optimizer``: a new parameter group with the first group's
    hyper-parameters and no weight decay. The existing groups and their state are untouched."""
    params = [p for p in params if not any(p is q for g in optimizer.param_groups for q in g["params"])]
    if not params:
        return
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    group.update(params=params, weight_decay=0.0)
    optimizer.add_param_group(group)


def export_qat_openvino(model: nn.Module, example_input: torch.Tensor, path: str) -> ExportResult:
    """Convert the fake-quantized ``model`` to an OpenVINO int8 IR at ``path`` (``.xml``, plus ``.bin``), written
    atomically. The IR keeps dynamic batch and spatial dimensions, so ``sliding_window_inference`` can use it."""
    _nncf()
    import openvino as ov

    if not is_qat(model):
        raise ConfigError("the network has no fake-quantizers: call prepare_qat (or train with the QAT handler) first")
    if not isinstance(example_input, torch.Tensor):
        raise InputError("example_input must be a tensor shaped like one network input")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        clone = copy.deepcopy(model).cpu() if device.type != "cpu" else model
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # fake-quant rounding fails the trace check
            rank = example_input.dim()
            ov_model = ov.convert_model(clone, example_input=example_input.cpu(),
                                        input=[ov.PartialShape([-1] * rank)])
    finally:
        model.train(was_training)
    return save_openvino_ir(ov_model, path)


def openvino_int8_layers(path: str) -> Dict[str, List[str]]:
    """The convolution / matmul layers of an OpenVINO IR: ``"int8"`` (weights enter through ``FakeQuantize``) and
    ``"fp32"`` (the others)."""
    import openvino as ov

    from .backends.openvino import ov_int8_layers

    model = ov.Core().read_model(path)
    layers = [op.get_friendly_name() for op in model.get_ordered_ops()
              if op.get_type_name() in ("Convolution", "ConvolutionBackpropData", "GroupConvolution", "MatMul")]
    int8 = set(ov_int8_layers(model, layers))
    return {"int8": [_module_name(n) for n in layers if n in int8],
            "fp32": [_module_name(n) for n in layers if n not in int8]}


def _module_name(op_name: str) -> str:
    """``__module.model.1.submodule.0.conv/aten::_convolution/Convolution`` -> ``model.1.submodule.0.conv`` (the
    torch module, as OpenVINO's PyTorch frontend names it); other names unchanged."""
    match = re.match(r"__module\.(.+?)/aten::", op_name)
    return match.group(1) if match else op_name


__all__ = ["prepare_qat", "restore_qat", "freeze_batchnorm", "freeze_ranges", "export_qat_openvino",
           "quantizer_parameters", "quantizer_count", "is_qat", "add_to_optimizer", "openvino_int8_layers"]
