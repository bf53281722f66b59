"""The app's one model session and deconvnet, with a small cache of forward passes and projections.

``Pipeline`` holds the onnxruntime session and the deconvnet of the process (the NumPy one, ``demo.backward.Deconvnet``,
when the session runs on the CPU; the ONNX descent graphs of ``demo.backward.onnx_graph`` on the session's own
provider when it runs on CUDA; ``PipelineConfig.backward`` forces either) and is safe to call from several
threads at once (onnxruntime sessions are, the deconvnet keeps no state between calls and the cache is locked).
Forward passes and projections are cached per uploaded file (keyed by the SHA-1 of its bytes and the resize mode),
so changing the normalisation, the layer or the channel re-renders without recomputing. The views (``views``,
``paper``) take a ``Pipeline`` and turn its arrays into pictures.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from base import images
from demo.app.inputs import UPLOAD_LIMITS, InputError, Source, check, decode, digest_of, read_source
from demo.app.store import ResultStore
from demo.app.text import Timings
from demo.backward import Deconvnet, Projection
from demo.backward.onnx_graph import OnnxDeconvnet
from demo.onnx_forward import OnnxModel
from demo.preprocess import deprocess, normalise


@dataclass
class PipelineConfig:
    """How the pipeline treats inputs and results (every field has a sensible default)."""

    limits: images.Limits = UPLOAD_LIMITS
    size: int | None = None  # input side in pixels; None: the model's own (its metadata)
    cache_size: int = 4  # uploads whose forward pass and projections are kept (0: recompute every request)
    projections_per_upload: int = 64  # single-channel / top-k projections kept per cached upload
    png_compress_level: int = 1  # zlib level of the PNGs the page shows (1: fast, files ~20% bigger than 6)
    keep_requests: int = 256  # request folders of pictures kept on disk for the page to fetch
    min_tile: int = 96  # smallest side, in pixels, of a receptive-field crop on the page
    min_picture: int = 224  # smallest side of the other single pictures (small inputs are enlarged, nearest)
    backward: str = "auto"  # deconvnet: "numpy", "onnx" (onnxruntime, the session's provider), "auto" (onnx on CUDA)


BACKWARDS = ("auto", "numpy", "onnx")


def make_deconvnet(model: OnnxModel, backward: str = "auto") -> Deconvnet | OnnxDeconvnet:
    """The deconvnet for ``model``: NumPy's on the CPU, the ONNX descent graphs (``demo.backward.onnx_graph``)
    when the model's session runs on CUDA; ``backward`` "numpy" or "onnx" forces one."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    if backward == "onnx" or (backward == "auto" and model.device == "cuda"):
        return OnnxDeconvnet(model)
    return Deconvnet.from_model(model)


@dataclass
class Forward:
    """One upload's forward pass, and what has been computed from it so far (filled lazily, cached)."""

    digest: str
    x: np.ndarray  # (1, 3, S, S) float32, the network's input
    probs: np.ndarray  # (K,) float32
    activations: dict[str, np.ndarray]  # conv name -> (1, C, h, w) float32, after ReLU
    switches: dict[str, np.ndarray]  # pool name -> (1, C, h, w) int64
    notes: list[str]
    preprocess_s: float
    forward_s: float
    pixels: np.ndarray  # (S, S, 3) uint8, the network's input as a picture
    flip_probs: np.ndarray | None = None  # (K,) probabilities averaged with the mirror image's (flip TTA)
    layers: dict[tuple, np.ndarray] = field(default_factory=dict)  # (conv name, rule) -> (3, S, S) projection
    first: dict[tuple, Timings] = field(default_factory=dict)  # request -> timings of its first computation
    projections: OrderedDict = field(default_factory=OrderedDict)  # (layer, mode, channel or k, rule) -> Projection


