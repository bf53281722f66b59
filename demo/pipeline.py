"""What the Gradio app calls: an uploaded file -> prediction, the 13 layer reconstructions, the layer explorer.

Everything between the user's file and the pictures on the page lives here or in the modules it calls, so that
``demo/ui.py`` only wires components to these functions. The flow, one stage per module:

    open_upload (safe decoding, this module) -> demo.preprocess -> demo.onnx_forward.OnnxModel.run
        -> demo.deconv_numpy.Deconvnet -> demo.display -> PNG / .npz files the page shows and offers

``Pipeline`` holds the one onnxruntime session and the one NumPy deconvnet of the process; it is safe to call
from several threads at once (onnxruntime sessions are, the deconvnet keeps no state between calls and the
cache is locked). Forward passes and projections are cached per uploaded file (keyed by the SHA-1 of its bytes),
so changing the normalisation, the layer or the channel re-renders without recomputing.

Untrusted input. ``open_upload`` reads the file itself instead of letting a web framework decode it: it refuses
empty, oversized, non-image, truncated and damaged files, images above ``Limits.max_pixels`` (checked from the
header, before any pixel is decoded) and absurd aspect ratios, and turns Pillow's own decompression-bomb warning
and error into the same clear message. Every refusal is an ``InputError`` whose text is meant for the user.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from demo import display, invariance, occlusion
from demo.deconv_numpy import Deconvnet, Projection
from demo.onnx_forward import OnnxModel
from demo.preprocess import RESIZE_MODES, deprocess, preprocess, to_rgb
from model.spec import CONV_LAYERS, conv_channels, receptive_field, stride_of

TOP_CLASSES = 5  # breeds shown in the prediction
MAX_OCCLUSION_PASSES = 1024  # forward passes one occlusion request may cost (stride 7 at 224 px)
EXIF_ORIENTATION = 0x0112


class InputError(ValueError):
    """A problem with what the user gave us, worded for the user: the UI shows the text as it is."""


@dataclass(frozen=True)
class Limits:
    """What an upload may be. Pillow's own bomb limit is ~89 megapixels (warning) and ~179 (error)."""

    max_pixels: int = 40_000_000  # width * height, checked from the header before decoding
    max_aspect: float = 20.0  # longest side / shortest side (a 1 x 30000 strip would resize to 6.7 gigapixels)
    max_bytes: int = 25 * 2**20  # size of the file


@dataclass
class Upload:
    """A decoded upload: the picture in 8-bit RGB (EXIF orientation applied, first frame), and what to tell."""

    image: Image.Image
    digest: str  # SHA-1 of the file's bytes
    size: tuple[int, int]  # (width, height) of the file's picture, before EXIF rotation
    notes: list[str]  # things the user should know (animation, rotation, tiny image), one sentence each


def _read_source(source: str | Path | bytes | Mapping | None, limits: Limits) -> bytes:
    """The bytes of an upload: a file path, raw bytes, or a Gradio file payload ({"path": ...} or a data: URL)."""
    if source is None:
        raise InputError("No image yet: upload one, take a webcam photo, paste one, or pick an example.")
    if isinstance(source, Mapping):
        path, url = source.get("path"), source.get("url")
        if path:
            source = path
        elif isinstance(url, str) and url.startswith("data:"):
            header, _, payload = url.partition(",")
            if len(payload) > limits.max_bytes * 4 // 3 + 4:
                raise InputError(f"The image is larger than {limits.max_bytes / 2**20:.0f} MB.")
            try:
                source = base64.b64decode(payload, validate=True) if ";base64" in header else payload.encode()
            except (binascii.Error, ValueError):
                raise InputError("The image data is damaged (bad base64 encoding).") from None
        else:
            raise InputError("No image yet: upload one, take a webcam photo, paste one, or pick an example.")
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError:
            raise InputError("The uploaded file could not be found; please upload it again.") from None
        if size > limits.max_bytes:
            raise InputError(f"The file is {size / 2**20:.1f} MB; the app takes files up to "
                             f"{limits.max_bytes / 2**20:.0f} MB.")
        data = path.read_bytes()
    if not data:
        raise InputError("The file is empty (0 bytes): nothing to show.")
    if len(data) > limits.max_bytes:
        raise InputError(f"The image is larger than {limits.max_bytes / 2**20:.0f} MB.")
    return data


def _too_many_pixels(width: int | None, height: int | None, limits: Limits) -> InputError:
    dims = f"{width} x {height} pixels ({width * height / 1e6:.0f} megapixels)" if width and height else "too large"
    return InputError(f"The image is {dims}; the app takes images up to {limits.max_pixels / 1e6:.0f} megapixels. "
                      "Please use a smaller copy (the network only sees a small square anyway).")


