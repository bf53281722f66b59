"""The deconvnet's descent as an ONNX graph, run by onnxruntime on the forward model's own execution provider.

The NumPy stage (``demo.backward.deconvnet``) is the CPU path and the reference; this module is the same descent for a
session that runs on the GPU, where NumPy would cost 100x the forward pass. No torch: the graphs are written with
``onnx.helper`` at load time from the forward model's weights (``OnnxModel.weights``: the 13 conv weights, batch
norm folded), so any exported model gets them. From conv ``layer`` down to the image, for that layer and each
conv below it, as ``demo.backward.deconvnet`` describes:

1. the backward rule at the layer's ReLU (``base.spec.RULES``), one Where node for all three: with s the
   signal from above and a the post-ReLU forward activation (an input of the graph),
   s where (s > 0 or pass_s) and (a > 0 or pass_a); "deconvnet" = (pass_s, pass_a) (False, True), "guided"
   (False, False), "gradient" (True, False). The two flags are boolean scalar inputs per layer, so one graph
   serves every rule and every rule per layer; with "deconvnet" the activation fed is a (1, 1, 1, 1) zero;
2. ConvTranspose with the layer's forward weight (C_out, C_in, 3, 3), padding 1, no bias;
3. where a 2x2 max-pool feeds the layer, unpooling: ScatterElements of the values into a zero plane of twice the
   side, at the switches (``base.spec.SWITCH_CONVENTION``: per-plane flat index row * W_in + col), along the
   flattened plane axis.

One graph per starting layer (built on first use, 13 at most; each holds the weights at and below its layer), one
session each, with the forward model's providers, provider options and threads (``OnnxModel.new_session``).
Rows are whole images (no receptive-field crop as in NumPy): row b of a batch reads image ``image_of[b]``'s
switches and activations, gathered on the host before the run.

Class projections start from a class's logit: the head's backward pass (``demo.backward.head``, a few small matrix
products) runs in NumPy and gives the signal at conv5_3's output, which descends from conv5_3 in the graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from threading import Lock

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from base.spec import CONV_LAYERS, Rule, layer_rules, pool_below
from demo.backward.deconvnet import MODES, Projection, class_signal, strongest, top_channels
from demo.backward.head import Head

OPSET = 17
SIGNAL = "signal"  # (B, C, h, w) float32 at the output of the starting layer, before its ReLU
PIXELS = "pixels"  # (B, 3, H, W) float32
FLAGS = {"deconvnet": (False, True), "guided": (False, False), "gradient": (True, False)}  # (pass_s, pass_a)


def activation_input(layer: str) -> str:
    return f"{layer}_activation"


def flag_inputs(layer: str) -> tuple[str, str]:
    """The names of ``layer``'s two rule flags: pass the signal's sign, pass the forward activation's sign."""
    return f"{layer}_pass_signal", f"{layer}_pass_activation"


def switch_input(pool: str) -> str:
    return f"{pool}_switches"


