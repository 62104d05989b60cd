"""What MONAI networks need before torch-pruning can prune them.

torch-pruning (DepGraph) is the engine; these helpers sit beside it and fix what it gets wrong on MONAI's
networks (measured with torch-pruning 1.6.1, monai 1.6.1):

* single-parameter ``nn.PReLU`` (MONAI ``UNet``'s default activation) reports no channel count, so channel
  inference through ``torch.cat`` skips adds ``None`` and crashes (``int + NoneType``):
  :class:`ChannelCountingPReLUPruner` answers with the width seen in a real forward pass;
* in-place activations (``BasicUNet``/``DynUNet`` LeakyReLU) hide tensors from the autograd trace:
  :func:`disable_inplace` turns ``inplace`` off on the copy being pruned;
* the output head must keep its class channels: :func:`find_output_head`;
* channel counts through ``torch.cat`` are inferred by walking the graph, which goes wrong behind reshapes
  (UNETR's ``proj_feat``) and activations without channel count: :func:`exact_concat_sizes` gives DepGraph
  the sizes each ``torch.cat`` really saw while it traced;
* ``out += residual`` (MONAI's ``UnetResBlock``) is an in-place add that the trace cannot see, so the
  residual coupling is lost and the pruned network breaks: it is made out-of-place while tracing;
* transformer blocks (UNETR, SwinUNETR) crash importance estimation: :func:`find_transformer_blocks` lists
  them so they are left intact while the convolutional parts are pruned.
"""

from __future__ import annotations

import dis
import logging
import re
import sys
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from ..layers import layer_out_dim
from ..utils import run_forward

logger = logging.getLogger(__name__)


# Class names of blocks whose head/MLP pruning is a later capability: they are kept whole. NestLevel,
# TransformerLayer and PatchEmbed3D are the model zoo's UNesT (its NesT encoder levels hold position embeddings).
_TRANSFORMER_NAMES = re.compile(
    r"^(SABlock|CrossAttentionBlock|TransformerBlock|WindowAttention|SwinTransformerBlock|"
    r"MultiheadAttention|TransformerEncoderLayer|TransformerDecoderLayer|TransformerEncoder|TransformerDecoder|"
    r"PatchEmbeddingBlock|PatchEmbed|PatchEmbed3D|BasicLayer|MLPBlock|NestLevel|TransformerLayer)$"
)


def disable_inplace(model: nn.Module) -> int:
    """Set ``inplace=False`` on every module that has the flag; returns how many were changed."""
    changed = 0
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
            changed += 1
    return changed


def find_output_head(model: nn.Module, num_outputs: int | Iterable[int]) -> List[str]:
    """Names of the layers that produce the class channels.

    Every convolution/linear layer whose output width equals the channel count of a network output (of any of
    them, for networks returning several: HoVerNet's dict of maps) is treated as part of the head (this also
    covers DynUNet's deep-supervision heads and UNet's final residual unit). Keeping one more layer than strictly
    needed costs a few MACs; pruning the head would change the output.
    """
    widths = {num_outputs} if isinstance(num_outputs, int) else set(num_outputs)
    return [name for name, m in model.named_modules() if layer_out_dim(m) in widths]


def find_transformer_blocks(model: nn.Module) -> List[str]:
    """Names of the outermost transformer/attention blocks (their whole subtree is left unpruned)."""
    found: List[str] = []
    for name, module in model.named_modules():
        if not name or any(name == f or name.startswith(f + ".") for f in found):
            continue
        if _TRANSFORMER_NAMES.match(type(module).__name__):
            found.append(name)
    return found


