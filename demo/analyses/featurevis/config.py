"""The settings of the feature-visualization commands, filled by ``demo.analyses.featurevis.cli``: a run
(``FeaturevisConfig``), packing a run into the compact shipped set (``PackConfig``), and the README's figure
(``FigureConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

QUALITY = 85  # WebP quality of the shipped pictures


@dataclass
class FeaturevisConfig:
    """One run of ``python -m demo.featurevis``; every field is a command-line option of the same name."""

    targets: list[str]  # LAYER/C, LAYER/C/Y/X, class/K, class/NAME, LAYER/all, LAYER/A-B, class/all; '-' minimises
    out: str  # output folder (created)
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    steps: int = 512  # Adam steps per picture
    size: int | None = None  # picture side in pixels (a multiple of 16); default: the model's input size
    batch: int = 8  # targets optimised together in one batch
    seed: int = 0  # seed of the starting spectra and the transformations
    lr: float = 0.05  # Adam's learning rate
    copies: int = 1  # pictures per target, kept apart by the diversity term
    diversity_weight: float = 100.0  # weight of the diversity term (with --copies > 1)
    randomize: str | None = None  # comma-separated layers (conv names, "head") re-drawn at random first
    randomize_seed: int = 0  # seed of those random weights
    resume: bool = False  # skip targets already written with the same settings
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)
    threads: int | None = None  # onnxruntime's threads on the CPU


@dataclass
class FigureConfig:
    """The README's figure (``python -m demo.featurevis_figure``); every field is a command-line option."""

    image: str  # the image the projections are made on
    out: str  # the PNG to write
    units: str = "conv5_3/7,conv5_3/85,conv5_3/276,conv5_3/441"  # comma-separated channels of one layer
    score: str = ""  # more channels of that layer (e.g. conv5_3/0-31), measured on every model but not drawn
    csv: str | None = None  # where the measures of every unit and model go (default: beside --out)
    pictures: str | None = None  # a python -m demo.featurevis folder of the trained model
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    steps: int = 128  # Adam steps of the pictures made now
    size: int = 96  # their side in pixels
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)


@dataclass
class PackConfig:
    """Packing a run into a shipped set (``python -m demo.featurevis_pack``); every field is a command-line option
    of the same name."""

    src: str  # what python -m demo.featurevis wrote
    dst: str  # the packed set (e.g. models/featurevis)
    model: str | None = None  # the model the pictures were made from
    quality: int = QUALITY  # WebP quality 1..100
    replace: bool = False  # start DST afresh instead of adding to a set of the same model and settings
