"""What the MONAI model zoo's other networks need: multi-output networks and 3D index mappings.

Measured on the zoo's bundles (torch-pruning 1.6, monai 1.6.1):

* ``HoVerNet`` returns a dict of three maps (nucleus, horizontal-vertical, type): :func:`output_tensors`
  names every output so each keeps its shape and each head keeps its channels;
* torch-pruning reads any slice of a tensor of rank 5 or more as a channel slice (its check only knows ranks 3
  and 4), so DiNTS's ``x[:, :, 1:, 1:, 1:]`` (``FactorizedReduceBlock``) shifts every channel index by one and
  the pruned cells no longer fit: :func:`spatial_index_mappings` leaves spatial slices alone;
* it also reads every expand of a 5-D tensor as Hugging Face grouped-query attention (``(B, heads, repeat, L,
  head_dim)``), which divides by zero on UNesT's 3D blocks (``ZeroDivisionError``) and would remap channels of
  any broadcast 3D volume: the same context manager keeps channel indices unchanged through those expands;
* DiffusionModelUNet's downsampler stores its input width as an int and checks it in ``forward``:
  :func:`remember_input_widths` / :func:`sync_stored_widths` update such ints on the pruned copy, and
  :func:`stored_width_links` / :func:`sync_linked_widths` do the same when a plan is replayed (no forward pass);
* MAISI's ``MaisiGroupNorm3D`` (``AutoencoderKlMaisi``, bundle maisi_ct_generative) is an ``nn.GroupNorm`` that
  normalises group by group (view, one slice per group, cat, view): DepGraph's group search never ends on that
  chain (each pass round the coupling gives new indices). :func:`traced_as_base` traces it as the plain
  ``nn.GroupNorm`` it subclasses (the same maths), so it prunes as every GroupNorm does;
* any other network whose group search does not end is stopped by :func:`bounded_group_search` with a
  :class:`~monai_prune.errors.PruningError` naming the layers the search keeps coming back to.
"""

from __future__ import annotations

import collections
import types
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch_pruning as tp
from torch import nn

from ..errors import PruningError
from ..layers import PRUNABLE_TYPES
from ..utils import run_forward


