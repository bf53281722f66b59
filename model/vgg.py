"""VGG16 that remembers what a deconvnet needs: every conv activation and every pool's switches.

The network of the original PaddlePaddle notebook (13 convs 3x3/pad 1 + ReLU, 2x2/2 max-pools after blocks 1-4,
a global max-pool after conv5_3, one Linear) with two options: batch norm after each conv, and torchvision's head
(pool5, a 7x7 adaptive average pool and three Linear layers) so that torchvision's ImageNet VGG16 loads unchanged.

Batch norm never leaves PyTorch: ``fold_batch_norm`` turns each conv + BN pair into one conv, which is what
the export and the deconvnet see.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from base.spec import CFG_VGG16, CONV_LAYERS, FEATURE_CHANNELS, NUM_CLASSES, POOLED_SIZE, conv_channels

HEADS = ("gmp", "torchvision")


@dataclass
class Features:
    """What one forward pass records, keyed by the project's layer names."""

    logits: Tensor  # (N, num_classes)
    activations: dict[str, Tensor]  # conv1_1 ... conv5_3, each (N, C, H, W) after ReLU
    switches: dict[str, Tensor]  # pool1 ... pool4, each (N, C, H/2, W/2) int64, per-plane indices


class VGG(nn.Module):
    """VGG16 whose forward can return every conv activation and every pool's switches.

    Args:
        num_classes: outputs of the classifier (12 for cat-12, 1000 for ImageNet).
        batch_norm: a BatchNorm2d after each conv (before its ReLU).
        head: ``"gmp"`` (the original notebook's: global max-pool + Linear(512, num_classes)) or ``"torchvision"``
            (max-pool, adaptive 7x7 average pool, Linear-ReLU-Dropout x2, Linear), for ImageNet weights.
        dropout: dropout probability before the classifier (gmp) or between the Linear layers (torchvision).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, batch_norm: bool = False, head: str = "gmp",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.num_classes, self.batch_norm, self.head, self.dropout = num_classes, batch_norm, head, dropout
        self.convs = nn.ModuleDict()
        self.bns = nn.ModuleDict()
        in_channels = 3
        for name in CONV_LAYERS:
            out_channels = conv_channels(name)
            self.convs[name] = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
            if batch_norm:
                self.bns[name] = nn.BatchNorm2d(out_channels)
            in_channels = out_channels
        self.pool_after = {f"conv{b}_{n}": f"pool{b}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3))}
        if head == "gmp":
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(FEATURE_CHANNELS, num_classes))
        else:
            self.classifier = nn.Sequential(
                nn.Linear(FEATURE_CHANNELS * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(dropout),
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(dropout),
                nn.Linear(4096, num_classes),
            )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the module from a checkpoint."""
        return {"num_classes": self.num_classes, "batch_norm": self.batch_norm, "head": self.head,
                "dropout": self.dropout}

    def forward_features(self, x: Tensor, record: bool = False) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Run the 13 convs and 4 pools on ``x`` (N, 3, H, W), H and W multiples of 16.

        Returns the conv5_3 activation (N, 512, H/16, W/16) and, if ``record``, the dicts of activations and
        switches (empty otherwise).
        """
        activations: dict[str, Tensor] = {}
        switches: dict[str, Tensor] = {}
        for name, conv in self.convs.items():
            x = conv(x)
            if self.batch_norm:
                x = self.bns[name](x)
            x = F.relu(x)
            if record:
                activations[name] = x
            pool = self.pool_after.get(name)
            if pool is not None:
                if record:
                    x, switches[pool] = F.max_pool2d(x, 2, 2, return_indices=True)
                else:
                    x = F.max_pool2d(x, 2, 2)
        return x, activations, switches

    def forward_head(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) from the conv5_3 activation (N, 512, h, w)."""
        if self.head == "gmp":
            x = torch.amax(x, dim=(2, 3))  # global max-pool
        else:
            x = F.adaptive_avg_pool2d(F.max_pool2d(x, 2, 2), (POOLED_SIZE, POOLED_SIZE)).flatten(1)
        return self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) of images ``x`` (N, 3, H, W)."""
        return self.forward_head(self.forward_features(x)[0])

    def forward_all(self, x: Tensor) -> Features:
        """Logits, every conv activation (after ReLU) and every pool's switches for ``x`` (N, 3, H, W)."""
        features, activations, switches = self.forward_features(x, record=True)
        return Features(self.forward_head(features), activations, switches)

    def conv_weights(self) -> dict[str, tuple[Tensor, Tensor]]:
        """(weight (C_out, C_in, 3, 3), bias (C_out,)) of each conv as the data sees it, batch norm folded in."""
        with torch.no_grad():
            return {name: _folded(conv, self.bns[name] if self.batch_norm else None)
                    for name, conv in self.convs.items()}


