"""Honest measurement: MACs with our own hook counter, parameters, size on disk, sliding-window latency.

torch-pruning's ``count_ops_and_params`` over-counts ``ConvTranspose`` MACs by the product of the strides (it
uses the output size where the input size belongs), which inflates every 3D UNet. Here each layer is counted
from the shapes it really saw in one forward pass:

* ``Conv``: output elements x (in_channels / groups) x kernel volume
* ``ConvTranspose``: input elements x (out_channels / groups) x kernel volume (each input voxel is scattered
  through the whole kernel)
* ``Linear``: rows x in_features x out_features
* attention products (``matmul``/``@``/``bmm``/``einsum``/``scaled_dot_product_attention`` called outside the
  layers above): the multiply-accumulates of the contraction.

Normalisation, activations and pooling are not counted (as in the literature's MAC figures).

The input a network takes (:func:`first_layer_input`, :func:`input_mismatch`) is read here too: ``count_macs``,
``prune_channels`` and the ``Predictor`` use it to say "expects 1 input channel, got 3" instead of torch internals.
"""

from __future__ import annotations

import io
import math
import os
import re
import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import InputError, MonaiPruneError
from .layers import CONV_TRANSPOSE_TYPES as _CONV_T
from .utils import run_forward

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYER_KINDS = {t.__name__ for t in _CONV + _CONV_T + (nn.Linear,)}
_SPATIAL_NAMES = {1: "L", 2: "HW", 3: "DHW"}

Shape = Tuple[Optional[int], ...]  # an expected input shape: None where any size fits


def shape_text(expected: Shape) -> str:
    """``(B, 1, D, H, W)``: an expected input shape with its free dimensions named."""
    names = "BC" + _SPATIAL_NAMES.get(len(expected) - 2, "S" * max(len(expected) - 2, 0))
    return "(" + ", ".join(names[i] if d is None else str(d) for i, d in enumerate(expected)) + ")"


def input_mismatch(expected: Shape, shape: Sequence[int]) -> str:
    """Why a tensor of ``shape`` does not fit ``expected`` ("expects 1 input channel, got 3"), "" when it fits."""
    if len(shape) != len(expected):
        return f"expected a {len(expected)}-D tensor, got a {len(shape)}-D one"
    for dim, (want, got) in enumerate(zip(expected, shape)):
        if want is not None and want != got:
            if dim == 1:
                return f"expects {want} input channel{'s' if want != 1 else ''}, got {got}"
            return f"expects size {want} in dimension {dim}, got {got}"
    return ""


def layer_input(layer: nn.Module) -> Optional[Shape]:
    """``(None, in_channels, None, ...)`` for a Conv/ConvTranspose layer, also one of a loaded TorchScript module
    (which keeps the class name in ``original_name`` and the weight, not ``in_channels``); None for other layers."""
    kind = getattr(layer, "original_name", type(layer).__name__)
    weight = getattr(layer, "weight", None)
    if not kind.startswith("Conv") or not isinstance(weight, torch.Tensor):
        return None
    channels = getattr(layer, "in_channels", None)
    if channels is None:  # TorchScript: weight is (out, in/groups, ...) or, transposed, (in, out/groups, ...)
        channels = weight.shape[0] if "Transpose" in kind else weight.shape[1]
    return (None, int(channels)) + (None,) * (weight.dim() - 2)


def first_layer_input(model: nn.Module) -> Optional[Tuple[str, str, Shape]]:
    """``(name, kind, expected shape)`` of the first Conv/Linear layer in module order when it is a Conv (what a
    network's input must look like); None when it is a Linear or there is none."""
    for name, layer in model.named_modules():
        kind = getattr(layer, "original_name", type(layer).__name__)
        if kind in _LAYER_KINDS:
            expected = layer_input(layer)
            return (name, kind, expected) if expected is not None else None
    return None


def error_line(error: BaseException, limit: int = 200) -> str:
    """``Type: message`` in one line. TorchScript and OpenVINO put the cause on the last line of a long trace;
    the first sentence of it is kept."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = (lines[-1] if lines else "").split(". ")[0][:limit]
    return text if re.match(r"^\w+(Error|Exception|Failure):", text) else f"{type(error).__name__}: {text}"


def _cannot_run(model: nn.Module, example_input, first: List[Tuple[str, nn.Module, tuple]], error: Exception) -> str:
    shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
    head = f"the network cannot run on an example_input of shape {shape}"
    if first:
        name, layer, seen = first[0]
        expected = layer_input(layer)
        why = input_mismatch(expected, seen) if expected is not None else ""
        if why:
            return (f"{head}: its first layer {name!r} ({type(layer).__name__}) {why}; pass a tensor of shape "
                    f"{shape_text(expected)}")
    return f"{head}: {error_line(error)}"


def _layer_macs(module: nn.Module, inputs, output) -> int:
    x = inputs[0]
    if isinstance(module, _CONV_T):
        kernel = math.prod(module.kernel_size)
        return x.numel() * (module.out_channels // module.groups) * kernel
    if isinstance(module, _CONV):
        kernel = math.prod(module.kernel_size)
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return (x.numel() // module.in_features) * module.in_features * module.out_features
    return 0


def _einsum_macs(equation: str, operands: Sequence[torch.Tensor]) -> int:
    lhs = equation.replace(" ", "").split("->")[0]
    sizes: Dict[str, int] = {}
    for spec, tensor in zip(lhs.split(","), operands):
        if "..." in spec:  # broadcast dims: count them once through the first operand that has them
            explicit = spec.replace("...", "")
            ndots = tensor.dim() - len(explicit)
            spec = "".join(chr(0x100 + i) for i in range(ndots)).join(spec.split("..."))
        for letter, size in zip(spec, tensor.shape):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    return math.prod(sizes.values()) if len(operands) > 1 else 0


class _MatmulCounter(TorchFunctionMode):
    """Counts MACs of tensor products that are not inside a counted layer (attention scores, values)."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.inside_layer = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.inside_layer:
            self.macs += self._count(func, args, kwargs)
        return func(*args, **kwargs)

    @staticmethod
    def _count(func, args, kwargs) -> int:
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm):
            a, b = _operands(args, kwargs, ("input", "mat2" if func in (torch.bmm, torch.Tensor.bmm) else "other"))
            if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dim() < 2 or b.dim() < 2:
                return 0
            batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            return math.prod(batch) * a.shape[-2] * a.shape[-1] * b.shape[-1]
        if func is torch.einsum:
            operands = args[1:] if len(args) > 2 else (args[1] if isinstance(args[1], (list, tuple)) else args[1:])
            return _einsum_macs(args[0], list(operands))
        if func is F.scaled_dot_product_attention:  # MONAI's attention blocks pass query=, key=, value= by name
            q, k, v = _operands(args, kwargs, ("query", "key", "value"))
            batch = math.prod(q.shape[:-2])
            return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return 0


