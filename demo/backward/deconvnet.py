"""The Zeiler & Fergus deconvnet in float32 NumPy: onnxruntime's activations and switches -> pixel space.

It mirrors the PyTorch reference ``model/deconvnet.py`` (same functions, modes, rules and result order) and must
agree with it to a relative error of 1e-4 (``tests/test_deconv_numpy.py``, ``tests/test_rules.py``). The recipe,
from a conv layer down to the image, for that layer and each conv layer below it:

1. back through the layer's ReLU by the backward rule (``base.spec.RULES``; s the signal arriving from above,
   a the ReLU's forward output, i.e. the post-ReLU activation the ONNX graph returns, > 0 exactly where the
   ReLU's input is):

   - ``"deconvnet"`` (the default): relu(s), the paper's rectification (Zeiler & Fergus 2014, arXiv 1311.2901);
   - ``"guided"``: s where s > 0 and a > 0, guided backpropagation (Springenberg et al. 2015, arXiv 1412.6806);
   - ``"gradient"``: s where a > 0, the ReLU's derivative (Simonyan et al. 2014, arXiv 1312.6034): a signal S
     placed at layer L then projects to the gradient d <S, a_L(x)> / dx;

   a rule per layer is a sequence or a dict keyed by conv name (``base.spec.layer_rules``),
2. the transposed 3x3 convolution (padding 1) with the layer's own weights, batch norm folded, no bias,
3. if a 2x2 max-pool feeds the layer, unpooling: each value goes back to where its switch says the maximum
   was (``base.spec.SWITCH_CONVENTION``: per-plane flat index), the other three positions get zero.

Unpooling and the transposed convolutions are the same for every rule; the rule is applied in the copy that
feeds each transposed convolution, unpooling too (``demo.backward.kernels``: the methods and the copies;
``demo.backward.winograd``: Winograd's F(4x4, 3x3); ``demo.backward.direct``: im2col and col2im;
``demo.backward.threads``: the threads; ``demo.backward.descent``: the rows' way down).

Class projections (``Deconvnet.project_class``) start from a class score (the logit, before softmax): the head's
backward pass (``demo.backward.head``, with the rule at its own ReLUs) gives the signal at conv5_3's output, which
then descends from conv5_3 as above (the rule applies at conv5_3's ReLU too).

Projections of single activations ("channel", "topk") touch only the receptive field: each step computes the
bounding box of the non-zero signal (grown by 1 per convolution, doubled by unpooling) and nothing outside it;
the forward activations that "guided" and "gradient" mask with are cropped to the same boxes.

Batches. Several rows (the k of "topk", the images of a batch, any B signals of ``project_down``) go down in one
pass, stored channels last (B, h, w, C) so that every GEMM takes all rows at once (Winograd's tiles of all rows,
im2col's positions of all rows). Each row keeps its own receptive-field window: all windows of a step have one
size (the largest box) but each sits around its own row's box, so nine activations far apart cost what they cost
alone. Unpooling reads each row's switches (as codes, made once per switches array) from its image
(``image_of``). While windows are small the rows go through each layer together; once a batch would outgrow the
cache (``demo.backward.descent.BATCH_BYTES``), it goes on in groups. Rows that go down together round differently
from rows going alone (to about 1e-6 of the largest value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from base.spec import CONV_LAYERS, HEAD_RELUS, RULES, Rule, layer_rules, steps_down
from demo.backward.descent import BATCH_BYTES, _check_geometry, _net, _project_batch, _project_points
from demo.backward.head import Head, head_backward, head_forward
from demo.backward.kernels import (
    DeconvWeight,
    Place,
    _deconv_rows,
    _unpool_rows,
    deconv,
    prepare_weight,
    relu_backward,
    unpool,
)

__all__ = [
    "BATCH_BYTES", "MODES", "RULES", "DeconvWeight", "Deconvnet", "Projection", "_unpool_rows", "deconv", "descend_to",
    "prepare_weight", "project_down", "relu_backward", "strongest", "top_channels", "unpool",
]  # fmt: skip

MODES = ("layer", "channel", "topk")


@dataclass
class Projection:
    """Reconstructions in input space and what each one was projected from (NumPy twin of the reference's)."""

    images: np.ndarray  # (B, 3, H, W) float32; B = N for "layer"/"channel", N * k for "topk" (image-major)
    channels: np.ndarray | None  # (B,) int64 channel projected, None for "layer"
    values: np.ndarray | None  # (B,) float32 activation value the projection started from, None for "layer"


def project_down(signal: np.ndarray, layer: str, weights: Mapping[str, np.ndarray],
                 switches: Mapping[str, np.ndarray], image_of: np.ndarray | None = None, rule: Rule = "deconvnet",
                 activations: Mapping[str, np.ndarray] | None = None, to_layer: str | None = None) -> np.ndarray:
    """Project ``signal`` (B, C, h, w), placed at the output of conv ``layer``, down to pixels (B, 3, H, W).

    ``weights`` maps conv names to (C_out, C_in, 3, 3); ``switches`` maps pool names to (N, C, h', w') int64, the
    switches of row b being those of image ``image_of[b]`` (default: N = B and row b's own). ``rule``: the backward
    rule at each ReLU (``base.spec.layer_rules``); the rules other than "deconvnet" need ``activations``, conv
    name -> (N, C, h', w') post-ReLU forward activation, for the layers they apply to (row b reads image
    ``image_of[b]``'s). ``to_layer``: stop at the output of that conv (at or below ``layer``), before its ReLU's
    rule, and return the signal there (B, C', h', w') (``descend_to``).
    """
    image_of = np.arange(signal.shape[0]) if image_of is None else np.asarray(image_of, dtype=np.int64)
    if to_layer is not None:
        return descend_to(signal, layer, to_layer, weights, switches, image_of, rule, activations)
    wmats = {name: prepare_weight(weights[name]) for name in CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]}
    return _project_batch(signal, layer, _net(wmats, switches, layer, rule, activations), image_of)


