"""The deconvnet of Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" (arXiv 1311.2901).

A PyTorch reference: the NumPy stage in ``demo/backward/deconvnet.py`` must match it, and it must match independent
definitions (autograd's backward pass with each ReLU's backward replaced by the rule's; ``tests/test_deconvnet.py``,
``tests/test_rules.py``, ``tests/test_class_projection.py``).

The recipe, from a chosen conv layer down to pixel space (Sec. 2.1 of the paper). Start from the chosen
feature maps of the layer (after its ReLU); then, for that layer and each conv layer below it:

1. back through the layer's ReLU by the backward rule (``base.spec.RULES``), with s the signal arriving from
   above and a the ReLU's forward output (the post-ReLU activation, > 0 exactly where the ReLU's input is):

   - ``"deconvnet"`` (the default): relu(s), the paper's "rectification"; the forward pass reaches the picture
     only through the switches (Zeiler & Fergus 2014, Sec. 2.1);
   - ``"guided"``: s where s > 0 and a > 0, guided backpropagation (Springenberg et al. 2015, "Striving for
     Simplicity: The All Convolutional Net", arXiv 1412.6806, Sec. 3.4);
   - ``"gradient"``: s where a > 0, the ReLU's derivative (Simonyan et al. 2014, "Deep Inside Convolutional
     Networks", arXiv 1312.6034): a signal S placed at layer L projects to d <S, a_L(x)> / dx;

   a rule per layer is a sequence or a dict keyed by conv name (``base.spec.layer_rules``),
2. the transposed convolution with the layer's own 3x3 weights (batch norm folded in), *without bias*: the
   deconvnet maps signals, not the forward pass's offsets,
3. if a 2x2 max-pool feeds the layer, unpooling with that pool's switches (each value goes back to the
   position of the maximum it came from, the other three positions get zero).

Steps 2 and 3 are the same for every rule. The result (N, 3, H, W) is a signed image in the network's input
space (normalised RGB); display code maps it to pixels.

Class projections (``Deconvnet.project_class``) start from a class score, the logit before softmax: its exact
backward pass through the head gives the signal at conv5_3's output, with the rule at the head's own ReLUs
(torchvision's "fc6" and "fc7"); the signal then descends from conv5_3 as above, the rule applying at conv5_3's
ReLU too. Global max-pool head: d logit_c / d conv5_3 is W[c, ch] at each channel's maximum (first in
row-major order on ties), zero elsewhere. torchvision's head: pool5's unpooling, the adaptive average pool's
transpose, the Linear layers' transposes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from base.spec import (
    CONV_LAYERS,
    HEAD_RELUS,
    POOLED_SIZE,
    RULES,
    SIZE_MULTIPLE,
    Rule,
    layer_rules,
    pool_below,
    stride_of,
)
from model.vgg import VGG, adaptive_pool_matrix

MODES = ("layer", "channel", "topk")


@dataclass
class Projection:
    """Reconstructions in input space and what each one was projected from."""

    images: Tensor  # (B, 3, H, W); B = N for "layer"/"channel", N * k for "topk" (image-major)
    channels: Tensor | None  # (B,) channel projected, None for "layer"
    values: Tensor | None  # (B,) activation value the projection started from, None for "layer"


def unpool(x: Tensor, switches: Tensor) -> Tensor:
    """Undo a 2x2/2 max-pool: (N, C, h, w) values and per-plane switches -> (N, C, 2h, 2w)."""
    _, _, h, w = x.shape
    return F.max_unpool2d(x, switches, kernel_size=2, stride=2, output_size=(2 * h, 2 * w))


def deconv(x: Tensor, weight: Tensor) -> Tensor:
    """Transposed 3x3 convolution, padding 1, no bias: (N, C_out, H, W) -> (N, C_in, H, W).

    ``weight`` is the forward conv's (C_out, C_in, 3, 3); conv_transpose2d flips it spatially itself.
    """
    return F.conv_transpose2d(x, weight, padding=1)


def relu_backward(signal: Tensor, activation: Tensor | None, rule: str) -> Tensor:
    """The signal a projection passes back through one ReLU, by ``rule`` (any shape, elementwise).

    ``activation``: the ReLU's forward output, broadcastable to ``signal`` (unused for "deconvnet").
    "deconvnet": relu(signal); "guided": signal where signal > 0 and activation > 0; "gradient": signal where
    activation > 0; 0 elsewhere.
    """
    if rule == "deconvnet":
        return F.relu(signal)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if activation is None:
        raise ValueError(f"rule {rule!r} needs the forward activation of the ReLU")
    passed = activation > 0
    if rule == "guided":
        passed = passed & (signal > 0)
    return torch.where(passed, signal, torch.zeros((), dtype=signal.dtype, device=signal.device))


def _checked_rules(layer: str, rule: Rule, activations: Mapping[str, Tensor] | None) -> dict[str, str]:
    """Each layer's rule from conv ``layer`` down; raises ValueError when a masking rule lacks its activations."""
    rules = layer_rules(rule, CONV_LAYERS[: CONV_LAYERS.index(layer) + 1])
    missing = [n for n, r in rules.items() if r != "deconvnet" and (activations is None or n not in activations)]
    if missing:
        raise ValueError(f"the rules {sorted({rules[n] for n in missing})} need the forward activations of "
                         f"{', '.join(missing)} (pass activations=)")
    return rules


