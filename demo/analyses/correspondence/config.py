"""The settings of one ``python -m demo.correspondence`` run."""

from __future__ import annotations

from dataclasses import dataclass

from demo.analyses.correspondence.measure import POOLED

DEFAULT_LAYERS = ("conv4_3", "conv5_3", POOLED)


@dataclass
class CorrespondenceConfig:
    """One correspondence run; every field is a command-line option of the same name."""

    boxes: str  # the boxes file (JSON)
    out: str  # output folder (created)
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    draws: int = 10  # random-baseline draws
    seed: int = 0  # seed of the random boxes
    layers: str = ",".join(DEFAULT_LAYERS)  # conv layers and/or "pooled", comma-separated
    batch_size: int = 16  # images per forward pass
    tolerance: float = 1e-4  # |eps| up to this times the layer's largest original value counts as 0
    resize: str = "crop"  # crop (short side, centre square) or stretch
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)
