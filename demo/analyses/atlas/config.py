"""The settings of one mining run of the top-9 atlas (``python -m demo.mine``), shared by the command line and the
static site (which writes the command that draws a missing picture with the atlas's own settings)."""

from __future__ import annotations

from dataclasses import dataclass

from demo.analyses.atlas import DEFAULT_LAYERS


@dataclass
class MineConfig:
    """One mining run; every field is a command-line option of the same name."""

    data: str  # label file, folder with train_list.txt, ImageFolder tree or a folder of images
    out: str  # the atlas directory
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    layers: str = DEFAULT_LAYERS  # comma-separated conv layers, or "all"
    k: int = 9  # entries per channel
    batch_size: int = 16  # images per onnxruntime call
    size: int | None = None  # input side in pixels; default the model's
    resize: str = "crop"  # crop (short side, centre square) or stretch
    norm: str = "minmax"  # how projections become pixels
    rule: str = "deconvnet"  # the backward rule of the projections: deconvnet, guided, gradient
    tile: int = 128  # largest tile side in pixels (0: the receptive field's full size)
    patches_only: bool = False  # skip the deconvnet projections
    render: str = "16"  # which pictures to draw: "all", "none", or N (the N strongest channels per layer)
    limit: int | None = None  # only the first N images of the data
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 (faster, not exact)
    workers: int = 2  # image-decoding threads
    save_every: int = 20  # batches between saved states
    resume: bool = False  # continue an interrupted run in --out
    overwrite: bool = False  # discard what --out holds and start again
    html: bool = False  # also write the static site (index.html, a page per layer and channel) into --out
    featurevis: str | None = None  # with html: a folder of feature visualizations shown on the channel pages
    engine: str = "local"  # local (this process) or ray (a Ray Data worker pool; see demo.analyses.ray_engine)
    ray_workers: int | None = None  # with --engine ray: workers (onnxruntime sessions)
    address: str | None = None  # with --engine ray: a running Ray cluster to join
