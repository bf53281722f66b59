"""Figures of the analyses, drawn with matplotlib's Agg canvas (no pyplot: safe in the app's worker threads)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib Figure of ``width`` x ``height`` inches on its own Agg canvas (thread-safe, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a matplotlib Figure (with an Agg canvas) -> (H, W, 3) uint8 RGB."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()


def class_name(names: Sequence[str] | None, c: int) -> str:
    """The name of class ``c``, or "class c" when ``names`` does not have it."""
    return names[c] if names is not None and 0 <= c < len(names) else f"class {c}"
