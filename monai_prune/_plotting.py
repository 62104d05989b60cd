"""Matplotlib figures that leave the user's matplotlib alone.

The library draws through the object API (``matplotlib.figure.Figure`` on its own Agg canvas), never through
``pyplot``: no ``matplotlib.use(...)`` switching the process's backend (a Jupyter user keeps the inline backend), no
figures registered in pyplot's global figure list, nothing to close.

This module is a leaf: standard library and matplotlib only, and matplotlib is imported inside the functions, so
importing it costs nothing and a library without plots never loads matplotlib.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any, Tuple

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

DPI = 110  # every figure the library writes


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, *, dpi: float = DPI,
               **subplots_kwargs: Any) -> Tuple["Figure", Any]:
    """A ``width`` × ``height`` inch figure on a private Agg canvas and its axes, as ``pyplot.subplots`` returns them
    (one ``Axes`` for a 1 × 1 grid, else an array; ``squeeze=False`` and the other ``Figure.subplots`` keywords pass
    through)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig, fig.subplots(nrows, ncols, **subplots_kwargs)


def line_handle(**kwargs: Any) -> "Line2D":
    """A legend entry with no data (``pyplot.Line2D([], [], **kwargs)``), for legends of markers or styles."""
    from matplotlib.lines import Line2D

    return Line2D([], [], **kwargs)


def save_png(fig: "Figure", path: str | os.PathLike, tight_layout: bool = True) -> str:
    """Write ``fig`` as a PNG at ``path`` atomically (a temporary file beside it, renamed over it: a reader never sees
    half a file, a failure leaves any previous file as it was), creating the folder if needed, with the mode a plain
    ``open()`` would give under the user's umask. ``tight_layout`` first, unless asked not to. Returns the path as a
    string."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if tight_layout:
        fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; the PNG must read as if written with open()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``os.umask`` can only be read by setting
    it, which another thread creating a file at that moment would see)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