def adaptive_pool_matrix(size: int | torch.SymInt, out: int = POOLED_SIZE) -> Tensor:
    """(out, size) float32 averaging matrix of ``F.adaptive_avg_pool2d`` along one axis of length ``size``.

    Bin i averages rows floor(i * size / out) ... ceil((i + 1) * size / out) - 1, PyTorch's definition. Built
    from ``arange`` so that ``size`` may be symbolic: the exporter then keeps H and W dynamic, which it does not
    for ``adaptive_avg_pool2d`` itself (it bakes in the kernel of the example input).
    """
    i = torch.arange(out)
    start = torch.div(i * size, out, rounding_mode="floor")
    end = torch.div((i + 1) * size + out - 1, out, rounding_mode="floor")
    r = torch.arange(size)
    mask = ((r[None, :] >= start[:, None]) & (r[None, :] < end[:, None])).to(torch.float32)
    return mask / mask.sum(dim=1, keepdim=True)


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor]:
    """(weight, bias) of one conv with the eval-mode batch norm after it folded in (detached copies)."""
    w, b = conv.weight.detach(), conv.bias.detach()
    if bn is None:
        return w.clone(), b.clone()
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return w * scale[:, None, None, None], (b - bn.running_mean) * scale + bn.bias.detach()


def fold_batch_norm(model: VGG) -> VGG:
    """A copy of ``model`` without batch norm whose convs compute conv + BN (eval mode) exactly.

    w' = w * g / sqrt(var + eps) per output channel, b' = (b - mean) * g / sqrt(var + eps) + beta.
    The copy keeps the model's device, dtype, head, dropout and train/eval flag; ``model`` is left unchanged.
    """
    folded = copy.deepcopy(model)
    if not model.batch_norm:
        return folded
    folded.batch_norm, folded.bns = False, nn.ModuleDict()
    with torch.no_grad():
        for name, conv in folded.convs.items():
            w, b = _folded(model.convs[name], model.bns[name])
            conv.weight.copy_(w)
            conv.bias.copy_(b)
    return folded