def descend_to(signal: np.ndarray, layer: str, to_layer: str, weights: Mapping[str, np.ndarray | DeconvWeight],
               switches: Mapping[str, np.ndarray], image_of: np.ndarray, rule: Rule = "gradient",
               activations: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Take ``signal`` (B, C, h, w) at the output of conv ``layer`` down to the output of conv ``to_layer``.

    The same steps as the descent to pixels (rule at each ReLU, transposed convolution, unpooling), on whole
    maps, for the convs above ``to_layer``; returns (B, C', h', w') float32, the signal arriving at ``to_layer``'s
    post-ReLU output (its own ReLU not applied). With rule "gradient" and a class logit's signal that is
    d logit / d a_to_layer, what Grad-CAM weighs the maps with. ``weights``: raw (C_out, C_in, 3, 3) or prepared.
    """
    for name in (layer, to_layer):
        if name not in CONV_LAYERS:
            raise ValueError(f"unknown layer {name!r}; expected one of {', '.join(CONV_LAYERS)}")
    if CONV_LAYERS.index(to_layer) > CONV_LAYERS.index(layer):
        raise ValueError(f"cannot descend from {layer} to {to_layer}, which lies above it")
    steps = steps_down(layer)[: CONV_LAYERS.index(layer) - CONV_LAYERS.index(to_layer)]  # top down, to_layer excluded
    _check_geometry(steps)
    rules = layer_rules(rule, [step.name for step in steps])
    x = np.asarray(signal, dtype=np.float32)
    for step in steps:
        name = step.name
        masked = rules[name] != "deconvnet"
        if masked and (activations is None or name not in activations):
            raise ValueError(f"the rule {rules[name]!r} needs the forward activation of {name} (pass activations=)")
        x = relu_backward(x, np.asarray(activations[name])[image_of] if masked else None, rules[name])
        w = weights[name]
        wmat = w if isinstance(w, DeconvWeight) else prepare_weight(np.asarray(w, dtype=np.float32))
        B, C, h, w_ = x.shape
        rows = _deconv_rows(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), [Place(0, B, (0, h, 0, w_), (0, 0))],
                            wmat, rule=None, size=(h, w_))
        x = np.ascontiguousarray(rows.transpose(0, 3, 1, 2))
        if step.pool is not None:
            x = unpool(x, np.asarray(switches[step.pool])[image_of])
    return x


def strongest(activation: np.ndarray, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep only the strongest activation of ``channel``: (N, C, h, w) -> same shape, and its values (N,).

    Every other activation of the layer, in every channel, is set to zero. Ties go to the first position in
    row-major order.
    """
    N, C, h, w = activation.shape
    plane = activation[:, channel].reshape(N, h * w)
    index = plane.argmax(axis=1)
    values = plane[np.arange(N), index]
    signal = np.zeros_like(activation, dtype=np.float32)
    signal[np.arange(N), channel, index // w, index % w] = values
    return signal, values.astype(np.float32)


def top_channels(activation: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k channels with the largest maximum activation, per image: (N, C, h, w) -> channels, values (N, k).

    Sorted by decreasing value; equal values keep channel order.
    """
    N, C, h, w = activation.shape
    peaks = activation.reshape(N, C, h * w).max(axis=2)  # (N, C)
    channels = np.argsort(-peaks, axis=1, kind="stable")[:, : min(k, C)]
    return channels.astype(np.int64), np.take_along_axis(peaks, channels, axis=1).astype(np.float32)


def class_signal(head: Head, activations: Mapping[str, np.ndarray], class_index: int | Sequence[int] | np.ndarray,
                 rule: Rule = "deconvnet") -> tuple[np.ndarray, dict[str, str], np.ndarray]:
    """The start of a class projection: d logit / d conv5_3 (N, 512, h, w) through the head with the rule at its
    ReLUs, the rule of each conv ReLU below (for the descent), and the logits (N,) of ``class_index`` (one class
    for all N images, or one per image). ValueError for a class outside the head's."""
    feature = np.asarray(activations[CONV_LAYERS[-1]], dtype=np.float32)
    N = feature.shape[0]
    classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (N,))
    if ((classes < 0) | (classes >= head.num_classes)).any():
        raise ValueError(f"class_index must lie in 0..{head.num_classes - 1}, got {class_index}")
    relus = (*CONV_LAYERS, *(HEAD_RELUS if head.kind == "torchvision" else ()))
    rules = layer_rules(rule, relus)
    forward = head_forward(head, feature)
    signal = head_backward(head, forward, classes, rules)  # (N, 512, h, w) at conv5_3's output
    return signal, {name: rules[name] for name in CONV_LAYERS}, forward.logits[np.arange(N), classes]


class Deconvnet:
    """Projects conv activations and class scores of an exported VGG16 back to pixel space, in NumPy.

    Args:
        weights: conv name -> forward weight (C_out, C_in, 3, 3) float32, batch norm folded; for an
            ``demo.onnx_forward.OnnxModel`` that is ``model.weights`` (or use ``Deconvnet.from_model``).

    Every projection takes ``rule`` (``base.spec.RULES``, or one per layer, see ``base.spec.layer_rules``):
    "deconvnet" (the default), "guided" or "gradient".
    """

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = {name: np.asarray(weights[name], dtype=np.float32) for name in CONV_LAYERS}
        self._wmats = {name: prepare_weight(w) for name, w in self.weights.items()}
        self._model = None  # the model of ``from_model``, whose head serves ``project_class``

    @classmethod
    def from_model(cls, model) -> Deconvnet:
        """The deconvnet of anything with a ``weights`` dict, e.g. an ``OnnxModel`` (whose ``head``, read on first
        use, then serves ``project_class``)."""
        net = cls(model.weights)
        net._model = model
        return net

    def project_down(self, signal: np.ndarray, layer: str, switches: Mapping[str, np.ndarray],
                     image_of: np.ndarray | None = None, rule: Rule = "deconvnet",
                     activations: Mapping[str, np.ndarray] | None = None, to_layer: str | None = None) -> np.ndarray:
        """Project ``signal`` (B, C, h, w) at the output of conv ``layer`` to pixels (B, 3, H, W), in one pass.

        ``switches`` maps pool names to (N, C, h', w'); row b uses image ``image_of[b]``'s (default: its own, N = B).
        Rules other than "deconvnet" need ``activations`` (conv name -> (N, C, h', w'), post-ReLU) of the layers at
        and below ``layer``, read the same way. ``to_layer``: stop at that conv's output instead (``descend_to``).
        """
        image_of = np.arange(signal.shape[0]) if image_of is None else np.asarray(image_of, dtype=np.int64)
        if to_layer is not None:
            return descend_to(signal, layer, to_layer, self._wmats, switches, image_of, rule, activations)
        return _project_batch(signal, layer, _net(self._wmats, switches, layer, rule, activations), image_of)

    def project_points(self, activation: np.ndarray, layer: str, switches: Mapping[str, np.ndarray],
                       image: np.ndarray, channel: np.ndarray, row: np.ndarray, col: np.ndarray,
                       rows_per_pass: int | None = None, rule: Rule = "deconvnet",
                       activations: Mapping[str, np.ndarray] | None = None,
                       values: np.ndarray | None = None) -> np.ndarray:
        """Project single activations of conv ``layer``, each alone, together: -> (B, 3, H, W) float32.

        Row b starts from ``activation[image[b], channel[b], row[b], col[b]]`` ((N, C, h, w); image, channel,
        row, col (B,) ints), or from ``values[b]`` when given, with every other activation zero, and uses image
        ``image[b]``'s switches. All rows go through each layer together (``rows_per_pass`` caps them; 1 projects
        one row at a time), each row cropped to its receptive field. Rules other than "deconvnet" need
        ``activations`` (conv name -> (N, C, h', w')) of the layers at and below ``layer``, cropped to the same
        windows.
        """
        net = _net(self._wmats, switches, layer, rule, activations)
        return _project_points(np.asarray(activation, dtype=np.float32), layer, net, image, channel, row, col,
                               rows_per_pass, values)

    def project(self, activations: Mapping[str, np.ndarray], switches: Mapping[str, np.ndarray], layer: str,
                mode: str = "layer", channel: int | None = None, k: int = 9, rows_per_pass: int | None = None,
                rule: Rule = "deconvnet") -> Projection:
        """Reconstruct ``layer`` (a conv name) from a forward pass's ``activations`` and ``switches``.

        Modes: ``"layer"`` projects all feature maps of the layer together; ``"channel"`` projects the strongest
        activation of ``channel`` alone; ``"topk"`` takes the k channels with the largest activation and
        projects each one's strongest activation on its own (rows image-major: image 0's k, then image 1's...),
        all k (and all images) in one batched pass; ``rows_per_pass`` caps the rows of one pass (None: no cap).
        ``rule``: the backward rule at each ReLU; the masks come from ``activations``.
        """
        if layer not in CONV_LAYERS:
            raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(CONV_LAYERS)}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        net = _net(self._wmats, switches, layer, rule, activations)
        act = np.asarray(activations[layer], dtype=np.float32)
        N, C, h, w = act.shape
        if mode == "layer":
            return Projection(_project_batch(act, layer, net, np.arange(N), rows_per_pass), None, None)
        if mode == "channel":
            if channel is None or not 0 <= channel < C:
                raise ValueError(f"{layer} has channels 0..{C - 1}, got {channel}")
            channels = np.full((N, 1), channel, dtype=np.int64)
        else:
            if k < 1:
                raise ValueError(f"mode 'topk' needs k >= 1, got {k}")
            channels, _ = top_channels(act, k)  # (N, kk)
        kk = channels.shape[1]
        image = np.repeat(np.arange(N), kk)  # (N * kk,) image-major rows
        channel_of = channels.reshape(-1)
        planes = act[image, channel_of].reshape(N * kk, h * w)
        index = planes.argmax(axis=1)  # each row's strongest activation (ties: first in row-major order)
        values = planes[np.arange(N * kk), index]
        images = _project_points(act, layer, net, image, channel_of, index // w, index % w, rows_per_pass)
        return Projection(images, channel_of, values)

    def project_class(self, activations: Mapping[str, np.ndarray], switches: Mapping[str, np.ndarray],
                      class_index: int | Sequence[int] | np.ndarray, rule: Rule = "deconvnet",
                      head: Head | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Project a class score (its logit, before softmax) back to pixels: -> images (N, 3, H, W), logits (N,).

        ``class_index``: one class for all images, or (N,) ints. ``head``: the class-score head (``OnnxModel.head``;
        default: the one of the model given to ``from_model``), recomputed from conv5_3's activation. Its backward
        pass (``rule`` at torchvision's head ReLUs "fc6", "fc7") gives d logit / d conv5_3, which descends from
        conv5_3 with the rule, conv5_3's ReLU included. With "gradient" the images are d logit / d input. A rule
        per ReLU lists the head's ReLUs after the convs (``base.spec.RELUS``).
        """
        head = head if head is not None else getattr(self._model, "head", None)
        if head is None:
            raise ValueError("project_class needs the model's head: pass head= (e.g. OnnxModel.head) or build the "
                             "deconvnet with Deconvnet.from_model")
        signal, conv_rules, logits = class_signal(head, activations, class_index, rule)
        N = signal.shape[0]
        net = _net(self._wmats, switches, CONV_LAYERS[-1], conv_rules, activations)
        images = _project_batch(signal, CONV_LAYERS[-1], net, np.arange(N))
        return images, logits
