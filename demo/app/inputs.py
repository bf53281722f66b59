"""What a request may be: the upload, read and decoded safely within limits, and the options, checked.

Untrusted input. Uploads are decoded by ``base.images.decode``, the project's one safe path (pixel limit from the
header before decoding, empty, truncated and damaged files, non-images, absurd aspect ratios, decompression bombs,
EXIF orientation, any Pillow mode), within ``UPLOAD_LIMITS``. Every refusal is an ``InputError`` whose text is
meant for the user: the page shows it as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from base import images
from base.display import NORMS
from base.images import RESIZE_MODES
from base.spec import CONV_LAYERS, RULES, conv_channels

UPLOAD_LIMITS = images.Limits(max_bytes=25 * 2**20)  # pixels, aspect ratio and file size of an upload
Source = str | Path | bytes | Mapping | None  # a file path, raw bytes, or a Gradio file payload
NO_IMAGE = "No image yet: upload one, take a webcam photo, paste one, or pick an example."


class InputError(ValueError):
    """A problem with what the user gave us, worded for the user: the UI shows the text as it is."""


@dataclass
class Upload:
    """A decoded upload: the picture in 8-bit RGB (EXIF orientation applied, first frame), and what to tell."""

    image: Image.Image
    digest: str  # SHA-1 of the file's bytes
    size: tuple[int, int]  # (width, height) of the file's picture, before EXIF rotation
    notes: list[str]  # things the user should know (animation, rotation), one sentence each


def _for_page(err: images.ImageError) -> InputError:
    """``base.images``' refusal worded for the page: a capitalised sentence."""
    text = str(err)
    return InputError(text[:1].upper() + text[1:] + ("" if text.endswith(("?", ".")) else "."))


def _payload_bytes(source: Mapping, limits: images.Limits) -> str | bytes:
    """A Gradio file payload ({"path": ...} or {"url": "data:..."}) -> its path or its decoded bytes."""
    path, url = source.get("path"), source.get("url")
    if path:
        return path
    if not (isinstance(url, str) and url.startswith("data:")):
        raise InputError(NO_IMAGE)
    header, _, payload = url.partition(",")
    if len(payload) > limits.max_bytes * 4 // 3 + 4:  # refused before decoding the base64
        raise _for_page(images.too_large(len(payload) * 3 // 4, limits))
    try:
        return base64.b64decode(payload, validate=True) if ";base64" in header else payload.encode()
    except (binascii.Error, ValueError):
        raise InputError("The image data is damaged (bad base64 encoding).") from None


def read_source(source: Source, limits: images.Limits = UPLOAD_LIMITS) -> bytes:
    """The bytes of an upload: a file path, raw bytes, or a Gradio file payload; ``InputError`` if unusable.

    A file above ``limits.max_bytes`` is refused before it is read; the bytes themselves (empty, too large, not an
    image) are checked by ``decode``.
    """
    if source is None:
        raise InputError(NO_IMAGE)
    if isinstance(source, Mapping):
        source = _payload_bytes(source, limits)
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    path = Path(source)
    try:
        size = path.stat().st_size
    except OSError:
        raise InputError("The uploaded file could not be found; please upload it again.") from None
    if size > limits.max_bytes:
        raise _for_page(images.too_large(size, limits))
    return path.read_bytes()


def decode(data: bytes, limits: images.Limits = UPLOAD_LIMITS, digest: str | None = None) -> Upload:
    """Decode an image file's bytes safely (``base.images.decode``) into an ``Upload``; ``InputError`` with the
    reason, worded for the page, otherwise. ``digest``: the bytes' SHA-1 when the caller has it."""
    try:
        decoded = images.decode(data, limits, digest=digest)
    except images.ImageError as err:
        raise _for_page(err) from None
    return Upload(decoded.image, decoded.digest, decoded.size, decoded.notes)


def open_upload(source: Source, limits: images.Limits = UPLOAD_LIMITS) -> Upload:
    """Read and safely decode an upload (a path, bytes or a Gradio file payload); ``InputError`` if unusable."""
    return decode(read_source(source, limits), limits)


def digest_of(data: bytes) -> str:
    """The SHA-1 of an upload's bytes (the cache key of its results)."""
    return hashlib.sha1(data).hexdigest()


# --- the options ---------------------------------------------------------------------------------------------------

CHOICES = {"layer": CONV_LAYERS, "normalisation": NORMS, "resize mode": RESIZE_MODES, "backward rule": RULES}


def check(what: str, value: str) -> str:
    """``value`` when it is one of the ``what`` choices (``CHOICES``: a conv layer, a display normalisation, a
    resize mode, a backward rule), else ``InputError`` naming the choices."""
    choices = CHOICES[what]
    if value not in choices:
        raise InputError(f"Unknown {what} {value!r}; choose one of {', '.join(choices)}.")
    return value


def whole_number(value, what: str) -> int:
    """``value`` (an int, or a float or string holding one) as an int; ``InputError`` naming ``what`` otherwise."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, got {value!r}.") from None
    if number != value and str(number) != str(value).strip():
        raise InputError(f"{what} must be a whole number, got {value!r}.")
    return number


def check_channel(layer: str, channel, channels: int | None = None) -> int:
    """A channel index of ``layer`` (``channels`` of them; default the layer's), else ``InputError``."""
    C = conv_channels(check("layer", layer)) if channels is None else channels
    c = whole_number(channel, "The channel")
    if not 0 <= c < C:
        raise InputError(f"{layer} has channels 0 to {C - 1}; got {channel}.")
    return c


def check_class(value, class_names: list[str]) -> int:
    """A class given by name (case-insensitive) or index -> its index; ``InputError`` otherwise."""
    if isinstance(value, str) and value.strip().lower() in (n.lower() for n in class_names):
        return [n.lower() for n in class_names].index(value.strip().lower())
    try:
        index = whole_number(value, "The class")
    except InputError:
        raise InputError(f"Unknown class {value!r}; choose one of {', '.join(class_names)}.") from None
    if not 0 <= index < len(class_names):
        raise InputError(f"The class must be one of 0 to {len(class_names) - 1}; got {value}.")
    return index