def decode(data: bytes, limits: Limits = Limits()) -> Upload:
    """Decode an image file's bytes safely into an ``Upload``; raises ``InputError`` with the reason otherwise.

    The size is checked from the header before decoding; Pillow's DecompressionBombWarning is raised as an error
    and, like its DecompressionBombError, reported as "too many pixels". Animations keep their first frame; any
    Pillow mode (palette, RGBA, grey, CMYK, 16-bit ...) is converted to RGB by ``demo.preprocess.to_rgb``.
    """
    if not data:
        raise InputError("The file is empty (0 bytes): nothing to show.")
    digest = hashlib.sha1(data).hexdigest()
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(None, None, limits) from None
        except UnidentifiedImageError:
            raise InputError("This file is not a picture the app can read (PNG, JPEG, GIF, WebP, BMP, TIFF ...). "
                             "Is it really an image, or just named like one?") from None
        except Exception as err:  # noqa: BLE001 - any decoder failure is a damaged file to the user
            raise InputError(f"The image file is damaged and cannot be opened ({type(err).__name__}).") from None
        with image:
            width, height = image.size
            if width < 1 or height < 1:
                raise InputError(f"The image has no pixels ({width} x {height}).")
            if width * height > limits.max_pixels:
                raise _too_many_pixels(width, height, limits)
            if max(width, height) > limits.max_aspect * min(width, height):
                raise InputError(f"The image is {width} x {height} pixels: too thin a strip to show the network "
                                 f"(sides may differ by at most {limits.max_aspect:.0f} times).")
            frames = getattr(image, "n_frames", 1)
            try:
                if frames > 1:
                    image.seek(0)
                image.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise _too_many_pixels(width, height, limits) from None
            except OSError as err:
                reason = "it is truncated (incomplete)" if "truncated" in str(err) else "its data are corrupt"
                raise InputError(f"The image file is damaged: {reason}. Please upload a complete copy.") from None
            except Exception as err:  # noqa: BLE001
                raise InputError(f"The image file is damaged and cannot be decoded ({type(err).__name__}).") from None
            try:
                orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            except Exception:  # noqa: BLE001 - unreadable EXIF: the picture itself is still fine
                orientation = 1
            try:
                rgb = to_rgb(image)
            except Exception as err:  # noqa: BLE001
                raise InputError(f"The image's colours ({image.mode}) could not be converted to RGB "
                                 f"({type(err).__name__}).") from None
    if frames > 1:
        notes.append(f"Animated image: showing its first frame (of {frames}).")
    if orientation not in (1, None):
        notes.append("The photo carries an EXIF rotation; it was turned upright first.")
    return Upload(rgb, digest, (width, height), notes)


def open_upload(source: str | Path | bytes | Mapping | None, limits: Limits = Limits()) -> Upload:
    """Read and safely decode an upload (a path, bytes or a Gradio file payload); ``InputError`` if unusable."""
    return decode(_read_source(source, limits), limits)


@dataclass
class Timings:
    """Seconds spent on one request, per stage.

    preprocess: reading, decoding, resizing and normalising the image; forward: onnxruntime; deconvnet: the NumPy
    projections; encoding: display normalisation to 8-bit pictures and writing the PNG/.npz files. A request served
    from the cache has ``cached`` set, ~0 in the stages it skipped, and ``first``: the timings of the request that
    computed it.
    """

    preprocess: float = 0.0
    forward: float = 0.0
    deconvnet: float = 0.0
    encoding: float = 0.0
    cached: bool = False
    first: Timings | None = None

    @property
    def total(self) -> float:
        return self.preprocess + self.forward + self.deconvnet + self.encoding

    def as_dict(self) -> dict[str, float]:
        """Milliseconds per stage and in total."""
        stages = ("preprocess", "forward", "deconvnet", "encoding")
        return {**{s: 1e3 * getattr(self, s) for s in stages}, "total": 1e3 * self.total}

    def stages(self) -> str:
        """"preprocess 3 ms · forward 41 ms · deconvnet 1.20 s · encoding 30 ms"."""
        return " · ".join(f"{name} {_fmt(seconds)}" for name, seconds in
                          (("preprocess", self.preprocess), ("forward", self.forward),
                           ("deconvnet", self.deconvnet), ("encoding", self.encoding)))

    def markdown(self, provider: str = "", progress: str = "") -> str:
        """One line for the page: each stage, the total and the provider that ran the forward pass."""
        where = f" on {provider.replace('ExecutionProvider', '')}" if provider else ""
        if self.cached and self.first is not None and self.deconvnet == 0:
            text = (f"**Timings** total {_fmt(self.total)} from the cache (encoding {_fmt(self.encoding)}); first "
                    f"computed in **{_fmt(self.first.total)}**{where}: {self.first.stages()}")
        else:
            text = f"**Timings** {self.stages()} · **total {_fmt(self.total)}**{where}"
            if self.cached:
                text += " (forward pass from the cache)"
        return text + (f" — {progress}" if progress else "")


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


