"""Networks rebuilt from a constructor recorded as data (a pruning plan's ``network_def``), without running code.

MONAI's ``ConfigParser`` evaluates ``$`` expressions and instantiates any importable ``_target_``, so a plan whose
``network_def`` passed through it could run ``"$__import__('os').system(...)"`` or ``subprocess.run`` on load.
Here the definition is read as literal values: ``_target_`` is looked up (never imported) among MONAI's networks or
the classes the caller allows, nested ``{"_target_": ...}`` arguments get the same check, and any ``$``/``@``/``%``
string or other special key (``_requires_``, ``_mode_``, ``_disabled_``) is refused with the key's path.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Sequence

from torch import nn

from ..errors import PlanMismatchError, PlanSecurityError

_CODE_PREFIXES = ("$", "@", "%")
_SPECIAL_KEYS = ("_requires_", "_mode_", "_disabled_", "_desc_")
_MONAI_NETS = "monai.networks.nets."


def _allowed_class(target: Any, where: str, allow: Sequence[type]) -> type:
    if not isinstance(target, str) or not target:
        raise PlanSecurityError(f"{where}: _target_ must be a class name, got {target!r}")
    for cls in allow:
        if target in (cls.__name__, cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}"):
            return cls
    short = target[len(_MONAI_NETS):] if target.startswith(_MONAI_NETS) else target
    if "." not in short and not short.startswith("_"):
        import monai.networks.nets as nets

        cls = getattr(nets, short, None)
        if inspect.isclass(cls) and issubclass(cls, nn.Module):
            return cls
    raise PlanSecurityError(
        f"{where}: _target_ {target!r} is not a network class this plan may build (allowed: monai.networks.nets.* "
        "and the classes passed as build_network(allow=[...])); a plan is data and names no other code")


def _literal(value: Any, where: str, allow: Sequence[type]) -> Any:
    if isinstance(value, str):
        if value.startswith(_CODE_PREFIXES):
            raise PlanSecurityError(f"{where}: {value[:40]!r} is an expression or reference; a plan's network_def "
                                    "holds literal values only (nothing in a plan is evaluated)")
        return value
    if isinstance(value, list):
        return [_literal(v, f"{where}[{i}]", allow) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if "_target_" in value:
            return _instantiate(value, where, allow)
        return {k: _literal(v, f"{where}#{k}", allow) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise PlanSecurityError(f"{where}: a {type(value).__name__} is not a JSON value")


def _instantiate(definition: Dict[str, Any], where: str, allow: Sequence[type]) -> Any:
    special = [k for k in definition if k in _SPECIAL_KEYS or (k.startswith(_CODE_PREFIXES))]
    if special:
        raise PlanSecurityError(f"{where}#{special[0]}: special keys are not allowed in a plan's network_def")
    cls = _allowed_class(definition["_target_"], f"{where}#_target_", allow)
    kwargs = {k: _literal(v, f"{where}#{k}", allow) for k, v in definition.items() if k != "_target_"}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise PlanMismatchError(f"{where}: {cls.__name__}({', '.join(kwargs)}) failed: {e}") from e


def build_literal_network(network_def: Dict[str, Any], allow: Sequence[type] = ()) -> nn.Module:
    """Build the network a pruning plan recorded, treating ``network_def`` as data (see the module docstring)."""
    if not isinstance(network_def, dict) or "_target_" not in network_def:
        raise PlanSecurityError("network_def must be an object with a _target_ naming the network class")
    allow = tuple(allow or ())
    if not all(inspect.isclass(c) for c in allow):
        raise PlanSecurityError("build_network(allow=...) takes classes, e.g. allow=[MyNet]")
    network = _instantiate(network_def, "network_def", allow)
    if not isinstance(network, nn.Module):
        raise PlanSecurityError(f"network_def built a {type(network).__name__}, not a torch.nn.Module")
    return network
