"""One builder per tab of the page: its components, and its handlers wired to ``views`` and ``paper`` functions.

Every handler turns the app's ``InputError`` into a ``gr.Error`` the user reads, and anything unexpected into a
short, logged message (``user_errors``). Model calls share one queue (``concurrency_id="model"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from base.spec import CONV_LAYERS, block_of
from demo.app import views
from demo.app.page import MODEL, PRIVATE, SMALL, Inputs, Page, need_image, skip, track, user_errors
from demo.app.units import topk_gallery

# --- "All layers" -----------------------------------------------------------------------------------------------

def _block_ends(layer: str) -> bool:
    """Whether ``layer`` is the last conv of its block (the page updates once per block)."""
    i = CONV_LAYERS.index(layer)
    return i + 1 == len(CONV_LAYERS) or block_of(CONV_LAYERS[i + 1]) != block_of(layer)


@dataclass
class LayersTab:
    stream: Callable  # (image, norm, resize, rule, tta) -> the page's updates: the prediction, then one per block
    once: Callable  # (image, norm, resize, rule, tta) -> the finished result only (the API)
    outputs: list  # prediction, layers gallery, network input, .npz, timings (+ the compared model's two)


def layers_tab(page: Page, inputs: Inputs) -> LayersTab:
    """The 13 whole-layer reconstructions, streamed in block by block, the .npz download and the timings; with a
    compared model, its prediction and its 13 reconstructions below."""
    with gr.Tab("All layers", id="layers") as tab:
        layers = gr.Gallery(label="Each conv layer projected back to pixels (conv1_1 ... conv5_3)", columns=5,
                            height="auto", object_fit="contain", allow_preview=True,
                            buttons=["fullscreen", "download"], elem_id="layers-gallery")
        compared = []
        if page.compare is not None:
            compared = [gr.Gallery(label=f"Compared model {page.compare.model.path.name}: the same layers",
                                   columns=5, height="auto", object_fit="contain", allow_preview=True,
                                   buttons=["fullscreen", "download"], elem_id="compare-gallery")]
        with gr.Row(equal_height=True):
            timings = gr.Markdown(elem_id="timings")
            npz = gr.File(label="Raw reconstructions (.npz)", interactive=False, scale=0, min_width=260,
                          elem_id="npz")
    track(tab, page, "layers")
    provider = page.pipeline.provider
    blocks = sum(_block_ends(layer) for layer in CONV_LAYERS)

    def steps(image, norm, resize, rule, tta):
        ours = views.analyse(page.pipeline, image, norm, resize, rule, tta)
        theirs = views.analyse(page.compare, image, norm, resize, rule, tta) if page.compare is not None else None
        for step in ours:
            yield step, next(theirs) if theirs is not None else None

    def values(step: views.Analysis, other: views.Analysis | None) -> tuple:
        done = sum(_block_ends(layer) for layer in CONV_LAYERS[: len(step.layers)])
        progress = "" if step.done else f"projecting block {done + 1} of {blocks} ..."
        out = (step.prediction, step.layers, step.network_input, step.npz, step.timings.markdown(provider, progress))
        return out + ((other.prediction, other.layers) if other is not None else ())

    @user_errors
    def stream(image, norm, resize, rule, tta):
        for step, other in steps(image, norm, resize, rule, tta):
            if not step.layers:
                for note in step.notes:
                    gr.Warning(note)
            if step.done or not step.layers or _block_ends(CONV_LAYERS[len(step.layers) - 1]):
                yield values(step, other)

    @user_errors
    def once(image, norm, resize, rule, tta=False):
        *_, (step, other) = steps(image, norm, resize, rule, tta)
        return values(step, other)

    outputs = [inputs.prediction, layers, inputs.network_input, npz, timings]
    if page.compare is not None:
        outputs += [inputs.compare_prediction, *compared]
    return LayersTab(stream, once, outputs)


# --- "Layer explorer" -------------------------------------------------------------------------------------------

@dataclass
class ExplorerTab:
    refresh: Callable  # (image, layer, k, norm, resize, rule, open tab) -> outputs, or skips when it is closed
    inputs: list
    outputs: list


def _channel_row(label: str = "") -> list:
    """The single-channel view's components: feature map, projection, its receptive-field crop, the image patch."""
    with gr.Row():
        fmap = gr.Image(label=f"{label}Feature map", elem_classes=["pixelated"], **SMALL)
        projection = gr.Image(label=f"{label}Projection", **SMALL)
        crop = gr.Image(label=f"{label}Projection, receptive field", elem_classes=["pixelated"], **SMALL)
        patch = gr.Image(label=f"{label}Image patch, receptive field", elem_classes=["pixelated"], **SMALL)
    return [fmap, projection, crop, patch]


