"""The settings of one ``python -m demo.health`` run."""

from __future__ import annotations

from dataclasses import dataclass

from demo.analyses.health.measure import RARE_FRACTION


@dataclass
class HealthConfig:
    """One health run; every field is a command-line option of the same name."""

    data: str  # label file, folder with train_list.txt, ImageFolder tree or a folder of images
    out: str  # output folder (created)
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    limit: int | None = None  # only the first N images of the data
    rare: float = RARE_FRACTION  # share of images below which a firing channel counts as rare
    batch_size: int = 16  # images per onnxruntime call
    workers: int = 2  # image-decoding threads
    resize: str = "crop"  # crop (short side, centre square) or stretch
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)
    engine: str = "local"  # local (this process) or ray (a Ray Data worker pool; see demo.analyses.ray_engine)
    ray_workers: int | None = None  # with --engine ray: workers (onnxruntime sessions)
    address: str | None = None  # with --engine ray: a running Ray cluster to join
