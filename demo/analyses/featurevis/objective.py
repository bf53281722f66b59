"""What feature visualization maximises (``Target``), its value, and the signal it sends down the network.

Targets, the syntax of ``demo.sanity --target`` where they overlap:

- ``LAYER/C`` (e.g. ``conv5_3/7``): the mean over positions of channel C's pre-activation (Lucid's ``channel``);
- ``LAYER/C/Y/X``: channel C's pre-activation at position (Y, X) of the layer's map (Lucid's ``neuron``);
- ``class/K`` or ``class/NAME``: class K's logit (before softmax);
- a leading ``-``: minimise instead (the objective's sign flips).

A conv target is the value *before* its ReLU (``conv(a_below) + bias``, batch norm folded): a ReLU unit that is
silent on the starting image passes no gradient, so maximising the post-ReLU value can leave the picture grey
(lucent issue 34). The pre-activation is computed here from the layer below with one 3x3 convolution of the one
channel (the graph returns post-ReLU activations only), and its gradient is the gradient backward stage started at
the layer with that layer's ReLU passed through (its mask set to ones): d z / d image. A class logit's signal at
conv5_3's output is the head's backward pass (``demo.backward.head``), masked by conv5_3's ReLU here.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from base.cli import parse_class
from base.spec import CONV_LAYERS, conv_channels, pool_below
from demo.backward.head import Head, head_backward, head_forward, max_pool_2x2

CLASS = "class"


@dataclass(frozen=True)
class Target:
    """One thing to maximise: ``layer`` a conv name or "class"; ``channel`` the channel or class index; ``position``
    (Y, X) on the layer's map or None (the channel's mean); ``sign`` +1 to maximise, -1 to minimise."""

    layer: str
    channel: int
    position: tuple[int, int] | None = None
    sign: int = 1

    @property
    def start(self) -> str:
        """The conv layer whose output the gradient starts from (conv5_3 for a class)."""
        return CONV_LAYERS[-1] if self.layer == CLASS else self.layer

    @property
    def text(self) -> str:
        """The target as the command line writes it, e.g. ``-conv5_3/7/2/3``."""
        pos = "" if self.position is None else f"/{self.position[0]}/{self.position[1]}"
        return f"{'-' if self.sign < 0 else ''}{self.layer}/{self.channel}{pos}"

    @property
    def stem(self) -> str:
        """The file name without suffix: ``0007``, ``0007_y2_x3``, ``0007_min``, class ``03``."""
        name = f"{self.channel:02d}" if self.layer == CLASS else f"{self.channel:04d}"
        if self.position is not None:
            name += f"_y{self.position[0]}_x{self.position[1]}"
        return name + ("_min" if self.sign < 0 else "")

    def seed_key(self) -> int:
        """A stable number naming this target, for its own random stream."""
        return zlib.crc32(self.text.encode())


def _channels(layer: str, num_classes: int) -> int:
    return num_classes if layer == CLASS else conv_channels(layer)


def parse_targets(text: str, class_names: Sequence[str]) -> list[Target]:
    """``LAYER/C``, ``LAYER/C/Y/X``, ``class/K``, ``class/NAME``, each with an optional leading ``-``; also
    ``LAYER/all``, ``LAYER/A-B`` (channels A..B) and ``class/all`` for many at once. ValueError on anything else."""
    raw = text.strip()
    sign = -1 if raw.startswith("-") else 1
    parts = raw.lstrip("-").split("/")
    layer = parts[0]
    usage = ("expected LAYER/CHANNEL (e.g. conv5_3/7), LAYER/CHANNEL/Y/X, class/K or class/NAME, optionally with a "
             "leading '-' to minimise")
    if layer != CLASS and layer not in CONV_LAYERS:
        raise ValueError(f"unknown target {text!r}: {layer!r} is neither a conv layer ({CONV_LAYERS[0]} ... "
                         f"{CONV_LAYERS[-1]}) nor 'class'; {usage}")
    count = _channels(layer, len(class_names))
    if len(parts) not in (2, 4) or (layer == CLASS and len(parts) != 2):
        raise ValueError(f"target {text!r}: {usage}")
    spec = parts[1]
    if spec == "all":
        channels = list(range(count))
    elif layer == CLASS and not spec.lstrip("-").isdigit():
        channels = [parse_class(spec, class_names)]
    elif "-" in spec and all(p.isdigit() for p in spec.split("-", 1)):
        a, b = map(int, spec.split("-", 1))
        if not 0 <= a <= b < count:
            raise ValueError(f"target {text!r}: {layer} has channels 0..{count - 1}")
        channels = list(range(a, b + 1))
    elif spec.isdigit() and int(spec) < count:
        channels = [int(spec)]
    else:
        what = "classes" if layer == CLASS else "channels"
        raise ValueError(f"target {text!r}: {layer} has {what} 0..{count - 1}")
    position = None
    if len(parts) == 4:
        if not (parts[2].isdigit() and parts[3].isdigit()):
            raise ValueError(f"target {text!r}: Y and X must be non-negative integers")
        position = (int(parts[2]), int(parts[3]))
    return [Target(layer, c, position, sign) for c in channels]


def check_position(target: Target, size: int) -> None:
    """ValueError when ``target``'s position lies outside its layer's map for (size, size) images."""
    if target.position is None:
        return
    from base.spec import stride_of

    side = size // stride_of(target.layer)
    if not all(0 <= p < side for p in target.position):
        raise ValueError(f"target {target.text!r}: {target.layer}'s map is {side}x{side} at {size} px; Y and X "
                         f"must lie in 0..{side - 1}")


def layer_input(layer: str, image: np.ndarray, activations: Mapping[str, np.ndarray]) -> np.ndarray:
    """What conv ``layer`` convolves (N, C_in, h, w): the normalised image for conv1_1, else the layer below's
    activation, max-pooled when a pool lies between."""
    i = CONV_LAYERS.index(layer)
    if i == 0:
        return image
    below = activations[CONV_LAYERS[i - 1]]
    return max_pool_2x2(below)[0] if pool_below(layer) else below


def preactivation(x: np.ndarray, weight: np.ndarray, bias: float, position: tuple[int, int] | None) -> np.ndarray:
    """One channel's 3x3 convolution (padding 1) of x (C_in, h, w) with ``weight`` (C_in, 3, 3) plus ``bias``:
    the (h, w) map, or the (1, 1) value at ``position``."""
    C, h, w = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    if position is not None:
        y, xx = position
        return np.float32(np.sum(padded[:, y : y + 3, xx : xx + 3] * weight) + bias).reshape(1, 1)
    out = np.full((h, w), bias, dtype=np.float32)
    for ky in range(3):
        for kx in range(3):
            out += np.tensordot(weight[:, ky, kx], padded[:, ky : ky + h, kx : kx + w], axes=(0, 0))
    return out


def objective(targets: Sequence[Target], image: np.ndarray, activations: Mapping[str, np.ndarray],
              weights: Mapping[str, np.ndarray], biases: Mapping[str, np.ndarray],
              head: Head) -> tuple[np.ndarray, np.ndarray]:
    """Row b's objective value and its signal at the output of the rows' common start layer, before that layer's
    ReLU: values (B,) float32, signal (B, C, h, w) float32 (d objective / d pre-activation; for a class target the
    head's signal times conv5_3's ReLU mask). ``image`` (B, 3, H, W) is the normalised network input,
    ``activations`` the forward pass's (post-ReLU)."""
    start = targets[0].start
    if any(t.start != start for t in targets):
        raise ValueError("the targets of one batch must start from the same layer")
    act = activations[start]
    B, C, h, w = act.shape
    values = np.zeros(B, dtype=np.float32)
    signal = np.zeros((B, C, h, w), dtype=np.float32)
    classes = [b for b, t in enumerate(targets) if t.layer == CLASS]
    if classes:
        rows = np.asarray(classes)
        k = np.asarray([targets[b].channel for b in classes])
        forward = head_forward(head, act[rows])
        g = head_backward(head, forward, k, {"fc6": "gradient", "fc7": "gradient"}) * (act[rows] > 0)
        sign = np.asarray([targets[b].sign for b in classes], dtype=np.float32)
        values[rows] = sign * forward.logits[np.arange(rows.size), k]
        signal[rows] = sign[:, None, None, None] * g
    convs = [b for b, t in enumerate(targets) if t.layer != CLASS]
    if convs:
        x = layer_input(start, image, activations)
        for b in convs:
            t = targets[b]
            z = preactivation(x[b], weights[start][t.channel], float(biases[start][t.channel]), t.position)
            values[b] = t.sign * z.mean()
            if t.position is None:
                signal[b, t.channel] = t.sign / (h * w)
            else:
                signal[b, t.channel, t.position[0], t.position[1]] = t.sign
    return values, signal