@dataclass(frozen=True)
class GridLayout:
    """How ``Pipeline.feature_grid`` lays out C feature maps: row-major tiles of tile_h x tile_w, ``gap`` apart."""

    channels: int
    columns: int
    tile_h: int
    tile_w: int
    gap: int = 1

    @property
    def rows(self) -> int:
        return math.ceil(self.channels / self.columns)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the grid picture in pixels."""
        return (self.rows * (self.tile_h + self.gap) - self.gap, self.columns * (self.tile_w + self.gap) - self.gap)

    @classmethod
    def for_maps(cls, C: int, h: int, w: int, min_tile: int = 32, max_width: int = 1024, gap: int = 1) -> GridLayout:
        """A square-ish grid for C maps of (h, w): small maps enlarged to ``min_tile`` px, big ones shrunk so that
        the grid is at most about ``max_width`` px wide."""
        columns = math.ceil(math.sqrt(C))
        side = max(h, w)
        if side < min_tile:
            factor = math.ceil(min_tile / side)
            return cls(C, columns, h * factor, w * factor, gap)
        shrink = max(1, math.ceil(side / max(min_tile, max_width // columns - gap)))
        return cls(C, columns, max(1, h // shrink), max(1, w // shrink), gap)

    def channel_at(self, x: float, y: float) -> int | None:
        """The channel whose tile holds pixel (x, y) of the grid picture, or None for a gap or outside."""
        col, dx = divmod(int(x), self.tile_w + self.gap)
        row, dy = divmod(int(y), self.tile_h + self.gap)
        if x < 0 or y < 0 or dx >= self.tile_w or dy >= self.tile_h or col >= self.columns:
            return None
        channel = row * self.columns + col
        return channel if channel < self.channels else None


def feature_grid(activation: np.ndarray, norm: str = "minmax",
                 layout: GridLayout | None = None) -> tuple[np.ndarray, np.ndarray, GridLayout]:
    """Each channel of (C, h, w) feature maps normalised alone and tiled: -> (H, W, 3) uint8, flat flags (C,), layout.

    Flat channels (a ReLU that never fires here) are mid-grey and flagged. Tiles are enlarged by nearest
    neighbour or shrunk by box averaging to the layout's tile size.
    """
    C, h, w = activation.shape
    layout = layout or GridLayout.for_maps(C, h, w)
    tiles, flags = [], np.zeros(C, dtype=bool)
    for c in range(C):
        tile, flags[c] = display.map_image(activation[c], norm)
        if (layout.tile_h, layout.tile_w) != (h, w):
            if layout.tile_h >= h:
                tile = display.upscale(tile, layout.tile_h // h)
            else:
                tile = np.asarray(Image.fromarray(tile).resize((layout.tile_w, layout.tile_h), Image.Resampling.BOX))
        tiles.append(tile)
    return display.grid(tiles, layout.columns, layout.gap), flags, layout


def top_predictions(probs: np.ndarray, class_names: list[str], k: int = TOP_CLASSES) -> dict[str, float]:
    """The k most probable classes of one image's probabilities (K,), as {name: probability}, best first."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return {class_names[i]: float(probs[i]) for i in order}


