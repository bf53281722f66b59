"""The class-score head of an exported VGG16 in float32 NumPy: logits from conv5_3, and their backward pass.

A class projection (``demo.backward.deconvnet.Deconvnet.project_class``) starts from one class's logit (before
softmax) and needs the signal it sends to conv5_3's output. The head is recomputed here from the conv5_3
activation (N, 512, h, w) and the Linear layers of the ONNX graph (``demo.onnx_forward.head_weights``), so the
graph needs no extra outputs. Two heads (``model.vgg.HEADS``):

- ``"gmp"`` (the cat-12 models'): global max-pool, then Linear(512, K). d logit_c / d a[ch, i, j] = W[c, ch] at
  each channel's maximum (the first in row-major order on ties, like the pool switches), zero elsewhere.
- ``"torchvision"``: "pool5" (2x2/2 max-pool, floor mode), adaptive average pool to 7x7 (PyTorch's bins:
  bin i of n covers floor(i * n / 7) ... ceil((i + 1) * n / 7) - 1), flatten (512 * 7 * 7), Linear, ReLU "fc6",
  Linear, ReLU "fc7", Linear (Dropout is the identity at inference). Backward: the last Linear's row c, back
  through "fc7" and "fc6" by their rules (``demo.backward.kernels.relu_backward``, masks from those ReLUs'
  forward outputs) and the Linear layers' transposes, the adaptive pool's transpose (each bin's signal shared
  equally by its cells), and unpooling at pool5's maximum (first in row-major order within each 2x2 window).

The rule at conv5_3's own ReLU is the descent's first step, not part of the head.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from base.spec import HEAD_RELUS, POOLED_SIZE
from demo.backward.kernels import relu_backward


@dataclass(frozen=True)
class Head:
    """A class-score head's kind and its Linear layers.

    ``kind``: "gmp" (one Linear) or "torchvision" (three); ``linears``: (weight (out, in), bias (out,)) float32
    each, from the input side, y = x @ weight.T + bias.
    """

    kind: str
    linears: tuple[tuple[np.ndarray, np.ndarray], ...]

    def __post_init__(self) -> None:
        expected = {"gmp": 1, "torchvision": 3}
        if expected.get(self.kind) != len(self.linears):
            raise ValueError(f"a {self.kind!r} head has {expected.get(self.kind, '?')} Linear layers, got "
                             f"{len(self.linears)}")
        for i, (w, b) in enumerate(self.linears):
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"head Linear layer {i}: weight {w.shape} and bias {b.shape} do not fit")
            if i and self.linears[i - 1][0].shape[0] != w.shape[1]:
                raise ValueError(f"head Linear layers {i - 1} {self.linears[i - 1][0].shape} and {i} {w.shape} "
                                 "do not chain")

    @property
    def num_classes(self) -> int:
        """K, the outputs of the last Linear layer."""
        return int(self.linears[-1][0].shape[0])


@dataclass
class HeadPass:
    """One forward pass of a head: the logits, and what its backward pass needs."""

    logits: np.ndarray  # (N, K) float32
    switches: np.ndarray  # gmp: (N, C) flat argmax in each (h, w) plane; torchvision: pool5's (N, C, h//2, w//2)
    hidden: tuple[np.ndarray, ...]  # torchvision: fc6 and fc7 outputs after ReLU, (N, out) each; gmp: ()
    size: tuple[int, int]  # (h, w) of the conv5_3 map


def adaptive_pool_matrix(size: int, out: int = POOLED_SIZE) -> np.ndarray:
    """(out, size) float32 averaging matrix of PyTorch's adaptive average pool along one axis of length ``size``."""
    i = np.arange(out)
    start, end = (i * size) // out, ((i + 1) * size + out - 1) // out
    r = np.arange(size)
    mask = ((r >= start[:, None]) & (r < end[:, None])).astype(np.float32)
    return mask / mask.sum(axis=1, keepdims=True)


