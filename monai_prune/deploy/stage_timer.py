"""Seconds per stage of a MONAI Deploy app: :class:`StageTimer`, and :func:`timed` for any operator class's
``compute`` (importable without the MONAI Deploy App SDK)."""

from __future__ import annotations

import logging
import time
from typing import Dict, Optional

logger = logging.getLogger(__name__)


class StageTimer:
    """Seconds per named stage (summed if a stage runs more than once)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}
        self.notes: Dict[str, str] = {}  # how a stage ran (e.g. which postprocessing), written with the seconds

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        logger.info("stage %s: %.3f s", stage, seconds)

    def measure(self, stage: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(stage, time.perf_counter() - start)


_TIMED_CLASSES: Dict[type, type] = {}


def timed(cls: type) -> type:
    """A subclass of operator class ``cls`` whose ``compute`` is timed into the instance's ``stage_timer``
    (an attribute set after construction; no timer, no timing)."""
    if cls not in _TIMED_CLASSES:
        def compute(self, op_input, op_output, context):
            timer: Optional[StageTimer] = getattr(self, "stage_timer", None)
            if timer is None:
                return cls.compute(self, op_input, op_output, context)
            return timer.measure(self.name, cls.compute, self, op_input, op_output, context)

        _TIMED_CLASSES[cls] = type(f"Timed{cls.__name__}", (cls,), {"compute": compute, "__doc__": cls.__doc__})
    return _TIMED_CLASSES[cls]
