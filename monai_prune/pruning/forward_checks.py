"""The checks around a pruning run: the example input's kind, a dense model that already outputs NaN/inf, the
first layer that fails in a forward pass, and layer names that must exist."""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..utils import run_forward
from .zoo_support import output_tensors


def check_example_input(example_input) -> None:
    """Only the kind of input is checked here: whether its shape fits is told by the first forward pass
    (:func:`count_macs` names the first layer that *ran*; the first one registered is not always the input layer,
    e.g. DiNTS registers its cells before its stem)."""
    if not isinstance(example_input, (torch.Tensor, tuple, list, dict)):
        raise InputError(f"example_input must be a tensor (B, C, *spatial), got {type(example_input).__name__}")


def check_dense_output(model: nn.Module, example_input, output) -> None:
    """NaN/inf that the dense model already outputs would otherwise be blamed on the first pruned layer."""
    if all(not t.is_floating_point() or bool(torch.isfinite(t).all()) for t in output_tensors(output).values()):
        return
    tensors = [("parameter", *p) for p in model.named_parameters()] + [("buffer", *b) for b in model.named_buffers()]
    kind, name = next(((k, n) for k, n, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())),
                      (None, None))
    if name is not None:
        where = f"{kind} {name!r} holds non-finite values"
    elif isinstance(example_input, torch.Tensor) and not bool(torch.isfinite(example_input).all()):
        where = "example_input itself holds non-finite values"
    else:  # overflow: one more forward pass, only on this path, finds where
        layer = run_and_locate_failure(copy.deepcopy(model).eval(), example_input)[1]
        where = "every parameter is finite; " + (f"layer {layer!r} is the first to output NaN/inf" if layer else
                                                 "an operation between the layers outputs NaN/inf")
    raise InputError(f"the dense model already outputs NaN/inf before pruning ({where}); reload a good checkpoint "
                     "(or fix the example_input) and prune again")


def run_and_locate_failure(model: nn.Module, example_input) -> Tuple[Any, Optional[str], str]:
    """Run a forward pass; returns ``(output, layer, why)`` naming the first layer that raised or produced a
    non-finite output (``layer`` None and ``why`` empty when all is well)."""
    names = {m: n for n, m in model.named_modules()}
    current: List[str] = []
    bad: List[str] = []
    hooks = []
    for module in model.modules():
        if next(module.children(), None) is not None:
            continue
        hooks.append(module.register_forward_pre_hook(lambda m, i: current.append(names[m])))

        def check(m, i, o):
            if not bad and isinstance(o, torch.Tensor) and o.is_floating_point() and not torch.isfinite(o).all():
                bad.append(names[m])

        hooks.append(module.register_forward_hook(check))
    try:
        with torch.no_grad():
            output = run_forward(model, example_input)
        return (output, bad[0], "produced non-finite values") if bad else (output, None, "")
    except Exception as e:  # the point is to report where it broke
        return None, (current[-1] if current else None), f"raised {type(e).__name__}: {e}"
    finally:
        for h in hooks:
            h.remove()


def resolve_names(model: nn.Module, names: Iterable[str], what: str) -> Dict[str, nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        sample = ", ".join(list(n for n in modules if n)[:8])
        raise ConfigError(f"{what} names layers this network does not have: {missing} (layer names look like: {sample}, …)")
    return {n: modules[n] for n in names}
