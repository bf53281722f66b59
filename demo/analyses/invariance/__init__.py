"""``python -m demo.invariance``: how the features and the prediction change under translation, scaling and
rotation (Zeiler & Fergus, Fig. 5).

    python -m demo.invariance cat1.jpg cat2.jpg cat3.jpg --out out/invariance
    python -m demo.invariance ../shared/data/cat12/cat_12_train --limit 5 \\
        --labels ../shared/data/cat12/train_list.txt --out out/invariance
    python -m demo.invariance cat.jpg --rotate 0:360:30 --scale 0.5:2:0.25 --translate=-48:48:16 --out out/inv

(a range that starts with a minus sign needs the ``=`` form, ``--translate=-48:48:16``, or argparse takes it for
an option)

Each image is first brought to the network's input (resized, cropped, normalised); the transforms act on that
picture, about its centre, and what they uncover is filled with the mean colour (zero in normalised space):

- ``translation``: vertical shift by t pixels (positive: down), exact (whole pixels);
- ``scale``: zoom by a factor s about the centre (s > 1 enlarges), bilinear;
- ``rotation``: by a degrees counter-clockwise about the centre, bilinear.

For each transformed image and each layer (conv1_2, conv3_3, conv5_3 by default) the distance to the original
is the Euclidean distance between the layers' whole feature vectors (all C * h * w activations after ReLU),
**divided by the norm of the original's feature vector**: 0 means unchanged, 1 means a change as large as the
features themselves (the paper plots the raw Euclidean distance; the normalisation makes layers of very
different magnitudes comparable on one axis). Also recorded: the probability of the true class (``--labels`` /
``--label``; else the class predicted on the untransformed image).

Writes into DIR: ``invariance.png`` (rows: translation, scale, rotation; columns: the layers' distances and the
probability; one curve per image), ``invariance_<transform>.png`` (one row each), ``examples_<transform>.png``
(the first image under each transform) and ``invariance.npz`` (every number).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from base import spec
from demo.analyses.figures import figure_to_array, new_figure
from demo.display import tile_images
from demo.onnx_forward import OnnxModel
from demo.preprocess import deprocess

TRANSFORMS = ("translation", "scale", "rotation")
DEFAULT_LAYERS = ("conv1_2", "conv3_3", "conv5_3")
UNITS = {"translation": "vertical shift (px)", "scale": "scale factor", "rotation": "rotation (degrees)"}


def default_ranges(size: int = spec.INPUT_SIZE, quick: bool = False) -> dict[str, np.ndarray]:
    """The parameters of each transform: translation +-60 px at 224 px (scaled to ``size``, 13 steps), scale
    0.6 ... 1.8 (13), rotation 0 ... 360 degrees every 15 (25). ``quick``: about half as many points (for the app)."""
    shift = round(60 * size / 224)
    n = 7 if quick else 13
    return {"translation": np.unique(np.round(np.linspace(-shift, shift, n))).astype(np.float64),
            "scale": np.round(np.linspace(0.6, 1.8, n), 4),
            "rotation": np.arange(0.0, 361.0, 30.0 if quick else 15.0)}


# ----------------------------------------------------------------------------------------------------------------
# Transforms of a normalised (3, H, W) picture; uncovered pixels are 0 (the mean colour)


def translate(x: np.ndarray, shift: float) -> np.ndarray:
    """Shift ``x`` (C, H, W) down by ``shift`` whole pixels (negative: up), filling with 0."""
    C, H, W = x.shape
    t = int(round(shift))
    out = np.zeros_like(x)
    if t >= 0:
        out[:, t:] = x[:, : max(H - t, 0)]
    else:
        out[:, : max(H + t, 0)] = x[:, -t:]
    return out


def warp(x: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Bilinear warp of ``x`` (C, H, W) about its centre: output pixel p samples x at centre + inverse @ (p - centre)
    (p in (row, col) order); samples outside the picture are 0."""
    C, H, W = x.shape
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    sy = cy + inverse[0, 0] * (rows - cy) + inverse[0, 1] * (cols - cx)
    sx = cx + inverse[1, 0] * (rows - cy) + inverse[1, 1] * (cols - cx)
    y0, x0 = np.floor(sy), np.floor(sx)
    wy, wx = (sy - y0).astype(np.float32), (sx - x0).astype(np.float32)
    padded = np.zeros((C, H + 2, W + 2), dtype=np.float32)  # a zero border: every outside sample reads 0
    padded[:, 1:-1, 1:-1] = x

    def at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return padded[:, np.clip(r, -1, H).astype(np.int64) + 1, np.clip(c, -1, W).astype(np.int64) + 1]

    return ((1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x0 + 1))
            + wy * ((1 - wx) * at(y0 + 1, x0) + wx * at(y0 + 1, x0 + 1))).astype(np.float32)


