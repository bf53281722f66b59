"""The app's unit pages: what one channel (or class) responds to, without any data set.

For a channel of any layer: its feature visualization (``demo.analyses.featurevis``; the shipped set when it was
made from this model, else made on request with fewer steps and cached for the session), its strongest
connections in and out (Distill's "Zoom In", Olah et al. 2020: the channels of the layer below and above whose
3x3 kernels to or from this channel carry the largest summed weight, with its sign: excitatory or inhibitory), and
the same unit visualised on cascading-randomized copies of the model (what its picture owes to training). The
page's other parts (the projection on the current image, the dataset top-9) come from ``views`` and ``paper``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from base.spec import CONV_LAYERS, conv_channels
from demo.analyses.featurevis.objective import CLASS, Target
from demo.analyses.featurevis.optimize import Settings, Visualizer, visualize
from demo.analyses.featurevis.shipped import SHIPPED_DIR, ShippedSet
from demo.app.inputs import InputError, check, check_channel
from demo.app.pipeline import Pipeline
from demo.onnx_forward import conv_biases

ON_REQUEST = Settings(steps=128, size=112)  # a picture made on request: about 30 s on an idle 2-core CPU
SANITY = Settings(steps=64, size=96)  # the randomized copies' pictures, four at once
CASCADE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("trained", ()),
    ("conv5_3 random", ("head", "conv5_3")),
    ("conv4 and conv5 random", ("head", *CONV_LAYERS[:6:-1])),
    ("all random", ("head", *reversed(CONV_LAYERS))),
)  # cascading randomization from the top: (label, re-drawn layers)
KEEP = 256  # pictures kept in memory per session
Progress = Callable[[int, int], None] | None  # progress(done, total)


@dataclass
class Connection:
    """A channel linked to the unit: its layer (a conv name, "RGB" or "class"), index, summed weight."""

    layer: str
    channel: int
    weight: float

    @property
    def label(self) -> str:
        return f"{self.layer}/{self.channel} ({self.weight:+.3f})"


def unit_layer(layer: str) -> str:
    """A conv name or "class", else InputError."""
    return CLASS if layer == CLASS else check("layer", layer)


class UnitPictures:
    """Feature visualizations for one pipeline's model: shipped, cached, or made on request (thread-safe)."""

    def __init__(self, pipeline: Pipeline, shipped_dir: str | Path = SHIPPED_DIR, settings: Settings = ON_REQUEST,
                 sanity_settings: Settings = SANITY) -> None:
        self.pipeline = pipeline
        self.settings, self.sanity_settings = settings, sanity_settings
        shipped = ShippedSet(shipped_dir)
        self.shipped = shipped if shipped.matches(pipeline.model.path) else None
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._vis: dict[tuple[str, ...], Visualizer] = {}

    @classmethod
    def with_settings(cls, pipeline: Pipeline, steps: int, size: int) -> UnitPictures:
        """Pictures made on request with ``steps`` Adam steps at ``size`` px (ValueError on bad values)."""
        settings = Settings(steps=steps, size=size)
        settings.check()
        return cls(pipeline, settings=settings)

    def check(self, layer: str, channel: int | float) -> tuple[str, int]:
        """(layer, channel) validated for this model, else InputError."""
        layer = unit_layer(layer)
        count = len(self.pipeline.model.class_names) if layer == CLASS else conv_channels(layer)
        return layer, check_channel(layer, channel, count) if layer != CLASS else _index(channel, count)

    def visualizer(self, randomized: tuple[str, ...] = ()) -> Visualizer:
        """The Visualizer of the model, or of its copy with ``randomized`` re-drawn (made once)."""
        with self._lock:
            if randomized not in self._vis:
                model = self.pipeline.model
                biases = conv_biases(str(model.path))
                if randomized:
                    from demo.analyses.sanity.randomize import Randomizer

                    r = Randomizer(model, 0)
                    biases = {n: r.draws(n)[0][1] if n in randomized else biases[n] for n in CONV_LAYERS}
                    model = r.model_for(randomized)
                self._vis[randomized] = Visualizer(model, biases)
            return self._vis[randomized]

    def shipped_picture(self, layer: str, channel: int) -> np.ndarray | None:
        """The shipped picture (P, P, 3) uint8, or None."""
        return None if self.shipped is None else self.shipped.get(layer, channel)

    def cached(self, layer: str, channel: int, randomized: tuple[str, ...] = ()) -> np.ndarray | None:
        """A picture made earlier in this session, or None."""
        with self._lock:
            return self._cache.get((randomized, layer, channel))

    def available(self, layer: str, channel: int) -> np.ndarray | None:
        """Shipped or cached, else None (nothing is computed)."""
        found = self.shipped_picture(layer, channel)
        return found if found is not None else self.cached(layer, channel)

    def picture(self, layer: str, channel: int | float, progress: Progress = None) -> tuple[np.ndarray, str]:
        """The unit's picture (P, P, 3) uint8 and where it came from ("shipped", "cached", "made now")."""
        layer, channel = self.check(layer, channel)
        found = self.shipped_picture(layer, channel)
        if found is not None:
            return found, "shipped"
        found = self.cached(layer, channel)
        if found is not None:
            return found, "cached"
        return self.make([(layer, channel)], (), self.settings, progress)[0], "made now"

    def make(self, units: list[tuple[str, int]], randomized: tuple[str, ...] = (), settings: Settings | None = None,
             progress: Progress = None) -> list[np.ndarray]:
        """Optimise pictures of ``units`` (layer, channel) on the model (``randomized`` layers re-drawn), cached."""
        settings = settings or self.settings
        vis = self.visualizer(randomized)
        targets = [Target(layer, channel) for layer, channel in units]
        if len({t.start for t in targets}) != 1:
            raise InputError("units of one request must start from the same layer")
        done = [0]

        def step(k: int) -> None:
            done[0] += k
            if progress is not None:
                progress(done[0], settings.steps)

        results = visualize(vis, targets, settings, progress=step)
        pictures = [(np.clip(r.images[0].transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8) for r in results]
        if settings != self.settings:
            return pictures
        with self._lock:
            for (layer, channel), pic in zip(units, pictures, strict=True):
                self._cache[(randomized, layer, channel)] = pic
                self._cache.move_to_end((randomized, layer, channel))
            while len(self._cache) > KEEP:
                self._cache.popitem(last=False)
        return pictures

    def sanity(self, layer: str, channel: int | float, progress: Progress = None) -> list[tuple[str, np.ndarray]]:
        """The unit visualised on the trained model and on the cascading-randomized copies (``CASCADE``):
        [(label, picture (P, P, 3) uint8)]."""
        layer, channel = self.check(layer, channel)
        out = []
        for i, (label, randomized) in enumerate(CASCADE):
            settings = self.sanity_settings
            found = self._cache.get(("sanity", randomized, layer, channel))
            if found is None:
                def part(done: int, total: int, i: int = i) -> None:
                    if progress is not None:
                        progress(i * total + done, len(CASCADE) * total)

                found = self.make([(layer, channel)], randomized, settings, part)[0]
                with self._lock:
                    self._cache[("sanity", randomized, layer, channel)] = found
            out.append((label, found))
        return out


def _index(value, count: int) -> int:
    from demo.app.inputs import whole_number

    k = whole_number(value, "The class")
    if not 0 <= k < count:
        raise InputError(f"classes are 0 to {count - 1}; got {value}.")
    return k


def connections(pipeline: Pipeline, layer: str, channel: int, k: int = 6) -> tuple[list[Connection],
                                                                                    list[Connection]]:
    """The unit's strongest connections (Distill's "Zoom In"): in, the channels of the layer below (RGB for conv1_1)
    whose 3x3 kernel into ``channel`` has the largest |summed weight|; out, the channels of the conv above (for
    conv5_3: the classes, by the head's weight when it is one Linear layer) fed most strongly by it. Weights are the
    exported ones, batch norm folded. ``k`` of each, strongest first."""
    model = pipeline.model
    layer = check("layer", layer)
    channel = check_channel(layer, channel)
    i = CONV_LAYERS.index(layer)
    w = model.weights[layer][channel].sum(axis=(1, 2))  # (C_in,)
    below = CONV_LAYERS[i - 1] if i else "RGB"
    into = [Connection(below, int(c), float(w[c])) for c in np.argsort(-np.abs(w), kind="stable")[:k]]
    if i + 1 < len(CONV_LAYERS):
        above = CONV_LAYERS[i + 1]
        v = model.weights[above][:, channel].sum(axis=(1, 2))  # (C_out,)
    else:
        above = CLASS
        linears = model.head.linears
        v = linears[0][0][:, channel] if len(linears) == 1 else np.zeros(0, np.float32)
    out = [Connection(above, int(c), float(v[c])) for c in np.argsort(-np.abs(v), kind="stable")[:k]]
    return into, out




# --- the page of one unit, ready for the UI -------------------------------------------------------------------

SHOWN = 288  # the side, in pixels, at which the unit's own picture is shown (pictures are made at 96-112 px)


def _missing_tile() -> np.ndarray:
    """The tile of a unit without a picture yet: (96, 96, 3) uint8, grey, saying so."""
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (96, 96), (200, 200, 200))
    ImageDraw.Draw(tile).multiline_text((48, 48), "no picture\nyet: open\nits page", fill=(90, 90, 90),
                                        anchor="mm", align="center")
    return np.asarray(tile)


