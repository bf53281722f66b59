"""The settings of one ``python -m demo.visualize`` run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VisualizeConfig:
    """One visualisation run; every field is a command-line option of the same name."""

    image: str  # the image file
    out: str  # output folder (created)
    layer: str = "conv5_3"  # a conv layer, a comma-separated list, or "all"
    mode: str = "layer"  # "layer" (all feature maps), "channel" (strongest activation of --channel), "topk"
    channel: int | None = None  # --mode channel: which channel
    k: int = 9  # --mode topk: how many channels
    class_: str | None = None  # --class: project this class's score (a name or an index) instead of a layer
    rule: str = "deconvnet"  # the backward rule at each ReLU: deconvnet, guided, gradient
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    norm: str = "minmax"  # display normalisation: minmax, signed, percentile
    resize: str = "crop"  # crop (short side, centre square) or stretch
    background: str = "white"  # what transparent pixels are composited on
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)
    features: bool = True  # also write the feature-map grids