def transform(x: np.ndarray, kind: str, value: float) -> np.ndarray:
    """``x`` (C, H, W) normalised under one transform: "translation" (pixels down), "scale" (factor) or
    "rotation" (degrees counter-clockwise)."""
    if kind == "translation":
        return translate(x, value)
    if kind == "scale":
        if value <= 0:
            raise ValueError(f"scale must be positive, got {value}")
        return warp(x, np.eye(2) / value)
    if kind == "rotation":
        a = math.radians(value)
        # counter-clockwise on screen (rows grow downwards): output (dy, dx) samples the input rotated back
        return warp(x, np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]))
    raise ValueError(f"kind must be one of {TRANSFORMS}, got {kind!r}")


# ----------------------------------------------------------------------------------------------------------------
# The curves


@dataclass
class InvarianceResult:
    """Distances and probabilities per transform; arrays (N, T): N images, T parameter values."""

    params: dict[str, np.ndarray]  # transform -> (T,) parameter values
    distances: dict[str, dict[str, np.ndarray]]  # transform -> layer -> (N, T) ||f(Tx) - f(x)|| / ||f(x)||
    probability: dict[str, np.ndarray]  # transform -> (N, T) probability of the target class
    targets: np.ndarray  # (N,) int64 target class per image
    target_is_label: np.ndarray  # (N,) bool: True for a given true class, False for the prediction
    layers: tuple[str, ...]
    names: list[str] = field(default_factory=list)  # one label per image, for legends


