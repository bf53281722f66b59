"""The settings of one ``python -m demo.invariance`` run."""

from __future__ import annotations

from dataclasses import dataclass

from demo.analyses.invariance import DEFAULT_LAYERS


@dataclass
class InvarianceConfig:
    """One invariance run; every field is a command-line option of the same name."""

    inputs: list[str]  # image files and folders
    out: str  # output folder (created)
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    labels: str | None = None  # a cat-12 label file giving the true class of the images
    label: str | None = None  # the true class of every image (index or name)
    translate: str | None = None  # START:STOP:STEP in pixels; default +-60 px at 224, 13 steps
    scale: str | None = None  # default 0.6:1.8:0.1
    rotate: str | None = None  # default 0:360:15 (degrees)
    layers: str = ",".join(DEFAULT_LAYERS)  # conv layers whose feature distance is plotted
    limit: int = 5  # at most this many images (the paper shows 5)
    batch_size: int = 8  # transformed images per forward pass
    resize: str = "crop"  # crop (short side, centre square) or stretch
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)
