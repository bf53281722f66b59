"""The app's views of one upload, as files and captions for the page: "All layers" and the layer explorer.

Each view takes the ``Pipeline`` (forward pass and projections, cached) and turns arrays into pictures with
``demo.display``: whole-layer reconstructions streamed layer by layer, a layer's feature-map grid, the k strongest
channels each projected alone, and one channel next to the image patch its unit sees (the unit's receptive field,
``base.spec.field_box``, the same window as the atlas's).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from base.display import map_image, reconstruction_image
from base.spec import CONV_LAYERS, conv_channels, field_box, stride_of
from demo import display
from demo.app.inputs import (
    InputError,
    Source,
    check,
    check_channel,
    check_class,
    whole_number,
)
from demo.app.pipeline import Forward, Pipeline, top_predictions
from demo.app.text import Timings, channel_caption, explorer_summary, layer_caption
from demo.display import GridLayout


@dataclass
class Analysis:
    """The "All layers" result. While it streams, ``layers`` grows and ``done`` is False."""

    prediction: dict[str, float]  # top-5 breed -> probability, best first
    layers: list[tuple[str, str]]  # (PNG path, caption) per conv layer so far, conv1_1 first
    network_input: str  # PNG of what the network saw (resized, cropped)
    npz: str | None  # the raw float32 reconstructions (once done)
    timings: Timings
    notes: list[str]
    done: bool


@dataclass
class ChannelView:
    """One channel of a layer: its feature map, its strongest activation projected alone, the image patch."""

    layer: str
    channel: int
    value: float  # the strongest activation of the channel
    feature_map: str  # PNG: the channel's map, enlarged to the input's size
    projection: str  # PNG: the projection, full frame
    crop: str  # PNG: the projection cut to the unit's receptive field, enlarged
    patch: str  # PNG: the same window of the network's input, enlarged
    caption: str  # markdown


@dataclass
class Exploration:
    """The "Layer explorer" result for one layer."""

    layer: str
    grid: str  # PNG: every channel's feature map, tiled by ``layout``
    layout: GridLayout
    merged: str  # PNG: the sum of the channels (the "merged" view)
    topk: list[tuple[str, str]]  # (PNG path, caption) of the k strongest channels, strongest first
    channels: list[int]
    values: list[float]
    selected: ChannelView  # the strongest channel
    summary: str  # markdown
    timings: Timings


# --- "All layers" ---------------------------------------------------------------------------------------------

def analyse(pipeline: Pipeline, source: Source, norm: str = "minmax", resize: str = "crop",
            rule: str = "deconvnet", tta: bool = False) -> Iterator[Analysis]:
    """Predict and project every conv layer of ``source`` back to pixels with ``rule``, yielding as results arrive.

    The first ``Analysis`` carries the prediction and no layer; each following one adds the next layer's
    whole-layer reconstruction (conv1_1 ... conv5_3); the last has all 13, the .npz (keys ``conv1_1/layer/RULE``
    ...) and ``done`` True. ``tta``: the prediction averages the image's and its mirror image's probabilities
    (the projections are the image's own).
    """
    check("normalisation", norm)
    check("backward rule", rule)
    fwd, cached = pipeline.forward(source, resize)
    timings = pipeline.timings_for(fwd, cached)
    store, folder = pipeline.store, pipeline.store.request_dir()
    start = time.perf_counter()
    network_input = store.png(_enlarge(pipeline, fwd.pixels), folder, "input")
    prediction = top_predictions(pipeline.probs(fwd, tta), pipeline.model.class_names)
    timings.encoding += time.perf_counter() - start
    layers: list[tuple[str, str]] = []
    yield Analysis(prediction, list(layers), network_input, None, timings, fwd.notes, False)
    recons = {}
    for layer in CONV_LAYERS:
        recons[layer], seconds = pipeline.layer_projection(fwd, layer, rule)
        timings.deconvnet += seconds
        start = time.perf_counter()
        picture, flat = reconstruction_image(recons[layer], norm)
        layers.append((store.png(picture, folder, layer), layer_caption(layer, flat)))
        timings.encoding += time.perf_counter() - start
        if layer != CONV_LAYERS[-1]:
            yield Analysis(prediction, list(layers), network_input, None, timings, fwd.notes, False)
    start = time.perf_counter()
    npz = folder / "reconstructions.npz"
    np.savez(npz, input=fwd.x, probs=fwd.probs[None], **{f"{layer}/layer/{rule}": r for layer, r in recons.items()})
    timings.encoding += time.perf_counter() - start
    pipeline.remember(fwd, ("analyse", rule), timings)
    pipeline.history.append(("analyse", timings))
    yield Analysis(prediction, layers, network_input, str(npz), timings, fwd.notes, True)


def analyse_all(pipeline: Pipeline, source: Source, norm: str = "minmax", resize: str = "crop",
                rule: str = "deconvnet", tta: bool = False) -> Analysis:
    """``analyse`` run to the end: the final ``Analysis`` only."""
    *_, last = analyse(pipeline, source, norm, resize, rule, tta)
    return last


# --- "Layer explorer" -------------------------------------------------------------------------------------------

def grid_layout(pipeline: Pipeline, layer: str) -> GridLayout:
    """The feature-grid layout of ``layer`` at the pipeline's input size (no forward pass needed)."""
    check("layer", layer)
    side = pipeline.size // stride_of(layer)
    return GridLayout.for_maps(conv_channels(layer), side, side)


def channel_at(pipeline: Pipeline, layer: str, x: float, y: float) -> int | None:
    """The channel under pixel (x, y) of ``layer``'s feature grid picture, or None (a gap, outside)."""
    return grid_layout(pipeline, layer).channel_at(x, y)


def explore(pipeline: Pipeline, source: Source, layer: str = "conv5_3", k: int = 9, norm: str = "minmax",
            resize: str = "crop", rule: str = "deconvnet") -> Exploration:
    """``layer``'s feature maps (each channel, and merged) and the paper's view: the k channels with the
    strongest activation, each projected alone from that activation with ``rule``, cut to the unit's receptive
    field."""
    check("layer", layer)
    check("normalisation", norm)
    check("backward rule", rule)
    C = conv_channels(layer)
    k = whole_number(k, "k")
    if not 1 <= k <= C:
        raise InputError(f"k must be between 1 and {C} for {layer}, got {k}.")
    fwd, cached = pipeline.forward(source, resize)
    timings = pipeline.timings_for(fwd, cached)
    p, timings.deconvnet = pipeline.projection(fwd, layer, "topk", k, rule)
    start = time.perf_counter()
    store, folder = pipeline.store, pipeline.store.request_dir()
    act = fwd.activations[layer][0]  # (C, h, w)
    C, h, w = act.shape
    grid, flags, layout = display.feature_grid(act, norm, grid_layout(pipeline, layer))
    merged, _ = map_image(display.merge_channels(act), norm)
    merged = _enlarge(pipeline, display.upscale(merged, pipeline.size // h))
    topk = []
    for rank, (c, v, image) in enumerate(zip(p.channels.tolist(), p.values.tolist(), p.images, strict=True)):
        crop, _ = _field_crops(pipeline, fwd, layer, c, image, norm)
        topk.append((store.png(crop, folder, f"top{rank:02d}_ch{c}"), f"ch {c} · {v:.3g}"))
    selected = _channel_view(pipeline, fwd, layer, int(p.channels[0]), norm, folder, p.images[0], float(p.values[0]))
    result = Exploration(layer, store.png(grid, folder, "grid"), layout, store.png(merged, folder, "merged"), topk,
                         p.channels.tolist(), p.values.tolist(), selected,
                         explorer_summary(layer, C, h, w, int(flags.sum())), timings)
    timings.encoding += time.perf_counter() - start
    pipeline.remember(fwd, ("explore", layer, k, rule), timings)
    pipeline.history.append(("explore", timings))
    return result


def channel(pipeline: Pipeline, source: Source, layer: str, number: int | float, norm: str = "minmax",
            resize: str = "crop", rule: str = "deconvnet") -> ChannelView:
    """One channel of ``layer``: feature map, its strongest activation projected alone with ``rule``, and the
    image patch."""
    check("normalisation", norm)
    check("backward rule", rule)
    c = check_channel(layer, number)
    fwd, _ = pipeline.forward(source, resize)
    projection, value, seconds = pipeline.single(fwd, layer, c, rule)
    start = time.perf_counter()
    view = _channel_view(pipeline, fwd, layer, c, norm, pipeline.store.request_dir(), projection, value)
    pipeline.history.append(("channel", Timings(deconvnet=seconds, encoding=time.perf_counter() - start)))
    return view


def _enlarge(pipeline: Pipeline, picture: np.ndarray) -> np.ndarray:
    return display.enlarge(picture, pipeline.config.min_picture)


def _strongest(fwd: Forward, layer: str, channel: int) -> tuple[int, int]:
    """(row, col) of the channel's strongest activation (the first in row-major order on ties)."""
    fmap = fwd.activations[layer][0, channel]  # (h, w)
    h, w = fmap.shape
    return divmod(int(fmap.argmax()), w)


def _field_crops(pipeline: Pipeline, fwd: Forward, layer: str, channel: int, projection: np.ndarray,
                 norm: str) -> tuple[np.ndarray, np.ndarray]:
    """The projection (3, S, S) of the channel's strongest unit and the input's pixels, both cut to that unit's
    receptive field (outside the image: light grey) and enlarged to ``min_tile``: two (s, s, 3) uint8 pictures."""
    top, left, side = field_box(layer, *_strongest(fwd, layer, channel))
    crop = display.projection_tile(projection, top, left, side, norm)
    patch = display.field_tile(fwd.pixels, top, left, side)
    return display.enlarge(crop, pipeline.config.min_tile), display.enlarge(patch, pipeline.config.min_tile)


def _channel_view(pipeline: Pipeline, fwd: Forward, layer: str, channel: int, norm: str, folder: Path,
                  projection: np.ndarray, value: float) -> ChannelView:
    fmap = fwd.activations[layer][0, channel]  # (h, w)
    h, w = fmap.shape
    row, col = _strongest(fwd, layer, channel)
    feature, _ = map_image(fmap, norm)
    full, _ = reconstruction_image(projection, norm)
    crop, patch = _field_crops(pipeline, fwd, layer, channel, projection, norm)
    name, store = f"{layer}_ch{channel}", pipeline.store
    return ChannelView(layer, channel, value,
                       store.png(_enlarge(pipeline, display.upscale(feature, pipeline.size // h)), folder,
                                 f"{name}_map"),
                       store.png(_enlarge(pipeline, full), folder, f"{name}_projection"),
                       store.png(crop, folder, f"{name}_crop"), store.png(patch, folder, f"{name}_patch"),
                       channel_caption(layer, channel, value, row, col, h, w))


# --- "Classes": the class score projected back to pixels ---------------------------------------------------

@dataclass
class ClassView:
    """The projections of two class scores (logits, before softmax) of one upload, side by side."""

    predicted: tuple[str, str]  # (PNG, caption) of the most probable class
    picked: tuple[str, str]  # (PNG, caption) of the class the user picked
    summary: str  # markdown
    timings: Timings


def classes(pipeline: Pipeline, source: Source, picked: str | int | None = None, norm: str = "minmax",
            resize: str = "crop", rule: str = "deconvnet") -> ClassView:
    """The projection of the predicted class's score and of ``picked``'s (a class name or index; None: the second
    most probable class), each with ``rule``."""
    check("normalisation", norm)
    check("backward rule", rule)
    fwd, cached = pipeline.forward(source, resize)
    timings = pipeline.timings_for(fwd, cached)
    names = pipeline.model.class_names
    order = np.argsort(-fwd.probs, kind="stable")
    top = int(order[0])
    chosen = int(order[1] if len(order) > 1 else order[0]) if picked in (None, "") else check_class(picked, names)
    store, folder, shown = pipeline.store, pipeline.store.request_dir(), []
    for c in (top, chosen):
        recon, logit, seconds = pipeline.class_projection(fwd, c, rule)
        timings.deconvnet += seconds
        start = time.perf_counter()
        picture, flat = reconstruction_image(recon, norm)
        caption = f"{names[c]}: logit {logit:.3g}, p = {fwd.probs[c]:.1%}" + (" (all zero)" if flat else "")
        shown.append((store.png(_enlarge(pipeline, picture), folder, f"class{c}_{rule}"), caption))
        timings.encoding += time.perf_counter() - start
    summary = (f"Each picture carries a class score (its logit, before softmax) back through the head and the 13 conv "
               f"layers with the **{rule}** rule (with *gradient* it is exactly d logit / d input). Left: the "
               "predicted breed; right: the breed you pick. If the two look alike, the picture shows the image "
               "more than the class.")
    pipeline.history.append(("classes", timings))
    return ClassView(shown[0], shown[1], summary, timings)


# --- "Rules": one picture under two backward rules, and their difference --------------------------------------

@dataclass
class RuleDifference:
    """One target projected with two rules, side by side, and their difference."""

    first: str  # PNG: the projection with the first rule
    second: str  # PNG: with the second rule
    difference: str  # PNG: first / max|first| - second / max|second|, zero at mid-grey
    caption: str  # markdown: what is shown and how alike the two are


def rule_difference(pipeline: Pipeline, source: Source, target: str = "conv5_3", first: str = "deconvnet",
                    second: str = "guided", norm: str = "minmax", resize: str = "crop") -> RuleDifference:
    """``target`` (a conv layer's whole-layer projection, or "class": the predicted class's score) projected with
    two rules; the difference of the two maps, each scaled to a largest |value| of 1, shown signed."""
    from demo.analyses.sanity.measure import similarity

    check("normalisation", norm)
    check("backward rule", first)
    check("backward rule", second)
    if target != "class":
        check("layer", target)
    fwd, _ = pipeline.forward(source, resize)
    top = int(np.argmax(fwd.probs))

    def projection(rule: str) -> np.ndarray:
        if target == "class":
            return pipeline.class_projection(fwd, top, rule)[0]
        return pipeline.layer_projection(fwd, target, rule)[0]

    a, b = projection(first), projection(second)
    scaled = [m / peak if (peak := float(np.abs(m).max())) > 0 else m for m in (a, b)]
    store, folder = pipeline.store, pipeline.store.request_dir()
    pictures = [reconstruction_image(a, norm)[0], reconstruction_image(b, norm)[0],
                reconstruction_image(scaled[0] - scaled[1], "signed")[0]]
    paths = [store.png(_enlarge(pipeline, p), folder, name) for p, name in zip(pictures, (first, second, "diff"),
                                                                               strict=True)]
    spearman_abs, spearman, ssim = similarity(a, b)
    what = f"the score of {pipeline.model.class_names[top]}" if target == "class" else f"{target} (whole layer)"
    caption = (f"{what}: **{first}** (left) and **{second}** (middle); right, their difference after scaling each to a "
               f"largest |value| of 1 (grey: equal; bright: more {first}; dark: more {second}). Alike by Spearman "
               f"rank correlation {spearman_abs:.2f} of |map| and {spearman:.2f} signed, SSIM {ssim:.2f}.")
    return RuleDifference(*paths, caption)
