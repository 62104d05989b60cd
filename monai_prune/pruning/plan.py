"""The pruning plan: what structured pruning removed, as plain JSON, replayable on a fresh network.

A pruned network no longer fits its constructor, and ``torch.save(model)`` needs unsafe unpickling. The plan
records every channel-removal operation (module name, input or output side, indices) in the order it was done,
so :func:`apply_plan` can repeat it on a freshly built network; a plain state dict then loads with
``torch.load(..., weights_only=True)``. Replay needs no tracing and no example input.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..errors import InputError, PlanMismatchError
from .network_def import build_literal_network
from ..utils import atomic_write_text, library_versions
from .monai_fixes import ChannelCountingPReLUPruner
from .zoo_support import stored_width_links, sync_linked_widths

PLAN_FORMAT = 1


def architecture_signature(model: nn.Module) -> str:
    """sha256 over the names and shapes of every parameter and buffer: identifies a network's layout."""
    return _signature_of_shapes(state_shapes(model))


def _signature_of_shapes(shapes: Dict[str, List[int]]) -> str:
    digest = hashlib.sha256()
    for key, shape in sorted(shapes.items()):  # JSON (sort_keys) must not change the signature
        digest.update(f"{key}:{tuple(shape)};".encode())
    return digest.hexdigest()