def project_down(signal: Tensor, layer: str, weights: dict[str, Tensor], switches: dict[str, Tensor],
                 rule: Rule = "deconvnet", activations: Mapping[str, Tensor] | None = None) -> Tensor:
    """Project ``signal`` (B, C, h, w), placed at the output of conv ``layer``, down to pixels (B, 3, H, W).

    ``weights`` maps conv names to (C_out, C_in, 3, 3); ``switches`` maps pool names to (B, C, h, w) int64.
    ``rule``: the backward rule at each ReLU; the rules other than "deconvnet" need ``activations``, conv name
    -> (B, C, h', w') post-ReLU forward activation, for the layers they apply to. Raises ValueError when the
    switches or activations do not fit the reconstruction (another input size, or one that is not a multiple of
    16).
    """
    rules = _checked_rules(layer, rule, activations)
    x = signal
    for name in reversed(CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]):
        act = activations[name] if rules[name] != "deconvnet" else None
        if act is not None and act.shape != x.shape:
            raise ValueError(f"{name} activations of shape {tuple(act.shape)} do not fit the reconstruction "
                             f"{tuple(x.shape)}: they must come from the same forward pass")
        x = deconv(relu_backward(x, act, rules[name]), weights[name])
        pool = pool_below(name)
        if pool is not None:
            s = switches[pool]
            B, C, H, W = x.shape
            if s.shape != x.shape or (s.numel() and int(s.max()) >= 4 * H * W):  # indices into a larger plane
                raise ValueError(
                    f"{pool} switches of shape {tuple(s.shape)} do not fit the reconstruction {(B, C, H, W)} at "
                    f"{name}: they must come from the same forward pass, on an input whose height and width are "
                    f"multiples of {SIZE_MULTIPLE}")
            x = unpool(x, s)
    return x


