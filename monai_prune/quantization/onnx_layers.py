"""The weighted layers of the fp32 ONNX export, named by the torch modules they come from, and which unweighted
nodes belong to the layers kept fp32. Backend-independent: both int8 backends quantize that one ONNX file."""

from __future__ import annotations

from typing import Dict, List, Sequence

from ..errors import ConfigError

WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
ONNX_INPUT = "input"  # the input name export_onnx gives


def onnx_weighted_layers(onnx_path: str) -> Dict[str, str]:
    """Weighted ONNX nodes (Conv, ConvTranspose, MatMul, Gemm) -> the torch module they come from.

    The exporter keeps parameter names as initializer names (``model.0.conv.unit0.conv.weight``), so the module
    is the weight's name without ``.weight``; where BatchNorm was folded into the weight (``onnx::Conv_12``) the
    module comes from the node's scope name (:func:`scope_to_module`).
    """
    import onnx

    graph = onnx.load(onnx_path).graph
    initializers = {i.name for i in graph.initializer}
    layers = {}
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        weight = next((i for i in node.input[1:] if i in initializers and i.endswith(".weight")), None)
        layers[node.name] = weight[: -len(".weight")] if weight else scope_to_module(node.name)
    return layers


def scope_to_module(node: str) -> str:
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


def attached_to_excluded(fp32_onnx: str, layers: Sequence[str], exclude: Sequence[str]) -> List[str]:
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
