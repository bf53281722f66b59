"""The Gradio page: components wired to ``demo.pipeline.Pipeline``. No maths here (house style 8).

Layout: the input (upload, webcam, clipboard; examples), the normalisation and the prediction on the left; on the
right two tabs, "All layers" (the 13 whole-layer reconstructions, streamed in as they are computed, the .npz
download and the timings) and "Layer explorer" (a layer's feature maps and its strongest channels, each
projected alone; click one to inspect it).

Uploads reach the pipeline as Gradio's raw file payloads (``preprocess=False``): Gradio never decodes them, the
pipeline's safe decoder does, and every refusal comes back as a ``gr.Error`` with the reason. Unexpected failures
are logged and shown as a short message, never as a stack trace.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from demo.display import NORMS
from demo.pipeline import InputError, Pipeline
from model.spec import CONV_LAYERS

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO_ROOT / "examples"
EXAMPLES = ("chelsea.png", "astronaut.png", "coffee.png")  # one cat and two pictures off the network's domain
NORM_CHOICES = [("min-max", "minmax"), ("signed (0 = grey)", "signed"), ("percentile 1-99", "percentile")]
RESIZE_CHOICES = [("centre crop (as in training)", "crop"), ("stretch (whole image)", "stretch")]
MAX_FILE_SIZE = "25mb"  # the same as demo.pipeline.Limits.max_bytes
GENERIC_ERROR = "Something went wrong while processing this image. Please try another one."

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
"""

INTRO = """
# Deconvnet: what a VGG16 sees in a cat
Give it a picture. A VGG16 trained on 12 cat breeds names the breed, and a **deconvnet**
([Zeiler & Fergus, 2014](https://arxiv.org/abs/1311.2901)) projects what each of its 13 convolutional layers responds
to back into pixels: the first layers react to edges and colours, the last ones to fur, eyes and whole faces.
"""

HOW_TO_READ = """
**All layers.** Each picture is one layer's activations (all channels together) carried back to the input through
the network's own pooling switches and transposed filters (unpool, ReLU, transposed convolution, layer by layer).
Bright and dark show what drives the layer; grey is neutral.

**Layer explorer.** The feature maps of one layer (each channel is a tile; the merged view sums them) and the
paper's figure: the *k* channels with the strongest activation, each projected alone from its single strongest
position, cropped to where it lands. Click a tile or a projection to see the channel next to the image patch it
responds to.

**Normalisation.** *min-max* stretches each picture between its own minimum and maximum; *signed* keeps zero at
mid-grey so that positive and negative contributions stay apart; *percentile* clips the 1% extremes for contrast.
The download holds the raw float32 reconstructions (`conv1_1/layer` ... `conv5_3/layer`, and `input`, the
normalised tensor the network saw).
"""

OCCLUSION_HELP = """
A grey square (the data set's mean colour) slides over the network's input; at each place the network runs again.
Left to right: the image, the probability of the predicted class (where it drops, the network looks), the total
activation of conv5_3's strongest feature map, and the most likely class with the square there (the paper's
Fig. 7). One forward pass per position: a stride of 16 px costs 196 passes at 224 px, 32 px costs 49.
"""

INVARIANCE_HELP = """
The image shifted vertically, scaled and rotated about its centre (the paper's Fig. 5): per layer, how far its
features move (Euclidean distance divided by the original features' norm; 0 = unchanged), and the probability of
the predicted class.
"""

ATLAS_HELP = """
The paper's Fig. 2 over a whole data set ({images} images): for the chosen channel, the 9 images on which it
responds most strongly, each activation projected alone back to pixels (left) beside the image patch its unit sees
(right), both cut to the unit's receptive field and laid out 3 x 3 by rank. Channels are listed strongest first.
"""


@contextlib.contextmanager
def _as_gradio_errors(name: str):
    """Re-raise the pipeline's ``InputError`` as ``gr.Error`` and anything unexpected as a short, logged message."""
    try:
        yield
    except gr.Error:
        raise
    except InputError as err:
        raise gr.Error(str(err), title="Cannot use this input", print_exception=False) from None
    except Exception:
        log.exception("unexpected failure in %s", name)
        raise gr.Error(GENERIC_ERROR, print_exception=False) from None


def _user_errors(fn: Callable) -> Callable:
    """``fn`` with its errors shown to the user as :func:`_as_gradio_errors` says."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _as_gradio_errors(fn.__name__):
            return fn(*args, **kwargs)

    return wrapper


def _user_errors_stream(fn: Callable) -> Callable:
    """``_user_errors`` for a generator function."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _as_gradio_errors(fn.__name__):
            yield from fn(*args, **kwargs)

    return wrapper


