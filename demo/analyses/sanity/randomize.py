"""The randomized models of the sanity checks: where each layer's parameters live in the ONNX graph, the seeded
re-draws from training's initial distribution, an onnxruntime session of a copy of the graph whose initializers
hold them, the check that the session really computes with them, and the NumPy deconvnet on the same weights.

One route for every execution provider: the randomized model is a copy of the ModelProto with the replaced
initializers, serialised and loaded from bytes into a new session with the trained model's providers and options
(``OnnxModel.new_session``). The weights are part of the graph, so every provider and every graph optimisation
sees them (``SessionOptions.add_initializer`` overrides are ignored by the CUDA provider and by the CPU's
``NchwcTransformer``, measured with onnxruntime 1.31)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from base.spec import CONV_LAYERS, INPUT_NAME, OUTPUT_NAMES, PROBS_NAME, pool_below
from demo.backward import Deconvnet, DeconvWeight, Head, head_forward, max_pool_2x2, prepare_weight
from demo.onnx_forward import OnnxModel

HEAD = "head"  # the class head's Linear layers, randomized together
ORDER: tuple[str, ...] = (HEAD, *reversed(CONV_LAYERS))  # cascading order, top down: head, conv5_3, ..., conv1_1
LINEAR_STD = 0.01  # std of a randomized Linear weight (model.vgg: normal(0, 0.01))

Forward = tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]  # probs (N, K), activations, switches


def conv_std(c_out: int) -> float:
    """Std of a randomized conv weight with ``c_out`` output channels: Kaiming normal, fan_out = 9 c_out, ReLU gain."""
    return math.sqrt(2.0 / (9 * c_out))


# ----------------------------------------------------------------------------------------------------------------
# Where the parameters live in the graph


@dataclass(frozen=True)
class Slot:
    """One initializer of the graph holding a parameter: its value is ``(p.T if transpose else p) / scale`` for the
    parameter p as the project stores it (conv weight (C_out, C_in, 3, 3), Linear weight (out, in), bias (out,))."""

    name: str
    shape: tuple[int, ...]
    transpose: bool = False
    scale: float = 1.0

    def value(self, parameter: np.ndarray) -> np.ndarray:
        """``parameter`` in the initializer's layout, float32 of ``shape``."""
        p = np.asarray(parameter, dtype=np.float32)
        p = (p.T if self.transpose else p) / np.float32(self.scale)
        return np.ascontiguousarray(np.broadcast_to(p, self.shape) if p.size == 1 else p.reshape(self.shape),
                                    dtype=np.float32)


@dataclass(frozen=True)
class LayerSlots:
    """The initializers of one conv or Linear layer: weight, and bias (None when the node has none)."""

    weight: Slot
    bias: Slot | None


