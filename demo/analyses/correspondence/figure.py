"""Pictures of a correspondence run: the chart of Delta against the random baseline (drawn from the numbers alone,
no photos: ``correspondence_chart.png``) and the figure of the masked photos above the same chart
(``correspondence.png``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from demo.analyses.correspondence.measure import CorrespondenceResult
from demo.analyses.figures import figure_to_array, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.gridspec import SubplotSpec

DELTA_COLOUR = "tab:blue"
RANDOM_COLOUR = "0.45"
CHART_HEIGHT = 2.9  # inches


def _draw_chart(fig: Figure, cells: Sequence[SubplotSpec], result: CorrespondenceResult) -> None:
    """One panel per layer of ``result``, in ``cells``: per part, Delta as a marker beside the random baseline's
    mean with the sample std over the draws as an error bar; the same y range in every panel."""
    by_key = {(r.part, r.layer): r for r in result.rows}
    lo = min(min(r.delta, r.random_mean - r.random_std) for r in result.rows)
    hi = max(max(r.delta, r.random_mean + r.random_std) for r in result.rows)
    pad = 0.12 * (hi - lo) + 0.01
    x = np.arange(len(result.parts))
    for k, (layer, cell) in enumerate(zip(result.layers, cells, strict=True)):
        ax = fig.add_subplot(cell)
        rows = [by_key[p, layer] for p in result.parts]
        ax.errorbar(x + 0.15, [r.random_mean for r in rows], yerr=[r.random_std for r in rows], fmt="s",
                    color=RANDOM_COLOUR, markersize=5, capsize=4, label=f"random boxes ({result.draws} draws, "
                    "mean ± std)")
        ax.plot(x - 0.15, [r.delta for r in rows], "o", color=DELTA_COLOUR, markersize=7, label="the part")
        for i, r in enumerate(rows):
            ax.annotate(f"{r.delta:.3f}", (i - 0.15, r.delta), xytext=(0, 5), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6.5, color=DELTA_COLOUR)
            ax.annotate(f"{r.random_mean:.3f}", (i + 0.15, r.random_mean + r.random_std), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=6.5)
        ax.set_xticks(x, [p.replace("_", " ") for p in result.parts], fontsize=7)
        ax.set_xlim(-0.6, len(result.parts) - 0.4)
        ax.set_ylim(max(0.0, lo - pad), hi + 2 * pad)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(layer, fontsize=9)
        if k == 0:
            ax.set_ylabel("Delta (mean Hamming\nper pair and feature)", fontsize=8)
            ax.legend(fontsize=6.5, loc="best")


def correspondence_chart(result: CorrespondenceResult) -> np.ndarray:
    """The chart alone -> (h, w, 3) uint8 RGB: one panel per layer, per part Delta (lower: the part is related
    across images) against boxes of its size at random places (mean ± std over the draws). Drawn from
    ``result``'s numbers only, so it holds no pixel of the data set's photos."""
    fig = new_figure(max(3.0 * len(result.layers), 4.0), CHART_HEIGHT + 0.6)
    grid = fig.add_gridspec(1, len(result.layers))
    _draw_chart(fig, [grid[0, k] for k in range(len(result.layers))], result)
    images = max((r.images for r in result.rows), default=0)
    fig.suptitle(f"Delta of each part covered by a mean-grey box in up to {images} images, against boxes of its "
                 "size at random places\n(lower: covering the part changes the features the same way in every "
                 "image)", fontsize=9)
    return figure_to_array(fig)


def _mosaic(pictures: Sequence[Sequence[np.ndarray | None]], gap: int = 3) -> tuple[np.ndarray, int, int]:
    """Rows of (h, w, 3) uint8 pictures (None: blank) -> one white-separated (H, W, 3) uint8 grid, and the
    tile height and width."""
    first = next(p for row in pictures for p in row if p is not None)
    h, w, _ = first.shape
    rows, cols = len(pictures), max(len(r) for r in pictures)
    grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(pictures):
        for j, p in enumerate(row):
            if p is not None:
                grid[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = p
    return grid, h, w


def _photo_table(result: CorrespondenceResult, originals: Sequence[np.ndarray],
                 masked: Mapping[str, Sequence[np.ndarray | None]], blocks: int,
                 per_block: int) -> list[list[np.ndarray | None]]:
    """The tiles of the photo grid, row by row: per block, the original and each masked part; a blank column
    between blocks, blanks past the last image."""
    N = len(originals)
    table = []
    for r in range(per_block):
        row: list[np.ndarray | None] = []
        for b in range(blocks):
            i = b * per_block + r
            row += [originals[i] if i < N else None] + [masked[p][i] if i < N else None for p in result.parts]
            if b < blocks - 1:
                row.append(None)  # a blank column between blocks
        table.append(row)
    return table


def correspondence_figure(result: CorrespondenceResult, originals: Sequence[np.ndarray],
                          masked: Mapping[str, Sequence[np.ndarray | None]], max_rows: int = 10) -> np.ndarray:
    """The figure -> (h, w, 3) uint8 RGB: the masked images (rows: images, numbered as in the boxes file; columns:
    the original and each masked part, blank where the image has no box of that part; more than ``max_rows``
    images wrap into blocks side by side) above the chart of ``correspondence_chart`` (one panel per layer).

    ``originals``: (H, W, 3) uint8 per image; ``masked``: part -> per image (H, W, 3) uint8 or None.
    """
    N = len(originals)
    columns = ["original", *result.parts]
    blocks = math.ceil(N / max_rows)
    per_block = math.ceil(N / blocks)
    table = _photo_table(result, originals, masked, blocks, per_block)
    grid, h, w = _mosaic(table)
    gap = 3
    cell = 0.95  # inches per tile
    n_cols = len(table[0])
    width = max(n_cols * cell + 0.6, 3.0 * len(result.layers))
    fig = new_figure(width, per_block * cell + 0.5 + CHART_HEIGHT)
    spec_ = fig.add_gridspec(2, len(result.layers), height_ratios=[per_block * cell + 0.5, CHART_HEIGHT])
    ax = fig.add_subplot(spec_[0, :])
    ax.imshow(grid)
    for b in range(blocks):
        for k, name in enumerate(columns):
            x = (b * (len(columns) + 1) + k) * (w + gap) + w / 2
            ax.text(x, -4, name.replace("_", " "), ha="center", va="bottom", fontsize=8)
        for r in range(per_block):
            i = b * per_block + r
            if i < N:
                ax.text(b * (len(columns) + 1) * (w + gap) - 3, r * (h + gap) + h / 2, str(i + 1), ha="right",
                        va="center", fontsize=7)
    ax.set_axis_off()
    ax.set_title(f"each part covered by a mean-grey box ({N} images)", fontsize=9, pad=14)
    _draw_chart(fig, [spec_[1, k] for k in range(len(result.layers))], result)
    return figure_to_array(fig)
