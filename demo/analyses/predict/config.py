"""The settings of one ``python -m demo.predict`` run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PredictConfig:
    """One classification run; every field is a command-line option of the same name."""

    inputs: list[str] = field(default_factory=list)  # image files and folders (searched recursively)
    csv: str = "predictions.csv"  # where to write the predictions
    labels: str | None = None  # a cat-12 label file: report accuracy and the confusion matrix
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    batch_size: int = 16  # images per onnxruntime call
    resize: str = "crop"  # crop (short side, centre square) or stretch
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)
    confusion_png: str | None = None  # also draw the confusion matrix here (needs matplotlib)
    tta: bool = False  # also classify the mirror image and average (horizontal-flip test-time augmentation)
    engine: str = "local"  # local (this process) or ray (a Ray Data worker pool; see demo.analyses.ray_engine)
    ray_workers: int | None = None  # with --engine ray: workers (onnxruntime sessions)
    address: str | None = None  # with --engine ray: a running Ray cluster to join