class _Graph:
    """Name lookups in a graph: initializers by name, nodes by the tensor they produce."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {init.name: init for init in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}

    def initializer(self, name: str) -> str | None:
        """The initializer behind tensor ``name`` (through Identity nodes); None when a node computes it.

        Raises ValueError when a Constant node holds it: a session cannot override that."""
        seen: set[str] = set()
        while name not in self.inits:
            node = self.producer.get(name)
            if node is None or name in seen:
                return None
            if node.op_type == "Constant":
                raise ValueError(f"parameter {name!r} is a Constant node, not an initializer: onnxruntime cannot "
                                 "override it; export the model with `python -m export`")
            if node.op_type != "Identity":
                return None
            seen.add(name)
            name = node.input[0]
        return name

    def slot(self, tensor: str, transpose: bool = False, scale: float = 1.0) -> Slot | None:
        name = self.initializer(tensor)
        if name is None:
            return None
        init = self.inits[name]
        if init.data_type != onnx.TensorProto.FLOAT:
            raise ValueError(f"initializer {name!r} is not float32: cannot randomize it")
        return Slot(name, tuple(int(d) for d in init.dims), transpose, float(scale))


def graph_slots(proto: onnx.ModelProto) -> dict[str, list[LayerSlots]]:
    """The initializers of every layer ``ORDER`` names: {conv name: [its LayerSlots], "head": [one per Linear]}.

    Conv nodes in graph order are conv1_1 ... conv5_3 (the exporter writes them in execution order); the head's
    Linear layers are the Gemm nodes, and MatMul nodes (with the Add that takes their output as bias), after the
    last Conv whose B input is a 2-D initializer, as ``demo.onnx_forward.head_weights`` reads them.
    """
    g = _Graph(proto.graph)
    nodes = list(proto.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    if len(convs) != len(CONV_LAYERS):
        raise ValueError(f"expected {len(CONV_LAYERS)} Conv nodes (VGG16), found {len(convs)}")
    slots: dict[str, list[LayerSlots]] = {}
    for name, node in zip(CONV_LAYERS, convs, strict=True):
        weight = g.slot(node.input[1])
        if weight is None:
            raise ValueError(f"{name}: the Conv weight is computed by the graph, not an initializer")
        bias = g.slot(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        slots[name] = [LayerSlots(weight, bias)]
    start = nodes.index(convs[-1]) + 1
    head: list[LayerSlots] = []
    for node in nodes[start:]:
        if node.op_type not in ("Gemm", "MatMul"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            if attrs.get("transA", 0):
                raise ValueError(f"Gemm {node.name!r} with transA is not a Linear layer of a VGG head")
            weight = g.slot(node.input[1], transpose=not attrs.get("transB", 0), scale=attrs.get("alpha", 1.0))
            bias = (g.slot(node.input[2], scale=attrs.get("beta", 1.0))
                    if len(node.input) > 2 and node.input[2] else None)
        else:
            weight, bias = g.slot(node.input[1], transpose=True), None
            for add in (n for n in nodes if n.op_type == "Add" and node.output[0] in n.input):
                other = next(i for i in add.input if i != node.output[0])
                bias = g.slot(other) or bias
        if weight is None or len(weight.shape) != 2:
            continue  # a MatMul by a computed matrix (the adaptive average pool): not a Linear layer
        head.append(LayerSlots(weight, bias))
    if not head:
        raise ValueError("no Linear layer (Gemm or MatMul by an initializer) after the last Conv")
    slots[HEAD] = head
    names = [s.name for layer in slots.values() for ls in layer for s in (ls.weight, ls.bias) if s is not None]
    if len(set(names)) != len(names):
        raise ValueError("two layers share an initializer: they cannot be randomized one at a time")
    return slots


_SLOTS: dict[tuple[str, int, int], dict[str, list[LayerSlots]]] = {}  # by (path, size, mtime): graphs parsed once


def model_slots(model: OnnxModel) -> dict[str, list[LayerSlots]]:
    """``graph_slots`` of ``model``'s file, parsed once per file version; checked against its weights and head."""
    stat = Path(model.path).stat()
    key = (str(Path(model.path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SLOTS:
        slots = graph_slots(onnx.load(str(model.path)))
        for name in CONV_LAYERS:
            if slots[name][0].weight.shape != model.weights[name].shape:
                raise ValueError(f"{name}: initializer of shape {slots[name][0].weight.shape}, weight "
                                 f"{model.weights[name].shape}")
        expected = [w.shape for w, _ in model.head.linears]
        found = [tuple(reversed(s.weight.shape)) if s.weight.transpose else s.weight.shape for s in slots[HEAD]]
        if found != expected:
            raise ValueError(f"the head's Linear initializers {found} do not match its layers {expected}")
        _SLOTS[key] = slots
    return _SLOTS[key]


# ----------------------------------------------------------------------------------------------------------------
# Randomized models


def draw_layer(model: OnnxModel, layer: str, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fresh parameters of ``layer`` (a conv name or "head"), seeded: [(weight, bias)] float32, one per Linear for
    the head. Conv weight (C_out, C_in, 3, 3) ~ N(0, conv_std(C_out)^2), Linear weight (out, in) ~ N(0, 0.01^2),
    biases 0; drawn by ``np.random.default_rng((seed, ORDER.index(layer)))``."""
    if layer not in ORDER:
        raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(ORDER)}")
    if seed < 0:
        raise ValueError(f"the seed must be at least 0, got {seed}")
    rng = np.random.default_rng((seed, ORDER.index(layer)))
    if layer == HEAD:
        shapes, stds = [w.shape for w, _ in model.head.linears], [LINEAR_STD] * len(model.head.linears)
    else:
        shapes, stds = [model.weights[layer].shape], [conv_std(model.weights[layer].shape[0])]
    return [(rng.standard_normal(shape, dtype=np.float32) * np.float32(std), np.zeros(shape[0], np.float32))
            for shape, std in zip(shapes, stds, strict=True)]


def randomized_proto(proto: onnx.ModelProto, initializers: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``proto`` whose initializers ``initializers`` (name -> array in the graph's layout) replace its
    own; ``proto`` is left as it is. KeyError for a name the graph has no initializer of."""
    clone = onnx.ModelProto()
    clone.CopyFrom(proto)
    inits = {init.name: init for init in clone.graph.initializer}
    for name, value in initializers.items():
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
    return clone


def _header(number: int, length: int) -> bytes:
    """Protocol buffers' wire header of a length-delimited field ``number`` of ``length`` bytes."""
    out = bytearray()
    for value in ((number << 3) | 2, length):
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


class SerialisedGraph:
    """A ModelProto cut into serialised pieces, so that a copy with some initializers replaced is serialised by
    joining bytes: the model without its graph, the graph without its initializers, and each initializer.

    ``bytes_with(initializers)`` equals ``randomized_proto(proto, initializers).SerializeToString()`` once parsed
    (protocol buffers merge a message's fields in any order; the initializers come last), at the cost of a copy
    of the bytes instead of a copy of the message and a serialisation of every tensor.
    """

    MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5  # field numbers of ModelProto.graph and GraphProto.initializer

    def __init__(self, proto: onnx.ModelProto) -> None:
        shell = onnx.ModelProto()
        shell.CopyFrom(proto)
        self.order = [init.name for init in shell.graph.initializer]
        self.tensors = {init.name: init.SerializeToString() for init in shell.graph.initializer}
        del shell.graph.initializer[:]
        self.graph = shell.graph.SerializeToString()
        shell.ClearField("graph")
        self.model = shell.SerializeToString()

    @staticmethod
    def tensor_bytes(name: str, value: np.ndarray) -> bytes:
        """The serialised float32 TensorProto ``name`` holding ``value``."""
        return numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name).SerializeToString()

    def bytes_with(self, initializers: Mapping[str, np.ndarray | bytes]) -> bytes:
        """The serialised model with ``initializers`` (name -> array in the graph's layout, or its ``tensor_bytes``)
        replacing its own."""
        unknown = [name for name in initializers if name not in self.tensors]
        if unknown:
            raise KeyError(f"no initializer named {unknown}")
        tensors = [self.tensors[name] if name not in initializers else initializers[name]
                   if isinstance(initializers[name], bytes) else self.tensor_bytes(name, initializers[name])
                   for name in self.order]
        pieces = [self.graph]
        for t in tensors:
            pieces += [_header(self.GRAPH_INITIALIZER, len(t)), t]
        size = sum(len(p) for p in pieces)
        return b"".join([self.model, _header(self.MODEL_GRAPH, size), *pieces])  # one copy of the bytes


def override_session(model: OnnxModel, initializers: Mapping[str, np.ndarray],
                     proto: onnx.ModelProto | None = None) -> ort.InferenceSession:
    """A session, with ``model``'s providers, provider options and threads, of a copy of its graph (``proto``,
    default: its file) whose initializers ``initializers`` replace the file's; loaded from serialised bytes."""
    proto = proto if proto is not None else onnx.load(str(model.path))
    return model.new_session(randomized_proto(proto, initializers).SerializeToString())


def run_session(session: ort.InferenceSession, image: np.ndarray) -> Forward:
    """``OnnxModel.run`` on another session of the same graph: probs (N, K), activations, switches."""
    values = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)})
    out = dict(zip(OUTPUT_NAMES, values, strict=True))
    activations = {name: out[name] for name in CONV_LAYERS}
    switches = {name.removesuffix("_switches"): a for name, a in out.items() if name.endswith("_switches")}
    return out[PROBS_NAME], activations, switches