class Pipeline:
    """The app's one model session and deconvnet, with a small cache of forward passes and projections.

    Args:
        model: a loaded ``OnnxModel`` (one per process).
        config: a ``PipelineConfig``.
    """

    def __init__(self, model: OnnxModel, config: PipelineConfig | None = None) -> None:
        self.model = model
        self.config = config or PipelineConfig()
        self.deconvnet = make_deconvnet(model, self.config.backward)
        self.size = self.config.size or model.input_size
        self.history: deque[tuple[str, Timings]] = deque(maxlen=10_000)  # (request kind, timings), for benches
        self.store = ResultStore(self.config.keep_requests, self.config.png_compress_level)
        self._cache: OrderedDict[tuple[str, str], Forward] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_path(cls, path: str | Path | None = None, device: str = "auto", threads: int | None = None,
                  config: PipelineConfig | None = None, allow_tf32: bool = False) -> Pipeline:
        """Load the .onnx file ``path`` (None: the default model) and build the pipeline around it (``allow_tf32``:
        let CUDA use TF32)."""
        return cls(OnnxModel(path, device=device, threads=threads, allow_tf32=allow_tf32), config)

    def warm_up(self) -> None:
        """Run one blank image through the network and the deconvnet (every layer, and a top-k), so that the first
        user does not pay for onnxruntime's and the deconvnet's one-time preparations (weight layouts)."""
        x = np.zeros((1, 3, self.size, self.size), dtype=np.float32)
        _, activations, switches = self.model.run(x)
        activations = {name: a + 1.0 for name, a in activations.items()}  # non-zero: every kernel runs
        for layer in activations:
            self.deconvnet.project(activations, switches, layer, "layer")
        self.deconvnet.project(activations, switches, "conv5_3", "topk", k=9)

    @property
    def backward(self) -> str:
        """Which deconvnet projects: "numpy" or "onnx"."""
        return "onnx" if isinstance(self.deconvnet, OnnxDeconvnet) else "numpy"

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider that really runs the forward pass, with its TF32 setting on CUDA."""
        return self.model.provider

    def close(self) -> None:
        """Delete the pictures written so far."""
        self.store.close()

    # --- the forward pass (cached) --------------------------------------------------------------------------

    def forward(self, source: Source, resize: str = "crop") -> tuple[Forward, bool]:
        """Decode ``source``, preprocess and run the network; returns the ``Forward`` and whether it was cached."""
        check("resize mode", resize)
        start = time.perf_counter()
        data = read_source(source, self.config.limits)
        digest = digest_of(data)
        key = (digest, resize)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit, True
        upload = decode(data, self.config.limits, digest)
        notes = list(upload.notes)
        if 2 * min(upload.image.size) < self.size:
            w, h = upload.image.size
            notes.append(f"The image is only {w} x {h} pixels, far smaller than the network's {self.size} x "
                         f"{self.size} input: it was enlarged, so expect a blurry picture.")
        x = normalise(upload.image, self.size, self.model.mean, self.model.std, resize)
        pixels = deprocess(x, self.model.mean, self.model.std)
        t_pre = time.perf_counter()
        probs, activations, switches = self.model.run(x)
        entry = Forward(digest, x, probs[0], activations, switches, notes, t_pre - start,
                        time.perf_counter() - t_pre, pixels)
        if self.config.cache_size > 0:
            with self._lock:
                self._cache[key] = entry
                while len(self._cache) > self.config.cache_size:
                    self._cache.popitem(last=False)
        return entry, False

    def probs(self, fwd: Forward, tta: bool = False) -> np.ndarray:
        """The upload's class probabilities (K,); ``tta``: averaged with its mirror image's (one more forward
        pass, cached)."""
        if not tta:
            return fwd.probs
        if fwd.flip_probs is None:
            fwd.flip_probs = self.model.predict(fwd.x, tta=True, probs=fwd.probs[None])[0]
        return fwd.flip_probs

    def timings_for(self, fwd: Forward, cached: bool) -> Timings:
        """A request's timings, starting with the forward pass's own unless it came from the cache."""
        return Timings(cached=True) if cached else Timings(fwd.preprocess_s, fwd.forward_s)

    def remember(self, fwd: Forward, request: tuple, timings: Timings) -> None:
        """Keep the first timings of ``request`` on this upload; link them from a later, cached one."""
        with self._lock:
            first = fwd.first.setdefault(request, timings)
        if first is not timings:
            timings.first = first

    # --- projections (cached), each with its backward rule ----------------------------------------------------

    def layer_projection(self, fwd: Forward, layer: str, rule: str = "deconvnet") -> tuple[np.ndarray, float]:
        """The whole-layer projection (3, S, S) of ``layer`` with ``rule`` (cached), and the seconds it took
        (0 when cached)."""
        key = (layer, rule)
        recon = fwd.layers.get(key)
        if recon is not None:
            return recon, 0.0
        start = time.perf_counter()
        recon = self.deconvnet.project(fwd.activations, fwd.switches, layer, "layer", rule=rule).images[0]
        fwd.layers[key] = recon
        return recon, time.perf_counter() - start

    def projection(self, fwd: Forward, layer: str, mode: str, arg: int,
                   rule: str = "deconvnet") -> tuple[Projection, float]:
        """A single-channel ("channel", arg = channel) or top-k ("topk", arg = k) projection with ``rule``
        (cached), and the seconds it took."""
        key = (layer, mode, arg, rule)
        with self._lock:
            hit = fwd.projections.get(key)
        if hit is not None:
            return hit, 0.0
        start = time.perf_counter()
        if mode == "channel":
            p = self.deconvnet.project(fwd.activations, fwd.switches, layer, "channel", channel=arg, rule=rule)
        else:
            p = self.deconvnet.project(fwd.activations, fwd.switches, layer, "topk", k=arg, rule=rule)
        self._keep(fwd, key, p)
        return p, time.perf_counter() - start

    def single(self, fwd: Forward, layer: str, channel: int,
               rule: str = "deconvnet") -> tuple[np.ndarray, float, float]:
        """Channel ``channel``'s strongest activation projected alone (3, S, S), that activation, and the seconds
        it took (0 when a cached top-k projection of the layer with the same rule already holds it)."""
        with self._lock:
            cached = [p for (name, mode, _, r), p in fwd.projections.items()
                      if name == layer and mode == "topk" and r == rule]
        for p in cached:
            hits = np.flatnonzero(p.channels == channel)
            if hits.size:
                return p.images[hits[0]], float(p.values[hits[0]]), 0.0
        p, seconds = self.projection(fwd, layer, "channel", channel, rule)
        return p.images[0], float(p.values[0]), seconds

    def class_projection(self, fwd: Forward, class_index: int,
                         rule: str = "deconvnet") -> tuple[np.ndarray, float, float]:
        """The class score's (logit's) projection (3, S, S) with ``rule`` (cached), the logit, and the seconds."""
        key = ("class", "logit", class_index, rule)
        with self._lock:
            hit = fwd.projections.get(key)
        if hit is not None:
            return hit.images[0], float(hit.values[0]), 0.0
        start = time.perf_counter()
        images, logits = self.deconvnet.project_class(fwd.activations, fwd.switches, class_index, rule)
        self._keep(fwd, key, Projection(images, np.array([class_index]), logits))
        return images[0], float(logits[0]), time.perf_counter() - start

    def _keep(self, fwd: Forward, key: tuple, projection: Projection) -> None:
        with self._lock:
            fwd.projections[key] = projection
            while len(fwd.projections) > self.config.projections_per_upload:
                fwd.projections.popitem(last=False)


def top_predictions(probs: np.ndarray, class_names: list[str], k: int = 5) -> dict[str, float]:
    """The k most probable classes of one image's probabilities (K,), as {name: probability}, best first."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return {class_names[i]: float(probs[i]) for i in order}


__all__ = ["BACKWARDS", "Forward", "InputError", "Pipeline", "PipelineConfig", "make_deconvnet", "top_predictions"]