def strongest(activation: Tensor, channel: int | Tensor) -> tuple[Tensor, Tensor]:
    """Keep only the strongest activation of ``channel``: (N, C, h, w) -> same shape, and its values (N,).

    Every other activation of the layer, in every channel, is set to zero (the paper's single-activation view).
    ``channel`` is one channel for all images or a (N,) int64 tensor, one per image.
    """
    N, C, H, W = activation.shape
    rows = torch.arange(N, device=activation.device)
    channels = torch.as_tensor(channel, device=activation.device).expand(N)
    values, index = activation[rows, channels].reshape(N, H * W).max(dim=1)
    signal = torch.zeros_like(activation)
    signal[rows, channels, index // W, index % W] = values
    return signal, values


def top_channels(activation: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k channels with the largest maximum activation, per image: (N, C, h, w) -> channels and values (N, k)."""
    values, channels = activation.amax(dim=(2, 3)).topk(min(k, activation.shape[1]), dim=1)
    return channels, values


def head_backward(feature: Tensor, classes: Tensor, kind: str, linears: Sequence[tuple[Tensor, Tensor]],
                  rules: Mapping[str, str]) -> tuple[Tensor, Tensor]:
    """d logit / d conv5_3 of class ``classes[n]`` (N,) of each image, and the logits (N,).

    ``feature``: conv5_3's activation (N, C, h, w); ``kind``: "gmp" or "torchvision" (``model.vgg.HEADS``);
    ``linears``: (weight (out, in), bias (out,)) of the head's Linear layers, input side first; ``rules``: the
    rule of torchvision's "fc6" and "fc7". Returns the signal (N, C, h, w) at conv5_3's output (before its ReLU).
    """
    N, C, h, w = feature.shape
    rows = torch.arange(N)
    if kind == "gmp":
        (weight, bias), = linears
        flat = feature.flatten(2)
        index = flat.argmax(dim=2)  # (N, C): the first maximum in row-major order
        logits = flat.gather(2, index[..., None])[..., 0] @ weight.T + bias
        signal = torch.zeros_like(flat).scatter_(2, index[..., None], weight[classes][..., None])
        return signal.view(N, C, h, w), logits[rows, classes]
    pooled, index = F.max_pool2d(feature, 2, 2, return_indices=True)  # pool5 (N, C, h2, w2)
    ah, aw = adaptive_pool_matrix(pooled.shape[2]), adaptive_pool_matrix(pooled.shape[3])
    fc6 = F.relu((ah @ pooled @ aw.T).flatten(1) @ linears[0][0].T + linears[0][1])
    fc7 = F.relu(fc6 @ linears[1][0].T + linears[1][1])
    logits = fc7 @ linears[2][0].T + linears[2][1]
    g = relu_backward(linears[2][0][classes], fc7, rules[HEAD_RELUS[1]]) @ linears[1][0]
    g = relu_backward(g, fc6, rules[HEAD_RELUS[0]]) @ linears[0][0]
    g = ah.T @ g.view(N, C, POOLED_SIZE, POOLED_SIZE) @ aw  # (N, C, h2, w2)
    signal = F.max_unpool2d(g, index, kernel_size=2, stride=2, output_size=(h, w))
    return signal, logits[rows, classes]


class Deconvnet:
    """Projects conv activations and class scores of a :class:`~model.vgg.VGG` back to pixel space.

    The weights are taken once (batch norm folded), so the deconvnet sees plain convolutions. Every projection
    takes ``rule`` (``base.spec.RULES``, or one per layer, see ``base.spec.layer_rules``).
    """

    def __init__(self, model: VGG) -> None:
        self.weights = {name: w for name, (w, _) in model.conv_weights().items()}
        self.head = model.head
        linears = [model.classifier[i] for i in ((1,) if model.head == "gmp" else (0, 3, 6))]
        self.linears = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in linears]

    @torch.no_grad()
    def project(self, activations: dict[str, Tensor], switches: dict[str, Tensor], layer: str,
                mode: str = "layer", channel: int | None = None, k: int = 9, rule: Rule = "deconvnet") -> Projection:
        """Reconstruct ``layer`` (a conv name) from a forward pass's ``activations`` and ``switches``.

        Modes: ``"layer"`` projects all feature maps of the layer together; ``"channel"`` projects the strongest
        activation of ``channel`` alone; ``"topk"`` takes the k channels with the largest activation and
        projects each one's strongest activation on its own, in one batched pass. ``rule``: the backward rule at
        each ReLU, masks from ``activations``.
        """
        if layer not in CONV_LAYERS:
            raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(CONV_LAYERS)}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        act = activations[layer]
        N, C, H, W = act.shape
        if "conv1_1" in activations:  # the input size, when the caller passed the whole forward pass
            size = tuple(activations["conv1_1"].shape[2:])
            if any(s % stride_of(layer) for s in size):
                raise ValueError(f"cannot project {layer} of a {size[0]}x{size[1]} input: its height and width must "
                                 f"be multiples of {stride_of(layer)} (use multiples of {SIZE_MULTIPLE})")
        if mode == "layer":
            return Projection(project_down(act, layer, self.weights, switches, rule, activations), None, None)
        if mode == "channel":
            if channel is None or not 0 <= channel < C:
                raise ValueError(f"{layer} has channels 0..{C - 1}; mode 'channel' needs one of them, got {channel}")
            signal, values = strongest(act, channel)
            channels = torch.full((N,), int(channel), dtype=torch.int64, device=act.device)
            return Projection(project_down(signal, layer, self.weights, switches, rule, activations), channels,
                              values)
        if k < 1:
            raise ValueError(f"mode 'topk' needs k >= 1, got {k}")
        channels, values = top_channels(act, k)  # (N, k), k clipped to C
        kk = channels.shape[1]
        image = torch.arange(N, device=act.device).repeat_interleave(kk)  # (N * k,) image-major rows
        signal, _ = strongest(act[image], channels.reshape(-1))  # (N * k, C, H, W)
        sw = {p: s[image] for p, s in switches.items()}
        rules = layer_rules(rule, CONV_LAYERS[: CONV_LAYERS.index(layer) + 1])
        acts = {n: activations[n][image] for n, r in rules.items() if r != "deconvnet" and n in activations}
        return Projection(project_down(signal, layer, self.weights, sw, rules, acts), channels.reshape(-1),
                          values.reshape(-1))

    @torch.no_grad()
    def project_class(self, activations: dict[str, Tensor], switches: dict[str, Tensor],
                      class_index: int | Sequence[int] | Tensor, rule: Rule = "deconvnet") -> tuple[Tensor, Tensor]:
        """Project a class score (its logit, before softmax) back to pixels: -> images (N, 3, H, W), logits (N,).

        ``class_index``: one class for every image, or (N,) ints. The head is recomputed from conv5_3's
        activation; ``rule`` applies at the head's ReLUs (torchvision's "fc6", "fc7"), at conv5_3's and below.
        With "gradient" the images are d logit / d input.
        """
        feature = activations[CONV_LAYERS[-1]]
        N = feature.shape[0]
        classes = torch.as_tensor(class_index, dtype=torch.int64).expand(N)
        K = self.linears[-1][0].shape[0]
        if ((classes < 0) | (classes >= K)).any():
            raise ValueError(f"class_index must lie in 0..{K - 1}, got {class_index}")
        rules = layer_rules(rule, (*CONV_LAYERS, *(HEAD_RELUS if self.head == "torchvision" else ())))
        signal, logits = head_backward(feature, classes, self.head, self.linears, rules)
        conv_rules = {name: rules[name] for name in CONV_LAYERS}
        return project_down(signal, CONV_LAYERS[-1], self.weights, switches, conv_rules, activations), logits