MISSING = _missing_tile()


def enlarged(picture: np.ndarray, side: int = SHOWN) -> np.ndarray:
    """``picture`` (P, P, 3) uint8 resampled (bicubic) to (side, side, 3) when smaller, for display."""
    from PIL import Image

    if picture.shape[0] >= side:
        return picture
    return np.asarray(Image.fromarray(picture).resize((side, side), Image.BICUBIC))


@dataclass
class UnitPage:
    """Everything the unit page shows: the picture and its caption, the projection on the current image (None
    without an image or for a class), the connections as (picture, label) gallery items, the dataset top-9 (PNG
    path and caption, or None)."""

    picture: np.ndarray  # (SHOWN, SHOWN, 3) uint8 at least: enlarged for display
    caption: str
    projection: str | None
    into: list[tuple[np.ndarray, str]]
    out: list[tuple[np.ndarray, str]]
    atlas: tuple[str, str] | None


def _items(units: UnitPictures, links: list[Connection]) -> list[tuple[np.ndarray, str]]:
    items = []
    for link in links:
        found = units.available(link.layer, link.channel) if link.layer != "RGB" else None
        items.append((found if found is not None else MISSING, link.label))
    return items


def unit_page(units: UnitPictures, layer: str, channel: int | float, image=None, norm: str = "minmax",
              resize: str = "crop", rule: str = "deconvnet", atlas_dir: str | Path | None = None,
              progress: Progress = None) -> UnitPage:
    """The unit page of ``layer``'s ``channel`` (``layer`` "class": a class logit) for the current ``image``."""
    from demo.app import paper, views

    layer, channel = units.check(layer, channel)
    picture, source = units.picture(layer, channel, progress)
    pipeline = units.pipeline
    names = pipeline.model.class_names
    name = f"class {channel} ({names[channel]})" if layer == CLASS else f"{layer} channel {channel}"
    how = {"shipped": "from the shipped set", "cached": "made earlier in this session",
           "made now": f"made now ({units.settings.steps} steps at {units.settings.size} px)"}[source]
    info = units.shipped.info(layer, channel) if source == "shipped" and units.shipped is not None else None
    caption = f"**{name}**: feature visualization {how}."
    if info is not None and info.get("flat"):
        caption += " It came back flat: the optimisation found nothing that drives this unit."
    picture = enlarged(picture)
    if layer == CLASS:
        return UnitPage(picture, caption, None, [], [], None)
    projection = None
    if image is not None:
        projection = views.channel(pipeline, image, layer, channel, norm, resize, rule).projection
    into, out = connections(pipeline, layer, channel)
    atlas = None
    if atlas_dir is not None:
        try:
            atlas = paper.atlas_view(pipeline, atlas_dir, layer, channel)
        except InputError:
            atlas = None
    return UnitPage(picture, caption, projection, _items(units, into), _items(units, out), atlas)


