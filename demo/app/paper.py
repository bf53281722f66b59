"""The paper's analyses in the app, for the current upload or a data set: occlusion sensitivity (Fig. 7), invariance
curves (Fig. 5), the top-9 atlas (Fig. 2) and the model's health (Fig. 6). Each returns PNG paths and Markdown."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from demo.analyses import invariance, occlusion
from demo.analyses.atlas.read import Atlas, load_atlas
from demo.analyses.atlas.render import atlas_view as draw_atlas_view
from demo.analyses.dataset import model_sha1
from demo.app.inputs import InputError, Source, check, check_channel, whole_number
from demo.app.pipeline import Pipeline

MAX_OCCLUSION_PASSES = 1024  # forward passes one occlusion request may cost (stride 7 at 224 px)
Progress = Callable[[int, int], None] | None  # progress(done, total), called after each batch


def default_stride(pipeline: Pipeline) -> int:
    """The occlusion stride the page starts with, in pixels: 16 on a GPU, 32 on the CPU (4x fewer passes)."""
    return 16 if pipeline.provider.startswith("CUDA") else 32


def _min_stride(size: int) -> int:
    return next(s for s in range(1, size + 1) if math.ceil(size / s) ** 2 <= MAX_OCCLUSION_PASSES)


def occlusion_for(pipeline: Pipeline, source: Source, size: int | float = 48, stride: int | float | None = None,
                  resize: str = "crop", progress: Progress = None) -> tuple[str, str]:
    """The occlusion maps of ``source`` (``demo.analyses.occlusion.occlusion_view``): the figure's PNG (the image
    and the three maps overlaid on it, with colour bars) and its Markdown summary. ``size`` and ``stride`` in input
    pixels (stride None: ``default_stride``)."""
    stride = default_stride(pipeline) if stride is None else stride
    size, stride = whole_number(size, "The square's size"), whole_number(stride, "The stride")
    if not 1 <= size <= pipeline.size:
        raise InputError(f"The square's size must be between 1 and {pipeline.size} px, got {size}.")
    if not 1 <= stride <= pipeline.size:
        raise InputError(f"The stride must be between 1 and {pipeline.size} px, got {stride}.")
    passes = math.ceil(pipeline.size / stride) ** 2
    if passes > MAX_OCCLUSION_PASSES:
        raise InputError(f"A stride of {stride} px needs {passes} forward passes; the app allows "
                         f"{MAX_OCCLUSION_PASSES}: choose a stride of at least {_min_stride(pipeline.size)} px.")
    fwd, _ = pipeline.forward(source, resize)
    figure, summary, _ = occlusion.occlusion_view(pipeline.model, fwd.x, size, stride, progress=progress)
    return pipeline.store.png(figure, pipeline.store.request_dir(), "occlusion"), summary


def invariance_for(pipeline: Pipeline, source: Source, resize: str = "crop", progress: Progress = None) -> str:
    """The invariance curves of ``source`` (``demo.analyses.invariance.invariance_view``, quick ranges): the
    figure's PNG (rows: translation, scale, rotation; columns: feature distances per layer, p(predicted class))."""
    fwd, _ = pipeline.forward(source, resize)
    figure, _ = invariance.invariance_view(pipeline.model, fwd.x, quick=True, progress=progress)
    return pipeline.store.png(figure, pipeline.store.request_dir(), "invariance")


# --- the atlas ------------------------------------------------------------------------------------------------

def atlas(atlas_dir: str | Path) -> Atlas:
    """The dataset atlas in ``atlas_dir`` (cached); FileNotFoundError if it is none."""
    return load_atlas(str(Path(atlas_dir).resolve()))


def _atlas_layer(atlas_dir: str | Path, layer: str) -> Atlas:
    found = atlas(atlas_dir)
    if layer not in found.layers:
        raise InputError(f"The atlas has layers {', '.join(found.layers)}, not {layer!r}.")
    return found


def atlas_channels(atlas_dir: str | Path, layer: str) -> list[int]:
    """The channels of ``layer`` in the atlas, strongest top activation first (dead channels last)."""
    return _atlas_layer(atlas_dir, layer).ranked_channels(layer).tolist()


def atlas_view(pipeline: Pipeline, atlas_dir: str | Path, layer: str, channel: int | float,
               rule: str | None = None) -> tuple[str, str]:
    """``layer``'s ``channel`` in the atlas: the PNG of its k projections (left) beside their image patches
    (right), and the Markdown caption. ``rule``: the projections' backward rule (None: the atlas's own). A
    picture not drawn yet is drawn now, when the atlas was mined with this pipeline's model."""
    found = _atlas_layer(atlas_dir, layer)
    c = check_channel(layer, channel, found.channels(layer))
    rule = check("backward rule", rule) if rule is not None else None
    own = found.info.get("model_sha1") == model_sha1(pipeline.model.path)
    try:
        picture = draw_atlas_view(found, layer, c, pipeline.model if own else None, rule)
    except FileNotFoundError:
        raise InputError(f"{layer} channel {c} has no picture in the atlas yet, and the atlas was mined with "
                         f"another model: run python -m demo.mine --out {found.dir} --resume.") from None
    caption = found.caption(layer, c)
    if rule not in (None, found.rule):
        caption += f"\n\nProjections drawn with the **{rule}** rule (the atlas's own: {found.rule})."
    return pipeline.store.png(picture, pipeline.store.request_dir(), f"atlas_{layer}_ch{c}_{rule}"), caption


# --- model health ---------------------------------------------------------------------------------------------

def health_for(pipeline: Pipeline, health_dir: str | Path | None = None) -> tuple[str, str | None, str]:
    """The model's conv1_1 filters as a picture (always: they need no data), and with ``health_dir`` (the --out
    folder of ``python -m demo.health``) the per-layer health figure: (filters PNG, figure PNG or None, Markdown)."""
    from demo.analyses.health.view import health_view

    filters, figure, summary = health_view(pipeline.model, health_dir)
    folder = pipeline.store.request_dir()
    figure_png = pipeline.store.png(figure, folder, "health") if figure is not None else None
    return pipeline.store.png(filters, folder, "conv1_filters"), figure_png, summary


# --- sanity checks (Adebayo et al. 2018; Nie et al. 2018; Sixt et al. 2020) -----------------------------------

def sanity_for(pipeline: Pipeline, source: Source, target: str = "conv5_3", norm: str = "minmax",
               resize: str = "crop", progress: Progress = None) -> tuple[str, str, str]:
    """The cascading-randomization checks of ``source``'s projection of ``target`` ("conv5_3", "LAYER/CHANNEL",
    "class"), every rule: the filmstrip's PNG (rows: rules; columns: randomization steps), the curves' PNG and the
    Markdown summary (``demo.analyses.sanity.view.sanity_view``)."""
    from demo.analyses.sanity.view import sanity_view

    fwd, _ = pipeline.forward(source, resize)
    try:
        strip, curves, summary = sanity_view(pipeline.model, fwd.x, target, progress=progress, norm=norm)
    except ValueError as err:
        raise InputError(str(err)) from None
    folder = pipeline.store.request_dir()
    return pipeline.store.png(strip, folder, "sanity_filmstrip"), pipeline.store.png(curves, folder, "sanity_curves"), \
        summary