def relative_distance(original: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """||changed_t - original|| / ||original|| per row t: original (1, ...) or (...), changed (T, ...) -> (T,).

    NaN where the original's feature vector is all zero (the ratio is undefined).
    """
    f0 = np.asarray(original, dtype=np.float64).reshape(-1)
    f = np.asarray(changed, dtype=np.float64).reshape(len(changed), -1)
    norm = np.linalg.norm(f0)
    d = np.linalg.norm(f - f0, axis=1)
    return d / norm if norm > 0 else np.full(len(f), np.nan)


def invariance_curves(model: OnnxModel, images: np.ndarray, targets: Sequence[int | None] | None = None,
                      ranges: Mapping[str, Sequence[float]] | None = None, layers: Sequence[str] = DEFAULT_LAYERS,
                      batch_size: int = 8, names: Sequence[str] | None = None,
                      progress: Callable[[int, int], None] | None = None, bar: bool = True) -> InvarianceResult:
    """The curves of ``images`` (N, 3, H, W) normalised under each transform of ``ranges`` (default
    ``default_ranges(H)``). ``targets``: the true class per image (None entries: the predicted class)."""
    N, C, H, W = images.shape
    ranges = {k: np.asarray(v, dtype=np.float64) for k, v in (ranges or default_ranges(H)).items()}
    unknown = [k for k in ranges if k not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform(s) {unknown}; expected {TRANSFORMS}")
    outputs = [spec.PROBS_NAME, *layers]
    feed = lambda x: model.session_for(outputs).run(outputs, {spec.INPUT_NAME: np.ascontiguousarray(x, np.float32)})  # noqa: E731
    targets = list(targets) if targets is not None else [None] * N
    if len(targets) != N:
        raise ValueError(f"{len(targets)} targets for {N} images")
    result = InvarianceResult({k: v for k, v in ranges.items()},
                              {k: {layer: np.empty((N, len(v)), np.float32) for layer in layers}
                               for k, v in ranges.items()},
                              {k: np.empty((N, len(v)), np.float32) for k, v in ranges.items()},
                              np.zeros(N, np.int64), np.array([t is not None for t in targets]), tuple(layers),
                              list(names) if names is not None else [f"image {n}" for n in range(N)])
    total = N * sum(len(v) for v in ranges.values())
    done = 0
    with tqdm(total=total, unit="img", desc="transforming", disable=not bar or total < 64, file=sys.stderr) as pbar:
        for n in range(N):
            base = feed(images[n : n + 1])
            goal = int(base[0][0].argmax()) if targets[n] is None else int(targets[n])
            result.targets[n] = goal
            for kind, values in ranges.items():
                for start in range(0, len(values), batch_size):
                    chunk = values[start : start + batch_size]
                    out = feed(np.stack([transform(images[n], kind, float(v)) for v in chunk]))
                    end = start + len(chunk)
                    result.probability[kind][n, start:end] = out[0][:, goal]
                    for i, layer in enumerate(layers):
                        result.distances[kind][layer][n, start:end] = relative_distance(base[1 + i], out[1 + i])
                    done += len(chunk)
                    pbar.update(len(chunk))
                    if progress is not None:
                        progress(done, total)
    return result


def invariance_figure(result: InvarianceResult, class_names: Sequence[str] | None = None,
                      kinds: Sequence[str] | None = None) -> np.ndarray:
    """The paper's Fig. 5 layout -> (h, w, 3) uint8 RGB: one row per transform (``kinds``, default all of the
    result's), one column per layer (relative feature distance) and a last one for p(true class); a curve per
    image."""
    kinds = list(kinds or result.params)
    cols = len(result.layers) + 1
    fig = new_figure(2.9 * cols, 2.3 * len(kinds) + 0.5)
    axes = fig.subplots(len(kinds), cols, squeeze=False)
    N = len(result.targets)
    for r, kind in enumerate(kinds):
        x = result.params[kind]
        for c in range(cols):
            ax = axes[r, c]
            for n in range(N):
                if c < len(result.layers):
                    y = result.distances[kind][result.layers[c]][n]
                else:
                    y = result.probability[kind][n]
                label = result.names[n] if n < len(result.names) else f"image {n}"
                ax.plot(x, y, marker="o", markersize=2.5, linewidth=1.2, label=label)
            if c < len(result.layers):
                ax.set_title(f"{result.layers[c]}: distance / norm", fontsize=9)
            else:
                ax.set_title("p(true class)" if result.target_is_label.all() else "p(true or predicted class)",
                             fontsize=9)
                ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(UNITS[kind], fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if class_names is not None:
        labels = [f"{lab} ({class_names[t] if 0 <= t < len(class_names) else t})"
                  for lab, t in zip(labels, result.targets, strict=True)]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(N, 5), fontsize=8)
    return figure_to_array(fig)


def invariance_view(model: OnnxModel, image: np.ndarray, target: int | None = None, quick: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, InvarianceResult]:
    """The curves of one image (1, 3, H, W) normalised, as the app shows them: the figure (h, w, 3) uint8 and the
    raw result. ``target``: the true class (None: the predicted one). ``quick``: ``default_ranges(H, quick=True)``
    (about 20 forward passes instead of 50)."""
    N, C, H, W = image.shape
    result = invariance_curves(model, image, [target] * N, default_ranges(H, quick), progress=progress, bar=False,
                               names=["this image"] if N == 1 else None)
    return invariance_figure(result, model.class_names), result


def examples_strip(image: np.ndarray, kind: str, values: Sequence[float], mean, std, count: int = 7) -> np.ndarray:
    """``count`` of the transformed versions of ``image`` (3, H, W) normalised, side by side with their parameter
    -> (h, w, 3) uint8 RGB (the paper's first column)."""
    picks = np.unique(np.linspace(0, len(values) - 1, min(count, len(values))).round().astype(int))
    pictures = [deprocess(transform(image, kind, float(values[i])), mean, std) for i in picks]
    return tile_images(pictures, [f"{values[i]:g}" for i in picks])


# ----------------------------------------------------------------------------------------------------------------
# The command line


def parse_range(text: str) -> np.ndarray:
    """"START:STOP:STEP" (STOP included when on the grid) or "v1,v2,..." -> the values."""
    if ":" in text:
        parts = [float(p) for p in text.split(":")]
        if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
            raise ValueError(f"expected START:STOP:STEP with STEP > 0 and STOP >= START, got {text!r}")
        start, stop, step = parts
        return np.round(start + step * np.arange(int(math.floor((stop - start) / step + 1e-9)) + 1), 6)
    return np.array([float(v) for v in text.split(",") if v.strip()])