def class_gallery(units: UnitPictures) -> list[tuple[np.ndarray, str]]:
    """The class visualizations of every breed as gallery items (a grey tile where none is shipped or cached)."""
    items = []
    for k, name in enumerate(units.pipeline.model.class_names):
        found = units.available(CLASS, k)
        items.append((found if found is not None else MISSING, f"{k}: {name}"))
    return items


def topk_gallery(units: UnitPictures, layer: str, channels: list[int]) -> list[tuple[np.ndarray, str]]:
    """The feature visualizations of ``layer``'s ``channels`` (the explorer's top-k) as gallery items, shipped or
    cached only (a grey tile otherwise: open the channel's unit page to make one)."""
    links = [Connection(layer, int(c), 0.0) for c in channels]
    return [(pic, f"{layer}/{c}") for (pic, _), c in zip(_items(units, links), channels, strict=True)]


def sanity_gallery(units: UnitPictures, layer: str, channel: int | float,
                   progress: Progress = None) -> list[tuple[np.ndarray, str]]:
    """The unit on the trained and the cascading-randomized models, as gallery items."""
    return [(pic, label) for label, pic in units.sanity(layer, channel, progress)]


__all__ = ["CASCADE", "ON_REQUEST", "SANITY", "Connection", "UnitPage", "UnitPictures", "class_gallery",
           "connections", "sanity_gallery", "topk_gallery", "unit_layer", "unit_page"]