SAMPLES = 8  # positions per layer at which check_randomized recomputes a conv


def _conv_at(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """ReLU of the 3x3 convolution (padding 1) of ``x`` (C_in, H, W) at positions (rows, cols) (P,): (P, C_out)."""
    C, H, W = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    patches = np.stack([padded[:, r : r + 3, c : c + 3].reshape(-1) for r, c in zip(rows, cols, strict=True)])
    return np.maximum(patches @ weight.reshape(weight.shape[0], -1).T.astype(np.float64) + bias, 0)


def check_randomized(rand: Randomizer, randomized: Sequence[str], image: np.ndarray, forward: Forward,
                     trained: Forward) -> None:
    """RuntimeError naming each layer of ``randomized`` that the randomized forward pass ``forward`` of ``image``
    (1, 3, H, W) did not compute with its drawn weights; ``trained`` is the trained model's forward pass.

    Each layer is checked on its own, from the pass's own input to it: a conv's activation at ``SAMPLES``
    positions is recomputed in NumPy (float64) from the activation below (max-pooled where a pool lies between)
    with the drawn and with the trained parameters, and must be nearer the drawn one; the head's probabilities,
    recomputed from conv5_3, likewise (a tie, where both give the same numbers, passes: nothing tells them
    apart). A pass whose activation (probabilities, for the head) of a randomized layer equals the trained pass's
    is refused too.
    """
    ignored = []
    _, activations, _ = forward
    rng = np.random.default_rng(0)
    for layer in randomized:
        if layer == HEAD:
            got = forward[0].astype(np.float64)
            feature = activations[CONV_LAYERS[-1]]
            drawn, kept = (_softmax(head_forward(h, feature).logits) for h in (rand.head((HEAD,)), rand.model.head))
            if np.array_equal(forward[0], trained[0]) or np.abs(got - drawn).sum() > np.abs(got - kept).sum():
                ignored.append(layer)
            continue
        i = CONV_LAYERS.index(layer)
        x = image[0] if i == 0 else activations[CONV_LAYERS[i - 1]]
        if i and pool_below(layer) is not None:
            x = max_pool_2x2(x)[0]
        x = x[0] if x.ndim == 4 else x
        out = activations[layer][0]  # (C_out, h, w)
        _, h, w = out.shape
        flat = rng.choice(h * w, size=min(SAMPLES, h * w), replace=False)
        rows, cols = flat // w, flat % w
        got = out[:, rows, cols].T.astype(np.float64)  # (P, C_out)
        (weight, bias), = rand.draws(layer)
        drawn = _conv_at(x, weight, bias, rows, cols)
        kept = _conv_at(x, rand.model.weights[layer], rand.trained_bias(layer), rows, cols)
        if np.array_equal(activations[layer], trained[1][layer]) or \
                np.abs(got - drawn).sum() > np.abs(got - kept).sum():
            ignored.append(layer)
    if ignored:
        raise RuntimeError(f"onnxruntime ignored the randomized weights of {', '.join(ignored)} (randomized: "
                           f"{'+'.join(randomized)}): its forward pass computes with the trained ones")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _deconvnet(weights: Mapping[str, np.ndarray], layouts: Mapping[str, DeconvWeight]) -> Deconvnet:
    """``Deconvnet(weights)`` with the transposed-convolution layouts ``layouts`` prepared beforehand (each layer's
    once per state, trained or random, instead of all 13 per step); tests check it against the constructor."""
    # The only place that reaches into Deconvnet's private state (``_wmats``, ``_model``, as its __init__ sets
    # them): replace this body by a public constructor taking prepared layouts once demo.backward.deconvnet offers one.
    net = Deconvnet.__new__(Deconvnet)
    net.weights = {name: weights[name] for name in CONV_LAYERS}
    net._wmats = {name: layouts[name] for name in CONV_LAYERS}
    net._model = None
    return net


class Randomizer:
    """A trained model and its seeded random re-draws (``draw_layer``), cached per layer: the weights, head,
    replaced initializers, onnxruntime session and NumPy deconvnet of any set of randomized layers."""

    def __init__(self, model: OnnxModel, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"the seed must be at least 0, got {seed}")
        self.model, self.seed = model, seed
        self.slots = model_slots(model)
        self.proto = onnx.load(str(model.path))  # the trained graph
        self.serialised = SerialisedGraph(self.proto)  # its pieces, joined for each randomized session
        self._tensors: dict[str, bytes] = {}  # initializer name -> its drawn value serialised
        self._draws: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._layouts: dict[tuple[str, bool], DeconvWeight] = {}  # (layer, randomized) -> layout

    def draws(self, layer: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """``draw_layer(model, layer, seed)``, drawn once."""
        if layer not in self._draws:
            self._draws[layer] = draw_layer(self.model, layer, self.seed)
        return self._draws[layer]

    @staticmethod
    def _check(randomized: Sequence[str]) -> None:
        unknown = [name for name in randomized if name not in ORDER]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; expected names from {', '.join(ORDER)}")

    def weights(self, randomized: Sequence[str]) -> dict[str, np.ndarray]:
        """Conv name -> weight (C_out, C_in, 3, 3): the drawn one for the layers in ``randomized``, else trained."""
        self._check(randomized)
        return {n: self.draws(n)[0][0] if n in randomized else self.model.weights[n] for n in CONV_LAYERS}

    def head(self, randomized: Sequence[str]) -> Head:
        """The class head: drawn Linear layers when ``randomized`` holds "head", else the trained ones."""
        self._check(randomized)
        return Head(self.model.head.kind, tuple(self.draws(HEAD))) if HEAD in randomized else self.model.head

    def overrides(self, randomized: Sequence[str]) -> dict[str, np.ndarray]:
        """Initializer name -> value in the graph's layout for every parameter of the layers in ``randomized``."""
        self._check(randomized)
        out: dict[str, np.ndarray] = {}
        for layer in randomized:
            for slots, (weight, bias) in zip(self.slots[layer], self.draws(layer), strict=True):
                out[slots.weight.name] = slots.weight.value(weight)
                if slots.bias is not None:
                    out[slots.bias.name] = slots.bias.value(bias)
        return out

    def session(self, randomized: Sequence[str]) -> ort.InferenceSession:
        """An onnxruntime session of the model with the layers in ``randomized`` re-drawn: the serialised graph
        with the replaced initializers (``SerialisedGraph``), loaded on the model's providers and options."""
        return self.model.new_session(self.graph(randomized))

    def graph(self, randomized: Sequence[str]) -> bytes:
        """The serialised graph of the model with the layers in ``randomized`` re-drawn (``SerialisedGraph``)."""
        overrides = self.overrides(randomized)
        for name, value in overrides.items():
            if name not in self._tensors:  # each drawn tensor serialised once, then joined in every step
                self._tensors[name] = SerialisedGraph.tensor_bytes(name, value)
        return self.serialised.bytes_with({name: self._tensors[name] for name in overrides})

    def trained_bias(self, layer: str) -> np.ndarray:
        """The trained bias (C_out,) float32 of conv ``layer`` as its Conv node adds it (zeros when it has none)."""
        bias = self.slots[layer][0].bias
        if bias is None:
            return np.zeros(self.model.weights[layer].shape[0], np.float32)
        init = next(i for i in self.proto.graph.initializer if i.name == bias.name)
        return (numpy_helper.to_array(init).astype(np.float32) * np.float32(bias.scale)).reshape(-1)

    def deconvnet(self, randomized: Sequence[str]) -> Deconvnet:
        """The NumPy deconvnet on ``weights(randomized)``; each layer's transposed-conv layout is prepared once."""
        weights = self.weights(randomized)
        for name in CONV_LAYERS:
            key = (name, name in randomized)
            if key not in self._layouts:
                self._layouts[key] = prepare_weight(weights[name])
        return _deconvnet(weights, {n: self._layouts[(n, n in randomized)] for n in CONV_LAYERS})

    def model_for(self, randomized: Sequence[str]) -> OnnxModel:
        """A copy of the model with the layers in ``randomized`` re-drawn: its session, ``weights`` and ``head``."""
        clone = self.model.with_graph(self.graph(randomized))  # its session and its pruned sessions: randomized
        clone.weights = self.weights(randomized)
        clone._head = self.head(randomized)
        return clone


def randomized_model(model: OnnxModel, layers: Sequence[str], seed: int = 0) -> OnnxModel:
    """``model`` with ``layers`` (conv names and/or "head") re-drawn from training's initial distribution (seeded,
    see ``draw_layer``), as an ``OnnxModel``: ``run``, ``weights`` and ``head`` all randomized alike."""
    return Randomizer(model, seed).model_for(layers)

