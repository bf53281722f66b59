"""Shared fixtures: a tiny random-weight VGG16 with batch norm, its exported .onnx file, small generated images.

"Tiny" means tiny inputs: the network is VGG16 itself (the layer plan is fixed), but every test feeds it 32x32
or 64x64 images, so the suite stays fast on a 2-core machine. Nothing here needs ../shared or a download.
"""

from __future__ import annotations

import os

# The test machines are small and shared (2 cores, a training run in the background): multithreaded BLAS and
# OpenMP on tiny arrays only spin against each other. One thread each unless the caller chose otherwise; this
# must run before NumPy and torch are imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import io  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY_SIZE = 32  # input side of the tiny model's metadata and of most test images


def random_bn_vgg(seed: int = 0):
    """VGG16 with batch norm whose BN statistics and affine parameters are random (so folding matters)."""
    import torch

    from model.vgg import VGG

    torch.manual_seed(seed)
    model = VGG(batch_norm=True)
    with torch.no_grad():
        for bn in model.bns.values():
            bn.running_mean.normal_(0.0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
        for conv in model.convs.values():
            conv.bias.normal_(0.0, 0.05)
    return model.eval()


def check_images(size: int = TINY_SIZE) -> list[np.ndarray]:
    """The export check's three inputs, kept small: one image, a batch of two, a non-square one."""
    rng = np.random.default_rng(123)
    shapes = [(1, 3, size, size), (2, 3, size, size), (1, 3, size + 16, size)]
    return [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]


@pytest.fixture(scope="session")
def tiny_vgg():
    """The random-weight VGG16 with random batch-norm statistics (eval mode); do not modify it."""
    return random_bn_vgg()


@pytest.fixture(scope="session")
def tiny_export(tiny_vgg, tmp_path_factory) -> dict:
    """``tiny_vgg`` exported once per session: the export report, with ``path`` the .onnx file."""
    from export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    card = {"data": "none: random weights (tests)", "val_acc": 0.5}
    return export_onnx(tiny_vgg, path, input_size=TINY_SIZE, model_card=card, check_images=check_images())


@pytest.fixture(scope="session")
def tiny_onnx(tiny_export) -> Path:
    """Path of the tiny model's .onnx file."""
    return Path(tiny_export["path"])


@pytest.fixture(scope="session")
def onnx_model(tiny_onnx):
    """The tiny model loaded in onnxruntime on the CPU (a ``demo.onnx_forward.OnnxModel``)."""
    from demo.onnx_forward import OnnxModel

    return OnnxModel(tiny_onnx, device="cpu")


def make_image(mode: str = "RGB", size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    """A small synthetic picture (smooth gradients plus a square) in any Pillow mode; size is (width, height)."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1), np.full((h, w), 96.0)], axis=2)
    rgb[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(0, 256, 3)
    image = Image.fromarray(rgb.astype(np.uint8))
    if mode == "RGBA":
        alpha = np.where(xx < w // 2, 255, 0).astype(np.uint8)  # left half opaque, right half transparent
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray(alpha))
        return image
    if mode == "I;16":
        return Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)  # mode I;16
    return image.convert(mode)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A folder with five small images of different formats and modes, and a cat-12 label file for them."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    files = {
        "a.jpg": make_image("RGB", (40, 32), 1),
        "b.png": make_image("RGBA", (32, 48), 2),
        "c.png": make_image("L", (64, 64), 3),
        "sub/d.png": make_image("P", (33, 35), 4),
        "sub/e.bmp": make_image("RGB", (24, 24), 5),
    }
    lines = []
    for i, (name, image) in enumerate(files.items()):
        image.save(folder / name)
        lines.append(f"{name}\t{i % 3}")
    (folder / "labels.txt").write_text("\n".join(lines) + "\n")
    return folder


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels and whose data is empty: a decompression bomb's shape,
    refused (or not) from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    """``image`` saved in ``fmt`` (a Pillow format name), as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def one_thread():
    """Training with threads=1 sets torch's thread count for the whole process: put it back afterwards."""
    import torch

    before = torch.get_num_threads()
    yield 1
    torch.set_num_threads(before)


def tinted_data(root: Path, classes: int = 3, per_class: int = 4, folder: str = "images",
                png_last: bool = False) -> Path:
    """A cat-12-style folder: ``root/train_list.txt`` and ``classes * per_class`` 48x40 JPEG images under
    ``root/folder``, each tinted by its class (so that a tiny model can learn them); ``png_last``: the last image
    of each class is a PNG."""
    lines = []
    for label in range(classes):
        for i in range(per_class):
            pixels = np.random.default_rng(10 * label + i).integers(0, 60, (40, 48, 3), dtype=np.uint8)
            pixels[..., label % 3] += 150
            name = f"{folder}/{label}_{i}.{'png' if png_last and i == per_class - 1 else 'jpg'}"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name)
            lines.append(f"{name}\t{label}")
    (root / "train_list.txt").write_text("\n".join(lines) + "\n")
    return root


def onnx_outputs(model, side: int, seed: int, tensors: bool = False) -> tuple:
    """onnxruntime's activations and switches for two random (seeded) side x side images; with ``tensors`` also
    both as torch tensors: (acts, switches[, torch acts, torch switches])."""
    x = np.random.default_rng(seed).standard_normal((2, 3, side, side), dtype=np.float32)
    _, acts, switches = model.run(x)
    if not tensors:
        return acts, switches
    import torch

    return acts, switches, {k: torch.from_numpy(v) for k, v in acts.items()}, \
        {k: torch.from_numpy(v) for k, v in switches.items()}


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray runtime of 2 workers (CPUs) for the whole session, shut down at the end; skips when Ray is
    not installed (it is an optional extra: requirements-ray.txt)."""
    ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}})
    try:
        yield ray
    finally:
        ray.shutdown()
