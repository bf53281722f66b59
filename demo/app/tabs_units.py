"""The "Units" tab: one page per unit (any channel of any layer, or a class) with its feature visualization, its
projection on the current image, its strongest connections, the dataset top-9 (with an atlas), and the same unit
on randomized models; and the 12 class visualizations. Handlers call ``demo.app.units``."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from base.spec import CONV_LAYERS
from demo.app import units as unit_views
from demo.app.page import MODEL, PRIVATE, SMALL, Page, track, user_errors
from demo.app.text import UNITS_HELP

LAYER_CHOICES = [*CONV_LAYERS, ("class logit", "class")]


def units_tab(page: Page, pictures: unit_views.UnitPictures, atlas_dir: str | Path | None = None) -> None:
    """The unit page and the class visualizations."""
    with gr.Tab("Units", id="units") as tab:
        gr.Markdown(UNITS_HELP)
        with gr.Row(equal_height=True):
            layer = gr.Dropdown(LAYER_CHOICES, value=CONV_LAYERS[-1], label="Layer", elem_id="unit-layer")
            number = gr.Number(value=0, precision=0, minimum=0, label="Channel (or class)", elem_id="unit-channel")
            show = gr.Button("Show unit", variant="primary", scale=0, min_width=140, elem_id="unit-show")
        caption = gr.Markdown(elem_id="unit-caption")
        with gr.Row():
            picture = gr.Image(label="Feature visualization: what the unit responds to", elem_id="unit-picture",
                               **SMALL)
            projection = gr.Image(label="Its projection on the current image (strongest activation)",
                                  elem_id="unit-projection", **SMALL)
        into = gr.Gallery(label="Strongest inputs: channels of the layer below (summed 3x3 weight)", columns=6,
                          height=230, object_fit="contain", allow_preview=False, elem_id="unit-in")
        out = gr.Gallery(label="Strongest outputs: channels of the layer above (or classes)", columns=6,
                         height=230, object_fit="contain", allow_preview=False, elem_id="unit-out")
        top9 = gr.Image(label="Dataset top 9 (atlas)", visible=atlas_dir is not None, elem_id="unit-atlas", **SMALL)
        top9_caption = gr.Markdown(visible=atlas_dir is not None)
        sanity_run = gr.Button("Visualise this unit on randomized models", elem_id="unit-sanity-run")
        sanity = gr.Gallery(label="Trained, conv5_3 random, conv4-5 random, all random", columns=4, height="auto",
                            object_fit="contain", allow_preview=True, elem_id="unit-sanity")
        with gr.Accordion("Class visualizations of the 12 breeds", open=False):
            classes = gr.Gallery(value=lambda: unit_views.class_gallery(pictures), columns=6, height="auto",
                                 object_fit="contain", label="Class logits maximised", elem_id="unit-classes")

    @user_errors
    def show_unit(image, layer, number, norm, resize, rule, progress=gr.Progress()):  # noqa: B008 - Gradio's bar
        p = unit_views.unit_page(pictures, layer, number, image, norm, resize, rule, atlas_dir,
                                 progress=lambda done, total: progress((done, total), desc="optimising"))
        top, top_caption = p.atlas if p.atlas is not None else (None, "")
        return p.picture, p.caption, p.projection, p.into, p.out, top, top_caption, unit_views.class_gallery(pictures)

    @user_errors
    def show_sanity(layer, number, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for a progress bar
        return unit_views.sanity_gallery(pictures, layer, number,
                                         progress=lambda done, total: progress((done, total), desc="optimising"))

    outputs = [picture, caption, projection, into, out, top9, top9_caption, classes]
    inputs = [page.image, layer, number, page.norm, page.resize, page.rule]
    track(tab, page, "units")
    show.click(show_unit, inputs, outputs, api_name="unit", **MODEL)
    number.submit(show_unit, inputs, outputs, **PRIVATE, **MODEL)
    sanity_run.click(show_sanity, [layer, number], sanity, api_name="unit_sanity", **MODEL)