def diversity(features: np.ndarray, groups: Sequence[Sequence[int]]) -> tuple[float, np.ndarray]:
    """Lucid's diversity term over each group of rows (the copies of one target) and its gradient.

    features (B, C, h, w) post-ReLU. For the rows of a group (n of them), G_i = F_i^T F_i (C, C) with F_i the
    (h * w, C) matrix of row i, N_i = G_i / ||G_i||; D = sum_i sum_{j != i} <N_i, N_j> / n (a cosine similarity of
    the Gram matrices, what the penalty pushes down). Returns the sum of D over the groups and dD/dfeatures
    (B, C, h, w) float32.
    """
    B, C, h, w = features.shape
    grad = np.zeros_like(features, dtype=np.float32)
    total = 0.0
    for rows in groups:
        n = len(rows)
        if n < 2:
            continue
        F = features[list(rows)].reshape(n, C, h * w).astype(np.float64)  # (n, C, hw): F_i^T
        G = F @ F.transpose(0, 2, 1)  # (n, C, C)
        norm = np.sqrt((G * G).sum(axis=(1, 2))) + 1e-10
        N = G / norm[:, None, None]
        S = N.sum(axis=0)
        total += float(((N * (S - N)).sum()) / n)  # sum over i != j
        P = 2.0 * (S[None] - N) / n  # dD/dN_i
        Q = (P - (P * N).sum(axis=(1, 2))[:, None, None] * N) / norm[:, None, None]  # dD/dG_i
        dF = (Q + Q.transpose(0, 2, 1)) @ F  # (n, C, hw)
        grad[list(rows)] = dF.reshape(n, C, h, w)
    return total, grad

