"""The Gradio page: the input column, the tabs (``demo.app.tabs``), their errors, and the launch.

Layout: the input (upload, webcam, clipboard; examples), the prediction and what the network saw on the left; on
the right the normalisation and the tabs. Uploads reach the pipeline as Gradio's raw file payloads
(``preprocess=False``): Gradio never decodes them, the project's safe decoder does, and every refusal comes back
as a ``gr.Error`` with the reason. Unexpected failures are logged and shown as a short message, never as a stack
trace. No maths here: handlers call ``demo.app.views`` and ``demo.app.paper``.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from base.cli import REPO_ROOT
from demo.app import paper, tabs, tabs_evidence, tabs_paper, tabs_units
from demo.app.inputs import UPLOAD_LIMITS
from demo.app.page import PRIVATE, Inputs, Page
from demo.app.pipeline import Pipeline
from demo.app.text import HOW_TO_READ, INTRO, describe, model_card_markdown
from demo.app.units import UnitPictures

EXAMPLES_DIR = REPO_ROOT / "examples"
EXAMPLES = ("chelsea.png", "astronaut.png", "coffee.png")  # one cat and two pictures off the network's domain
RESIZE_CHOICES = [("centre crop (as in training)", "crop"), ("stretch (whole image)", "stretch")]
NORM_CHOICES = [("min-max", "minmax"), ("signed (0 = grey)", "signed"), ("percentile 1-99", "percentile")]
RULE_CHOICES = [("deconvnet (the paper)", "deconvnet"), ("guided backprop", "guided"), ("gradient", "gradient")]
MAX_FILE_SIZE = UPLOAD_LIMITS.max_bytes  # bytes; Gradio refuses larger uploads before the app sees them

THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="slate")
CSS = """
.gradio-container {max-width: 1600px !important; margin: auto;}
.pixelated img, .pixelated canvas {image-rendering: pixelated;}
#layers-gallery .caption-label {font-family: ui-monospace, monospace; font-size: 0.85em;}
#timings, #explore-timings {font-size: 0.9em; opacity: 0.85;}
/* galleries as tall as their pictures, no inner scrollbar */
#layers-gallery .grid-wrap, #topk-gallery .grid-wrap {height: auto !important; min-height: 0 !important;
  max-height: none !important;}
#layers-gallery .gallery-container, #topk-gallery .gallery-container {height: auto !important;}
/* eight tabs in one row */
#tabs button[role="tab"] {padding-left: 0.45em !important; padding-right: 0.45em !important; font-size: 0.95em;}
"""


def examples_attribution(folder: Path = EXAMPLES_DIR) -> str:
    """The examples' attribution, from their README.md: its paragraphs without headings and notes to developers."""
    readme = folder / "README.md"
    if not readme.is_file():
        return ""
    paragraphs = readme.read_text(encoding="utf-8").split("\n\n")
    keep = [p for p in paragraphs if p.strip() and not p.lstrip().startswith("#") and "committed" not in p]
    return "\n\n".join(keep)


def _input_column(pipeline: Pipeline, examples_dir: Path, compare: Pipeline | None) -> Inputs:
    image = gr.Image(label="Your image", type="filepath", sources=["upload", "webcam", "clipboard"], height=300,
                     buttons=["fullscreen"], elem_id="input-image")
    run = gr.Button("Visualise", variant="primary", elem_id="run")
    gr.Examples([[str(examples_dir / name)] for name in EXAMPLES if (examples_dir / name).is_file()],
                inputs=[image], label="Examples: a cat, and two pictures without one", elem_id="examples")
    with gr.Accordion("Input options", open=False):
        resize = gr.Radio(RESIZE_CHOICES, value="crop", label="Fit the image to the network's square")
    prediction = gr.Label(num_top_classes=5, label="Breed (top 5)", elem_id="prediction")
    tta = gr.Checkbox(False, label="Average with the mirror image (flip test-time augmentation)", elem_id="tta")
    compare_prediction = None
    if compare is not None:
        compare_prediction = gr.Label(num_top_classes=5, label=f"Compared model {compare.model.path.name} (top 5)",
                                      elem_id="compare-prediction")
    gr.Markdown("The network knows only these 12 breeds, so it names one even for a picture without a cat: try the "
                "astronaut.", elem_id="domain-note")
    network_input = gr.Image(label=f"Network input ({pipeline.size} px)", height=200, elem_id="network-input",
                             interactive=False, buttons=["fullscreen", "download"])
    return Inputs(image, run, resize, prediction, tta, network_input, compare_prediction)