def max_pool_2x2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2/2 max-pool (floor mode): (N, C, h, w) -> values and per-plane switches (N, C, h//2, w//2).

    Switch = row * w + col of the maximum in the (h, w) plane (``base.spec.SWITCH_CONVENTION``); ties go to the
    first position of the window in row-major order.
    """
    N, C, h, w = x.shape
    h2, w2 = h // 2, w // 2
    windows = x[:, :, : 2 * h2, : 2 * w2].reshape(N, C, h2, 2, w2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(N, C, h2, w2, 4)  # window cells in row-major order
    k = windows.argmax(axis=4)
    values = np.take_along_axis(windows, k[..., None], axis=4)[..., 0]
    rows = 2 * np.arange(h2)[:, None] + k // 2
    cols = 2 * np.arange(w2) + k % 2
    return values, (rows * w + cols).astype(np.int64)


def _linear(x: np.ndarray, layer: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """x (N, in) -> (N, out) = x @ weight.T + bias."""
    weight, bias = layer
    return x @ weight.T + bias


def head_forward(head: Head, feature: np.ndarray) -> HeadPass:
    """The head on conv5_3's activation ``feature`` (N, C, h, w) float32: logits (N, K) and what backward needs."""
    N, C, h, w = feature.shape
    x = np.asarray(feature, dtype=np.float32)
    if head.kind == "gmp":
        flat = x.reshape(N, C, h * w)
        index = flat.argmax(axis=2)  # (N, C), first maximum in row-major order
        pooled = np.take_along_axis(flat, index[..., None], axis=2)[..., 0]
        return HeadPass(_linear(pooled, head.linears[0]), index, (), (h, w))
    if min(h, w) < 2:
        raise ValueError(f"torchvision's head pools conv5_3 once more: it needs a map of at least 2x2, got {h}x{w} "
                         "(an input of at least 32x32)")
    pooled, switches = max_pool_2x2(x)  # (N, C, h2, w2)
    _, _, h2, w2 = pooled.shape
    averaged = adaptive_pool_matrix(h2) @ pooled @ adaptive_pool_matrix(w2).T  # (N, C, 7, 7)
    fc6 = np.maximum(_linear(averaged.reshape(N, -1), head.linears[0]), 0)
    fc7 = np.maximum(_linear(fc6, head.linears[1]), 0)
    return HeadPass(_linear(fc7, head.linears[2]), switches, (fc6, fc7), (h, w))


def head_backward(head: Head, forward: HeadPass, class_index: np.ndarray,
                  rules: Mapping[str, str]) -> np.ndarray:
    """d logit / d conv5_3 (N, C, h, w) float32, the logit of class ``class_index[n]`` (N,) for image n.

    ``rules`` gives the backward rule of each head ReLU ("fc6", "fc7", torchvision's head only); the result is
    the signal at conv5_3's output, before its own ReLU.
    """
    h, w = forward.size
    last_weight = head.linears[-1][0]
    g = last_weight[class_index]  # (N, in of the last Linear)
    N = g.shape[0]
    if head.kind == "gmp":
        C = g.shape[1]
        signal = np.zeros((N, C, h * w), dtype=np.float32)
        np.put_along_axis(signal, forward.switches[..., None], g[..., None], axis=2)
        return signal.reshape(N, C, h, w)
    fc6, fc7 = forward.hidden
    g = relu_backward(g, fc7, rules[HEAD_RELUS[1]]) @ head.linears[1][0]  # (N, fc6 outputs)
    g = relu_backward(g, fc6, rules[HEAD_RELUS[0]]) @ head.linears[0][0]  # (N, C * 7 * 7)
    _, C, h2, w2 = forward.switches.shape
    g = g.reshape(N, C, POOLED_SIZE, POOLED_SIZE)
    g = adaptive_pool_matrix(h2).T @ g @ adaptive_pool_matrix(w2)  # (N, C, h2, w2)
    signal = np.zeros((N, C, h * w), dtype=np.float32)
    np.put_along_axis(signal, forward.switches.reshape(N, C, -1), g.reshape(N, C, -1), axis=2)
    return signal.reshape(N, C, h, w)
