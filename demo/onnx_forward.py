"""The forward pass in onnxruntime: (N, 3, H, W) images -> probabilities, conv activations, pool switches.

One .onnx file (written by ``python -m export``) carries the graph, the weights and, in its metadata, what the
demo needs to know: class names, mean/std, input size, layer names and a model card. ``OnnxModel`` reads all
of it, builds one onnxruntime session (CUDA first when a GPU is present, else CPU) and also exposes the conv
weights, read from the graph's initializers (batch norm already folded), for the NumPy deconvnet.

On the GPU the CUDA provider is asked for ``use_tf32=0``: cuDNN's default TF32 convolutions round the inputs to
10-bit mantissas, which moves the activations by about 3e-4 (relative L2) from the CPU's and flips some pool
switches; with TF32 off they agree to about 1e-6. ``allow_tf32=True`` (``--tf32``) trades that for speed.
"""

from __future__ import annotations

import copy
import ctypes
import json
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from base import spec
from base.cli import DEFAULT_MODEL, DEVICES, REPO_ROOT, cpu_threads
from demo.backward.head import Head


def resolve_model_path(path: str | Path | None) -> Path:
    """``path``, or DEFAULT_MODEL when None; raises FileNotFoundError with what to do when it is missing."""
    p = Path(path) if path is not None else DEFAULT_MODEL
    if not p.is_file():
        hint = ("the default model is not there yet: train one (python -m model.train) and export it with "
                f"`python -m export --checkpoint CKPT --out {DEFAULT_MODEL.relative_to(REPO_ROOT)}`, or pass "
                "--model FILE.onnx (`python -m export --random --out FILE.onnx` makes a random-weight one)")
        raise FileNotFoundError(f"no ONNX model at {p}" + (f"; {hint}" if path is None else ""))
    return p


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver or GPU); asks the driver, not onnxruntime.

    onnxruntime-gpu lists CUDAExecutionProvider even on hosts without a GPU and logs an error when it falls back,
    so the demo asks the driver first and only requests CUDA where it can work.
    """
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
Providers = list[tuple[str, dict[str, str]]]  # (execution provider, its options), in onnxruntime's order


def providers_for(device: str, allow_tf32: bool = False, cuda_usable: bool | None = None) -> Providers:
    """The execution providers (name, options) a session on ``device`` ("auto", "cuda", "cpu") asks for.

    CUDA comes first when ``device`` is "cuda", or "auto" with a GPU, and onnxruntime has the provider
    (``cuda_usable`` overrides that look-up, for tests); it is asked for ``use_tf32`` "1" only with
    ``allow_tf32``, else "0" (exact float32 convolutions and GEMMs). The CPU provider always comes last.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if cuda_usable is None:
        wanted = device == "cuda" or (device == "auto" and cuda_device_count() > 0)
        cuda_usable = wanted and CUDA in ort.get_available_providers()
    providers: Providers = [(CPU, {})]
    if cuda_usable and device != "cpu":
        providers.insert(0, (CUDA, {"use_tf32": "1" if allow_tf32 else "0"}))
    return providers


def provider_label(provider: str, options: dict[str, str] | None = None) -> str:
    """``provider`` with its TF32 setting when it is CUDA, e.g. "CUDAExecutionProvider (TF32 off)"."""
    if provider != CUDA:
        return provider
    tf32 = (options or {}).get("use_tf32", "1")  # onnxruntime's own default is on
    return f"{provider} (TF32 {'on' if tf32 not in ('0', 'false', 'False') else 'off'})"


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The onnxruntime options every session of the project uses: ``threads`` intra-op threads (None: every core
    this process may use) that sleep rather than spin when idle, one inter-op thread, all graph optimisations,
    errors-only logging.

    Spinning is off because a run is seldom alone here: each session (the full graph, its pruned copies) has its
    own thread pool, and the NumPy backward stage runs between forwards; threads that spin after their run take
    the cores from the next session or from NumPy. Measured on 2 cores, alternating two sessions: a one-image
    forward at 112 px took 0.027 s with spinning off against 0.045-0.050 s with it on."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return options