def output_tensors(output, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Every tensor a network returned, by where it sits: ``""`` for a plain tensor, ``"nucleus_prediction"`` for
    a dict entry, ``"[1]"`` for a tuple/list item (nested outputs give ``"a[0]"`` and so on)."""
    if isinstance(output, torch.Tensor):
        return {prefix: output}
    found: Dict[str, torch.Tensor] = {}
    if isinstance(output, dict):
        for key, value in output.items():
            found.update(output_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(output, (list, tuple)):
        for i, value in enumerate(output):
            found.update(output_tensors(value, f"{prefix}[{i}]"))
    return found


def output_widths(output) -> Dict[str, int]:
    """Channel count (dim 1) of every output tensor of rank >= 2, by :func:`output_tensors` name."""
    widths = {k: int(t.shape[1]) for k, t in output_tensors(output).items() if t.dim() >= 2}
    if not widths:
        raise TypeError(f"expected the network to return tensors of shape (B, C, ...), got {type(output).__name__}")
    return widths


def changed_outputs(reference, output) -> Dict[str, str]:
    """``{output name: "(1, 5, 64, 64) float32 -> (1, 3, 64, 64) float32"}`` for every output whose shape or dtype
    differs from ``reference`` (a missing or extra output counts as changed); empty when all match."""
    before, after = output_tensors(reference), output_tensors(output)

    def text(t):
        return "missing" if t is None else f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"

    return {k: f"{text(before.get(k))} -> {text(after.get(k))}" for k in sorted(set(before) | set(after))
            if k not in before or k not in after or before[k].shape != after[k].shape
            or before[k].dtype != after[k].dtype}


def _is_spatial_slice(node) -> bool:
    grad_fn = node.grad_fn
    sizes, dim = getattr(grad_fn, "_saved_self_sym_sizes", None), getattr(grad_fn, "_saved_dim", None)
    if sizes is None or dim is None or len(sizes) < 5:
        return False  # ranks 3/4 are torch-pruning's own business (tokens (B, N, C), images (B, C, H, W))
    dim = int(dim)
    return dim < tp.dependency.constants.MAX_VALID_DIM and dim % len(sizes) != 1


@contextmanager
def spatial_index_mappings() -> Iterator[None]:
    """While DepGraph is built, slices along a spatial dimension of 3D volumes and expands of 5-D tensors become
    plain element-wise nodes: channel indices pass through them unchanged (see the module docstring for what goes
    wrong otherwise). The node keeps that type, so the index mappings DepGraph rebuilds for every group later on
    (outside this context) stay right."""
    index_mapping = tp.dependency.index_mapping
    original_slice = index_mapping.update_slice_index_mapping
    original_expand = index_mapping.update_expand_index_mapping

    def update_slice(graph, node):
        if node.type == tp.ops.OPTYPE.SLICE and _is_spatial_slice(node):
            node.type = tp.ops.OPTYPE.ELEMENTWISE
            return None
        return original_slice(graph, node)

    def update_expand(graph, node):
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
        if sizes is not None and len(sizes) == 5:  # a broadcast 3D volume, not grouped-query attention
            node.type = tp.ops.OPTYPE.ELEMENTWISE
            return None
        return original_expand(graph, node)

    index_mapping.update_slice_index_mapping = update_slice
    index_mapping.update_expand_index_mapping = update_expand
    try:
        yield
    finally:
        index_mapping.update_slice_index_mapping = original_slice
        index_mapping.update_expand_index_mapping = original_expand


# Widths some blocks keep as plain ints and check in forward (DiffusionModelUNet's ``DiffusionUnetDownsample``
# raises "Input number of channels (8) is not equal to expected number of channels (16)" once its input is pruned),
# by class: only these, since other blocks use such attributes for decisions that must not change after pruning
# (EfficientNet's MBConvBlock adds its skip only while in_channels == out_channels).
STORED_INPUT_WIDTHS = {"DiffusionUnetDownsample": ("num_channels",)}


def _stored_in_widths(module: nn.Module) -> Dict[str, int]:
    if isinstance(module, PRUNABLE_TYPES):
        return {}
    attributes = STORED_INPUT_WIDTHS.get(type(module).__name__, ())
    return {a: v for a in attributes if isinstance(v := getattr(module, a, None), int) and not isinstance(v, bool)}


def sync_stored_widths(model: nn.Module, example_input) -> List[str]:
    """After pruning: set the channel counts that blocks store as ints (and check in ``forward``) to the widths
    they now receive, in one forward pass. Only attributes that equalled the block's input width are changed.
    Returns ``["name.attribute", ...]`` of what changed."""
    changed: List[str] = []
    names = {m: n for n, m in model.named_modules()}

    def pre_hook(module, inputs):
        x = next((t for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 1), None)
        if x is None:
            return
        for attr, value in _stored_in_widths(module).items():
            if value != x.shape[1] and value == module._monai_prune_width:
                setattr(module, attr, int(x.shape[1]))
                changed.append(f"{names[module]}.{attr}")

    hooks = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if hasattr(m, "_monai_prune_width")]
    try:
        with torch.no_grad():
            run_forward(model, example_input)
    except Exception:  # the caller's own check runs the network again and names the layer that fails
        pass
    finally:
        for h in hooks:
            h.remove()
        for m in model.modules():
            if hasattr(m, "_monai_prune_width"):
                del m._monai_prune_width
    return changed


def _downsample_width_source(block: nn.Module, parent: Optional[nn.Module]) -> Optional[Tuple[nn.Module, str]]:
    """The layer (and its attribute) that reads the same input as a ``DiffusionUnetDownsample``: its own strided
    convolution (``use_conv=True``, every down block of DiffusionModelUNet / MAISI / ControlNet), or, for the
    pooling one inside a ``DiffusionUNetResnetBlock(down=True)``, the block's ``norm1``, which normalises that input
    just before it is pooled."""
    if getattr(block, "use_conv", False):
        conv = next((m for m in block.modules() if isinstance(m, PRUNABLE_TYPES)), None)
        return None if conv is None else (conv, "in_channels")
    norm = getattr(parent, "norm1", None)
    return (norm, "num_channels") if isinstance(norm, nn.GroupNorm) else None


# Where plan replay, which runs no forward pass, reads the input width of each class of STORED_INPUT_WIDTHS.
STORED_WIDTH_SOURCES: Dict[str, Callable[[nn.Module, Optional[nn.Module]], Optional[Tuple[nn.Module, str]]]] = {
    "DiffusionUnetDownsample": _downsample_width_source,
}

WidthLink = Tuple[nn.Module, str, nn.Module, str]  # (block, its stored attribute, layer, the layer's width attribute)


def stored_width_links(model: nn.Module) -> List[WidthLink]:
    """Before a plan is replayed: every stored width (:data:`STORED_INPUT_WIDTHS`, by class) tied to the layer
    that reads the same input (:data:`STORED_WIDTH_SOURCES`), where the two agree, as prune's rule is: only an
    attribute that equals the block's input width is changed. Pass the result to :func:`sync_linked_widths` after
    the replay."""
    links: List[WidthLink] = []
    parents = {child: parent for parent in model.modules() for child in parent.children()}
    for module in model.modules():
        source = STORED_WIDTH_SOURCES.get(type(module).__name__)
        found = source(module, parents.get(module)) if source else None
        if found is None:
            continue
        layer, layer_attribute = found
        for attribute, value in _stored_in_widths(module).items():
            if getattr(layer, layer_attribute, None) == value:
                links.append((module, attribute, layer, layer_attribute))
    return links


def sync_linked_widths(model: nn.Module, links: List[WidthLink]) -> List[str]:
    """After a plan was replayed: set each linked stored width to its layer's (pruned) width, as
    :func:`sync_stored_widths` did when the plan was made. Returns ``["name.attribute", ...]`` of what changed."""
    names = {m: n for n, m in model.named_modules()}
    changed: List[str] = []
    for module, attribute, layer, layer_attribute in links:
        width = int(getattr(layer, layer_attribute))
        if getattr(module, attribute) != width:
            setattr(module, attribute, width)
            changed.append(f"{names.get(module, type(module).__name__)}.{attribute}")
    return changed


def remember_input_widths(model: nn.Module, example_input) -> None:
    """Before pruning: note the input width of every block that stores one (see :func:`sync_stored_widths`)."""

    def pre_hook(module, inputs):
        x = next((t for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 1), None)
        if x is not None and int(x.shape[1]) in _stored_in_widths(module).values():
            module._monai_prune_width = int(x.shape[1])

    hooks = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if _stored_in_widths(m)]
    if not hooks:
        return
    try:
        with torch.no_grad():
            run_forward(model, example_input)
    finally:
        for h in hooks:
            h.remove()


# Subclasses of a torch layer that compute what the base class computes, but in a way DepGraph cannot follow, by
# class name: while the graph is built they run the base class's forward. MaisiGroupNorm3D normalises each group
# separately (to save GPU memory): y = (x - mean) / sqrt(var + eps) * weight + bias over (C / G, D, H, W), as
# F.group_norm; torch-pruning prunes it with its GroupNorm pruner (weight and bias sliced, num_channels updated,
# num_groups kept: it removes the same number of channels from every group, so the groups still divide the
# channels) and MaisiGroupNorm3D's own forward reads the channel count from its input.
TRACED_AS_BASE: Dict[str, type] = {"MaisiGroupNorm3D": nn.GroupNorm}


@contextmanager
def traced_as_base(model: nn.Module) -> Iterator[None]:
    """While active, every module of :data:`TRACED_AS_BASE` runs its base class's ``forward`` (an attribute on
    the instance, removed again afterwards: the module's own forward runs before and after)."""
    swapped = []
    for module in model.modules():
        base = TRACED_AS_BASE.get(type(module).__name__)
        if base is not None and isinstance(module, base) and "forward" not in module.__dict__:
            module.forward = types.MethodType(base.forward, module)
            swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            del module.forward


class GroupSearchError(PruningError):
    """DepGraph's search for the layers coupled to one channel group does not end."""


def _group_limit(num_nodes: int) -> int:
    # measured on the zoo's networks (benchmarks/zoo_coverage.py): the largest group holds 1.3 entries per graph
    # node (DiNTS: 1269 for 970 nodes), most hold far fewer; a search that does not end adds entries without
    # bound, and each one costs a scan of the group (quadratic): this stops it within seconds
    return 10 * num_nodes + 1000


def _recurring_layers(graph, entries, count: int = 3) -> str:
    """``"'encoder.blocks.1.norm1' (MaisiGroupNorm3D), …"``: the network's own layers nearest to the graph nodes
    the search came back to most often (the nodes themselves are mostly tensor operations without a name)."""
    names = {m: n for n, m in graph.model.named_modules() if n}
    visits = collections.Counter(dep.target for dep, _ in entries)
    found: collections.Counter = collections.Counter()
    for node, visited in visits.most_common(20):
        seen, frontier = {node}, [node]
        while frontier and not any(n.module in names for n in frontier):  # breadth first, to the nearest layers
            frontier = list({m for n in frontier for m in n.inputs + n.outputs} - seen)
            seen.update(frontier)
        for n in frontier:
            if n.module in names:
                found[n.module] += visited
    return ", ".join(f"{names[m]!r} ({type(m).__name__})" for m, _ in found.most_common(count)) or "unnamed operations"


@contextmanager
def bounded_group_search() -> Iterator[None]:
    """While active, a channel group that grows past :func:`_group_limit` of its graph's size raises
    :class:`GroupSearchError` naming the layers it keeps coming back to, instead of searching for ever.
    torch-pruning adds to a group only inside ``get_pruning_group``, so the bound is set there."""
    graph_class, group_class = tp.dependency.DependencyGraph, tp.dependency.group.Group
    original_search, original_add = graph_class.get_pruning_group, group_class.add_dep
    searching: List = []  # the graph whose group search is running (innermost last)

    def get_pruning_group(self, *args, **kwargs):
        searching.append(self)
        try:
            return original_search(self, *args, **kwargs)
        finally:
            searching.pop()

    def add_dep(self, dep, idxs):
        original_add(self, dep, idxs)
        if searching and len(self._group) > _group_limit(len(searching[-1].module2node)):
            graph = searching[-1]
            raise GroupSearchError(
                f"torch-pruning's search for the layers coupled to one channel group does not end on this "
                f"{type(graph.model).__name__} "
                f"(stopped at {len(self._group)} coupled operations, in a graph of {len(graph.module2node)} nodes); "
                f"it keeps coming back to {_recurring_layers(graph, self._group)}: an operation in or around "
                "these layers is not supported; report it, or prune a network without them")

    graph_class.get_pruning_group = get_pruning_group
    group_class.add_dep = add_dep
    try:
        yield
    finally:
        graph_class.get_pruning_group = original_search
        group_class.add_dep = original_add