class _WidthRecorder:
    """Remembers the channel width (dim 1) each selected module saw in a real forward pass (:func:`record_widths`)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_widths: Dict[int, int] = {}
        self.out_widths: Dict[int, int] = {}

    def wants(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def hook(self, module: nn.Module, inputs, output) -> None:
        x, y = _first_tensor(inputs), _first_tensor(output)
        if x is not None:
            self.in_widths[id(module)] = int(x.shape[1])
        if y is not None:
            self.out_widths[id(module)] = int(y.shape[1])


def _first_tensor(x):
    while isinstance(x, (list, tuple)) and x:
        x = x[0]
    return x if isinstance(x, torch.Tensor) and x.dim() > 1 else None


def record_widths(model: nn.Module, example_input, *recorders: _WidthRecorder):
    """One forward pass that fills every recorder's widths; returns the network's output."""
    hooks = [m.register_forward_hook(r.hook) for r in recorders for m in model.modules() if r.wants(m)]
    try:
        with torch.no_grad():
            return run_forward(model, example_input)
    finally:
        for h in hooks:
            h.remove()


class FrozenBlockPruner(_WidthRecorder, tp.pruner.function.BasePruningFunc):
    """Makes DepGraph treat a transformer block as one opaque layer that is never pruned.

    Registered for the block's class, it hides the block's inner layers and parameters from tracing (so
    torch-pruning neither computes importance over attention weights, which crashes with ``IndexError``, nor
    treats position embeddings as loose parameters, which switches off index mapping for every ``torch.cat``
    of the network). Its widths come from a real forward pass, so channel inference can pass through it.
    Groups that would cut into the block are skipped because the block is also ignored.
    """

    def __init__(self, block_types: Sequence[type]) -> None:
        super().__init__()
        self.block_types = tuple(block_types)

    def wants(self, module: nn.Module) -> bool:
        return isinstance(module, self.block_types)

    @contextmanager
    def shortcut(self, model: nn.Module) -> Iterator[None]:
        """While tracing, run each block without autograd and link its output to its input by one cheap op.

        DepGraph would otherwise walk every reshape inside the attention layers, and its recursive channel
        inference over them is quadratic (minutes for UNETR). The block's output values are unchanged.
        """
        patched = []
        for module in model.modules():
            if self.wants(module):
                patched.append(module)
                module.forward = _detached_forward(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise RuntimeError(f"{type(layer).__name__} is a transformer block and is kept intact")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module):
        return self.out_widths.get(id(layer))

    def get_in_channels(self, layer: nn.Module):
        return self.in_widths.get(id(layer))


def _detached_forward(module: nn.Module):
    forward = module.forward

    def run(*args, **kwargs):
        with torch.no_grad():
            out = forward(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            return out
        # one autograd edge into the output (from the input, or from the block's own weights when the input is
        # the image, which needs no gradient) so DepGraph sees the block as a node; the value is unchanged
        x = next((a for a in args if isinstance(a, torch.Tensor) and a.requires_grad), None)
        if x is None:
            x = next((p for p in module.parameters() if p.requires_grad), None)
        return out if x is None else out + x.mean() * 0

    return run


class ChannelCountingPReLUPruner(_WidthRecorder, tp.pruner.function.PReLUPruner):
    """PReLU pruner that knows the width a shared-slope ``nn.PReLU`` sees.

    A ``PReLU(num_parameters=1)`` has no per-channel weight, so torch-pruning returns ``None`` as its channel
    count and the concat index mapping of MONAI's ``UNet`` skip connections crashes. The widths are recorded in
    one forward pass (:func:`record_widths`) and updated as channels are removed; the shared slope itself is never cut.
    """

    def wants(self, module: nn.Module) -> bool:
        return isinstance(module, nn.PReLU) and module.num_parameters == 1

    def prune_out_channels(self, layer: nn.PReLU, idxs: Sequence[int]) -> nn.Module:
        if layer.num_parameters == 1:
            if id(layer) in self.out_widths:
                self.out_widths[id(layer)] -= len(set(idxs))
            return layer
        return super().prune_out_channels(layer, idxs)

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.PReLU):
        if layer.num_parameters == 1:
            return self.out_widths.get(id(layer))
        return layer.num_parameters

    def get_in_channels(self, layer: nn.PReLU):
        return self.get_out_channels(layer)


# `a += b` on tensors runs `a.add_(b)`; Python then rebinds `a` to what that returns, so during tracing it may
# return a new tensor instead. A bare `a.add_(b)` statement is left alone (its result is not rebound).
# Python >= 3.11 encodes `+=` as BINARY_OP with an argument; older versions have one opcode per operator.
_AUGMENTED = {
    "add_": (13, "INPLACE_ADD", torch.add),
    "sub_": (23, "INPLACE_SUBTRACT", torch.sub),
    "mul_": (18, "INPLACE_MULTIPLY", torch.mul),
    "div_": (24, "INPLACE_TRUE_DIVIDE", torch.div),
}
_BINARY_OP = dis.opmap.get("BINARY_OP")


def _out_of_place(func, caller):
    entry = _AUGMENTED.get(getattr(func, "__name__", ""))
    if entry is None:
        return None
    code, i = caller.f_code.co_code, caller.f_lasti
    if i + 1 >= len(code):
        return None
    if _BINARY_OP is not None:
        hit = code[i] == _BINARY_OP and code[i + 1] == entry[0]
    else:
        hit = code[i] == dis.opmap.get(entry[1], -1)
    return entry[2] if hit else None


class _ConcatRecorder(TorchFunctionMode):
    """While DepGraph traces: records the channel sizes of every ``torch.cat`` along dim 1 (keyed by the
    output's autograd node) and turns augmented assignments on tensors into out-of-place operations."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: Dict[int, List[int] | None] = {}
        self._keep: List[object] = []  # hold the autograd nodes so their ids stay unique

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        replacement = _out_of_place(func, sys._getframe(1))
        if replacement is not None:  # `out += residual` (UnetResBlock) hides the add from the trace
            return replacement(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in (torch.cat, torch.concat, torch.concatenate) and isinstance(out, torch.Tensor):
            tensors = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if out.dim() > 1 and out.grad_fn is not None:
                # None marks a concat along another dim (e.g. Swin's channel-last patch merging): no mapping
                on_channels = dim % out.dim() == 1
                self.sizes[id(out.grad_fn)] = [int(t.shape[1]) for t in tensors if t.requires_grad] if on_channels else None
                self._keep.append(out.grad_fn)
        return out


@contextmanager
def exact_concat_sizes() -> Iterator[None]:
    """While active, DepGraph building uses the real ``torch.cat`` channel sizes seen during its trace."""
    index_mapping = tp.dependency.index_mapping
    original = index_mapping.update_concat_index_mapping
    recorder = _ConcatRecorder()

    def update_with_recorded_sizes(graph, node):
        if node.type == tp.ops.OPTYPE.CONCAT and node.module.concat_sizes is None:
            key = id(node.grad_fn)
            if key in recorder.sizes and recorder.sizes[key] is None:
                return None
            sizes = recorder.sizes.get(key)
            if sizes is not None and len(sizes) == len(node.inputs):
                node.module.concat_sizes = sizes
        return original(graph, node)

    index_mapping.update_concat_index_mapping = update_with_recorded_sizes
    try:
        with recorder:
            yield
    finally:
        index_mapping.update_concat_index_mapping = original


def decouple_channel_broadcasts(dg) -> int:
    """Cut DepGraph's coupling between a one-channel tensor and the many-channel tensor it is broadcast onto.

    ``AttentionUnet``'s gates compute ``x * psi`` with ``psi`` of shape (B, 1, ...). DepGraph treats every
    element-wise op as channel-coupled, so all of ``x``'s channels end up in a group with the one-channel ``psi``
    convolution, which cannot lose channels, and the whole group (the encoder's main convolutions) is skipped:
    the network is silently under-pruned. A broadcast along channels couples nothing, so those edges go.
    Returns how many edges were removed.
    """
    infer = tp.dependency.shape_infer.infer_out_channels_recursively
    removed = 0
    for node in list(dg.module2node.values()):
        if node.type != tp.ops.OPTYPE.ELEMENTWISE or len(node.inputs) < 2:
            continue
        widths = {inp: infer(dg, inp, [0]) for inp in node.inputs}
        if not any(w is not None and w > 1 for w in widths.values()):
            continue
        for inp, width in widths.items():
            if width != 1:
                continue
            before = len(node.dependencies) + len(inp.dependencies)
            node.dependencies = [d for d in node.dependencies if d.target is not inp]
            inp.dependencies = [d for d in inp.dependencies if d.target is not node]
            removed += before - len(node.dependencies) - len(inp.dependencies)
    return removed
