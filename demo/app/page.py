"""What every tab of the page shares: the input column's components (``Inputs``), the page's options (``Page``),
and the helpers that wire a handler (errors shown to the user, the open tab, the shared model queue).

The tabs (``demo.app.tabs``, ``demo.app.tabs_paper``, ``demo.app.tabs_evidence``, ``demo.app.tabs_units``) and
the page (``demo.app.ui``) import this module; it imports no tab.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from demo.app.inputs import InputError
from demo.app.pipeline import Pipeline
from demo.app.units import UnitPictures

log = logging.getLogger(__name__)
GENERIC_ERROR = "Something went wrong while processing this image. Please try another one."
UPLOAD_FIRST = "Upload an image first."
MODEL = dict(preprocess=False, concurrency_id="model")  # every model call: raw uploads, one shared queue
PRIVATE = dict(api_visibility="private")
SMALL = dict(interactive=False, buttons=["fullscreen", "download"])


@dataclass
class Page:
    """What the tabs share: the pipeline, the input and display options, and the open tab's id."""

    pipeline: Pipeline
    image: gr.Image
    norm: gr.Radio
    resize: gr.Radio
    tab: gr.State
    rule: gr.Radio  # the backward rule of every projection
    compare: Pipeline | None = None  # a second model shown beside the first
    units: UnitPictures | None = None  # feature visualizations of the model's units


@contextlib.contextmanager
def _as_gradio_errors(name: str):
    """Re-raise the app's ``InputError`` as ``gr.Error`` and anything unexpected as a short, logged message."""
    try:
        yield
    except gr.Error:
        raise
    except InputError as err:
        raise gr.Error(str(err), title="Cannot use this input", print_exception=False) from None
    except Exception:
        log.exception("unexpected failure in %s", name)
        raise gr.Error(GENERIC_ERROR, print_exception=False) from None


def user_errors(fn: Callable) -> Callable:
    """``fn`` (a function or a generator function) with its errors shown to the user as ``gr.Error``."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            with _as_gradio_errors(fn.__name__):
                yield from fn(*args, **kwargs)

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with _as_gradio_errors(fn.__name__):
            return fn(*args, **kwargs)

    return call


def track(tab: gr.Tab, page: Page, name: str):
    """Remember ``name`` as the open tab when ``tab`` is selected; returns the event, to chain on."""
    return tab.select(lambda: name, None, page.tab, queue=False, **PRIVATE)


def skip(outputs: list) -> tuple:
    """Leave every component of ``outputs`` as it is."""
    return (gr.skip(),) * len(outputs)


def need_image(image) -> None:
    if image is None:
        raise InputError(UPLOAD_FIRST)


@dataclass
class Inputs:
    """The components of the input column that every tab reads or writes."""

    image: gr.Image
    run: gr.Button
    resize: gr.Radio
    prediction: gr.Label
    tta: gr.Checkbox  # the prediction averaged with the mirror image's (flip test-time augmentation)
    network_input: gr.Image
    compare_prediction: gr.Label | None  # the compared model's top 5