def _resolve(graph: onnx.GraphProto, name: str) -> np.ndarray:
    """The constant tensor named ``name``: an initializer, a Constant node's value, or one behind Identity."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if name in node.output:
            if node.op_type == "Constant":
                return numpy_helper.to_array(node.attribute[0].t)
            if node.op_type == "Identity":
                return _resolve(graph, node.input[0])
    raise ValueError(f"conv weight {name!r} is not a constant of the graph")


def conv_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The 13 conv weights (C_out, C_in, 3, 3) float32 of a VGG16 graph, keyed ``conv1_1`` ... ``conv5_3``.

    Conv nodes are taken in graph order (the exporter writes them in execution order) and checked against
    VGG16's channel plan, so a graph with a different layout is rejected instead of silently misread.
    """
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    if len(convs) != len(spec.CONV_LAYERS):
        raise ValueError(f"expected {len(spec.CONV_LAYERS)} Conv nodes (VGG16), found {len(convs)}")
    weights: dict[str, np.ndarray] = {}
    in_channels = 3
    for name, node in zip(spec.CONV_LAYERS, convs, strict=True):
        w = np.ascontiguousarray(_resolve(model.graph, node.input[1]), dtype=np.float32)
        expected = (spec.conv_channels(name), in_channels, 3, 3)
        if w.shape != expected:
            raise ValueError(f"{name}: Conv weight of shape {w.shape}, expected {expected}")
        weights[name] = w
        in_channels = expected[0]
    return weights


def conv_biases(model: onnx.ModelProto | str | Path) -> dict[str, np.ndarray]:
    """The 13 conv biases (C_out,) float32 of a VGG16 graph (or its .onnx file), batch norm folded, keyed
    ``conv1_1`` ... ``conv5_3``; zeros where a Conv has no bias input. Conv nodes are taken in graph order."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    if len(convs) != len(spec.CONV_LAYERS):
        raise ValueError(f"expected {len(spec.CONV_LAYERS)} Conv nodes (VGG16), found {len(convs)}")
    biases: dict[str, np.ndarray] = {}
    for name, node in zip(spec.CONV_LAYERS, convs, strict=True):
        C = spec.conv_channels(name)
        has = len(node.input) > 2 and node.input[2]
        b = _resolve(model.graph, node.input[2]) if has else np.zeros(C)
        biases[name] = np.asarray(b, dtype=np.float32).reshape(C)
    return biases


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The constant tensor named ``name`` as float32, or None when the graph computes it."""
    try:
        return np.asarray(_resolve(graph, name), dtype=np.float32)
    except ValueError:
        return None