def _rule_nodes(x: str, layer: str, zero: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes of ``layer``'s backward rule on tensor ``x``; returns them and the output name."""
    pass_s, pass_a = flag_inputs(layer)
    p = f"{layer}/rule"
    nodes = [
        helper.make_node("Greater", [x, zero], [f"{p}/s_pos"]),
        helper.make_node("Or", [f"{p}/s_pos", pass_s], [f"{p}/s_ok"]),
        helper.make_node("Greater", [activation_input(layer), zero], [f"{p}/a_pos"]),
        helper.make_node("Or", [f"{p}/a_pos", pass_a], [f"{p}/a_ok"]),
        helper.make_node("And", [f"{p}/s_ok", f"{p}/a_ok"], [f"{p}/keep"]),
        helper.make_node("Where", [f"{p}/keep", x, zero], [f"{p}/out"]),
    ]
    return nodes, f"{p}/out"


def _unpool_nodes(x: str, pool: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes that unpool ``x`` (B, C, h, w) to (B, C, 2h, 2w) at ``pool``'s switches; returns them and the output."""
    p = f"{pool}/unpool"
    nodes = [
        helper.make_node("Shape", [x], [f"{p}/shape"]),  # (B, C, h, w)
        helper.make_node("Mul", [f"{p}/shape", "two_two"], [f"{p}/out_shape"]),  # (B, C, 2h, 2w)
        helper.make_node("Slice", [f"{p}/shape", "zero_i", "two_i"], [f"{p}/bc"]),
        helper.make_node("Concat", [f"{p}/bc", "minus_one"], [f"{p}/flat_shape"], axis=0),  # (B, C, -1)
        helper.make_node("Reshape", [x, f"{p}/flat_shape"], [f"{p}/values"]),
        helper.make_node("Reshape", [switch_input(pool), f"{p}/flat_shape"], [f"{p}/index"]),
        helper.make_node("Slice", [f"{p}/out_shape", "two_i", "four_i"], [f"{p}/side"]),  # (2h, 2w)
        helper.make_node("ReduceProd", [f"{p}/side"], [f"{p}/plane"], keepdims=1),  # (4 h w,)
        helper.make_node("Concat", [f"{p}/bc", f"{p}/plane"], [f"{p}/zeros_shape"], axis=0),
        helper.make_node("ConstantOfShape", [f"{p}/zeros_shape"], [f"{p}/zeros"],
                         value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("ScatterElements", [f"{p}/zeros", f"{p}/index", f"{p}/values"], [f"{p}/flat"], axis=2),
        helper.make_node("Reshape", [f"{p}/flat", f"{p}/out_shape"], [f"{p}/out"]),
    ]
    return nodes, f"{p}/out"


def _dims(name: str) -> list[str]:
    """Four symbolic dimensions of an input named after ``name``."""
    return [f"{name}_{d}" for d in "nchw"]


def descent_graph(weights: Mapping[str, np.ndarray], layer: str) -> onnx.ModelProto:
    """The ONNX model of the descent from conv ``layer`` to pixels with ``weights`` (conv name -> (C_out, C_in,
    3, 3) float32).

    Inputs: ``signal`` (B, C, h, w) float32; per conv at and below ``layer`` its activation (B or 1 rows,
    post-ReLU; (1, 1, 1, 1) when its rule ignores it) and two boolean scalars (``flag_inputs``); per pool on the
    way its switches (B, C, h', w') int64. Output: ``pixels`` (B, 3, H, W) float32.
    """
    if layer not in CONV_LAYERS:
        raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(CONV_LAYERS)}")
    names = CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]
    inits = [
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.int64), "two_two"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_i"),
        numpy_helper.from_array(np.array([2], np.int64), "two_i"),
        numpy_helper.from_array(np.array([4], np.int64), "four_i"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    f32 = TensorProto.FLOAT
    c_top = int(weights[layer].shape[0])
    inputs = [helper.make_tensor_value_info(SIGNAL, f32, ["B", c_top, f"h_{layer}", f"w_{layer}"])]
    nodes: list[onnx.NodeProto] = []
    x = SIGNAL
    for name in reversed(names):
        w = np.ascontiguousarray(weights[name], dtype=np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}_weight"))
        inputs.append(helper.make_tensor_value_info(activation_input(name), f32, _dims(name)))
        inputs += [helper.make_tensor_value_info(flag, TensorProto.BOOL, []) for flag in flag_inputs(name)]
        rule, x = _rule_nodes(x, name, "zero")
        nodes += rule
        nodes.append(helper.make_node("ConvTranspose", [x, f"{name}_weight"], [f"{name}/deconv"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
        x = f"{name}/deconv"
        pool = pool_below(name)
        if pool is not None:
            inputs.append(helper.make_tensor_value_info(switch_input(pool), TensorProto.INT64, _dims(pool)))
            unpool, x = _unpool_nodes(x, pool)
            nodes += unpool
    nodes.append(helper.make_node("Identity", [x], [PIXELS]))
    output = helper.make_tensor_value_info(PIXELS, f32, ["B", 3, "H", "W"])
    graph = helper.make_graph(nodes, f"descent_{layer}", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="demo.backward.onnx_graph")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class OnnxDeconvnet:
    """The deconvnet's projections in onnxruntime, with the same calls as ``demo.backward.Deconvnet``
    (``project_down``, ``project`` in the modes "layer", "channel", "topk", ``project_class``).

    Args:
        model: a loaded ``demo.onnx_forward.OnnxModel``; its ``weights`` and ``head`` are used, and its
            ``new_session`` gives each graph's session the forward pass's providers (CUDA with its TF32 setting).
    """

    def __init__(self, model) -> None:
        self.model = model
        self.weights = {name: np.asarray(model.weights[name], dtype=np.float32) for name in CONV_LAYERS}
        self._sessions: dict[str, object] = {}
        self._lock = Lock()

    @classmethod
    def from_model(cls, model) -> OnnxDeconvnet:
        """``OnnxDeconvnet(model)``, named like ``Deconvnet.from_model``."""
        return cls(model)

    @property
    def providers(self) -> list[str]:
        """The execution providers the descent graphs run on (those of the forward model)."""
        return list(self.model.providers)

    def session(self, layer: str):
        """The onnxruntime session of the descent from ``layer``, built on first use."""
        with self._lock:
            if layer not in self._sessions:
                graph = descent_graph(self.weights, layer)
                self._sessions[layer] = self.model.new_session(graph.SerializeToString())
            return self._sessions[layer]

    def project_down(self, signal: np.ndarray, layer: str, switches: Mapping[str, np.ndarray],
                     image_of: np.ndarray | None = None, rule: Rule = "deconvnet",
                     activations: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Project ``signal`` (B, C, h, w) at the output of conv ``layer`` to pixels (B, 3, H, W) float32.

        ``switches``: pool name -> (N, C, h', w') int64, row b using image ``image_of[b]``'s (default: N = B, its
        own); rules other than "deconvnet" need ``activations`` (conv name -> (N, C, h', w'), post-ReLU), read
        the same way.
        """
        if layer not in CONV_LAYERS:
            raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(CONV_LAYERS)}")
        signal = np.ascontiguousarray(signal, dtype=np.float32)
        B = signal.shape[0]
        image_of = np.arange(B) if image_of is None else np.asarray(image_of, dtype=np.int64)
        names = CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]
        rules = layer_rules(rule, names)
        missing = [n for n in names if rules[n] != "deconvnet" and (activations is None or n not in activations)]
        if missing:
            raise ValueError(f"the rules {sorted({rules[n] for n in missing})} need the forward activations of "
                             f"{', '.join(missing)} (pass activations=)")
        feeds: dict[str, np.ndarray] = {SIGNAL: signal}
        unit = np.zeros((1, 1, 1, 1), np.float32)
        for name in names:
            pass_s, pass_a = FLAGS[rules[name]]
            feeds[flag_inputs(name)[0]] = np.array(pass_s)
            feeds[flag_inputs(name)[1]] = np.array(pass_a)
            if pass_a:
                feeds[activation_input(name)] = unit
            else:
                feeds[activation_input(name)] = _rows(activations[name], image_of, np.float32)
            pool = pool_below(name)
            if pool is not None:
                feeds[switch_input(pool)] = _rows(switches[pool], image_of, np.int64)
        return self.session(layer).run([PIXELS], feeds)[0]

    def project(self, activations: Mapping[str, np.ndarray], switches: Mapping[str, np.ndarray], layer: str,
                mode: str = "layer", channel: int | None = None, k: int = 9, rows_per_pass: int | None = None,
                rule: Rule = "deconvnet") -> Projection:
        """Reconstruct ``layer`` from a forward pass, as ``Deconvnet.project`` does (same modes, rows, values).

        ``rows_per_pass`` caps the rows of one run (None: all rows at once).
        """
        if layer not in CONV_LAYERS:
            raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(CONV_LAYERS)}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        act = np.asarray(activations[layer], dtype=np.float32)
        N, C, h, w = act.shape
        if mode == "layer":
            images = self._in_passes(act, np.arange(N), layer, switches, rule, activations, rows_per_pass)
            return Projection(images, None, None)
        if mode == "channel":
            if channel is None or not 0 <= channel < C:
                raise ValueError(f"{layer} has channels 0..{C - 1}, got {channel}")
            signal, values = strongest(act, channel)
            images = self._in_passes(signal, np.arange(N), layer, switches, rule, activations, rows_per_pass)
            return Projection(images, np.full(N, channel, dtype=np.int64), values)
        if k < 1:
            raise ValueError(f"mode 'topk' needs k >= 1, got {k}")
        channels, _ = top_channels(act, k)  # (N, kk)
        kk = channels.shape[1]
        image = np.repeat(np.arange(N), kk)  # (N * kk,) image-major rows
        channel_of = channels.reshape(-1)
        planes = act[image, channel_of].reshape(N * kk, h * w)
        index = planes.argmax(axis=1)  # each row's strongest activation (ties: first in row-major order)
        values = planes[np.arange(N * kk), index]
        signal = np.zeros((N * kk, C, h * w), dtype=np.float32)
        signal[np.arange(N * kk), channel_of, index] = values
        images = self._in_passes(signal.reshape(N * kk, C, h, w), image, layer, switches, rule, activations,
                                 rows_per_pass)
        return Projection(images, channel_of, values)

    def project_class(self, activations: Mapping[str, np.ndarray], switches: Mapping[str, np.ndarray],
                      class_index: int | Sequence[int] | np.ndarray, rule: Rule = "deconvnet",
                      head: Head | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Project a class score (its logit) back to pixels: -> images (N, 3, H, W), logits (N,), as
        ``Deconvnet.project_class`` (``head``: default the model's); the head's backward pass runs in NumPy."""
        head = head if head is not None else self.model.head
        signal, conv_rules, logits = class_signal(head, activations, class_index, rule)
        images = self.project_down(signal, CONV_LAYERS[-1], switches, rule=conv_rules, activations=activations)
        return images, logits

    def _in_passes(self, signal: np.ndarray, image_of: np.ndarray, layer: str, switches, rule, activations,
                   rows_per_pass: int | None) -> np.ndarray:
        step = len(signal) if not rows_per_pass else max(1, rows_per_pass)
        parts = [self.project_down(signal[i : i + step], layer, switches, image_of[i : i + step], rule, activations)
                 for i in range(0, max(len(signal), 1), step)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _rows(array: np.ndarray, image_of: np.ndarray, dtype) -> np.ndarray:
    """``array``'s rows for each of ``image_of`` (B,), contiguous, of ``dtype`` (the array itself when they are
    its own rows in order)."""
    array = np.asarray(array)
    if len(image_of) == len(array) and np.array_equal(image_of, np.arange(len(array))):
        return np.ascontiguousarray(array, dtype=dtype)
    return np.ascontiguousarray(array[image_of], dtype=dtype)
