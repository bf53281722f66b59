"""The deconvnet of Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" (arXiv 1311.2901).

A PyTorch reference: the NumPy stage in ``demo/deconv_numpy.py`` must match it, and it must match an
independent definition (autograd's backward pass with each ReLU's backward replaced by a ReLU of the incoming
signal; ``tests/test_deconvnet.py``).

The recipe, from a chosen conv layer down to pixel space (Sec. 2.1 of the paper). Start from the chosen
feature maps of the layer (after its ReLU); then, for that layer and each conv layer below it:

1. ReLU on the reconstruction (the paper's "rectification"; a no-op on the starting maps, which are >= 0),
2. the transposed convolution with the layer's own 3x3 weights (batch norm folded in), *without bias*: the
   deconvnet maps signals, not the forward pass's offsets,
3. if a 2x2 max-pool feeds the layer, unpooling with that pool's switches (each value goes back to the
   position of the maximum it came from, the other three positions get zero).

The result (N, 3, H, W) is a signed image in the network's input space (normalised RGB); display code maps it
to pixels. Projections start at conv layers: nothing is projected through the global max-pool or the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.spec import CONV_LAYERS, SIZE_MULTIPLE, pool_below, stride_of
from model.vgg import VGG

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


def project_down(signal: Tensor, layer: str, weights: dict[str, Tensor], switches: dict[str, Tensor]) -> Tensor:
    """Project ``signal`` (B, C, h, w), placed at the output of conv ``layer``, down to pixels (B, 3, H, W).

    ``weights`` maps conv names to (C_out, C_in, 3, 3); ``switches`` maps pool names to (B, C, h, w) int64.
    Raises ValueError when the switches do not fit the reconstruction (another input size, or one that is not a
    multiple of 16).
    """
    x = signal
    for name in reversed(CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]):
        x = deconv(F.relu(x), weights[name])
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


class Deconvnet:
    """Projects conv activations of a :class:`~model.vgg.VGG` back to pixel space.

    The weights are taken once (batch norm folded), so the deconvnet sees plain convolutions.
    """

    def __init__(self, model: VGG) -> None:
        self.weights = {name: w for name, (w, _) in model.conv_weights().items()}

    @torch.no_grad()
    def project(self, activations: dict[str, Tensor], switches: dict[str, Tensor], layer: str,
                mode: str = "layer", channel: int | None = None, k: int = 9) -> Projection:
        """Reconstruct ``layer`` (a conv name) from a forward pass's ``activations`` and ``switches``.

        Modes: ``"layer"`` projects all feature maps of the layer together; ``"channel"`` projects the strongest
        activation of ``channel`` alone; ``"topk"`` takes the k channels with the largest activation and
        projects each one's strongest activation on its own, in one batched pass.
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
            return Projection(project_down(act, layer, self.weights, switches), None, None)
        if mode == "channel":
            if channel is None or not 0 <= channel < C:
                raise ValueError(f"{layer} has channels 0..{C - 1}; mode 'channel' needs one of them, got {channel}")
            signal, values = strongest(act, channel)
            channels = torch.full((N,), int(channel), dtype=torch.int64, device=act.device)
            return Projection(project_down(signal, layer, self.weights, switches), channels, values)
        if k < 1:
            raise ValueError(f"mode 'topk' needs k >= 1, got {k}")
        channels, values = top_channels(act, k)  # (N, k), k clipped to C
        kk = channels.shape[1]
        image = torch.arange(N, device=act.device).repeat_interleave(kk)  # (N * k,) image-major rows
        signal, _ = strongest(act[image], channels.reshape(-1))  # (N * k, C, H, W)
        sw = {p: s[image] for p, s in switches.items()}
        return Projection(project_down(signal, layer, self.weights, sw), channels.reshape(-1), values.reshape(-1))
