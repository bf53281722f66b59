"""The tabs of the paper's analyses and of the checks beyond it: occlusion (Fig. 7), invariance (Fig. 5), the
top-9 atlas (Fig. 2); their handlers call ``demo.app.paper``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gradio as gr

from base.spec import CONV_LAYERS
from demo.analyses.atlas.read import Atlas
from demo.app import paper
from demo.app.page import MODEL, PRIVATE, SMALL, Page, need_image, track, user_errors
from demo.app.text import ATLAS_HELP, HEALTH_HELP, INVARIANCE_HELP, OCCLUSION_HELP, SANITY_HELP


def occlusion_tab(page: Page) -> None:
    """Occlusion sensitivity of the current image (the paper's Fig. 7)."""
    pipeline = page.pipeline
    with gr.Tab("Occlusion", id="occlusion") as tab:
        gr.Markdown(OCCLUSION_HELP)
        with gr.Row(equal_height=True):
            size = gr.Slider(4, pipeline.size, value=min(48, pipeline.size), step=1, label="Square size (px)",
                             elem_id="occlusion-size")
            stride = gr.Slider(4, pipeline.size, value=min(paper.default_stride(pipeline), pipeline.size), step=1,
                               label="Stride (px; smaller: finer and slower)", elem_id="occlusion-stride")
            run = gr.Button("Occlude", variant="primary", scale=0, min_width=140, elem_id="occlusion-run")
        figure = gr.Image(label="Occlusion maps", elem_id="occlusion-figure", **SMALL)
        summary = gr.Markdown(elem_id="occlusion-summary")

    @user_errors
    def occlusion(image, size, stride, resize, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for a bar
        need_image(image)
        return paper.occlusion_for(pipeline, image, size, stride, resize,
                                   progress=lambda done, total: progress((done, total), desc="occluding"))

    track(tab, page, "occlusion")
    run.click(occlusion, [page.image, size, stride, page.resize], [figure, summary], api_name="occlusion", **MODEL)


def invariance_tab(page: Page) -> None:
    """Invariance curves of the current image (the paper's Fig. 5)."""
    with gr.Tab("Invariance", id="invariance") as tab:
        gr.Markdown(INVARIANCE_HELP)
        run = gr.Button("Transform", variant="primary", elem_id="invariance-run")
        figure = gr.Image(label="Invariance curves", elem_id="invariance-figure", **SMALL)

    @user_errors
    def invariance(image, resize, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for a progress bar
        need_image(image)
        return paper.invariance_for(page.pipeline, image, resize,
                                    progress=lambda done, total: progress((done, total), desc="transforming"))

    track(tab, page, "invariance")
    run.click(invariance, [page.image, page.resize], figure, api_name="invariance", **MODEL)


def atlas_tab(page: Page, atlas_dir: str | Path, atlas: Atlas) -> tuple[Callable, list, list]:
    """A data set's top-9 atlas (the paper's Fig. 2), channel by channel; pictures not drawn yet are drawn now.

    Returns what the page runs when it loads (function, inputs, outputs): the strongest channel's picture.
    """

    def choices(layer: str) -> list[tuple[str, int]]:
        return [(f"{c}  (#{rank + 1})", c) for rank, c in enumerate(paper.atlas_channels(atlas_dir, layer))]

    with gr.Tab("Atlas", id="atlas") as tab:
        gr.Markdown(ATLAS_HELP.format(images=atlas.info.get("images", "?")))
        first = choices(atlas.layers[-1])
        with gr.Row(equal_height=True):
            layer = gr.Dropdown(atlas.layers, value=atlas.layers[-1], label="Layer", elem_id="atlas-layer")
            channel = gr.Dropdown(first, value=first[0][1], label="Channel (strongest first)", elem_id="atlas-channel")
        picture = gr.Image(label="Top 9: projections (left) and image patches (right)", elem_classes=["pixelated"],
                           elem_id="atlas-picture", **SMALL)
        caption = gr.Markdown(elem_id="atlas-caption")

    @user_errors
    def show(layer, number, rule=None):
        return paper.atlas_view(page.pipeline, atlas_dir, layer, number, rule)

    @user_errors
    def pick_layer(layer, rule):
        options = choices(layer)
        return gr.Dropdown(choices=options, value=options[0][1]), *show(layer, options[0][1], rule)

    track(tab, page, "atlas")
    chosen = [layer, channel, page.rule]
    channel.input(show, chosen, [picture, caption], api_name="atlas", concurrency_id="model")
    page.rule.change(show, chosen, [picture, caption], concurrency_id="model", **PRIVATE)
    layer.input(pick_layer, [layer, page.rule], [channel, picture, caption], concurrency_id="model", **PRIVATE)
    return show, chosen, [picture, caption]


def health_tab(page: Page, health_dir: str | Path | None) -> None:
    """The model's health (the paper's Fig. 6): its conv1_1 filters, and with a ``python -m demo.health`` folder
    the dead and rarely-firing channels, peak activations and filter norms of every layer."""
    filters, figure, summary = paper.health_for(page.pipeline, health_dir)
    with gr.Tab("Model health", id="health") as tab:
        gr.Markdown(HEALTH_HELP)
        gr.Markdown(summary, elem_id="health-summary")
        gr.Image(filters, label="conv1_1 filters (each stretched to its own range)", elem_classes=["pixelated"],
                 elem_id="health-filters", **SMALL)
        if figure is not None:
            gr.Image(figure, label="Per layer: dead and rare channels, peak activations, filter norms",
                     elem_id="health-figure", **SMALL)
    track(tab, page, "health")


def sanity_tab(page: Page) -> None:
    """The randomization checks of Adebayo et al. 2018 and the class sensitivity check (Nie et al. 2018; Sixt et al.
    2020) for the current image, every backward rule."""
    with gr.Tab("Sanity checks", id="sanity") as tab:
        gr.Markdown(SANITY_HELP)
        with gr.Row(equal_height=True):
            target = gr.Dropdown([*CONV_LAYERS, ("class score (predicted breed)", "class")], value=CONV_LAYERS[-1],
                                 label="What to project", elem_id="sanity-target")
            run = gr.Button("Randomize and compare", variant="primary", scale=0, min_width=200, elem_id="sanity-run")
        summary = gr.Markdown(elem_id="sanity-summary")
        strip = gr.Image(label="Rows: rules; columns: the trained model, then one more layer randomized each step "
                               "(from the head down)", elem_id="sanity-filmstrip", **SMALL)
        curves = gr.Image(label="Similarity to the trained model's picture", elem_id="sanity-curves", **SMALL)

    @user_errors
    def sanity(image, target, norm, resize, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for a bar
        need_image(image)
        return paper.sanity_for(page.pipeline, image, target, norm, resize,
                                progress=lambda done, total: progress((done, total), desc="randomizing"))

    track(tab, page, "sanity")
    run.click(sanity, [page.image, target, page.norm, page.resize], [strip, curves, summary], api_name="sanity",
              **MODEL)
