"""The settings of one ``python -m demo.sanity`` run."""

from __future__ import annotations

from dataclasses import dataclass

from base.spec import RULES


@dataclass
class SanityConfig:
    """One run of the checks; every field is a command-line option of the same name."""

    inputs: list[str]  # image files, label files, folders
    out: str  # output folder (created)
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    target: str = "conv5_3"  # comma-separated: conv5_3 | LAYER/CHANNEL | class | class/CLASS
    methods: str = ",".join(RULES)  # comma-separated methods (the backward rules and any registered method)
    mode: str = "cascading"  # cascading | independent | both
    seeds: str = "0"  # comma-separated seeds of the random weights
    classes: bool = True  # also the class-sensitivity check
    compare_model: str | None = None  # another .onnx file: the data-randomization comparison
    root: str | None = None  # folder that label files' relative paths are resolved against
    limit: int = 0  # at most this many images, round-robin over the labels (0: all)
    samples: int = 25  # SmoothGrad's noisy copies per map
    ig_steps: int = 32  # Integrated Gradients' path points per map
    steps: str = ""  # comma-separated step numbers to compute (0 always); empty: every step
    norm: str = "minmax"  # display normalisation of the filmstrip's tiles
    resize: str = "crop"  # crop (short side, centre square) or stretch
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)

    @property
    def image(self) -> str:
        return self.inputs[0]
