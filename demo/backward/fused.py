"""A class projection in one onnxruntime run: the forward graph and the backward pass of a class logit, fused.

The NumPy stage (``demo.backward.deconvnet``) projects from the activations and switches a forward run returns;
for one small image those outputs cost as much as the arithmetic (at 112 px onnxruntime computes the probabilities
alone in about 3/4 of the time it takes to also return 13 activations and 4 switch tensors: its pools with indices
run outside its blocked layout, and every output is converted from it), and the NumPy descent then prepares them
again. Here the backward pass is appended to the model's own graph, reading the activations where the forward
pass leaves them:

1. the head's backward pass (the global-max-pool head, ``demo.backward.head``): the last Linear layer's row of
   each image's class (Gather), scattered onto each channel's first maximum in row-major order (ArgMax), at
   conv5_3's output;
2. from conv5_3 down to the image, for each conv: the layer's backward rule at its ReLU (``base.spec.RULES``, a
   constant of the graph: "deconvnet" Relu(s); "guided" Relu(s) * (a > 0); "gradient" s * (a > 0), a the
   post-ReLU activation); the transposed convolution as the Conv with the flipped kernel, input and output
   channels swapped (stride 1, padding 1: the same sums; onnxruntime's CPU provider runs Conv in its blocked
   layout, about 1.3x faster than its ConvTranspose here); and where a 2x2 pool feeds the layer, the unpooling:
   each value goes to the first maximum in row-major order of its window of the pool's input, where the switches
   point (``base.spec.SWITCH_CONVENTION``), found again from that activation (``_unpool_nodes``). The graph thus
   computes no switches: its pools lose their indices and run in the blocked layout (``prune_graph``).

Outputs: the projection (N, 3, H, W), d logit / d input under "gradient", and the logits (N, K) (the input of the
graph's Softmax). One graph per rule, built from the model's own graph on first use (the weights are the ones the
forward pass runs, a randomized copy's included), in a session with the model's providers and threads.

``FusedClassProjection.for_model`` returns None for graphs it cannot fuse (a head other than the global max-pool,
no Softmax before the probabilities, subgraphs, opset < 13): those go through the NumPy stage.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from base.spec import CONV_LAYERS, INPUT_NAME, PROBS_NAME, RULES, SIZE_MULTIPLE, pool_below
from demo.backward.head import Head
from demo.onnx_forward import conv_weights, head_weights, prune_graph

CLASS_INPUT = "class_index"  # (N,) int64: the class whose logit each image projects
PROJECTION = "projection"  # (N, 3, H, W) float32
LOGITS = "logits"  # (N, K) float32
PREFIX = "fused"  # names of the added nodes and initializers start with it
MIN_OPSET = 13  # Unsqueeze with axes as an input


def _logits_tensor(graph: onnx.GraphProto) -> str | None:
    """The name of the tensor the Softmax of ``PROBS_NAME`` reads (the logits), or None."""
    for node in graph.node:
        if PROBS_NAME in node.output:
            return node.input[0] if node.op_type == "Softmax" else None
    return None


def _head_nodes(head: Head, feature: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """The global-max-pool head's backward pass from conv5_3's activation ``feature`` (N, C, h, w): d logit / d
    conv5_3 (N, C, h, w), the class's weight at each channel's first maximum. Returns nodes, initializers, output."""
    p = f"{PREFIX}/head"
    weight = np.ascontiguousarray(head.linears[-1][0], dtype=np.float32)  # (K, C)
    inits = [numpy_helper.from_array(weight, f"{p}/weight"),
             numpy_helper.from_array(np.array([0, 0, -1], np.int64), f"{p}/flat"),
             numpy_helper.from_array(np.array([2], np.int64), f"{p}/last")]
    nodes = [
        helper.make_node("Shape", [feature], [f"{p}/shape"]),
        helper.make_node("Reshape", [feature, f"{p}/flat"], [f"{p}/planes"]),  # (N, C, h * w)
        helper.make_node("ArgMax", [f"{p}/planes"], [f"{p}/argmax"], axis=2, keepdims=1, select_last_index=0),
        helper.make_node("Gather", [f"{p}/weight", CLASS_INPUT], [f"{p}/row"], axis=0),  # (N, C)
        helper.make_node("Unsqueeze", [f"{p}/row", f"{p}/last"], [f"{p}/values"]),  # (N, C, 1)
        helper.make_node("Mul", [f"{p}/planes", f"{PREFIX}/zero"], [f"{p}/zeros"]),  # (N, C, h * w) zeros
        helper.make_node("ScatterElements", [f"{p}/zeros", f"{p}/argmax", f"{p}/values"], [f"{p}/scattered"], axis=2),
        helper.make_node("Reshape", [f"{p}/scattered", f"{p}/shape"], [f"{p}/out"]),
    ]
    return nodes, inits, f"{p}/out"


def _rule_nodes(x: str, layer: str, rule: str) -> tuple[list[onnx.NodeProto], str]:
    """``rule`` at conv ``layer``'s ReLU on the signal ``x``, with its post-ReLU activation (the graph's tensor
    named ``layer``); returns nodes, output."""
    p = f"{PREFIX}/{layer}/rule"
    nodes = []
    if rule in ("deconvnet", "guided"):
        nodes.append(helper.make_node("Relu", [x], [f"{p}/relu"]))
        x = f"{p}/relu"
    if rule in ("guided", "gradient"):  # times the 0/1 mask of a > 0 (2x faster than Sign or Where in onnxruntime)
        nodes += [helper.make_node("Greater", [layer, f"{PREFIX}/zero"], [f"{p}/positive"]),
                  helper.make_node("Cast", [f"{p}/positive"], [f"{p}/mask"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [x, f"{p}/mask"], [f"{p}/masked"])]
        x = f"{p}/masked"
    return nodes, x


def _unpool_nodes(x: str, activation: str, pool: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes that unpool ``x`` (N, C, h, w) to (N, C, 2h, 2w), each value to the first maximum in row-major order
    of its 2x2 window of the pool's input ``activation`` (N, C, 2h, 2w): where the switches point
    (``base.spec.SWITCH_CONVENTION``), found again from the activation. Per plane (N * C, 1, ., .): SpaceToDepth
    lays out each window's 4 values (N * C, 4, h, w), ArgMax picks the first maximum, its one-hot mask times x
    goes back by DepthToSpace. Returns the nodes and the output's name."""
    p = f"{PREFIX}/{pool}/unpool"
    nodes = [
        helper.make_node("Reshape", [activation, f"{PREFIX}/planes"], [f"{p}/planes"]),  # (N * C, 1, 2h, 2w)
        helper.make_node("SpaceToDepth", [f"{p}/planes"], [f"{p}/windows"], blocksize=2),  # (N * C, 4, h, w)
        helper.make_node("ArgMax", [f"{p}/windows"], [f"{p}/first"], axis=1, keepdims=1, select_last_index=0),
        helper.make_node("Equal", [f"{p}/first", f"{PREFIX}/positions"], [f"{p}/onehot"]),  # (N * C, 4, h, w)
        helper.make_node("Cast", [f"{p}/onehot"], [f"{p}/mask"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", [x, f"{PREFIX}/planes"], [f"{p}/values"]),  # (N * C, 1, h, w)
        helper.make_node("Mul", [f"{p}/mask", f"{p}/values"], [f"{p}/placed"]),
        helper.make_node("DepthToSpace", [f"{p}/placed"], [f"{p}/unpooled"], blocksize=2, mode="DCR"),
        helper.make_node("Shape", [activation], [f"{p}/shape"]),
        helper.make_node("Reshape", [f"{p}/unpooled", f"{p}/shape"], [f"{p}/out"]),  # (N, C, 2h, 2w)
    ]
    return nodes, f"{p}/out"


def fused_graph(proto: onnx.ModelProto, rule: str, head: Head | None = None) -> onnx.ModelProto:
    """The model ``proto`` (an export of ``python -m export``, not changed) with the class projection under
    ``rule`` appended: inputs ``image`` (N, 3, H, W) and ``class_index`` (N,) int64, outputs ``projection``
    (N, 3, H, W) and ``logits`` (N, K). ``head``: the graph's own (``head_weights``) by default. ValueError when
    the graph cannot be fused (``fusable``)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    head = head if head is not None else head_weights(proto)
    reason = fusable(proto, head)
    if reason:
        raise ValueError(f"cannot fuse the class projection into this graph: {reason}")
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    logits = _logits_tensor(graph)
    weights = conv_weights(model)
    nodes, inits, x = _head_nodes(head, CONV_LAYERS[-1])
    inits += [numpy_helper.from_array(np.zeros((), np.float32), f"{PREFIX}/zero"),
              numpy_helper.from_array(np.array([-1, 1, 0, 0], np.int64), f"{PREFIX}/planes"),
              numpy_helper.from_array(np.arange(4, dtype=np.int64).reshape(1, 4, 1, 1), f"{PREFIX}/positions")]
    for name in reversed(CONV_LAYERS):
        rule_nodes, x = _rule_nodes(x, name, rule)
        nodes += rule_nodes
        w = weights[name]  # (C_out, C_in, 3, 3) forward; the transposed conv is the Conv with this kernel:
        flipped = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1], dtype=np.float32)
        inits.append(numpy_helper.from_array(flipped, f"{PREFIX}/{name}/weight"))
        nodes.append(helper.make_node("Conv", [x, f"{PREFIX}/{name}/weight"], [f"{PREFIX}/{name}/conv"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
        x = f"{PREFIX}/{name}/conv"
        pool = pool_below(name)
        if pool is not None:
            unpool, x = _unpool_nodes(x, CONV_LAYERS[CONV_LAYERS.index(name) - 1], pool)
            nodes += unpool
    nodes += [helper.make_node("Identity", [x], [PROJECTION]), helper.make_node("Identity", [logits], [LOGITS])]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    graph.input.append(helper.make_tensor_value_info(CLASS_INPUT, TensorProto.INT64, ["N"]))
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(PROJECTION, TensorProto.FLOAT, ["N", 3, "H", "W"]),
                         helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["N", head.num_classes])])
    prune_graph(model, [PROJECTION, LOGITS])  # the switches: no longer computed, pools in the fast layout
    onnx.checker.check_model(model)
    return model


def fusable(proto: onnx.ModelProto, head: Head) -> str | None:
    """Why the class projection cannot be fused into ``proto`` with ``head``, or None when it can."""
    graph = proto.graph
    if head.kind != "gmp":
        return f"the head is {head.kind!r}, not the global max-pool"
    if _logits_tensor(graph) is None:
        return f"{PROBS_NAME!r} is not the Softmax of the logits"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return "the graph has subgraphs"
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        return f"opset {opset}; the appended nodes need {MIN_OPSET} or later"
    tensors = {out for node in graph.node for out in node.output}
    missing = [name for name in CONV_LAYERS if name not in tensors]
    if missing:
        return f"no activations {missing}"
    if INPUT_NAME not in {i.name for i in graph.input}:
        return f"no input {INPUT_NAME!r}"
    return None


class FusedClassProjection:
    """Class projections of a model in one onnxruntime run each (``fused_graph``), with the model's providers
    and threads; ``for_model`` gives the one of an ``OnnxModel`` (kept while the model lives), or None.

    Args:
        model: a loaded ``demo.onnx_forward.OnnxModel``; its graph (the file, or ``with_graph``'s bytes) is read
            again for each rule's graph and its ``new_session`` runs it.
        head: the head of that graph (``head_weights``), a global max-pool.
    """

    def __init__(self, model, head: Head) -> None:
        self.model = model
        self.head = head
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model) -> FusedClassProjection | None:
        """The fused projections of ``model`` (made once per model), or None when its graph cannot be fused."""
        with _CACHE_LOCK:
            if model in _CACHE:
                return _CACHE[model]
        proto = _graph(model)
        head = head_weights(proto)
        fused = cls(model, head) if fusable(proto, head) is None else None
        with _CACHE_LOCK:
            _CACHE[model] = fused
        return fused

    def session(self, rule: str):
        """The session of the fused graph of ``rule``, built on first use (a second or two)."""
        with self._lock:
            if rule not in self._sessions:
                graph = fused_graph(_graph(self.model), rule, self.head)
                self._sessions[rule] = self.model.new_session(graph.SerializeToString())
            return self._sessions[rule]

    @staticmethod
    def fits(shape: tuple[int, ...]) -> bool:
        """Whether images of ``shape`` (N, 3, H, W) go through the fused graph: H and W positive multiples of
        ``SIZE_MULTIPLE`` (every pool halves an even map, as its unpooling needs), as the model takes them."""
        N, C, H, W = shape
        return C == 3 and H > 0 and W > 0 and H % SIZE_MULTIPLE == 0 and W % SIZE_MULTIPLE == 0

    def project_class(self, image: np.ndarray, class_index: np.ndarray, rule: str = "gradient"
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Projections (N, 3, H, W) float32 of each image's class logit under ``rule`` (with "gradient":
        d logit / d input), and the logits (N,), for ``image`` (N, 3, H, W) normalised and ``class_index`` (N,)."""
        N = image.shape[0]
        if not self.fits(image.shape):
            raise ValueError(f"expected (N, 3, H, W) images, H and W multiples of {SIZE_MULTIPLE}, got shape "
                             f"{tuple(image.shape)}")
        classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (N,))
        K = self.head.num_classes
        if ((classes < 0) | (classes >= K)).any():
            raise ValueError(f"class_index must lie in 0..{K - 1}, got {class_index}")
        feeds = {INPUT_NAME: np.ascontiguousarray(image, np.float32), CLASS_INPUT: np.ascontiguousarray(classes)}
        projection, logits = self.session(rule).run([PROJECTION, LOGITS], feeds)
        return projection, logits[np.arange(N), classes]


def _graph(model) -> onnx.ModelProto:
    """The graph ``model`` runs: the bytes of ``with_graph`` when it has them, else its file."""
    data = getattr(model, "_graph_bytes", None)
    return onnx.load_from_string(data) if data is not None else onnx.load(str(model.path))


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()
