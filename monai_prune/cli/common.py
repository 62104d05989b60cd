"""What the command modules of ``monai-prune`` share: the ``--input-shape`` argument type and the search for our own
error behind the wrappers MONAI puts around it. Standard library only (``monai-prune --help`` imports it)."""

from __future__ import annotations

import argparse
from typing import List, Optional

from ..errors import MonaiPruneError


def parse_shape(text: str) -> List[int]:
    """An ``--input-shape`` value: ``1,1,96,96,96`` (or ``1x1x96x96x96``), at least B, C and one spatial size."""
    try:
        shape = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,1,96,96,96, got {text!r}") from e
    if len(shape) < 3 or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"expected a shape like 1,1,96,96,96 (B,C,spatial...), got {text!r}")
    return shape


def our_error(error: Optional[BaseException]) -> Optional[MonaiPruneError]:
    """The first :class:`MonaiPruneError` behind ``error``: MONAI's ConfigParser raises ``RuntimeError("Failed to
    instantiate component ...")`` from what a component's constructor raised. Only ``RuntimeError`` wrappers are
    looked through by their implicit ``__context__``, so a programming error (NameError, TypeError, ...) raised while
    handling one of ours still shows its own traceback."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, MonaiPruneError):
            return error
        seen.add(id(error))
        if error.__cause__ is not None:
            error = error.__cause__
        elif isinstance(error, RuntimeError) and not error.__suppress_context__:
            error = error.__context__
        else:
            return None
    return None