def _operands(args, kwargs, names: Sequence[str]) -> list:
    """The arguments called ``names``, given by position or by keyword (None where absent)."""
    return [args[i] if i < len(args) else kwargs.get(name) for i, name in enumerate(names)]


def count_macs(model: nn.Module, example_input, per_layer: bool = False):
    """Multiply-accumulates of one forward pass on ``example_input`` (see module docstring for the rules).

    Returns an int, or ``(total, {layer_name: macs})`` with ``per_layer=True``. The model's train/eval mode is
    restored afterwards; no gradients are recorded. An input the network cannot run raises :class:`InputError`
    (naming the expected channels/rank when the first layer is what refused it; the torch error is its cause).
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"count_macs expects a torch.nn.Module, got {type(model).__name__}")
    layer_macs: Dict[str, int] = {}
    counter = _MatmulCounter()
    hooks = []
    first: List[Tuple[str, nn.Module, tuple]] = []  # the first layer to run and the shape it was given

    def make_pre_hook(name):
        def pre_hook(module, inputs):
            counter.inside_layer += 1
            if not first and inputs and isinstance(inputs[0], torch.Tensor):
                first.append((name, module, tuple(inputs[0].shape)))

        return pre_hook

    def make_hook(name):
        def hook(module, inputs, output):
            counter.inside_layer -= 1
            layer_macs[name] = layer_macs.get(name, 0) + _layer_macs(module, inputs, output)

        return hook

    for name, module in model.named_modules():
        if isinstance(module, _CONV + _CONV_T + (nn.Linear,)):
            hooks.append(module.register_forward_pre_hook(make_pre_hook(name)))
            hooks.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            run_forward(model, example_input)
    except MonaiPruneError:
        raise
    except Exception as e:  # a forward pass that fails on the input: say what the input should have been
        raise InputError(_cannot_run(model, example_input, first, e)) from e
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    total = sum(layer_macs.values()) + counter.macs
    if per_layer:
        if counter.macs:
            layer_macs["<attention products>"] = counter.macs
        return total, layer_macs
    return total


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def state_dict_bytes(model: nn.Module) -> int:
    """Size of the model's state dict as ``torch.save`` writes it (what ``model.pt`` weighs)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def file_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a file, or of every file under a directory (OpenVINO IR is .xml + .bin)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> Dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; returns median/min/max/all seconds."""
    if repeats < 1:
        raise InputError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def paired_latency(calls: Mapping[str, Callable[[], Any]], rounds: int = 3, warmup: int = 1,
                   pause_s: float = 0.0) -> Dict[str, Dict[str, Any]]:
    """Time several calls against each other on a machine whose load changes: ``warmup`` untimed passes, then
    ``rounds`` passes that each run every call once, in order, so that load hits them alike. Returns, per name,
    :func:`time_call`'s ``median_s``/``min_s``/``max_s``/``times_s``; ``times_s[i]`` of every name come from the same
    round (``dense / candidate`` per round is a paired ratio). ``pause_s``: a sleep between rounds."""
    if rounds < 1:
        raise InputError(f"rounds must be at least 1, got {rounds}")
    if not calls:
        raise InputError("nothing to time: give at least one call")
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in calls}
    for r in range(rounds):
        if r and pause_s:
            time.sleep(pause_s)
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "times_s": t}
            for name, t in times.items()}


def sliding_window_latency(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    roi_size: Sequence[int],
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    repeats: int = 3,
    warmup: int = 1,
    mode: str = "gaussian",
) -> Dict[str, Any]:
    """Latency of MONAI's whole ``sliding_window_inference`` over ``volume`` (not only one network call)."""
    from monai.inferers import sliding_window_inference

    def run():
        with torch.no_grad():
            sliding_window_inference(volume, roi_size, sw_batch_size, predictor, overlap=overlap, mode=mode)

    return time_call(run, repeats=repeats, warmup=warmup)