def enlarge(picture: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (h, w, 3) picture by the smallest integer factor reaching ``min_side``."""
    side = max(picture.shape[:2])
    return display.upscale(picture, math.ceil(min_side / side)) if side < min_side else picture


def layer_caption(layer: str, flat: bool = False) -> str:
    """Caption of a whole-layer reconstruction: the layer's name, and a flag when nothing was there to show."""
    return f"{layer} (all zero)" if flat else layer


@dataclass
class PipelineConfig:
    """How the pipeline treats inputs and results (every field has a sensible default)."""

    limits: Limits = field(default_factory=Limits)
    size: int | None = None  # input side in pixels; None: the model's own (its metadata)
    cache_size: int = 4  # uploads whose forward pass and projections are kept (0: recompute every request)
    projections_per_upload: int = 64  # single-channel / top-k projections kept per cached upload
    png_compress_level: int = 1  # zlib level of the PNGs the page shows (1: fast, files ~20% bigger than 6)
    keep_requests: int = 256  # request folders of pictures kept on disk for the page to fetch
    min_tile: int = 96  # smallest side, in pixels, of a receptive-field crop on the page
    min_picture: int = 224  # smallest side of the other single pictures (small inputs are enlarged, nearest)


@dataclass
class Forward:
    """One upload's forward pass, and the projections computed from it so far (filled lazily, cached)."""

    digest: str
    x: np.ndarray  # (1, 3, S, S) float32, the network's input
    probs: np.ndarray  # (K,) float32
    activations: dict[str, np.ndarray]  # conv name -> (1, C, h, w) float32, after ReLU
    switches: dict[str, np.ndarray]  # pool name -> (1, C, h, w) int64
    notes: list[str]
    preprocess_s: float
    forward_s: float
    layers: dict[str, np.ndarray] = field(default_factory=dict)  # conv name -> (3, S, S) whole-layer projection
    first: dict[tuple, Timings] = field(default_factory=dict)  # request -> timings of its first computation
    projections: OrderedDict = field(default_factory=OrderedDict)  # (layer, mode, channel or k) -> Projection


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
    crop: str  # PNG: the projection cropped to its support (at most the receptive field), enlarged
    patch: str  # PNG: the same crop of the network's input, enlarged
    caption: str  # markdown


@dataclass
class Exploration:
    """The "Layer explorer" result for one layer."""

    layer: str
    grid: str  # PNG: every channel's feature map, tiled by ``layout``
    layout: GridLayout
    merged: str  # PNG: the sum of the channels (the seed's "merged" view)
    topk: list[tuple[str, str]]  # (PNG path, caption) of the k strongest channels, strongest first
    channels: list[int]
    values: list[float]
    selected: ChannelView  # the strongest channel
    summary: str  # markdown
    timings: Timings


class Pipeline:
    """The app's one model session and deconvnet, with a small cache of forward passes and projections.

    Args:
        model: a loaded ``OnnxModel`` (one per process).
        config: a ``PipelineConfig``.
    """

    def __init__(self, model: OnnxModel, config: PipelineConfig | None = None) -> None:
        self.model = model
        self.config = config or PipelineConfig()
        self.deconvnet = Deconvnet.from_model(model)
        self.size = self.config.size or model.input_size
        self.history: deque[tuple[str, Timings]] = deque(maxlen=10_000)  # (request kind, timings), for benches
        self._cache: OrderedDict[tuple[str, str], Forward] = OrderedDict()
        self._lock = threading.Lock()
        self._workdir = Path(tempfile.mkdtemp(prefix="deconvnet-app-"))
        self._requests: deque[Path] = deque()
        self._count = 0
        self._model_sha1: str | None = None  # of the model file, to match an atlas's

    @classmethod
    def from_path(cls, path: str | Path | None = None, device: str = "auto", threads: int | None = None,
                  config: PipelineConfig | None = None) -> Pipeline:
        """Load the .onnx file ``path`` (None: the default model) and build the pipeline around it."""
        return cls(OnnxModel(path, device=device, threads=threads), config)

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider that really runs the forward pass."""
        return self.model.providers[0]

    def close(self) -> None:
        """Delete the pictures written so far."""
        shutil.rmtree(self._workdir, ignore_errors=True)

    # --- files -------------------------------------------------------------------------------------------------

    def _request_dir(self) -> Path:
        """A fresh folder for one request's files; the oldest are deleted beyond ``keep_requests``."""
        with self._lock:
            self._count += 1
            folder = self._workdir / f"{self._count:07d}"
            self._requests.append(folder)
            stale = [self._requests.popleft() for _ in range(max(0, len(self._requests) - self.config.keep_requests))]
        folder.mkdir(parents=True)
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def _enlarge(self, picture: np.ndarray) -> np.ndarray:
        return enlarge(picture, self.config.min_picture)

    def _png(self, picture: np.ndarray, folder: Path, name: str) -> str:
        path = folder / f"{name}.png"
        Image.fromarray(picture).save(path, format="PNG", compress_level=self.config.png_compress_level)
        return str(path)

    # --- the forward pass (cached) --------------------------------------------------------------------------

    def forward(self, source: str | Path | bytes | Mapping | None, resize: str = "crop") -> tuple[Forward, bool]:
        """Decode ``source``, preprocess and run the network; returns the ``Forward`` and whether it was cached."""
        if resize not in RESIZE_MODES:
            raise InputError(f"Unknown resize mode {resize!r}; choose one of {', '.join(RESIZE_MODES)}.")
        start = time.perf_counter()
        data = _read_source(source, self.config.limits)
        key = (hashlib.sha1(data).hexdigest(), resize)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit, True
        upload = decode(data, self.config.limits)
        notes = list(upload.notes)
        if 2 * min(upload.image.size) < self.size:
            w, h = upload.image.size
            notes.append(f"The image is only {w} x {h} pixels, far smaller than the network's {self.size} x "
                         f"{self.size} input: it was enlarged, so expect a blurry picture.")
        x = preprocess(upload.image, self.size, self.model.mean, self.model.std, resize)
        t_pre = time.perf_counter()
        probs, activations, switches = self.model.run(x)
        entry = Forward(upload.digest, x, probs[0], activations, switches, notes, t_pre - start,
                        time.perf_counter() - t_pre)
        if self.config.cache_size > 0:
            with self._lock:
                self._cache[key] = entry
                while len(self._cache) > self.config.cache_size:
                    self._cache.popitem(last=False)
        return entry, False

    def _timings(self, fwd: Forward, cached: bool) -> Timings:
        return Timings(cached=True) if cached else Timings(fwd.preprocess_s, fwd.forward_s)

    def _remember(self, fwd: Forward, request: tuple, timings: Timings) -> None:
        """Keep the first timings of ``request`` on this upload; link them from a later, cached one."""
        with self._lock:
            first = fwd.first.setdefault(request, timings)
        if first is not timings:
            timings.first = first

    def _projection(self, fwd: Forward, layer: str, mode: str, arg: int) -> tuple[Projection, float]:
        """A single-channel ("channel", arg = channel) or top-k ("topk", arg = k) projection (cached), and seconds."""
        key = (layer, mode, arg)
        with self._lock:
            hit = fwd.projections.get(key)
        if hit is not None:
            return hit, 0.0
        start = time.perf_counter()
        if mode == "channel":
            p = self.deconvnet.project(fwd.activations, fwd.switches, layer, "channel", channel=arg)
        else:
            p = self.deconvnet.project(fwd.activations, fwd.switches, layer, "topk", k=arg)
        seconds = time.perf_counter() - start
        with self._lock:
            fwd.projections[key] = p
            while len(fwd.projections) > self.config.projections_per_upload:
                fwd.projections.popitem(last=False)
        return p, seconds

    def _single(self, fwd: Forward, layer: str, channel: int) -> tuple[np.ndarray, float, float]:
        """Channel ``channel``'s strongest activation projected alone (3, S, S), that activation, and the seconds
        it took (0 when a cached top-k projection of the layer already holds it)."""
        with self._lock:
            cached = [p for (name, mode, _), p in fwd.projections.items() if name == layer and mode == "topk"]
        for p in cached:
            hits = np.flatnonzero(p.channels == channel)
            if hits.size:
                return p.images[hits[0]], float(p.values[hits[0]]), 0.0
        p, seconds = self._projection(fwd, layer, "channel", channel)
        return p.images[0], float(p.values[0]), seconds

    # --- "All layers" -----------------------------------------------------------------------------------------

    def analyse(self, source: str | Path | bytes | Mapping | None, norm: str = "minmax",
                resize: str = "crop") -> Iterator[Analysis]:
        """Predict and project every conv layer of ``source`` back to pixels, yielding as results arrive.

        The first ``Analysis`` carries the prediction and no layer; each following one adds the next layer's
        whole-layer reconstruction (conv1_1 ... conv5_3); the last has all 13, the .npz and ``done`` True.
        """
        _check_norm(norm)
        fwd, cached = self.forward(source, resize)
        timings = self._timings(fwd, cached)
        folder = self._request_dir()
        start = time.perf_counter()
        network_input = self._png(self._enlarge(deprocess(fwd.x, self.model.mean, self.model.std)), folder, "input")
        prediction = top_predictions(fwd.probs, self.model.class_names)
        timings.encoding += time.perf_counter() - start
        layers: list[tuple[str, str]] = []
        yield Analysis(prediction, list(layers), network_input, None, timings, fwd.notes, False)
        for layer in CONV_LAYERS:
            recon = fwd.layers.get(layer)
            if recon is None:
                start = time.perf_counter()
                recon = self.deconvnet.project(fwd.activations, fwd.switches, layer, "layer").images[0]
                fwd.layers[layer] = recon
                timings.deconvnet += time.perf_counter() - start
            start = time.perf_counter()
            picture, flat = display.reconstruction_image(recon, norm)
            layers.append((self._png(picture, folder, layer), layer_caption(layer, flat)))
            timings.encoding += time.perf_counter() - start
            if layer != CONV_LAYERS[-1]:
                yield Analysis(prediction, list(layers), network_input, None, timings, fwd.notes, False)
        start = time.perf_counter()
        npz = folder / "reconstructions.npz"
        np.savez(npz, input=fwd.x, probs=fwd.probs[None],
                 **{f"{layer}/layer": fwd.layers[layer] for layer in CONV_LAYERS})
        timings.encoding += time.perf_counter() - start
        self._remember(fwd, ("analyse",), timings)
        self.history.append(("analyse", timings))
        yield Analysis(prediction, layers, network_input, str(npz), timings, fwd.notes, True)

    def analyse_all(self, source: str | Path | bytes | Mapping | None, norm: str = "minmax",
                    resize: str = "crop") -> Analysis:
        """``analyse`` run to the end: the final ``Analysis`` only."""
        *_, last = self.analyse(source, norm, resize)
        return last

    # --- "Layer explorer" -------------------------------------------------------------------------------------

    def grid_layout(self, layer: str) -> GridLayout:
        """The feature-grid layout of ``layer`` at the pipeline's input size (no forward pass needed)."""
        _check_layer(layer)
        side = self.size // stride_of(layer)
        return GridLayout.for_maps(conv_channels(layer), side, side)

    def channel_at(self, layer: str, x: float, y: float) -> int | None:
        """The channel under pixel (x, y) of ``layer``'s feature grid picture, or None (a gap, outside)."""
        return self.grid_layout(layer).channel_at(x, y)

    def explore(self, source: str | Path | bytes | Mapping | None, layer: str = "conv5_3", k: int = 9,
                norm: str = "minmax", resize: str = "crop") -> Exploration:
        """``layer``'s feature maps (each channel, and merged) and the paper's view: the k channels with the
        strongest activation, each projected alone from that activation, cropped to where it lands."""
        _check_layer(layer)
        _check_norm(norm)
        C = conv_channels(layer)
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise InputError(f"k must be a whole number, got {k!r}.") from None
        if not 1 <= k <= C:
            raise InputError(f"k must be between 1 and {C} for {layer}, got {k}.")
        fwd, cached = self.forward(source, resize)
        timings = self._timings(fwd, cached)
        p, timings.deconvnet = self._projection(fwd, layer, "topk", k)
        start = time.perf_counter()
        folder = self._request_dir()
        act = fwd.activations[layer][0]  # (C, h, w)
        C, h, w = act.shape
        grid, flags, layout = feature_grid(act, norm, self.grid_layout(layer))
        merged, _ = display.map_image(display.merge_channels(act), norm)
        merged = self._enlarge(display.upscale(merged, self.size // h))
        pixels = deprocess(fwd.x, self.model.mean, self.model.std)
        topk = []
        for rank, (c, v, image) in enumerate(zip(p.channels.tolist(), p.values.tolist(), p.images, strict=True)):
            crop, _, _ = self._crop(image, pixels, norm)
            topk.append((self._png(crop, folder, f"top{rank:02d}_ch{c}"), f"ch {c} · {v:.3g}"))
        channel = int(p.channels[0])
        selected = self._channel_view(fwd, layer, channel, norm, folder, p.images[0], float(p.values[0]))
        dead = int(flags.sum())
        summary = (f"**{layer}**: {C} channels of {h} x {w} (each position sees {receptive_field(layer)} x "
                   f"{receptive_field(layer)} px of the input, one every {stride_of(layer)} px)"
                   + (f"; {dead} silent on this image (grey tiles)" if dead else "")
                   + ". Click a feature map or a projection to inspect that channel.")
        result = Exploration(layer, self._png(grid, folder, "grid"), layout, self._png(merged, folder, "merged"),
                             topk, p.channels.tolist(), p.values.tolist(), selected, summary, timings)
        timings.encoding += time.perf_counter() - start
        self._remember(fwd, ("explore", layer, k), timings)
        self.history.append(("explore", timings))
        return result

    def channel(self, source: str | Path | bytes | Mapping | None, layer: str, channel: int | float,
                norm: str = "minmax", resize: str = "crop") -> ChannelView:
        """One channel of ``layer``: feature map, its strongest activation projected alone, and the image patch."""
        _check_layer(layer)
        _check_norm(norm)
        C = conv_channels(layer)
        try:
            c = int(channel)
        except (TypeError, ValueError):
            raise InputError(f"The channel must be a whole number, got {channel!r}.") from None
        if c != channel or not 0 <= c < C:
            raise InputError(f"{layer} has channels 0 to {C - 1}; got {channel}.")
        fwd, _ = self.forward(source, resize)
        projection, value, seconds = self._single(fwd, layer, c)
        start = time.perf_counter()
        view = self._channel_view(fwd, layer, c, norm, self._request_dir(), projection, value)
        self.history.append(("channel", Timings(deconvnet=seconds, encoding=time.perf_counter() - start)))
        return view

    def _crop(self, projection: np.ndarray, pixels: np.ndarray,
              norm: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int] | None]:
        """A (3, S, S) projection cropped to its non-zero box and normalised, the input's pixels (S, S, 3) in the
        same box, both enlarged to ``min_tile``; and the box (None when the projection is all zero)."""
        box = display.support_box(projection)
        if box is None:
            r0, r1, c0, c1 = 0, projection.shape[1], 0, projection.shape[2]
        else:
            r0, r1, c0, c1 = box
        crop, _ = display.reconstruction_image(projection[:, r0:r1, c0:c1], norm)
        patch = pixels[r0:r1, c0:c1]
        return enlarge(crop, self.config.min_tile), enlarge(patch, self.config.min_tile), box

    def _channel_view(self, fwd: Forward, layer: str, channel: int, norm: str, folder: Path,
                      projection: np.ndarray, value: float) -> ChannelView:
        fmap = fwd.activations[layer][0, channel]  # (h, w)
        h, w = fmap.shape
        row, col = divmod(int(fmap.argmax()), w)
        feature, _ = display.map_image(fmap, norm)
        full, _ = display.reconstruction_image(projection, norm)
        pixels = deprocess(fwd.x, self.model.mean, self.model.std)
        crop, patch, box = self._crop(projection, pixels, norm)
        name = f"{layer}_ch{channel}"
        if value <= 0:
            caption = (f"**{layer}, channel {channel}** never fires on this image (its largest activation is 0): "
                       "there is nothing to project.")
        else:
            r0, r1, c0, c1 = box or (0, 0, 0, 0)
            caption = (f"**{layer}, channel {channel}**: strongest activation **{value:.4g}** at row {row}, column "
                       f"{col} of the {h} x {w} map. Projected alone (every other activation set to zero), it lands "
                       f"in a {r1 - r0} x {c1 - c0} px patch of the input (receptive field {receptive_field(layer)} "
                       "px).")
        return ChannelView(layer, channel, value,
                           self._png(self._enlarge(display.upscale(feature, self.size // h)), folder, f"{name}_map"),
                           self._png(self._enlarge(full), folder, f"{name}_projection"),
                           self._png(crop, folder, f"{name}_crop"),
                           self._png(patch, folder, f"{name}_patch"), caption)

    # --- the paper's analyses: "Occlusion", "Invariance", "Atlas" --------------------------------------------

    @property
    def default_stride(self) -> int:
        """The occlusion stride the page starts with, in pixels: 16 on a GPU, 32 on the CPU (4x fewer passes)."""
        return 16 if self.provider.startswith("CUDA") else 32

    def occlusion_for(self, source: str | Path | bytes | Mapping | None, size: int | float = 48,
                      stride: int | float | None = None, resize: str = "crop",
                      progress: Callable[[int, int], None] | None = None) -> tuple[str, str]:
        """The occlusion maps of ``source`` (``demo.occlusion.occlusion_view``): the figure's PNG (the image and the
        three maps overlaid on it, with colour bars) and its Markdown summary. ``size`` and ``stride`` in input
        pixels (stride None: ``default_stride``); ``progress(done, total)`` after each batch."""
        stride = self.default_stride if stride is None else stride
        try:
            size, stride = int(size), int(stride)
        except (TypeError, ValueError):
            raise InputError(f"The square's size and stride must be whole numbers, got {size!r} and {stride!r}.") \
                from None
        if not 1 <= size <= self.size:
            raise InputError(f"The square's size must be between 1 and {self.size} px, got {size}.")
        if not 1 <= stride <= self.size:
            raise InputError(f"The stride must be between 1 and {self.size} px, got {stride}.")
        passes = math.ceil(self.size / stride) ** 2
        if passes > MAX_OCCLUSION_PASSES:
            raise InputError(f"A stride of {stride} px needs {passes} forward passes; the app allows "
                             f"{MAX_OCCLUSION_PASSES}: choose a stride of at least {self._min_stride()} px.")
        fwd, _ = self.forward(source, resize)
        figure, summary, _ = occlusion.occlusion_view(self.model, fwd.x, size, stride, progress=progress)
        return self._png(figure, self._request_dir(), "occlusion"), summary

    def _min_stride(self) -> int:
        return next(s for s in range(1, self.size + 1) if math.ceil(self.size / s) ** 2 <= MAX_OCCLUSION_PASSES)

    def invariance_for(self, source: str | Path | bytes | Mapping | None, resize: str = "crop",
                       progress: Callable[[int, int], None] | None = None) -> str:
        """The invariance curves of ``source`` (``demo.invariance.invariance_view``, quick ranges): the figure's
        PNG (rows: translation, scale, rotation; columns: feature distances per layer and p(predicted class))."""
        fwd, _ = self.forward(source, resize)
        figure, _ = invariance.invariance_view(self.model, fwd.x, quick=True, progress=progress)
        return self._png(figure, self._request_dir(), "invariance")

    def atlas(self, atlas_dir: str | Path):
        """The dataset atlas in ``atlas_dir`` (a ``demo.mine.Atlas``, cached); FileNotFoundError if it is none."""
        from demo import mine

        return mine.load_atlas(str(Path(atlas_dir).resolve()))

    def atlas_channels(self, atlas_dir: str | Path, layer: str) -> list[int]:
        """The channels of ``layer`` in the atlas, strongest top activation first (dead channels last)."""
        atlas = self.atlas(atlas_dir)
        if layer not in atlas.layers:
            raise InputError(f"The atlas has layers {', '.join(atlas.layers)}, not {layer!r}.")
        return atlas.ranked_channels(layer).tolist()

    def atlas_view(self, atlas_dir: str | Path, layer: str, channel: int | float) -> tuple[str, str]:
        """``layer``'s ``channel`` in the atlas: the PNG of its k projections (left) beside their image patches
        (right), and the Markdown caption. A picture not drawn yet is drawn now, when the atlas was mined with
        this pipeline's model."""
        from demo import mine

        atlas = self.atlas(atlas_dir)
        if layer not in atlas.layers:
            raise InputError(f"The atlas has layers {', '.join(atlas.layers)}, not {layer!r}.")
        try:
            c = int(channel)
        except (TypeError, ValueError):
            raise InputError(f"The channel must be a whole number, got {channel!r}.") from None
        if c != channel or not 0 <= c < atlas.channels(layer):
            raise InputError(f"{layer} has channels 0 to {atlas.channels(layer) - 1} in the atlas; got {channel}.")
        if self._model_sha1 is None:
            self._model_sha1 = mine.model_sha1(self.model.path)
        own = atlas.info.get("model_sha1") == self._model_sha1
        try:
            picture = atlas.view(layer, c, self.model if own else None)
        except FileNotFoundError:
            raise InputError(f"{layer} channel {c} has no picture in the atlas yet, and the atlas was mined with "
                             f"another model: run python -m demo.mine --out {atlas.dir} --resume.") from None
        return self._png(picture, self._request_dir(), f"atlas_{layer}_ch{c}"), atlas.caption(layer, c)

    # --- text for the page ----------------------------------------------------------------------------------

    def describe(self) -> str:
        """A markdown line about the model: file, classes, input size, provider, accuracy from its model card."""
        m = self.model
        card = m.model_card or {}
        acc = next((card[k] for k in ("val_acc", "accuracy", "val_accuracy", "test_acc") if k in card), None)
        text = (f"Model `{m.path.name}`: {len(m.class_names)} classes, {self.size} x {self.size} px input, "
                f"onnxruntime on **{m.device.upper()}** (`{self.provider}`)")
        if isinstance(acc, (int, float)):
            text += f", validation accuracy {100 * acc:.1f}%" if acc <= 1 else f", validation accuracy {acc}"
        return text + "."

    def model_card_markdown(self) -> str:
        """The model card (a dict in the ONNX metadata) as a markdown table."""
        card = self.model.model_card or {}
        if not card:
            return "This model file carries no model card."
        rows = "\n".join(f"| {key} | {str(value).replace('|', '/')} |" for key, value in card.items())
        return "| | |\n|---|---|\n" + rows


def _check_layer(layer: str) -> None:
    if layer not in CONV_LAYERS:
        raise InputError(f"Unknown layer {layer!r}; choose one of {', '.join(CONV_LAYERS)}.")


def _check_norm(norm: str) -> None:
    if norm not in display.NORMS:
        raise InputError(f"Unknown normalisation {norm!r}; choose one of {', '.join(display.NORMS)}.")


__all__ = [
    "Analysis", "ChannelView", "Exploration", "Forward", "GridLayout", "InputError", "Limits", "Pipeline",
    "PipelineConfig", "Timings", "Upload", "decode", "enlarge", "feature_grid", "layer_caption",
    "open_upload", "top_predictions",
]