def examples_attribution(folder: Path = EXAMPLES_DIR) -> str:
    """The examples' attribution, from their README.md: its paragraphs without headings and notes to developers."""
    readme = folder / "README.md"
    if not readme.is_file():
        return ""
    paragraphs = readme.read_text(encoding="utf-8").split("\n\n")
    keep = [p for p in paragraphs if p.strip() and not p.lstrip().startswith("#") and "committed" not in p]
    return "\n\n".join(keep)


def build_demo(pipeline: Pipeline, concurrency: int = 1, queue_size: int = 64,
               examples_dir: Path = EXAMPLES_DIR, atlas_dir: str | Path | None = None) -> gr.Blocks:
    """The app's page for ``pipeline``, queued: at most ``concurrency`` model calls at once, ``queue_size`` waiting.

    ``atlas_dir``: a dataset atlas (``python -m demo.mine``) shown in an "Atlas" tab; None: no such tab.

    API endpoints (gradio_client): ``/analyse`` (image, norm, resize) -> top-5 label, 13 captioned layer images,
    the network's input, the .npz, the timings; ``/explore`` (image, layer, k, norm, resize); ``/channel``
    (image, layer, channel, norm, resize); ``/occlusion`` (image, size, stride, resize) -> figure, summary;
    ``/invariance`` (image, resize) -> figure; with an atlas, ``/atlas`` (layer, channel) -> picture, caption.
    """
    provider = pipeline.provider
    n_layers = len(CONV_LAYERS)
    atlas = pipeline.atlas(atlas_dir) if atlas_dir is not None else None  # FileNotFoundError: not an atlas

    # --- handlers: call the pipeline, hand its results to the components -------------------------------------
    @_user_errors_stream
    def analyse(image, norm, resize):
        for step in pipeline.analyse(image, norm, resize):
            if not step.layers:
                for note in step.notes:
                    gr.Warning(note)
            progress = "" if step.done else f"projecting layer {len(step.layers) + 1} of {n_layers} ..."
            yield (step.prediction, step.layers, step.network_input, step.npz,
                   step.timings.markdown(provider, progress))

    def analyse_on_change(image, norm, resize):
        if image is None:  # cleared
            yield None, [], None, None, ""
            return
        yield from analyse(image, norm, resize)

    def explore_outputs(result):
        s = result.selected
        return (result.grid, result.merged, result.topk, result.channels, s.channel,
                s.feature_map, s.projection, s.crop, s.patch, s.caption, result.summary,
                result.timings.markdown(provider))

    @_user_errors
    def explore(image, layer, k, norm, resize):
        if image is None:
            return (gr.skip(),) * 12
        return explore_outputs(pipeline.explore(image, layer, k, norm, resize))

    def explore_if_open(image, layer, k, norm, resize, tab):
        if tab != "explorer" or image is None:
            return (gr.skip(),) * 12
        return explore(image, layer, k, norm, resize)

    def view_outputs(view):
        return view.channel, view.feature_map, view.projection, view.crop, view.patch, view.caption

    @_user_errors
    def channel(image, layer, number, norm, resize):
        if image is None:
            raise InputError("Upload an image first.")
        return view_outputs(pipeline.channel(image, layer, number, norm, resize))

    @_user_errors
    def channel_from_grid(image, layer, norm, resize, evt: gr.SelectData):
        picked = pipeline.channel_at(layer, *evt.index[:2]) if image is not None else None
        if picked is None:
            return (gr.skip(),) * 6
        return view_outputs(pipeline.channel(image, layer, picked, norm, resize))

    @_user_errors
    def channel_from_topk(image, layer, channels, norm, resize, evt: gr.SelectData):
        if image is None or not channels or evt.index is None or not 0 <= evt.index < len(channels):
            return (gr.skip(),) * 6
        return view_outputs(pipeline.channel(image, layer, channels[evt.index], norm, resize))

    @_user_errors
    def occlusion(image, size, stride, resize, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for a progress bar
        if image is None:
            raise InputError("Upload an image first.")
        return pipeline.occlusion_for(image, size, stride, resize,
                                      progress=lambda done, total: progress((done, total), desc="occluding"))

    @_user_errors
    def invariance(image, resize, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for a progress bar
        if image is None:
            raise InputError("Upload an image first.")
        return pipeline.invariance_for(image, resize,
                                       progress=lambda done, total: progress((done, total), desc="transforming"))

    def channel_choices(layer):
        return [(f"{c}  (#{rank + 1})", c) for rank, c in enumerate(pipeline.atlas_channels(atlas_dir, layer))]

    @_user_errors
    def atlas_show(layer, number):
        return pipeline.atlas_view(atlas_dir, layer, number)

    @_user_errors
    def atlas_layer(layer):
        choices = channel_choices(layer)
        return (gr.Dropdown(choices=choices, value=choices[0][1]),
                *pipeline.atlas_view(atlas_dir, layer, choices[0][1]))

    # --- the page ---------------------------------------------------------------------------------------------
    with gr.Blocks(title="Deconvnet: what VGG16 sees in a cat", fill_width=True, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(pipeline.describe(), elem_id="model-line")
        tab = gr.State("layers")
        channels = gr.State([])
        small = dict(interactive=False, buttons=["fullscreen", "download"])
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(label="Your image", type="filepath", sources=["upload", "webcam", "clipboard"],
                                 height=300, buttons=["fullscreen"], elem_id="input-image")
                run = gr.Button("Visualise", variant="primary", elem_id="run")
                gr.Examples([[str(examples_dir / name)] for name in EXAMPLES if (examples_dir / name).is_file()],
                            inputs=[image], label="Examples: a cat, and two pictures without one",
                            elem_id="examples")
                with gr.Accordion("Input options", open=False):
                    resize = gr.Radio(RESIZE_CHOICES, value="crop", label="Fit the image to the network's square")
                prediction = gr.Label(num_top_classes=5, label="Breed (top 5)", elem_id="prediction")
                gr.Markdown("The network knows only these 12 breeds, so it names one even for a picture without a "
                            "cat: try the astronaut.", elem_id="domain-note")
                network_input = gr.Image(label=f"Network input ({pipeline.size} px)", height=200,
                                         elem_id="network-input", **small)
            with gr.Column(scale=5, min_width=480):
                norm = gr.Radio(NORM_CHOICES, value="minmax", label="Normalisation of the pictures", elem_id="norm")
                with gr.Tabs():
                    with gr.Tab("All layers", id="layers") as layers_tab:
                        layers = gr.Gallery(label="Each conv layer projected back to pixels (conv1_1 ... conv5_3)",
                                            columns=5, height="auto", object_fit="contain", allow_preview=True,
                                            buttons=["fullscreen", "download"], elem_id="layers-gallery")
                        with gr.Row(equal_height=True):
                            timings = gr.Markdown(elem_id="timings")
                            npz = gr.File(label="Raw reconstructions (.npz)", interactive=False, scale=0,
                                          min_width=260, elem_id="npz")
                    with gr.Tab("Layer explorer", id="explorer") as explorer_tab:
                        with gr.Row(equal_height=True):
                            layer = gr.Dropdown(list(CONV_LAYERS), value=CONV_LAYERS[-1], label="Layer", scale=1)
                            k = gr.Slider(1, 32, value=9, step=1, label="k strongest channels", scale=2)
                            number = gr.Number(value=0, precision=0, minimum=0, label="Channel", scale=1,
                                               elem_id="channel-number")
                            show = gr.Button("Show channel", scale=0, min_width=140)
                        summary = gr.Markdown()
                        with gr.Row(equal_height=False):
                            grid = gr.Image(label="Feature maps, one tile per channel (click one)",
                                            elem_classes=["pixelated"], scale=3, elem_id="feature-grid", **small)
                            merged = gr.Image(label="All channels merged (sum)", elem_classes=["pixelated"], scale=2,
                                              elem_id="merged", **small)
                        topk = gr.Gallery(label="Strongest channels, each projected alone from its strongest "
                                                "activation (click one)", columns=6, height="auto",
                                          object_fit="contain", allow_preview=False, elem_classes=["pixelated"],
                                          buttons=["download_all"], elem_id="topk-gallery")
                        caption = gr.Markdown(elem_id="channel-caption")
                        with gr.Row():
                            fmap = gr.Image(label="Feature map", elem_classes=["pixelated"], **small)
                            projection = gr.Image(label="Projection", **small)
                            crop = gr.Image(label="Cropped", elem_classes=["pixelated"], **small)
                            patch = gr.Image(label="Image patch", elem_classes=["pixelated"], **small)
                        explore_timings = gr.Markdown(elem_id="explore-timings")
                    with gr.Tab("Occlusion", id="occlusion"):
                        gr.Markdown(OCCLUSION_HELP)
                        with gr.Row(equal_height=True):
                            occ_size = gr.Slider(4, pipeline.size, value=min(48, pipeline.size), step=1,
                                                 label="Square size (px)", elem_id="occlusion-size")
                            occ_stride = gr.Slider(4, pipeline.size, value=min(pipeline.default_stride, pipeline.size),
                                                   step=1, label="Stride (px; smaller: finer and slower)",
                                                   elem_id="occlusion-stride")
                            occ_run = gr.Button("Occlude", variant="primary", scale=0, min_width=140,
                                                elem_id="occlusion-run")
                        occ_figure = gr.Image(label="Occlusion maps", elem_id="occlusion-figure", **small)
                        occ_summary = gr.Markdown(elem_id="occlusion-summary")
                    with gr.Tab("Invariance", id="invariance"):
                        gr.Markdown(INVARIANCE_HELP)
                        inv_run = gr.Button("Transform", variant="primary", elem_id="invariance-run")
                        inv_figure = gr.Image(label="Invariance curves", elem_id="invariance-figure", **small)
                    if atlas is not None:
                        with gr.Tab("Atlas", id="atlas"):
                            gr.Markdown(ATLAS_HELP.format(images=atlas.info.get("images", "?")))
                            first = channel_choices(atlas.layers[-1])
                            with gr.Row(equal_height=True):
                                atlas_layer_in = gr.Dropdown(atlas.layers, value=atlas.layers[-1], label="Layer",
                                                             elem_id="atlas-layer")
                                atlas_channel = gr.Dropdown(first, value=first[0][1],
                                                            label="Channel (strongest first)",
                                                            elem_id="atlas-channel")
                            atlas_picture = gr.Image(label="Top 9: projections (left) and image patches (right)",
                                                     elem_classes=["pixelated"], elem_id="atlas-picture", **small)
                            atlas_caption = gr.Markdown(elem_id="atlas-caption")
        with gr.Accordion("How to read these pictures", open=False):
            gr.Markdown(HOW_TO_READ)
        with gr.Accordion("Model card", open=False):
            gr.Markdown(pipeline.model_card_markdown())
        with gr.Accordion("Example images: sources and licences", open=False):
            gr.Markdown(examples_attribution(examples_dir), elem_id="attribution")

        # --- wiring ----------------------------------------------------------------------------------------------
        common = dict(preprocess=False, concurrency_id="model")
        analyse_in = [image, norm, resize]
        analyse_out = [prediction, layers, network_input, npz, timings]
        explore_in = [image, layer, k, norm, resize]
        explore_out = [grid, merged, topk, channels, number, fmap, projection, crop, patch, caption, summary,
                       explore_timings]
        view_out = [number, fmap, projection, crop, patch, caption]

        run.click(analyse, analyse_in, analyse_out, api_name="analyse", **common).success(
            explore_if_open, [*explore_in, tab], explore_out, api_visibility="private", **common)
        image.change(analyse_on_change, analyse_in, analyse_out, api_visibility="private", **common).success(
            explore_if_open, [*explore_in, tab], explore_out, api_visibility="private", **common)
        norm.change(analyse_on_change, analyse_in, analyse_out, api_visibility="private", **common).success(
            explore_if_open, [*explore_in, tab], explore_out, api_visibility="private", **common)
        resize.change(analyse_on_change, analyse_in, analyse_out, api_visibility="private", **common).success(
            explore_if_open, [*explore_in, tab], explore_out, api_visibility="private", **common)

        layers_tab.select(lambda: "layers", None, tab, api_visibility="private", queue=False)
        explorer_tab.select(lambda: "explorer", None, tab, api_visibility="private", queue=False).then(
            explore_if_open, [*explore_in, tab], explore_out, api_visibility="private", **common)
        layer.change(explore, explore_in, explore_out, api_name="explore", **common)
        k.release(explore, explore_in, explore_out, api_visibility="private", **common)

        grid.select(channel_from_grid, [image, layer, norm, resize], view_out, api_visibility="private", **common)
        topk.select(channel_from_topk, [image, layer, channels, norm, resize], view_out, api_visibility="private",
                    **common)
        number.submit(channel, [image, layer, number, norm, resize], view_out, api_name="channel", **common)
        show.click(channel, [image, layer, number, norm, resize], view_out, api_visibility="private", **common)

        occ_run.click(occlusion, [image, occ_size, occ_stride, resize], [occ_figure, occ_summary],
                      api_name="occlusion", **common)
        inv_run.click(invariance, [image, resize], inv_figure, api_name="invariance", **common)
        if atlas is not None:
            atlas_channel.input(atlas_show, [atlas_layer_in, atlas_channel], [atlas_picture, atlas_caption],
                                api_name="atlas", concurrency_id="model")
            atlas_layer_in.input(atlas_layer, atlas_layer_in, [atlas_channel, atlas_picture, atlas_caption],
                                 api_visibility="private", concurrency_id="model")
            demo.load(atlas_show, [atlas_layer_in, atlas_channel], [atlas_picture, atlas_caption],
                      api_visibility="private", concurrency_id="model")

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


__all__ = ["CSS", "EXAMPLES", "MAX_FILE_SIZE", "NORMS", "THEME", "build_demo", "examples_attribution", "launch"]
