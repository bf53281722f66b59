"""The settings of one ``python -m demo.occlusion`` run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OcclusionConfig:
    """One occlusion run; every field is a command-line option of the same name."""

    image: str  # the image file
    out: str  # output folder (created)
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    size: int = 48  # side of the grey square in pixels
    stride: int = 16  # pixels between positions
    label: str | None = None  # the true class (index or name); default: the predicted class
    layer: str = "conv5_3"  # whose strongest feature map is followed
    batch_size: int = 16  # occluded images per forward pass
    resize: str = "crop"  # crop (short side, centre square) or stretch
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)
