"""The independent definitions the deconvnet is tested against: autograd through the network written out by hand,
each ReLU's backward replaced by a backward rule. Nothing here calls the project's deconvnet code."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from base.spec import CONV_LAYERS

AFTER_POOL = {"conv2_1", "conv3_1", "conv4_1", "conv5_1"}  # written out here, not taken from base.spec


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| (L2 over the whole array), in float64."""
    a, b = (torch.as_tensor(v).double() for v in (a, b))
    return float((a - b).norm() / b.norm())


class GuidedReLU(torch.autograd.Function):
    """ReLU forward; backward passes the gradient where it is positive and the ReLU's input was positive."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((grad > 0) & (x > 0))


class DeconvReLU(torch.autograd.Function):
    """ReLU forward; backward is a ReLU of the incoming gradient, whatever the forward input was."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


RELU = {"gradient": F.relu, "guided": GuidedReLU.apply, "deconvnet": DeconvReLU.apply}


def one_hot_strongest(a: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """Per image n, the single largest activation of channel channels[n], every other one zero."""
    signal = torch.zeros_like(a)
    for n, c in enumerate(channels):
        plane = a[n, c]
        i = int(plane.flatten().argmax())
        r, col = divmod(i, plane.shape[1])
        signal[n, c, r, col] = plane[r, col]
    return signal


def conv_forward(model, x: torch.Tensor, rules: dict[str, str]) -> dict[str, torch.Tensor]:
    """The conv part of ``model`` (BN folded or not) written out by hand, each ReLU's backward by its rule in
    ``rules`` ({conv name: rule}); every conv activation (N, C, h, w), keyed by name."""
    acts, y = {}, x
    for name in CONV_LAYERS:
        if name in AFTER_POOL:
            y = F.max_pool2d(y, 2, 2)  # backward: to the argmax
        y = model.convs[name](y)
        if getattr(model, "batch_norm", False) and name in getattr(model, "bns", {}):
            y = model.bns[name](y)
        y = RELU[rules[name]](y)
        acts[name] = y
    return acts