def explorer_tab(page: Page) -> ExplorerTab:
    """A layer's feature maps, its k strongest channels each projected alone, and one channel in detail (with a
    compared model: the same channel of the other model beside it)."""
    pipeline, other = page.pipeline, page.compare
    with gr.Tab("Layer explorer", id="explorer") as tab:
        with gr.Row(equal_height=True):
            layer = gr.Dropdown(list(CONV_LAYERS), value=CONV_LAYERS[-1], label="Layer", scale=1)
            k = gr.Slider(1, 32, value=9, step=1, label="k strongest channels", scale=2)
            number = gr.Number(value=0, precision=0, minimum=0, label="Channel", scale=1, elem_id="channel-number")
            show = gr.Button("Show channel", scale=0, min_width=140)
        summary = gr.Markdown()
        with gr.Row(equal_height=False):
            grid = gr.Image(label="Feature maps, one tile per channel (click one)", elem_classes=["pixelated"],
                            scale=3, elem_id="feature-grid", **SMALL)
            merged = gr.Image(label="All channels merged (sum)", elem_classes=["pixelated"], scale=2,
                              elem_id="merged", **SMALL)
        topk = gr.Gallery(label="Strongest channels, each projected alone from its strongest activation, cut to its "
                                "receptive field (click one)", columns=6, height="auto", object_fit="contain",
                          allow_preview=False, elem_classes=["pixelated"], buttons=["download_all"],
                          elem_id="topk-gallery")
        visualized = gr.Gallery(label="The same channels' feature visualizations (grey: not made yet; open the "
                                      "Units tab to make one)", columns=6, height="auto", object_fit="contain",
                                allow_preview=False, visible=page.units is not None, elem_id="topk-featurevis")
        caption = gr.Markdown(elem_id="channel-caption")
        view_out = [number, *_channel_row(), caption]
        if other is not None:
            other_caption = gr.Markdown(elem_id="compare-caption")
            view_out += [*_channel_row(f"{other.model.path.name}: "), other_caption]
        explore_timings = gr.Markdown(elem_id="explore-timings")
        channels = gr.State([])  # the top-k's channels (inside the tab: a Tabs block holds only tabs)
    explore_in = [page.image, layer, k, page.norm, page.resize, page.rule]
    explore_out = [grid, merged, topk, visualized, channels, *view_out, summary, explore_timings]

    def view_values(view: views.ChannelView, image, norm, resize, rule) -> tuple:
        out = (view.channel, view.feature_map, view.projection, view.crop, view.patch, view.caption)
        if other is not None:
            twin = views.channel(other, image, view.layer, view.channel, norm, resize, rule)
            out += (twin.feature_map, twin.projection, twin.crop, twin.patch,
                    f"{other.model.path.name}: {twin.caption}")
        return out

    @user_errors
    def explore(image, layer, k, norm, resize, rule):
        if image is None:
            return skip(explore_out)
        r = views.explore(pipeline, image, layer, k, norm, resize, rule)
        pictures = topk_gallery(page.units, layer, r.channels) if page.units is not None else []
        return (r.grid, r.merged, r.topk, pictures, r.channels, *view_values(r.selected, image, norm, resize, rule),
                r.summary, r.timings.markdown(pipeline.provider))

    def refresh(image, layer, k, norm, resize, rule, open_tab):
        return explore(image, layer, k, norm, resize, rule) if open_tab == "explorer" and image is not None \
            else skip(explore_out)

    @user_errors
    def channel(image, layer, number, norm, resize, rule):
        need_image(image)
        view = views.channel(pipeline, image, layer, number, norm, resize, rule)
        return view_values(view, image, norm, resize, rule)

    @user_errors
    def channel_from_grid(image, layer, norm, resize, rule, evt: gr.SelectData):
        picked = views.channel_at(pipeline, layer, *evt.index[:2]) if image is not None else None
        return skip(view_out) if picked is None else channel(image, layer, picked, norm, resize, rule)

    @user_errors
    def channel_from_topk(image, layer, channels, norm, resize, rule, evt: gr.SelectData):
        if image is None or not channels or evt.index is None or not 0 <= evt.index < len(channels):
            return skip(view_out)
        return channel(image, layer, channels[evt.index], norm, resize, rule)

    track(tab, page, "explorer").then(
        refresh, [*explore_in, page.tab], explore_out, **PRIVATE, **MODEL)
    layer.change(explore, explore_in, explore_out, api_name="explore", **MODEL)
    k.release(explore, explore_in, explore_out, **PRIVATE, **MODEL)
    channel_in = [page.image, layer, number, page.norm, page.resize, page.rule]
    grid.select(channel_from_grid, [page.image, layer, page.norm, page.resize, page.rule], view_out, **PRIVATE,
                **MODEL)
    topk.select(channel_from_topk, [page.image, layer, channels, page.norm, page.resize, page.rule], view_out,
                **PRIVATE, **MODEL)
    number.submit(channel, channel_in, view_out, api_name="channel", **MODEL)
    show.click(channel, channel_in, view_out, **PRIVATE, **MODEL)
    return ExplorerTab(refresh, [*explore_in, page.tab], explore_out)


