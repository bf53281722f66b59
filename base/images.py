"""Opening untrusted image files: one decoding path for the app, every command line and training.

Torch-free, so that both ``model/`` (training's image check) and ``demo/`` (the app and the CLIs) use it.
``decode`` refuses, with one sentence a user can act on (an ``ImageError``):

- empty files, files that are not images (text named ``.png``, SVG, random bytes), truncated or corrupt ones;
- more pixels than ``Limits.max_pixels``, read from the header before any pixel is decoded (Pillow's own
  decompression-bomb warning and error become the same message);
- absurd aspect ratios (a 3 x 5000 strip would be enlarged to gigapixels by a resize to a square);
- files larger than ``Limits.max_bytes`` when a limit is set (the app's uploads).

What it accepts it converts to 8-bit RGB (``to_rgb``): EXIF orientation applied, palette, grey, 16-bit and 32-bit
grey, CMYK and YCbCr converted, transparency composited on a background, the first frame of an animation.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
RESIZE_MODES = ("crop", "stretch")  # bringing an image to the input size: centre crop (as in training) or squash


class ImageError(ValueError):
    """A file that is not a usable image; the text is one sentence meant for the user."""


@dataclass(frozen=True)
class Limits:
    """What an image file may be. Pillow's own bomb limits are ~89 megapixels (warning) and ~179 (error)."""

    max_pixels: int = 40_000_000  # width * height, checked from the header before decoding
    max_aspect: float = 20.0  # longest side / shortest side
    max_bytes: int | None = None  # size of the file; None: any (the app sets one for uploads)


@dataclass
class Decoded:
    """A decoded image: the picture in 8-bit RGB, the SHA-1 of the file's bytes, and what a user should know."""

    image: Image.Image
    digest: str
    size: tuple[int, int]  # (width, height) of the file's picture, before EXIF rotation
    notes: list[str]  # one sentence each: animation, EXIF rotation


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An 8-bit RGB copy of ``image`` whatever its mode (P, RGBA, LA, L, 1, I;16, I, F, CMYK, YCbCr ...).

    EXIF orientation is applied; transparency (an alpha band, or a palette/greyscale/RGB transparent colour) is
    composited over ``background``; 16-bit images are scaled from 0-65535 to 0-255, 32-bit integer images from
    0-65535 when they use more than 8 bits, float images from 0-1 when they lie in [0, 1], else kept as 0-255.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("P", "L", "RGB", "1") and "transparency" in image.info:
        image = image.convert("RGBA")  # a transparent palette entry or colour (PNG tRNS, GIF)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and a.max() > 255):
            top = 65535.0
        elif image.mode == "F" and a.size and a.min() >= 0 and a.max() <= 1:
            top = 1.0
        else:
            top = 255.0
        image = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MB"


def too_large(size: int, limits: Limits) -> ImageError:
    """The refusal of a file of ``size`` bytes above ``limits.max_bytes``."""
    return ImageError(f"the file is {_megabytes(size)}; files up to {_megabytes(limits.max_bytes or 0)} are taken")


def _too_many_pixels(width: int | None, height: int | None, limits: Limits) -> ImageError:
    dims = f"{width} x {height} pixels ({width * height / 1e6:.0f} megapixels)" if width and height else "too large"
    return ImageError(f"the image is {dims}; images up to {limits.max_pixels / 1e6:.0f} megapixels are taken "
                      "(use a smaller copy: the network only sees a small square anyway)")


def _check_header(image: Image.Image, limits: Limits) -> tuple[int, int]:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"the image has no pixels ({width} x {height})")
    if width * height > limits.max_pixels:
        raise _too_many_pixels(width, height, limits)
    if max(width, height) > limits.max_aspect * min(width, height):
        raise ImageError(f"the image is {width} x {height} pixels: too thin a strip (its sides may differ by at "
                         f"most {limits.max_aspect:.0f} times)")
    return width, height


def _load_first_frame(image: Image.Image, width: int, height: int, limits: Limits) -> int:
    frames = getattr(image, "n_frames", 1)
    try:
        if frames > 1:
            image.seek(0)
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(width, height, limits) from None
    except OSError as err:
        reason = "it is truncated (incomplete)" if "truncated" in str(err) else "its data are corrupt"
        raise ImageError(f"the image file is damaged: {reason}") from None
    except Exception as err:  # any decoder failure is a damaged file to the user
        raise ImageError(f"the image file is damaged and cannot be decoded ({type(err).__name__})") from None
    return frames


def decode(data: bytes, limits: Limits = Limits(), background: tuple[int, int, int] = (255, 255, 255),
           digest: str | None = None) -> Decoded:
    """Decode an image file's bytes safely into 8-bit RGB; raises ``ImageError`` with the reason otherwise.

    ``digest``: the SHA-1 of ``data`` when the caller has it already (else it is computed).
    """
    if not data:
        raise ImageError("the file is empty (0 bytes)")
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        raise too_large(len(data), limits)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(None, None, limits) from None
        except UnidentifiedImageError:
            raise ImageError("the file is not a picture that can be read (PNG, JPEG, GIF, WebP, BMP, TIFF ...); "
                             "is it really an image, or only named like one?") from None
        except Exception as err:  # any decoder failure is a damaged file to the user
            raise ImageError(f"the image file is damaged and cannot be opened ({type(err).__name__})") from None
        with image:
            width, height = _check_header(image, limits)
            frames = _load_first_frame(image, width, height, limits)
            try:
                orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            except Exception:  # unreadable EXIF: the picture itself is still fine
                orientation = 1
            try:
                rgb = to_rgb(image, background)
            except Exception as err:
                raise ImageError(f"the image's colours ({image.mode}) could not be converted to RGB "
                                 f"({type(err).__name__})") from None
    notes = []
    if frames > 1:
        notes.append(f"Animated image: showing its first frame (of {frames}).")
    if orientation not in (1, None):
        notes.append("The photo carries an EXIF rotation; it was turned upright first.")
    return Decoded(rgb, digest or hashlib.sha1(data).hexdigest(), (width, height), notes)


def read_file(path: str | Path, limits: Limits = Limits()) -> bytes:
    """The bytes of an image file; ``ImageError`` when it is missing, unreadable or larger than the limit."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if limits.max_bytes is not None and size > limits.max_bytes:
            raise ImageError(f"{path}: {too_large(size, limits)}")
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None


def open_file(path: str | Path, limits: Limits = Limits(),
              background: tuple[int, int, int] = (255, 255, 255)) -> Decoded:
    """Read and decode an image file; ``ImageError`` whose text starts with the path otherwise."""
    data = read_file(path, limits)
    try:
        return decode(data, limits, background)
    except ImageError as err:
        raise ImageError(f"{path}: {err}") from None


def open_image(path: str | Path, limits: Limits = Limits(),
               background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An image file as 8-bit RGB (EXIF applied, first frame); ``ImageError`` naming the path otherwise."""
    return open_file(path, limits, background).image
