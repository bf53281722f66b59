"""Image -> the (1, 3, H, W) float32 tensor the network takes, and back to a displayable picture.

The steps, in order:

1. EXIF orientation applied (phone photos are stored sideways with a rotation tag),
2. converted to 8-bit RGB from any Pillow mode: palette (``P``), grey (``L``, ``1``), 16-bit and 32-bit grey
   (``I;16``, ``I``, ``F``, scaled to 0-255), ``CMYK``, ``YCbCr``; transparent images (``RGBA``, ``LA``, ``PA``
   or a transparency key) are composited on a background, white by default,
3. resized to the model's input size: ``"crop"`` (default) scales the short side to the size and cuts the
   centre square, keeping the aspect ratio, exactly as the training's evaluation transform (torchvision's
   ``Resize(size)`` + ``CenterCrop(size)``) does; ``"stretch"`` scales the whole image to a square, keeping
   everything in view but distorting the shapes,
4. scaled to [0, 1] and normalised per channel with the model's mean and std (``base.spec.MEAN``/``STD``,
   carried in the ONNX metadata). Channel order RGB, never BGR.

Resampling is Pillow's antialiased bilinear filter (what torchvision uses on PIL images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from base import images
from base.images import RESIZE_MODES

BACKGROUNDS = {"white": (255, 255, 255), "grey": (128, 128, 128), "black": (0, 0, 0)}


def to_rgb(image: Image.Image, background: str | tuple[int, int, int] = "white") -> Image.Image:
    """``image`` in 8-bit RGB, whatever its mode, EXIF orientation applied; transparency composited on
    ``background`` ("white", "grey", "black" or an (R, G, B) tuple of 0-255 values).

    The conversion is ``base.images.to_rgb``'s (torch-free), the one training used, so the demo sees exactly
    what the network was trained on: 16-bit grey scaled from 0-65535, float images from [0, 1] when they lie in
    it, palette and colour-key transparency honoured.
    """
    return images.to_rgb(image, _background(background))


def _background(background: str | tuple[int, int, int]) -> tuple[int, int, int]:
    return BACKGROUNDS[background] if isinstance(background, str) else tuple(background)


def load_image(path: str | Path, background: str | tuple[int, int, int] = "white") -> Image.Image:
    """Open an image file through the safe decoding path (``base.images``): 8-bit RGB, EXIF orientation applied,
    first frame of an animation; ``ImageError`` (a ValueError naming the file and the reason) when unusable."""
    return images.open_image(path, background=_background(background))


def fit(image: Image.Image, size: int, resize: str = "crop") -> Image.Image:
    """Resize ``image`` to ``size`` x ``size`` pixels: "crop" (short side to size, centre crop) or "stretch"."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    w, h = image.size
    if resize == "stretch":
        return image.resize((size, size), Image.Resampling.BILINEAR)
    # torchvision's Resize(size) + CenterCrop(size), the training's evaluation transform, to the pixel:
    # the long side is truncated, the crop offset rounded.
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess(image: Image.Image | str | Path, size: int, mean, std, resize: str = "crop",
               background: str | tuple[int, int, int] = "white") -> np.ndarray:
    """An image (PIL image in any mode, or a file path) -> (1, 3, size, size) float32, normalised RGB.

    ``mean`` and ``std`` are per-channel (3,) values on pixels scaled to [0, 1]; take them, and ``size``, from
    the model (``OnnxModel.mean``, ``.std``, ``.input_size``). EXIF orientation is applied to PIL images too.
    """
    if isinstance(image, (str, Path)):
        rgb = load_image(image, background)
    else:
        rgb = to_rgb(image, background)
    return normalise(rgb, size, mean, std, resize)


def normalise(rgb: Image.Image, size: int, mean, std, resize: str = "crop") -> np.ndarray:
    """An 8-bit RGB picture, already upright (``to_rgb``'s result) -> (1, 3, size, size) float32: resized
    (``fit``), scaled to [0, 1] and normalised per channel with ``mean`` and ``std`` (3,)."""
    if rgb.mode != "RGB":
        raise ValueError(f"expected an RGB picture, got mode {rgb.mode} (convert it with to_rgb)")
    pixels = np.asarray(fit(rgb, size, resize), dtype=np.float32) / 255.0  # (H, W, 3) in [0, 1]
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1)[None])


def deprocess(tensor: np.ndarray, mean, std) -> np.ndarray:
    """Undo ``preprocess``: (1, 3, H, W) or (3, H, W) normalised float -> (H, W, 3) uint8 RGB picture."""
    x = np.asarray(tensor, dtype=np.float32)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    C, H, W = x.shape
    if C != 3:
        raise ValueError(f"expected 3 channels, got {C}")
    pixels = x.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return (np.clip(pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8)
