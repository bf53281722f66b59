"""The settings of one ``python -m demo.sanity`` run."""

from __future__ import annotations

from dataclasses import dataclass

from base.spec import RULES


@dataclass
class SanityConfig:
    """One run of the checks; every field is a command-line option of the same name."""

    image: str  # the image file
    out: str  # output folder (created)
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    target: str = "conv5_3"  # conv5_3 | LAYER/CHANNEL | class | class/CLASS
    rules: str = ",".join(RULES)  # comma-separated backward rules
    mode: str = "cascading"  # cascading | independent | both
    seed: int = 0  # seed of the random weights
    classes: bool = True  # also the class-sensitivity check
    norm: str = "minmax"  # display normalisation of the filmstrip's tiles
    resize: str = "crop"  # crop (short side, centre square) or stretch
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)