def _build(config: dict, state: dict[str, Tensor], clone: bool = False) -> VGG:
    """A VGG built from ``config`` that holds ``state`` (floats as float32).

    Built on the meta device, so no time goes into initialising weights that the state replaces (torchvision's
    head alone has 120M). ``clone``: copy the tensors rather than share memory with ``state``.
    """
    with torch.device("meta"):
        model = VGG(**config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if clone:
        state = {k: v.detach().clone() for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model


# --- torchvision's VGG16 layout ---------------------------------------------------------------------------------

def _torchvision_feature_indices(batch_norm: bool) -> dict[str, int]:
    """Index N of ``features.N`` for each conv in torchvision's ``vgg16`` (``vgg16_bn`` if batch_norm)."""
    indices, i = {}, 0
    convs = iter(CONV_LAYERS)
    for item in CFG_VGG16 + ("M",):
        if item == "M":
            i += 1
        else:
            indices[next(convs)] = i
            i += 3 if batch_norm else 2
    return indices


def from_torchvision_state_dict(state: dict[str, Tensor]) -> VGG:
    """Build a visualisable VGG from a torchvision ``vgg16`` or ``vgg16_bn`` state dict.

    Keys: ``features.N.weight``/``bias`` (and BN's running stats for vgg16_bn), ``classifier.{0,3,6}.*``.
    The number of classes is read from ``classifier.6.weight``.
    """
    batch_norm = "features.1.running_mean" in state
    kind = "vgg16_bn" if batch_norm else "vgg16"

    def get(key: str) -> Tensor:
        if key not in state:
            raise ValueError(f"not a torchvision {kind} state dict: {key!r} is missing (VGG11/13/19 and other "
                             "layouts are not supported)")
        return state[key]

    ours: dict[str, Tensor] = {}
    for name, n in _torchvision_feature_indices(batch_norm).items():
        ours[f"convs.{name}.weight"] = get(f"features.{n}.weight")
        ours[f"convs.{name}.bias"] = get(f"features.{n}.bias")
        if batch_norm:
            for key in ("weight", "bias", "running_mean", "running_var"):
                ours[f"bns.{name}.{key}"] = get(f"features.{n + 1}.{key}")
            ours[f"bns.{name}.num_batches_tracked"] = state.get(f"features.{n + 1}.num_batches_tracked",
                                                                torch.tensor(0))
    for i in (0, 3, 6):
        for key in ("weight", "bias"):
            ours[f"classifier.{i}.{key}"] = get(f"classifier.{i}.{key}")
    config = {"num_classes": ours["classifier.6.weight"].shape[0], "batch_norm": batch_norm, "head": "torchvision"}
    try:
        return _build(config, ours, clone=True)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"not a torchvision {kind} state dict: {e}") from e


def to_torchvision_state_dict(model: VGG) -> dict[str, Tensor]:
    """The inverse of :func:`from_torchvision_state_dict` (a model with the torchvision head)."""
    if model.head != "torchvision":
        raise ValueError("only a model with head='torchvision' has torchvision's layout")
    state = {}
    for name, n in _torchvision_feature_indices(model.batch_norm).items():
        state[f"features.{n}.weight"] = model.convs[name].weight
        state[f"features.{n}.bias"] = model.convs[name].bias
        if model.batch_norm:
            bn = model.bns[name]
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                state[f"features.{n + 1}.{key}"] = getattr(bn, key)
    for i in (0, 3, 6):
        state[f"classifier.{i}.weight"] = model.classifier[i].weight
        state[f"classifier.{i}.bias"] = model.classifier[i].bias
    return {k: v.detach().clone() for k, v in state.items()}


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[VGG, dict]:
    """Load a model from one of our checkpoints or from a torchvision VGG16 state dict file.

    Returns the model in eval mode and the checkpoint's metadata (``{}`` for a bare state dict): class
    names, input size, training config and validation accuracy when the checkpoint has them. A checkpoint with
    EMA weights (``"ema"``) gives the averaged weights, and ``meta["weights"]`` says which: ``"ema"`` or ``"raw"``.
    """
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(obj, dict) and "model" in obj and "model_config" in obj:
        ema = obj.get("ema")  # model.train's --ema: the averaged weights are the ones to use
        model = _build(obj["model_config"], ema["model"] if ema else obj["model"])
        meta = {k: v for k, v in obj.items() if k not in ("model", "optimizer", "scheduler", "rng", "ema")}
        meta["weights"] = "ema" if ema else "raw"
    elif isinstance(obj, dict) and "features.0.weight" in obj:
        model, meta = from_torchvision_state_dict(obj), {"source": "torchvision state dict"}
    elif isinstance(obj, dict) and "convs.conv1_1.weight" in obj:
        batch_norm = "bns.conv1_1.weight" in obj
        head = "torchvision" if "classifier.6.weight" in obj else "gmp"
        num_classes = obj["classifier.6.weight" if head == "torchvision" else "classifier.1.weight"].shape[0]
        model, meta = _build({"num_classes": num_classes, "batch_norm": batch_norm, "head": head}, obj), {}
    else:
        raise ValueError(f"{path}: neither a checkpoint of this project nor a torchvision VGG16 state dict")
    return model.eval(), meta