def build_demo(pipeline: Pipeline, concurrency: int = 1, queue_size: int = 64,
               examples_dir: Path = EXAMPLES_DIR, atlas_dir: str | Path | None = None,
               compare: Pipeline | None = None, health_dir: str | Path | None = None,
               featurevis: tuple[int, int] = (128, 112)) -> gr.Blocks:
    """The app's page for ``pipeline``, queued: at most ``concurrency`` model calls at once, ``queue_size`` waiting.

    ``atlas_dir``: a dataset atlas (``python -m demo.mine``) shown in an "Atlas" tab; None: no such tab.
    ``compare``: a second model's pipeline, shown beside the first in "All layers" and the layer explorer.
    ``health_dir``: a ``python -m demo.health`` folder for the "Model health" tab (the conv1 filters are always shown).
    ``featurevis``: (steps, size) of a feature visualization made on request in the "Units" tab.

    API endpoints (gradio_client): ``/analyse`` (image, norm, resize) -> top-5 label, 13 captioned layer images,
    the network's input, the .npz, the timings; ``/explore`` (image, layer, k, norm, resize); ``/channel``
    (image, layer, channel, norm, resize); ``/occlusion`` (image, size, stride, resize) -> figure, summary;
    ``/invariance`` (image, resize) -> figure; ``/evidence`` (image, breed, method, resize) -> figure, summary;
    with an atlas, ``/atlas`` (layer, channel) -> picture, caption.
    """
    found_atlas = paper.atlas(atlas_dir) if atlas_dir is not None else None  # FileNotFoundError: not an atlas
    with gr.Blocks(title="Deconvnet: what VGG16 sees in a cat", fill_width=True, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(describe(pipeline.model, pipeline.size, pipeline.provider), elem_id="model-line")
        if compare is not None:
            gr.Markdown("Compared with: " + describe(compare.model, compare.size, compare.provider),
                        elem_id="compare-line")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                inputs = _input_column(pipeline, examples_dir, compare)
            with gr.Column(scale=5, min_width=480):
                with gr.Row(equal_height=True):
                    norm = gr.Radio(NORM_CHOICES, value="minmax", label="Normalisation of the pictures",
                                    elem_id="norm")
                    rule = gr.Radio(RULE_CHOICES, value="deconvnet", label="Backward rule at each ReLU",
                                    elem_id="rule")
                pictures = UnitPictures.with_settings(pipeline, *featurevis)
                page = Page(pipeline, inputs.image, norm, inputs.resize, gr.State("layers"), rule, compare, pictures)
                with gr.Tabs(elem_id="tabs"):
                    layers = tabs.layers_tab(page, inputs)
                    explorer = tabs.explorer_tab(page)
                    tabs_units.units_tab(page, pictures, atlas_dir)
                    tabs.classes_tab(page)
                    tabs.rules_tab(page)
                    tabs_paper.occlusion_tab(page)
                    tabs_paper.invariance_tab(page)
                    if found_atlas is not None:
                        show_atlas = tabs_paper.atlas_tab(page, atlas_dir, found_atlas)
                    tabs_paper.health_tab(page, health_dir)
                    tabs_paper.sanity_tab(page)
                    tabs_evidence.evidence_tab(page)
        with gr.Accordion("How to read these pictures", open=False):
            gr.Markdown(HOW_TO_READ)
        with gr.Accordion("Model card", open=False):
            gr.Markdown(model_card_markdown(pipeline.model))
        with gr.Accordion("Example images: sources and licences", open=False):
            gr.Markdown(examples_attribution(examples_dir), elem_id="attribution")
        tabs.wire_inputs(page, inputs, layers, explorer)
        if found_atlas is not None:
            demo.load(*show_atlas, concurrency_id="model", **PRIVATE)
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           prevent_thread_lock: bool = False, quiet: bool = False):
    """Serve ``demo`` with the app's limits, theme and CSS; returns Gradio's (app, local_url, share_url).

    Nothing of the machine is served beyond what the app itself writes: no ``allowed_paths``.
    """
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
                       max_file_size=MAX_FILE_SIZE, show_error=False, theme=THEME, css=CSS, quiet=quiet,
                       allowed_paths=[])


__all__ = ["CSS", "EXAMPLES", "MAX_FILE_SIZE", "THEME", "build_demo", "examples_attribution", "launch"]