def wire_inputs(page: Page, inputs: Inputs, layers: LayersTab, explorer: ExplorerTab) -> None:
    """The run button and every change of the image, the normalisation, the resize mode, the rule or the flip TTA
    recompute "All layers" (from the cache when only the view changed), and the layer explorer when it is open;
    clearing the image clears them. The API's ``/analyse`` returns the finished result once (a hidden button),
    while the page streams."""
    analyse_in = [page.image, page.norm, page.resize, page.rule, inputs.tta]

    def on_change(image, norm, resize, rule, tta):
        if image is None:  # cleared
            yield tuple(None if isinstance(c, (gr.Label, gr.Image, gr.File)) else [] if isinstance(c, gr.Gallery)
                        else "" for c in layers.outputs)
            return
        yield from layers.stream(image, norm, resize, rule, tta)

    inputs.run.click(layers.stream, analyse_in, layers.outputs, **PRIVATE, **MODEL).success(
        explorer.refresh, explorer.inputs, explorer.outputs, **PRIVATE, **MODEL)
    gr.on([page.image.change, page.norm.change, page.resize.change, page.rule.change, inputs.tta.change], on_change,
          analyse_in, layers.outputs,
          **PRIVATE, **MODEL).success(explorer.refresh, explorer.inputs, explorer.outputs, **PRIVATE, **MODEL)
    gr.Button(visible=False).click(layers.once, analyse_in, layers.outputs, api_name="analyse", **MODEL)


# --- "Classes" --------------------------------------------------------------------------------------------------

def classes_tab(page: Page) -> None:
    """The class score of the predicted breed and of a breed the user picks, each projected back to pixels
    (computed when the tab is open, and again when the image, the options or the pick change)."""
    names = page.pipeline.model.class_names
    with gr.Tab("Classes", id="classes") as tab:
        picked = gr.Dropdown(names, value=None, label="Breed to compare with (default: the second most likely)",
                             elem_id="class-pick")
        summary = gr.Markdown(elem_id="class-summary")
        with gr.Row():
            predicted = gr.Image(label="Predicted breed", elem_id="class-predicted", **SMALL)
            chosen = gr.Image(label="Picked breed", elem_id="class-picked", **SMALL)
    outputs = [predicted, chosen, summary]

    @user_errors
    def show(image, name, norm, resize, rule):
        need_image(image)
        view = views.classes(page.pipeline, image, name, norm, resize, rule)
        captions = f"**Left, predicted:** {view.predicted[1]} · **right, picked:** {view.picked[1]}"
        return view.predicted[0], view.picked[0], f"{captions}\n\n{view.summary}"

    def refresh(image, name, norm, resize, rule, open_tab):
        return show(image, name, norm, resize, rule) if open_tab == "classes" and image is not None \
            else skip(outputs)

    inputs = [page.image, picked, page.norm, page.resize, page.rule]
    picked.input(show, inputs, outputs, api_name="classes", **MODEL)
    track(tab, page, "classes").then(
        refresh, [*inputs, page.tab], outputs, **PRIVATE, **MODEL)
    gr.on([page.image.change, page.norm.change, page.resize.change, page.rule.change], refresh,
          [*inputs, page.tab], outputs, **PRIVATE, **MODEL)


# --- "Rules" --------------------------------------------------------------------------------------------------

def rules_tab(page: Page) -> None:
    """One picture under two backward rules, side by side, and their difference."""
    from base.spec import RULES

    with gr.Tab("Rules", id="rules") as tab:
        with gr.Row(equal_height=True):
            target = gr.Dropdown([*CONV_LAYERS, ("class score (predicted breed)", "class")], value=CONV_LAYERS[-1],
                                 label="What to project", elem_id="rules-target")
            first = gr.Dropdown(list(RULES), value="deconvnet", label="First rule", elem_id="rules-first")
            second = gr.Dropdown(list(RULES), value="guided", label="Second rule", elem_id="rules-second")
        caption = gr.Markdown(elem_id="rules-caption")
        with gr.Row():
            shown = [gr.Image(label=label, elem_id=f"rules-{key}", **SMALL)
                     for key, label in (("a", "First rule"), ("b", "Second rule"), ("diff", "Difference"))]
    outputs = [*shown, caption]

    @user_errors
    def compare(image, target, first, second, norm, resize):
        need_image(image)
        r = views.rule_difference(page.pipeline, image, target, first, second, norm, resize)
        return r.first, r.second, r.difference, r.caption

    def refresh(image, target, first, second, norm, resize, open_tab):
        return compare(image, target, first, second, norm, resize) if open_tab == "rules" and image is not None \
            else skip(outputs)

    inputs = [page.image, target, first, second, page.norm, page.resize]
    gr.on([target.input, first.input, second.input], compare, inputs, outputs, api_name="rules", **MODEL)
    track(tab, page, "rules").then(refresh, [*inputs, page.tab], outputs, **PRIVATE, **MODEL)
    gr.on([page.image.change, page.norm.change, page.resize.change], refresh, [*inputs, page.tab], outputs,
          **PRIVATE, **MODEL)
