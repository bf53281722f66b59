"""The settings of one ``python -m demo.faithfulness`` run."""

from __future__ import annotations

from dataclasses import dataclass

from demo.analyses.evidence.methods import METHODS

TARGETS = ("predicted", "label")  # which class a run scores


@dataclass
class FaithfulnessConfig:
    """One faithfulness run; every field is a command-line option of the same name."""

    inputs: list[str]  # image files, folders and/or label files
    out: str  # output folder (created)
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    methods: str = ",".join(METHODS)  # comma-separated method ids; random and edges are always added
    steps: int = 32  # deletion/insertion steps
    target: str = "predicted"  # predicted | label
    layer: str = "conv5_3"  # Grad-CAM's layer
    rule: str = "gradient"  # SmoothGrad's backward rule
    samples: int = 25  # SmoothGrad's noisy copies
    sd: float = 0.15  # SmoothGrad's noise sd, a fraction of the image's value range
    ig_steps: int = 32  # Integrated Gradients' path points
    baseline: str = "black"  # Integrated Gradients' baseline: black | blurred
    road: bool = True  # also ROAD (18 imputed images per map)
    root: str | None = None  # folder that label files' relative paths are resolved against
    limit: int | None = None  # at most this many images, round-robin over the labels
    seed: int = 0  # SmoothGrad's noise, the random map, tie-breaking, ROAD's noise
    batch_size: int = 16  # images per onnxruntime run
    resize: str = "crop"  # crop (short side, centre square) or stretch
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)
