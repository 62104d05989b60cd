"""Guardrails: a recipe's per-class floors and budgets, checked against what was measured."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ..errors import ConfigError

GUARDRAIL_KEYS = {
    "min_dice": "per-class Dice floor after compression, {class: floor} or one floor for every class",
    "max_delta_dice": "largest allowed Dice drop, absolute, per class",
    "max_delta_auc": "largest allowed AUC drop, absolute, per class",
    "max_delta_sensitivity": "largest allowed sensitivity (recall) drop, absolute, per class",
    "max_hd95_increase_mm": "largest allowed increase of the 95th-percentile Hausdorff distance, per class",
    "max_latency_ratio": "compressed / dense latency of the bundle's whole inferer must not exceed this",
    "target_latency_s": "compressed latency of the bundle's whole inferer must not exceed this many seconds",
    "target_macs": "compressed MACs must not exceed this (a fraction of dense when <= 1, else a count)",
}


def validate_guardrails(guardrails: Mapping[str, Any]) -> None:
    """Unknown guardrail names and limits that are not non-negative numbers are a :class:`ConfigError` (checked
    before any work starts)."""
    unknown = sorted(set(guardrails) - set(GUARDRAIL_KEYS))
    if unknown:
        raise ConfigError(f"unknown guardrails {unknown}; known: {sorted(GUARDRAIL_KEYS)}")
    for key, value in guardrails.items():
        numbers = value.values() if key == "min_dice" and isinstance(value, Mapping) else [value]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in numbers):
            raise ConfigError(f"guardrail {key} must be a non-negative number"
                              + (" or {class: number}" if key == "min_dice" else "") + f", got {value!r}")


def check_guardrails(guardrails: Mapping[str, Any], compression: Mapping[str, Any]) -> List[str]:
    """Every broken floor or budget of ``guardrails`` in a ``compress-bundle`` measurement, as one sentence each
    (which class, which metric, by how much); empty when all hold.

    ``compression`` holds ``per_class`` (``{class: {metric: {"before", "after"}}}``), ``latency_s``
    (``before``/``after`` seconds of the bundle's inferer) and ``macs`` (``before``/``after``). A per-class floor
    declared for a class the model does not have, or for a metric that was not measured, is itself an error.
    """
    validate_guardrails(guardrails)
    per_class = compression.get("per_class", {})
    broken: List[str] = []

    def values(metric: str) -> Dict[str, Dict[str, Optional[float]]]:
        found = {name: m[metric] for name, m in per_class.items() if metric in m}
        if not found:
            raise ConfigError(f"a guardrail on {metric} was declared but {metric} was not measured for this bundle "
                              f"(measured: {sorted({k for m in per_class.values() for k in m})})")
        return found

    floors = guardrails.get("min_dice")
    if floors is not None:
        dice_values = values("dice")
        floors = floors if isinstance(floors, Mapping) else {name: floors for name in dice_values}
        for name, floor in floors.items():
            if name not in dice_values:
                raise ConfigError(f"min_dice names class {name!r}; the model's classes are {sorted(dice_values)}")
            after = dice_values[name]["after"]
            if after is None or after < floor:
                broken.append(f"class {name!r}: Dice {_num(after)} is below its floor {floor:.4f}"
                              + (f" by {floor - after:.4f}" if after is not None else ""))
    for metric in ("dice", "auc", "sensitivity"):
        limit = guardrails.get(f"max_delta_{metric}")
        if limit is None:
            continue
        for name, v in values(metric).items():
            if v["before"] is None:
                continue  # undefined before (e.g. a class absent from the validation data): nothing to lose
            if v["after"] is None or v["before"] - v["after"] > limit:
                drop = "undefined" if v["after"] is None else f"{v['before'] - v['after']:.4f}"
                broken.append(f"class {name!r}: {metric} fell from {v['before']:.4f} to {_num(v['after'])} "
                              f"(drop {drop} > max_delta_{metric} {limit})")
    limit = guardrails.get("max_hd95_increase_mm")
    if limit is not None:
        for name, v in values("hd95").items():
            if v["before"] is not None and v["after"] is not None and v["after"] - v["before"] > limit:
                broken.append(f"class {name!r}: HD95 grew from {v['before']:.2f} to {v['after']:.2f} mm "
                              f"(+{v['after'] - v['before']:.2f} > max_hd95_increase_mm {limit})")
            elif v["before"] is not None and v["after"] is None:
                broken.append(f"class {name!r}: HD95 undefined after compression (the class is no longer found)")
    latency = compression.get("latency_s", {})
    if "max_latency_ratio" in guardrails:
        ratio = latency["after"] / latency["before"]
        if ratio > guardrails["max_latency_ratio"]:
            broken.append(f"latency: compressed/dense {ratio:.3f} of the bundle's inferer exceeds max_latency_ratio "
                          f"{guardrails['max_latency_ratio']}")
    if "target_latency_s" in guardrails and latency["after"] > guardrails["target_latency_s"]:
        broken.append(f"latency: {latency['after']:.4f} s of the bundle's inferer exceeds target_latency_s "
                      f"{guardrails['target_latency_s']}")
    if "target_macs" in guardrails:
        macs, target = compression["macs"], guardrails["target_macs"]
        value = macs["after"] / macs["before"] if target <= 1 else macs["after"]
        if value > target:
            broken.append(f"MACs: {value:.4g} exceeds target_macs {target}"
                          + (" (fraction of dense)" if target <= 1 else ""))
    return broken


def _num(x: Optional[float]) -> str:
    return "undefined" if x is None else f"{x:.4f}"
