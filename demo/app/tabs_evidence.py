"""The "Evidence" tab: pick a breed and a method, see the map over the image, its deletion and insertion curves and
areas for this image, and what the sanity checks say about the method. The maths is
``demo.analyses.evidence``'s; this module only checks the request and wires the components."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from base.cli import DEFAULT_MODEL
from demo.analyses.evidence.methods import METHODS
from demo.analyses.evidence.view import FAITHFULNESS_RESULTS, SANITY_RESULTS, evidence_view
from demo.app.inputs import InputError, Source, check_class
from demo.app.page import MODEL, SMALL, Page, need_image, track, user_errors
from demo.app.pipeline import Pipeline

PREDICTED = "predicted breed"
EVIDENCE_HELP = """
Where in this image is the evidence for a breed, and which map to believe? Each method makes a map of the pixels
that speak for the breed; **deletion** removes them in the map's order (to the mean colour) and **insertion**
reveals them on a blurred copy, and the curves follow the breed's probability. A faithful map makes the deletion
curve fall fast (small area) and the insertion curve rise fast (large area). ``random`` and ``edges`` are the
baselines a map must beat. Measured on the default model over 50 held-out images: **gradcam** is the only method
that passes both sanity checks clearly (its map changes when the top layers are random and between breeds);
**gradient-x-input** scores best on deletion and insertion but passes the checks only partly; **deconvnet** and
**guided** score about as well as Grad-CAM yet fail both checks: a good score alone does not show that a map
explains the breed. Below the map: the method's results over those images (default model only).
"""


def evidence_for(pipeline: Pipeline, source: Source, breed: str | int | None = None, method: str = "gradcam",
                 resize: str = "crop", sanity_csv=SANITY_RESULTS, faithfulness_csv=FAITHFULNESS_RESULTS,
                 measured_model=DEFAULT_MODEL) -> tuple[str, str]:
    """The evidence figure's PNG and its Markdown summary for ``source``, class ``breed`` (a name or index; None or
    ``PREDICTED``: the predicted breed) and ``method`` (one of ``METHODS``). The many-image results of the CSVs
    are quoted only when the app's model is the file ``measured_model`` (the one they were measured on; None: any
    model); for another model they read "not measured"."""
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    fwd, _ = pipeline.forward(source, resize)
    names = pipeline.model.class_names
    cls = int(fwd.probs.argmax()) if breed in (None, "", PREDICTED) else check_class(breed, names)
    if measured_model is not None and Path(pipeline.model.path).resolve() != Path(measured_model).resolve():
        sanity_csv = faithfulness_csv = None
    figure, summary, _ = evidence_view(pipeline.model, fwd.x, cls, method, names, sanity_csv=sanity_csv,
                                       faithfulness_csv=faithfulness_csv)
    return pipeline.store.png(figure, pipeline.store.request_dir(), f"evidence_{method}"), summary


def evidence_tab(page: Page) -> None:
    """The tab's components and its one model call (``/evidence``: image, breed, method, resize)."""
    names = page.pipeline.model.class_names
    with gr.Tab("Evidence", id="evidence") as tab:
        gr.Markdown(EVIDENCE_HELP)
        with gr.Row(equal_height=True):
            breed = gr.Dropdown([PREDICTED, *names], value=PREDICTED, label="Breed", elem_id="evidence-breed")
            method = gr.Dropdown(list(METHODS), value="gradcam", label="Method", elem_id="evidence-method")
            run = gr.Button("Show evidence", variant="primary", scale=0, min_width=160, elem_id="evidence-run")
        figure = gr.Image(label="The map over the image; deletion and insertion curves", elem_id="evidence-figure",
                          **SMALL)
        summary = gr.Markdown(elem_id="evidence-summary")

    @user_errors
    def show(image, breed, method, resize):
        need_image(image)
        return evidence_for(page.pipeline, image, breed, method, resize)

    track(tab, page, "evidence")
    run.click(show, [page.image, breed, method, page.resize], [figure, summary], api_name="evidence", **MODEL)
