"""Pictures of the model's health: the per-layer figure (dead and rare channels, peaks, filter norms) and the
conv1_1 filters as colour tiles (the paper's Fig. 6c)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from base import spec
from demo.analyses.figures import figure_to_array, new_figure
from demo.analyses.health.measure import HealthStats
from demo.analyses.health.summary import floor_percent
from demo.onnx_forward import OnnxModel

if TYPE_CHECKING:
    from matplotlib.axes import Axes


# ----------------------------------------------------------------------------------------------------------------
# The conv1_1 filters


def normalised_filters(weights: np.ndarray) -> np.ndarray:
    """First-layer filters (C, 3, kh, kw) -> (C, kh, kw, 3) float32 in [0, 1], each filter min-max normalised over
    all its values (so its colours keep their balance); a constant filter is mid-grey (0.5)."""
    w = np.transpose(np.asarray(weights, np.float32), (0, 2, 3, 1))  # (C, kh, kw, RGB)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    return np.where(span > 0, (w - lo) / np.where(span > 0, span, 1), 0.5).astype(np.float32)


def filters_picture(weights: np.ndarray, columns: int = 8, scale: int = 16, gap: int = 3,
                    background: int = 255) -> np.ndarray:
    """First-layer filters (C, 3, kh, kw) as one picture (H, W, 3) uint8: each filter normalised
    (``normalised_filters``), enlarged ``scale`` times with nearest neighbour, in a grid ``columns`` wide (row-major
    by channel), ``gap`` pixels of ``background`` between and around the tiles."""
    tiles = np.round(255 * normalised_filters(weights)).astype(np.uint8)  # (C, kh, kw, 3)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)  # (C, kh * scale, kw * scale, 3)
    C, th, tw, _ = tiles.shape
    rows = -(-C // columns)
    picture = np.full((gap + rows * (th + gap), gap + columns * (tw + gap), 3), background, np.uint8)
    for c in range(C):
        r, q = divmod(c, columns)
        y, x = gap + r * (th + gap), gap + q * (tw + gap)
        picture[y : y + th, x : x + tw] = tiles[c]
    return picture


def conv1_filters(model: OnnxModel, scale: int = 16) -> np.ndarray:
    """The model's 64 conv1_1 filters as a picture (H, W, 3) uint8 (8 x 8 grid, see ``filters_picture``)."""
    return filters_picture(model.weights[spec.CONV_LAYERS[0]], columns=8, scale=scale)


# ----------------------------------------------------------------------------------------------------------------
# The per-layer figure


def _histogram_columns(ax: Axes, values: Sequence[np.ndarray], log: bool, color: str) -> None:
    """One horizontal histogram per x position (a layer), each scaled to 0.8 wide, its median a black tick."""
    pooled = np.concatenate([v for v in values if len(v)]) if any(len(v) for v in values) else np.ones(1)
    lo, hi = float(pooled.min()), float(pooled.max())
    if hi <= lo:
        lo, hi = (lo / 2, hi * 2) if log else (lo - 0.5, hi + 0.5)
    edges = np.geomspace(lo, hi, 33) if log else np.linspace(lo, hi, 33)
    for i, v in enumerate(values):
        if not len(v):
            continue
        counts, _ = np.histogram(v, edges)
        widths = 0.8 * counts / counts.max()
        ax.barh(edges[:-1], widths, height=np.diff(edges), left=i - widths / 2, align="edge", color=color,
                linewidth=0)
        median = float(np.median(v))
        ax.plot([i - 0.4, i + 0.4], [median, median], color="black", linewidth=1)
    if log:
        ax.set_yscale("log")


def _dead_and_rare_bars(bars: Axes, stats: HealthStats) -> None:
    """Stacked bars of the share of dead and of rare channels per layer, each labelled with its count and the
    firing share of the layer's least active channel."""
    layers = stats.layers
    x = np.arange(len(layers))
    dead = np.array([stats.dead(layer).mean() for layer in layers])
    rare = np.array([stats.rare(layer).mean() for layer in layers])
    bars.bar(x, 100 * dead, color="#b2182b", label="dead (never above zero)")
    bars.bar(x, 100 * rare, bottom=100 * dead, color="#f4a582",
             label=f"rare (above zero on < {100 * stats.rare_fraction:g} % of the images)")
    for i, layer in enumerate(layers):
        count = int(stats.dead(layer).sum() + stats.rare(layer).sum())
        least = stats.firing[layer].min() / stats.images
        bars.annotate(f"{count}/{len(stats.peak[layer])}\nleast {floor_percent(least)} %",
                      (i, 100 * (dead[i] + rare[i])), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                      textcoords="offset points")
    bars.set_ylabel("channels (%)")
    bars.set_ylim(0, max(5.0, 100 * float((dead + rare).max()) * 1.25))
    bars.legend(loc="upper left", fontsize=8, frameon=False)
    bars.set_title(f"{Path(stats.model).name} over {stats.images} images: dead and rare channels per layer "
                   "(least: the share of images the least active channel fires on)", fontsize=9)


def health_figure(stats: HealthStats) -> np.ndarray:
    """Three panels over the conv layers -> (H, W, 3) uint8: the share of dead and of rare channels (stacked bars),
    the histogram of the channels' peaks (log scale, live channels) and of the filter norms (dead channels' norms
    as red dots)."""
    layers = stats.layers
    x = np.arange(len(layers))
    fig = new_figure(11, 10)
    bars, peaks, norms = fig.subplots(3, 1, gridspec_kw={"height_ratios": [0.7, 1, 1]})
    _dead_and_rare_bars(bars, stats)

    _histogram_columns(peaks, [stats.peak[layer][stats.peak[layer] > 0] for layer in layers], True, "#4393c3")
    peaks.set_ylabel("channel's peak activation")
    peaks.set_title("each channel's largest activation on the data set (live channels; black: median)", fontsize=9)

    _histogram_columns(norms, [stats.filter_norms[layer] for layer in layers], False, "#5aae61")
    for i, layer in enumerate(layers):
        off = stats.filter_norms[layer][stats.dead(layer)]
        norms.plot(np.full(len(off), i), off, "o", color="#b2182b", markersize=2.5, alpha=0.7)
    norms.set_ylabel("filter L2 norm (BN folded)")
    norms.set_title("norm of each output filter (black: median; red dots: dead channels)", fontsize=9)
    for ax in (bars, peaks, norms):
        ax.set_xticks(x, layers, fontsize=8)
        ax.set_xlim(-0.6, len(layers) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    return figure_to_array(fig)