def state_shapes(model: nn.Module) -> Dict[str, List[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@dataclass
class PruningPlan:
    """Which channels structured pruning removed from which layers, in order.

    ``steps`` is a list of groups; each has the ``root`` layer, its ``channels_before``, the ``kept`` channel
    indices of the root, and ``ops``: ``{"module", "side" ("out"|"in"), "pruner", "dim", "idxs"}`` for every
    coupled layer (indices are positions at the time of that step, removed ones).
    """

    network: str
    source_signature: str
    pruned_shapes: Dict[str, List[int]]
    steps: List[Dict[str, Any]] = field(default_factory=list)
    example_input_shape: Optional[List[int]] = None
    network_def: Optional[Dict[str, Any]] = None
    config: Dict[str, Any] = field(default_factory=dict)
    kept_layers: List[str] = field(default_factory=list)
    stats: Dict[str, Any] = field(default_factory=dict)
    versions: Dict[str, str] = field(default_factory=library_versions)
    format: int = PLAN_FORMAT

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @property
    def checksum(self) -> str:
        """sha256 of the canonical JSON: what bundle metadata records to pin a plan."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> str:
        """Write the plan as JSON, atomically. Returns the path."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PruningPlan":
        if not isinstance(data, dict) or "steps" not in data or "source_signature" not in data:
            raise InputError("not a monai-prune pruning plan: expected a JSON object with 'steps' and 'source_signature'")
        _check_plan_fields(data)
        if data.get("format", 0) > PLAN_FORMAT:
            raise InputError(
                f"pruning plan format {data['format']} is newer than this monai-prune understands ({PLAN_FORMAT}); "
                "upgrade monai-prune"
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PruningPlan":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not valid JSON ({e}); expected a pruning plan written by PruningPlan.save") from e
        return cls.from_dict(data)

    def build_network(self, allow: Sequence[type] = ()) -> nn.Module:
        """Instantiate the original network from ``network_def`` and apply the plan.

        A plan is data, never code: ``network_def`` is read as literal constructor arguments, never through MONAI's
        expression evaluator. ``_target_`` must name a class of ``monai.networks.nets`` (``"UNet"`` or
        ``"monai.networks.nets.UNet"``) or one of the classes given in ``allow`` (``build_network(allow=[MyNet])``);
        a ``$``/``@``/``%`` expression or any other target is refused with :class:`PlanSecurityError` naming the key.
        """
        if not self.network_def:
            raise PlanMismatchError(
                "this plan does not record how the network was built; construct it yourself and call apply_plan(net, plan)"
            )
        return apply_plan(build_literal_network(self.network_def, allow), self)

    def extend(self, later: "PruningPlan") -> "PruningPlan":
        """A plan doing this one then ``later`` (a plan made on the network this one produces)."""
        if later.source_signature != _signature_of_shapes(self.pruned_shapes):
            raise PlanMismatchError("the later plan was not made on the network this plan produces")
        merged = copy.deepcopy(self)
        merged.steps = self.steps + copy.deepcopy(later.steps)
        merged.pruned_shapes = dict(later.pruned_shapes)
        merged.kept_layers = sorted(set(self.kept_layers) | set(later.kept_layers))
        merged.config = {**self.config, "steps_applied": self.config.get("steps_applied", 1) + 1,
                         "last_ratio": later.config.get("ratio_applied")}
        before = self.stats.get("macs_before"), self.stats.get("params_before")
        merged.stats = {**later.stats, "macs_before": before[0], "params_before": before[1],
                        "groups_pruned": len(merged.steps)}
        return merged

    @property
    def num_groups(self) -> int:
        return len(self.steps)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_plan_fields(data: Dict[str, Any]) -> None:
    """Every field a replay reads has the JSON type it must have: a hand-edited or truncated plan is one clear
    error naming the field, not a TypeError deep inside the replay."""
    def bad(field_name: str, expected: str) -> InputError:
        return InputError(f"pruning plan field {field_name!r} must be {expected}, got "
                          f"{json.dumps(_get_path(data, field_name), default=str)[:60]}")

    for key in ("network", "source_signature"):
        if not isinstance(data.get(key, ""), str):
            raise bad(key, "a string")
    if "network" not in data or "pruned_shapes" not in data:
        missing = [k for k in ("network", "pruned_shapes") if k not in data]
        raise InputError(f"pruning plan is missing the field {missing[0]!r}: it was truncated or not written by "
                         "PruningPlan.save")
    if not _is_int(data.get("format", 0)):
        raise bad("format", "an integer")
    shapes = data["pruned_shapes"]
    if not isinstance(shapes, dict) or not all(isinstance(v, list) and all(_is_int(d) for d in v) for v in shapes.values()):
        raise bad("pruned_shapes", "an object of parameter name -> list of integers")
    for key, kind, expected in (("example_input_shape", list, "a list of integers"), ("network_def", dict, "an object"),
                                ("config", dict, "an object"), ("stats", dict, "an object"),
                                ("kept_layers", list, "a list"), ("versions", dict, "an object")):
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise bad(key, expected)
    if not isinstance(data["steps"], list):
        raise bad("steps", "a list")
    for i, step in enumerate(data["steps"]):
        ops = step.get("ops") if isinstance(step, dict) else None
        if not isinstance(ops, list):
            raise bad(f"steps[{i}].ops", "a list of operations")
        for j, op in enumerate(ops):
            where = f"steps[{i}].ops[{j}]"
            if not isinstance(op, dict) or not isinstance(op.get("module"), str):
                raise bad(where, "an object with a 'module' name")
            if op.get("kind") != "parameter" and op.get("side") not in ("in", "out"):
                raise bad(f"{where}.side", "'in' or 'out'")
            if not isinstance(op.get("idxs"), list) or not all(_is_int(v) and v >= 0 for v in op["idxs"]):
                raise bad(f"{where}.idxs", "a list of non-negative integers")
            if "dim" in op and not _is_int(op["dim"]):
                raise bad(f"{where}.dim", "an integer")


def _get_path(data: Any, path: str) -> Any:
    for part in path.replace("]", "").replace("[", ".").split("."):
        try:
            data = data[int(part)] if part.isdigit() else data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _pruner_for(module: nn.Module, pruner_name: str):
    if isinstance(module, nn.PReLU):
        return ChannelCountingPReLUPruner()
    for pruner in tp.pruner.function.PrunerBox.values():
        if type(pruner).__name__ == pruner_name:
            return pruner
    raise PlanMismatchError(f"the plan uses pruner {pruner_name!r}, which this torch-pruning version does not provide")


def replay_op(model: nn.Module, op: Dict[str, Any], modules: Dict[str, Any]) -> None:
    name = op["module"]
    if op.get("kind") == "parameter":
        owner_name, _, attr = name.rpartition(".")
        owner = modules.get(owner_name) if owner_name else model
        param = getattr(owner, attr, None) if owner is not None else None
        if not isinstance(param, torch.Tensor):
            raise PlanMismatchError(f"the plan prunes parameter {name!r}, which this network does not have")
        keep = sorted(set(range(param.shape[op["dim"]])) - set(op["idxs"]))
        pruned = nn.Parameter(torch.index_select(param.data, op["dim"], torch.tensor(keep, dtype=torch.long)).contiguous(),
                              requires_grad=param.requires_grad)
        setattr(owner, attr, pruned)
        return
    module = modules.get(name)
    if module is None:
        raise PlanMismatchError(f"the plan prunes layer {name!r}, which this network does not have")
    pruner = _pruner_for(module, op["pruner"])
    pruner.pruning_dim = op.get("dim", 1)
    fn = pruner.prune_out_channels if op["side"] == "out" else pruner.prune_in_channels
    fn(module, list(op["idxs"]))


def apply_plan(model: nn.Module, plan: PruningPlan | str | os.PathLike, strict: bool = True) -> nn.Module:
    """Replay ``plan`` on a freshly constructed network and return the pruned network.

    The network must have the layout the plan was made from (same constructor arguments); the input object is
    not modified (a copy is pruned). With ``strict``, every parameter shape is checked against the plan.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"apply_plan expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(plan, PruningPlan):
        plan = PruningPlan.load(plan)
    signature = architecture_signature(model)
    if signature != plan.source_signature:
        raise PlanMismatchError(
            f"this {type(model).__name__} does not have the layout the plan was made from (a {plan.network}); "
            "build the network with the same constructor arguments as the one that was pruned"
        )
    pruned = copy.deepcopy(model)
    replay_steps(pruned, plan, strict=strict)
    return pruned


def replay_steps(model: nn.Module, plan: PruningPlan, strict: bool = True) -> None:
    """Replay ``plan`` on ``model`` itself (no copy, no signature check); with ``strict`` check every shape.

    Channel counts some blocks keep as plain ints (DiffusionModelUNet's downsampler, see ``zoo_support``) follow
    the layer that reads the same input, as ``prune_channels`` set them."""
    modules = dict(model.named_modules())
    links = stored_width_links(model)
    for step in plan.steps:
        for op in step["ops"]:
            replay_op(model, op, modules)
    sync_linked_widths(model, links)
    if strict:
        shapes = state_shapes(model)
        for key, shape in plan.pruned_shapes.items():
            if shapes.get(key) != shape:
                raise PlanMismatchError(f"after replaying the plan, {key} has shape {shapes.get(key)}, the plan expects {shape}")
