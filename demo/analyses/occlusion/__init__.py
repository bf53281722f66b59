"""``python -m demo.occlusion``: occlusion sensitivity (Zeiler & Fergus, Fig. 7).

    python -m demo.occlusion cat.jpg --out out/occlusion
    python -m demo.occlusion cat.jpg --size 32 --stride 8 --label Bengal --out out/occlusion

A grey square (the data set's mean colour, i.e. zero in the normalised input) is slid over the image; for each
position the occluded image goes through the network (in batches) and three maps are recorded:

- ``probability``: the probability of the target class: the true class when ``--label`` gives it, else the class
  predicted on the unoccluded image. Where it drops, the network looks.
- ``activation``: the total activation (sum over the map) of the strongest feature map of conv5_3 (the channel
  with the largest single activation on the unoccluded image). Where it drops, that unit looks.
- ``class``: the most likely class with the square there (the paper's map of the predicted class).

Geometry: square i (row) and j (column) covers rows ``i * stride + (stride - size) // 2`` onwards (``size`` of
them, clipped to the image), so the square is centred on the cell [i * stride, (i + 1) * stride) of a grid of
ceil(H / stride) x ceil(W / stride) cells that tiles the image; map entry (i, j) is drawn on that cell.

Writes into DIR: ``occlusion.png`` (the image and the three maps side by side), ``probability.png``,
``activation.png``, ``class.png`` (each map overlaid on the image, with a colour bar), ``input.png`` and
``occlusion.npz`` (the raw maps and the geometry).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from base import spec
from demo.analyses.figures import class_name, figure_to_array, new_figure
from demo.onnx_forward import OnnxModel
from demo.preprocess import deprocess

if TYPE_CHECKING:
    pass

MAPS = ("probability", "activation", "class")


@dataclass
class OcclusionResult:
    """The maps of one image; (nh, nw) arrays, entry (i, j) = the square centred on grid cell (i, j)."""

    probability: np.ndarray  # (nh, nw) float32, p(target) with the square there
    activation: np.ndarray  # (nh, nw) float32, sum of the ``channel`` map of ``layer`` with the square there
    top_class: np.ndarray  # (nh, nw) int64, the most likely class with the square there
    top_probability: np.ndarray  # (nh, nw) float32, its probability
    target: int  # the class whose probability is mapped
    target_is_label: bool  # True: the given true class; False: the prediction on the unoccluded image
    channel: int  # the strongest feature map of ``layer`` on the unoccluded image
    layer: str
    base_probs: np.ndarray  # (K,) float32, probabilities on the unoccluded image
    base_activation: float  # the channel's total activation on the unoccluded image
    size: int  # side of the square in pixels
    stride: int  # pixels between neighbouring positions (= the side of a grid cell)
    tops: np.ndarray  # (nh,) int64, first row of the square (before clipping) per map row
    lefts: np.ndarray  # (nw,) int64, first column per map column
    height: int  # image size in pixels
    width: int


def square_positions(height: int, width: int, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """First rows (nh,) and first columns (nw,) of the squares, unclipped: position i starts at
    ``i * stride + (stride - size) // 2``, which centres the square on the grid cell [i * stride, (i + 1) * stride).
    """
    if size < 1 or stride < 1:
        raise ValueError(f"size and stride must be at least 1, got {size} and {stride}")
    offset = (stride - size) // 2
    rows = -(-height // stride)
    cols = -(-width // stride)
    return np.arange(rows) * stride + offset, np.arange(cols) * stride + offset


def occlude(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """A copy of ``image`` (N, 3, H, W), normalised, with the square (top, left, size) set to 0 (the mean colour);
    the square is clipped to the image."""
    N, C, H, W = image.shape
    out = np.array(image, dtype=np.float32, copy=True)
    out[:, :, max(top, 0) : max(min(top + size, H), 0), max(left, 0) : max(min(left + size, W), 0)] = 0.0
    return out


def occlusion_maps(model: OnnxModel, image: np.ndarray, size: int = 48, stride: int = 16, target: int | None = None,
                   layer: str = "conv5_3", batch_size: int = 16, progress: Callable[[int, int], None] | None = None,
                   bar: bool = True) -> OcclusionResult:
    """Slide the grey square over ``image`` (1, 3, H, W) normalised and record the three maps (see the module).

    ``target``: the true class (None: the class predicted on the unoccluded image). ``progress(done, total)`` is
    called after each batch of occluded images.
    """
    N, C, H, W = image.shape
    if N != 1:
        raise ValueError(f"expected one image, got a batch of {N}")
    if layer not in spec.CONV_LAYERS:
        raise ValueError(f"unknown layer {layer!r}")
    names = [spec.PROBS_NAME, layer]
    feed = lambda x: model.session_for(names).run(names, {spec.INPUT_NAME: np.ascontiguousarray(x, np.float32)})  # noqa: E731
    base_probs, base_act = feed(image)
    K = base_probs.shape[1]
    if target is not None and not 0 <= target < K:
        raise ValueError(f"the model has classes 0..{K - 1}, got target {target}")
    channel = int(base_act[0].reshape(base_act.shape[1], -1).max(axis=1).argmax())
    goal = int(base_probs[0].argmax()) if target is None else int(target)

    tops, lefts = square_positions(H, W, size, stride)
    positions = [(t, lf) for t in tops for lf in lefts]
    probability = np.empty(len(positions), np.float32)
    activation = np.empty(len(positions), np.float32)
    top_class = np.empty(len(positions), np.int64)
    top_probability = np.empty(len(positions), np.float32)
    with tqdm(total=len(positions), unit="pos", desc="occluding", disable=not bar or len(positions) < 64,
              file=sys.stderr) as pbar:
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            batch = np.concatenate([occlude(image, int(t), int(lf), size) for t, lf in chunk])
            probs, act = feed(batch)
            end = start + len(chunk)
            probability[start:end] = probs[:, goal]
            activation[start:end] = act[:, channel].sum(axis=(1, 2))
            top_class[start:end] = probs.argmax(axis=1)
            top_probability[start:end] = probs.max(axis=1)
            pbar.update(len(chunk))
            if progress is not None:
                progress(end, len(positions))
    shape = (len(tops), len(lefts))
    return OcclusionResult(probability.reshape(shape), activation.reshape(shape), top_class.reshape(shape),
                           top_probability.reshape(shape), goal, target is not None, channel, layer,
                           base_probs[0].astype(np.float32), float(base_act[0, channel].sum()), size, stride,
                           tops.astype(np.int64), lefts.astype(np.int64), H, W)


# ----------------------------------------------------------------------------------------------------------------
# Figures


def _draw_map(fig, ax, result: OcclusionResult, picture: np.ndarray, which: str,
              class_names: Sequence[str] | None, alpha: float) -> None:
    from matplotlib.colors import BoundaryNorm, ListedColormap

    nh, nw = result.probability.shape
    # cell (i, j) covers pixels [i * stride, (i + 1) * stride); imshow puts pixel p's centre at p, its edge at p - 0.5
    extent = (-0.5, nw * result.stride - 0.5, nh * result.stride - 0.5, -0.5)
    ax.imshow(picture)
    target = class_name(class_names, result.target)
    kind = "true" if result.target_is_label else "predicted"
    if which == "probability":
        im = ax.imshow(result.probability, extent=extent, cmap="viridis", alpha=alpha, vmin=0.0,
                       vmax=max(float(result.probability.max()), 1e-6), interpolation="nearest")
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(f"p({target})")
        ax.set_title(f"p({target}), {kind} class\nunoccluded {result.base_probs[result.target]:.3f}", fontsize=9)
    elif which == "activation":
        im = ax.imshow(result.activation, extent=extent, cmap="magma", alpha=alpha, interpolation="nearest")
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label("total activation")
        ax.set_title(f"{result.layer} channel {result.channel}, total activation\n"
                     f"unoccluded {result.base_activation:.3g}", fontsize=9)
    elif which == "class":
        present = np.unique(result.top_class)
        import matplotlib

        colours = matplotlib.colormaps["tab20"](np.arange(len(present)) % 20)
        index = np.searchsorted(present, result.top_class)
        cmap = ListedColormap(colours)
        norm = BoundaryNorm(np.arange(len(present) + 1) - 0.5, len(present))
        im = ax.imshow(index, extent=extent, cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest")
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, ticks=np.arange(len(present)))
        bar.ax.set_yticklabels([class_name(class_names, int(c))[:18] for c in present], fontsize=7)
        ax.set_title("most likely class", fontsize=9)
    else:
        raise ValueError(f"which must be one of {MAPS} or 'all', got {which!r}")
    ax.set_xlim(-0.5, result.width - 0.5)
    ax.set_ylim(result.height - 0.5, -0.5)
    ax.set_axis_off()


def occlusion_figure(result: OcclusionResult, picture: np.ndarray, which: str = "all",
                     class_names: Sequence[str] | None = None, alpha: float = 0.6) -> np.ndarray:
    """The maps overlaid on ``picture`` (H, W, 3) uint8 (the image as the network saw it, ``deprocess``'d), each
    with a colour bar -> (h, w, 3) uint8 RGB. ``which``: "probability", "activation", "class", or "all" (the
    image and the three maps side by side, the paper's Fig. 7 columns)."""
    panels = list(MAPS) if which == "all" else [which]
    fig = new_figure(3.4 * len(panels) + (2.6 if which == "all" else 0), 3.2)
    axes = fig.subplots(1, len(panels) + (which == "all"), squeeze=False)[0]
    if which == "all":
        axes[0].imshow(picture)
        axes[0].set_title(f"square {result.size} px, stride {result.stride} px", fontsize=9)
        axes[0].set_axis_off()
        axes = axes[1:]
    for ax, name in zip(axes, panels, strict=True):
        _draw_map(fig, ax, result, picture, name, class_names, alpha)
    return figure_to_array(fig)


def describe(result: OcclusionResult, class_names: Sequence[str] | None = None) -> str:
    """A short Markdown summary of the maps: the target, its probability unoccluded and at the most sensitive
    place, and the followed feature map."""
    i, j = np.unravel_index(int(result.probability.argmin()), result.probability.shape)
    name = class_name(class_names, result.target)
    kind = "true" if result.target_is_label else "predicted"
    changed = int((result.top_class != int(result.base_probs.argmax())).sum())
    return (f"**{name}** ({kind} class): p = {result.base_probs[result.target]:.3f} unoccluded, lowest "
            f"{result.probability[i, j]:.3f} with the square over rows {max(int(result.tops[i]), 0)}-"
            f"{min(int(result.tops[i]) + result.size, result.height) - 1}, columns {max(int(result.lefts[j]), 0)}-"
            f"{min(int(result.lefts[j]) + result.size, result.width) - 1}.  \n"
            f"{result.layer} channel {result.channel}: total activation {result.base_activation:.3g} unoccluded, "
            f"{result.activation.min():.3g} to {result.activation.max():.3g} occluded.  \n"
            f"The most likely class changes at {changed} of {result.top_class.size} positions.")


def occlusion_view(model: OnnxModel, image: np.ndarray, size: int = 48, stride: int = 16, target: int | None = None,
                   which: str = "all", progress: Callable[[int, int], None] | None = None
                   ) -> tuple[np.ndarray, str, OcclusionResult]:
    """Everything the app shows for ``image`` (1, 3, H, W) normalised: the figure (h, w, 3) uint8 (``which`` as in
    ``occlusion_figure``), its Markdown summary, and the raw result. Costs ceil(H / stride) * ceil(W / stride)
    forward passes (196 at 224 px with stride 16)."""
    result = occlusion_maps(model, image, size, stride, target, progress=progress, bar=False)
    picture = deprocess(image, model.mean, model.std)
    return occlusion_figure(result, picture, which, model.class_names), describe(result, model.class_names), result