def _linear_layers(graph: onnx.GraphProto) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight (out, in), bias (out,)) float32 of each Linear after the last Conv, in graph order.

    A Linear is a Gemm whose B input is a constant (any transB, alpha and beta; no bias input: zero), or a
    MatMul by a constant 2-D matrix, with the constant of an Add that takes its output as bias. MatMuls by
    computed matrices (the adaptive average pool, written with the input's size) are not Linear layers.
    """
    nodes = list(graph.node)
    start = max((i for i, n in enumerate(nodes) if n.op_type == "Conv"), default=-1) + 1
    layers = []
    for node in nodes[start:]:
        if node.op_type not in ("Gemm", "MatMul") or (b := _constant(graph, node.input[1])) is None or b.ndim != 2:
            continue
        if node.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0):
                raise ValueError(f"Gemm {node.name!r} with transA is not a Linear layer of a VGG head")
            weight = attrs.get("alpha", 1.0) * (b if attrs.get("transB", 0) else b.T)
            c = _constant(graph, node.input[2]) if len(node.input) > 2 and node.input[2] else None
            bias = np.zeros(weight.shape[0], np.float32) if c is None else attrs.get("beta", 1.0) * c
        else:
            weight, bias = b.T, np.zeros(b.shape[1], np.float32)
            for add in (n for n in nodes if n.op_type == "Add" and node.output[0] in n.input):
                other = next(i for i in add.input if i != node.output[0])
                if (c := _constant(graph, other)) is not None:
                    bias = c
        layers.append((np.ascontiguousarray(weight, dtype=np.float32),
                       np.broadcast_to(np.asarray(bias, np.float32).reshape(-1), (weight.shape[0],)).copy()))
    return layers


def head_weights(source: str | Path | onnx.ModelProto) -> Head:
    """The class-score head of an exported VGG16 (a .onnx file or a loaded model), for ``demo.backward.head``.

    The kind ("gmp" or "torchvision") is the model card's "head" (by the number of Linear layers for files
    without one); the Linear layers are read from the graph after the last Conv (Gemm, or MatMul + Add).
    """
    proto = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    meta = {p.key: p.value for p in proto.metadata_props}
    layers = _linear_layers(proto.graph)
    kind = json.loads(meta.get(spec.META_MODEL_CARD, "{}")).get("head") or {1: "gmp", 3: "torchvision"}.get(
        len(layers), "unknown")
    return Head(kind, tuple(layers))


def prune_graph(proto: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """``proto`` (changed in place and returned) reduced to what ``outputs`` need: those become the graph's only
    outputs, nodes and initializers nothing needs are dropped, and a MaxPool whose indices nobody reads loses its
    second output. The last matters for speed: onnxruntime's CPU provider runs a MaxPool without indices in its
    blocked (NCHWc) layout, one with indices in plain NCHW with layout changes around it (measured with
    onnxruntime 1.31: a probabilities-only VGG16 runs about 25 % faster at 112 px than the full graph).
    A graph with subgraphs (If, Loop) is returned with only its outputs changed."""
    graph = proto.graph
    known = {o.name: o for o in graph.output}
    missing = [name for name in outputs if name not in known]
    if missing:
        raise ValueError(f"the graph has no outputs {missing}")
    kept_outputs = [known[name] for name in outputs]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return proto
    producer = {out: node for node in graph.node for out in node.output if out}
    needed, stack, keep = set(), list(outputs), set()
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in producer:
            keep.add(id(producer[name]))
            stack.extend(i for i in producer[name].input if i)
    kept_nodes = [n for n in graph.node if id(n) in keep]
    for node in kept_nodes:
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1] not in needed:
            del node.output[1:]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept_inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    return proto


class OnnxModel:
    """An exported VGG16 in onnxruntime, with its metadata and its conv weights.

    Attributes:
        path: the .onnx file.
        class_names: one name per class, in output order.
        mean, std: per-channel RGB normalisation (3,) of the input, on pixels scaled to [0, 1].
        input_size: side in pixels of the images the model was trained on.
        layers: conv and pool names in network order; ``conv_layers`` / ``pool_layers`` split them.
        switch_convention: how the switch outputs index their input plane (``base.spec.SWITCH_CONVENTION``).
        model_card: the exporter's description (data, accuracy, training config), a dict.
        weights: conv name -> (C_out, C_in, 3, 3) float32, batch norm folded (for the NumPy deconvnet).
        providers: the execution providers the session really uses, e.g. ["CPUExecutionProvider"].
    """

    def __init__(self, path: str | Path | None = None, device: str = "auto", threads: int | None = None,
                 allow_tf32: bool = False) -> None:
        """Load ``path`` (default DEFAULT_MODEL) on ``device`` ("auto": CUDA if a GPU is present, "cuda", "cpu").

        ``threads``: onnxruntime's intra-op threads on the CPU (default: every core this process may use).
        ``allow_tf32``: let CUDA use TF32 (faster, about 3e-4 from the CPU's activations); off by default.
        """
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        self.path = resolve_model_path(path)
        try:
            proto = onnx.load(str(self.path))
        except Exception as err:  # protobuf's DecodeError and friends: the file is not an ONNX model
            raise ValueError(f"{self.path}: not an ONNX model file ({type(err).__name__}); export one with "
                             "`python -m export`") from None
        meta = {p.key: p.value for p in proto.metadata_props}
        missing = [k for k in (spec.META_CLASS_NAMES, spec.META_MEAN, spec.META_STD, spec.META_INPUT_SIZE)
                   if k not in meta]
        if missing:
            raise ValueError(f"{self.path}: metadata {missing} missing; export the model with `python -m export`")
        try:
            self.class_names: list[str] = json.loads(meta[spec.META_CLASS_NAMES])
            self.mean = np.asarray(json.loads(meta[spec.META_MEAN]), dtype=np.float32).reshape(3)
            self.std = np.asarray(json.loads(meta[spec.META_STD]), dtype=np.float32).reshape(3)
            self.input_size = int(json.loads(meta[spec.META_INPUT_SIZE]))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{self.path}: unreadable metadata ({err}); export the model with `python -m export`") \
                from None
        self.layers: list[str] = json.loads(meta.get(spec.META_LAYERS, "null")) or [
            *spec.CONV_LAYERS, *spec.POOL_LAYERS]
        self.conv_layers = [n for n in self.layers if n.startswith("conv")]
        self.pool_layers = [n for n in self.layers if n.startswith("pool")]
        self.switch_convention: str = json.loads(meta.get(spec.META_SWITCHES, json.dumps(spec.SWITCH_CONVENTION)))
        self.model_card: dict = json.loads(meta.get(spec.META_MODEL_CARD, "{}"))
        self.weights = conv_weights(proto)
        del proto  # the session reads the file itself

        self.allow_tf32 = allow_tf32
        self.session = self._session(device, threads)
        outputs = {o.name for o in self.session.get_outputs()}
        absent = [n for n in spec.OUTPUT_NAMES if n not in outputs]
        if absent:
            raise ValueError(f"{self.path}: outputs {absent} missing; export the model with `python -m export`")
        self.providers: list[str] = self.session.get_providers()
        self._pruned: dict[tuple[str, ...], ort.InferenceSession] = {}  # session_for's sessions
        self._graph_bytes: bytes | None = None  # the graph the session runs, when it is not the file's (with_graph)
        self._pruned_lock = threading.Lock()

    def _session(self, device: str, threads: int | None) -> ort.InferenceSession:
        options = session_options(threads)
        self.threads = options.intra_op_num_threads
        providers = providers_for(device, self.allow_tf32)
        if providers[0][0] == CUDA:
            try:  # without torch in the process, onnxruntime must load the CUDA/cuDNN libraries itself
                ort.preload_dlls()
            except Exception as err:  # any failure here only means "CPU after all"
                warnings.warn(f"onnxruntime.preload_dlls() failed ({err}); CUDA may be unavailable", stacklevel=3)
        self.provider_options: dict[str, dict[str, str]] = dict(providers)
        try:
            session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # onnxruntime's InvalidGraph, Fail ...: a file it cannot run
            raise ValueError(f"{self.path}: onnxruntime cannot load this model ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:200]})") from None
        if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            warnings.warn("CUDA was asked for but onnxruntime runs on the CPU", stacklevel=3)
        return session

    def new_session(self, model: bytes | str | Path) -> ort.InferenceSession:
        """Another onnxruntime session, of ``model`` (serialised ModelProto bytes or a file), with this model's
        execution providers, provider options (TF32 included) and threads: it runs where ``session`` runs."""
        providers = [(p, self.provider_options.get(p, {})) for p in self.providers]
        source = model if isinstance(model, bytes) else str(model)
        return ort.InferenceSession(source, session_options(self.threads), providers=providers)

    def session_for(self, outputs: Sequence[str]) -> ort.InferenceSession:
        """A session of the graph pruned to ``outputs`` (``prune_graph``), made on first use and kept, with this
        model's providers and threads: it computes only what they need (no switches' index arithmetic, pools in
        onnxruntime's fast layout). ``session`` itself when ``outputs`` are all of the graph's. Its ``run(None,
        ...)`` returns the values in the order of ``outputs``."""
        outputs = tuple(outputs)
        if set(outputs) >= set(spec.OUTPUT_NAMES):
            return self.session
        with self._pruned_lock:  # the app's requests share the model
            if outputs not in self._pruned:
                if self._graph_bytes is None:
                    proto = onnx.load(str(self.path))
                else:
                    proto = onnx.load_from_string(self._graph_bytes)
                self._pruned[outputs] = self.new_session(prune_graph(proto, outputs).SerializeToString())
            return self._pruned[outputs]

    def with_graph(self, model: bytes) -> OnnxModel:
        """A copy of this model that runs ``model`` (a serialised ModelProto of the same network, e.g. with other
        weights) instead of the file: its own session (``new_session``) and its own pruned sessions. The metadata,
        ``weights`` and ``head`` are this model's; a caller with other weights sets those too."""
        clone = copy.copy(self)
        clone.session = self.new_session(model)
        clone._graph_bytes = model
        clone._pruned = {}
        clone._pruned_lock = threading.Lock()
        return clone

    @property
    def provider(self) -> str:
        """The provider that runs the network, with its TF32 setting on CUDA: "CUDAExecutionProvider (TF32 off)"."""
        return provider_label(self.providers[0], self.provider_options.get(self.providers[0]))

    @property
    def device(self) -> str:
        """"cuda" when the session runs on the GPU, else "cpu"."""
        return "cuda" if self.providers[0] == CUDA else "cpu"

    @property
    def head(self) -> Head:
        """The class-score head's kind and Linear layers (``head_weights``), read from the file on first use."""
        if getattr(self, "_head", None) is None:
            self._head = head_weights(self.path)
        return self._head

    def run(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Forward ``image`` (N, 3, H, W) float32, normalised, H and W multiples of 16.

        Returns probs (N, K) float32, activations {conv name: (N, C, h, w) float32 after ReLU} and switches
        {pool name: (N, C, h/2, w/2) int64, per-plane indices into the pool's (h, w) input}.
        """
        image = self._check(image)
        values = self.session.run(list(spec.OUTPUT_NAMES), {spec.INPUT_NAME: image})
        out = dict(zip(spec.OUTPUT_NAMES, values, strict=True))
        activations = {name: out[name] for name in spec.ACTIVATION_OUTPUTS}
        switches = {pool: out[spec.switch_output(pool)] for pool in spec.POOL_LAYERS}
        return out[spec.PROBS_NAME], activations, switches

    def predict(self, image: np.ndarray, tta: bool = False, probs: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities (N, K) of ``image`` (N, 3, H, W) float32 (fetches only ``probs``).

        ``tta``: horizontal-flip test-time augmentation, the mean of the probabilities of the image and of its
        mirror image; ``probs``: the image's own probabilities when the caller has them already.
        """
        if probs is None:
            probs = self.session_for([spec.PROBS_NAME]).run(None, {spec.INPUT_NAME: self._check(image)})[0]
        if not tta:
            return probs
        mirrored = self.session_for([spec.PROBS_NAME]).run(None, {spec.INPUT_NAME: self._check(image[..., ::-1])})[0]
        return (probs + mirrored) / 2

    def _check(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) image, got shape {image.shape}")
        N, C, H, W = image.shape
        smallest = 2 * spec.SIZE_MULTIPLE if self.model_card.get("head") == "torchvision" else spec.SIZE_MULTIPLE
        if H % spec.SIZE_MULTIPLE or W % spec.SIZE_MULTIPLE or min(H, W) < smallest:
            raise ValueError(f"height and width must be multiples of {spec.SIZE_MULTIPLE}, at least {smallest} "
                             f"(torchvision's head pools once more), got {H}x{W}")
        return np.ascontiguousarray(image, dtype=np.float32)

    def __repr__(self) -> str:
        return (f"OnnxModel({str(self.path)!r}, {len(self.class_names)} classes, input {self.input_size}px, "
                f"providers={self.providers})")
