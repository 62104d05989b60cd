"""The knobs tune-pipeline turns and the values it accepts for them (:func:`check_knob_values`)."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ConfigError

KNOBS = ("overlap", "sw_batch_size", "roi", "pixdim")
INFERER_KNOBS = {"overlap": "overlap", "sw_batch_size": "sw_batch_size", "roi": "roi_size"}  # knob -> argument


def first_line(error: BaseException) -> str:
    """The first line of the innermost cause of ``error`` (MONAI wraps a transform's or constructor's error)."""
    cause = error
    while cause.__cause__ is not None:  # MONAI wraps a transform's or constructor's error
        cause = cause.__cause__
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


# ---------------------------------------------------------------------------------------------------- knob values
def _numbers(knob: str, value: Any, kind: type) -> List[Any]:
    """``value`` (a sequence, or text like ``96,96,96`` / ``96x96x96``) as a list of ``kind``."""
    if isinstance(value, str):
        text = value.strip().strip("[]()").strip()
        parts = re.split(r"\s*[,x]\s*|\s+", text) if text else []
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    out = []
    for part in parts:
        try:
            if isinstance(part, bool):
                raise ValueError
            number = float(part)
            if kind is int:
                if not number.is_integer():
                    raise ValueError
                number = int(number)
        except (TypeError, ValueError):
            raise ConfigError(f"{knob} {_show(value)}: expected {'integers' if kind is int else 'numbers'} "
                              f"separated by commas (e.g. {'96,96,96' if kind is int else '1.5,1.5,2'}), got "
                              f"{part!r}") from None
        out.append(number)
    return out


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value if value.strip() else repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _overlap(value: Any) -> float:
    numbers = _numbers("overlap", value, float)
    if len(numbers) != 1 or not (0.0 <= numbers[0] < 1.0):
        raise ConfigError(f"overlap {_show(value)} is not one number in [0, 1) (the fraction by which sliding "
                          "windows overlap)")
    return numbers[0]


def _sw_batch_size(value: Any) -> int:
    numbers = _numbers("sw_batch_size", value, int)
    if len(numbers) != 1 or numbers[0] < 1:
        raise ConfigError(f"sw_batch_size {_show(value)} is not one positive integer (windows per network call)")
    return numbers[0]


def _roi(value: Any) -> List[int]:
    numbers = _numbers("roi", value, int)
    if not numbers or any(n < 1 for n in numbers):
        raise ConfigError(f"roi {_show(value)} is not a list of positive integers like 96,96,96 (the window size)")
    return numbers


def _pixdim(value: Any) -> List[float]:
    numbers = _numbers("pixdim", value, float)
    if len(numbers) != 3 or any(not math.isfinite(n) or n <= 0 for n in numbers):
        raise ConfigError(f"pixdim {_show(value)} is not 3 positive numbers like 1.5,1.5,2 (the voxel spacing in mm "
                          "images are resampled to)")
    return numbers


CHECKS = {"overlap": _overlap, "sw_batch_size": _sw_batch_size, "roi": _roi, "pixdim": _pixdim}


def check_knob_values(overlaps: Optional[Sequence[Any]] = None, sw_batch_sizes: Optional[Sequence[Any]] = None,
                      roi_sizes: Optional[Sequence[Any]] = None,
                      pixdims: Optional[Sequence[Any]] = None) -> Dict[str, List[Any]]:
    """The knob values as numbers (text such as ``"96,96,96"`` accepted), duplicates dropped, in the given order;
    :class:`ConfigError` for the first invalid one."""
    given = {"overlap": overlaps, "sw_batch_size": sw_batch_sizes, "roi": roi_sizes, "pixdim": pixdims}
    values: Dict[str, List[Any]] = {}
    for knob, items in given.items():
        if items is None:
            continue
        if isinstance(items, (str, int, float)):
            items = [items]
        elif knob in ("roi", "pixdim") and all(isinstance(v, (int, float)) for v in items):
            items = [items]  # one size given as a flat list of numbers: [96, 96, 96]
        checked: List[Any] = []
        for item in items:
            value = CHECKS[knob](item)
            if value not in checked:
                checked.append(value)
        if checked:
            values[knob] = checked
    if not values:
        raise ConfigError("no knob values to measure: give at least one of overlap, sw_batch_size, roi, pixdim "
                          "(--overlap, --sw-batch-size, --roi, --pixdim)")
    return values


def value_text(value: Any) -> str:
    """A knob value as people write it: ``96x96x96``, ``0.25``."""
    if isinstance(value, list):
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
