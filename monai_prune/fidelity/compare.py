"""Dense (before) and compressed (after) measurements side by side, class by class."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional


def _defined(x: Optional[float]) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def compare_per_class(before: Mapping[str, Any], after: Mapping[str, Any]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{class: {metric: {"before", "after", "delta"}}}`` from two :meth:`PerClassMetrics.compute` results."""
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, metrics in before["per_class"].items():
        for metric, b in metrics.items():
            a = after["per_class"].get(name, {}).get(metric)
            b, a = _defined(b), _defined(a)  # undefined (nan, or None once through JSON) is None
            table.setdefault(name, {})[metric] = {"before": b, "after": a,
                                                  "delta": None if a is None or b is None else a - b}
    return table
