"""The boxes file of the correspondence analysis and the geometry of its boxes: reading and validating the file,
mapping a box from original-image pixels to input pixels through the preprocessing's resize and crop, covering a
box with the mean colour, and boxes of the same size at random places."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from base.cli import UsageError
from base.images import RESIZE_MODES

PARTS = ("left_eye", "right_eye", "nose")  # the paper's parts for faces, in display order

Box = tuple[float, float, float, float]  # [x0, y0, x1, y1] in pixels of the original image
InputBox = tuple[int, int, int, int]  # [x0, y0, x1, y1] in input pixels, half-open, inside the input


# ----------------------------------------------------------------------------------------------------------------
# Geometry


def input_transform(width: int, height: int, size: int, resize: str = "crop") -> tuple[float, float, float, float]:
    """(scale_x, scale_y, left, top) such that the original pixel coordinate (x, y) lands on the input coordinate
    (x * scale_x - left, y * scale_y - top), as ``demo.preprocess.fit`` resizes a ``width`` x ``height`` image to
    ``size`` x ``size`` ("crop": short side to ``size``, long side truncated, centre square with the offset
    rounded; "stretch": both sides to ``size``). Coordinates are continuous: pixel k spans [k, k + 1)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if width < 1 or height < 1 or size < 1:
        raise ValueError(f"sizes must be positive, got {width}x{height} -> {size}")
    if resize == "stretch":
        return size / width, size / height, 0.0, 0.0
    new_w, new_h = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return new_w / width, new_h / height, float(left), float(top)


def box_to_input(box: Sequence[float], width: int, height: int, size: int, resize: str = "crop") -> InputBox | None:
    """The input pixels (x0, y0, x1, y1), half-open, that the original-image ``box`` [x0, y0, x1, y1] touches after
    the resize and crop of ``input_transform``; clipped to the ``size`` x ``size`` input; None when nothing of the
    box lies inside it."""
    sx, sy, left, top = input_transform(width, height, size, resize)
    x0, y0, x1, y1 = (float(v) for v in box)
    eps = 1e-6  # an edge that lands on a pixel border up to rounding stays on it

    def span(a: float, b: float, scale: float, offset: float) -> tuple[int, int]:
        lo, hi = math.floor(a * scale - offset + eps), math.ceil(b * scale - offset - eps)
        hi = max(hi, lo + 1)  # a box thinner than a pixel still covers the one it falls in
        return max(lo, 0), min(hi, size)

    c0, c1 = span(x0, x1, sx, left)
    r0, r1 = span(y0, y1, sy, top)
    if c1 <= c0 or r1 <= r0:
        return None
    return c0, r0, c1, r1


def mask(image: np.ndarray, box: InputBox) -> np.ndarray:
    """A copy of ``image`` (3, H, W) normalised with the input ``box`` (x0, y0, x1, y1) set to 0 (the mean colour)."""
    C, H, W = image.shape
    x0, y0, x1, y1 = box
    out = np.array(image, dtype=np.float32, copy=True)
    out[:, y0:y1, x0:x1] = 0.0
    return out


def random_box(rng: np.random.Generator, box: InputBox, size: int) -> InputBox:
    """A box of the same width and height as ``box`` at a uniformly random position inside a ``size`` x ``size``
    input."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    left, top = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    return left, top, left + w, top + h


# ----------------------------------------------------------------------------------------------------------------
# The boxes file


@dataclass
class Annotation:
    """One image of the boxes file: its path, the key it had there, and its part boxes in original pixels."""

    path: Path
    key: str
    boxes: dict[str, Box]


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise UsageError(f"key {key!r} appears twice")
        seen[key] = value
    return seen


def _read_json(path: Path) -> object:
    """The JSON value in ``path``; a ``UsageError`` naming the file when it is missing, not UTF-8 or not JSON, or
    when a key appears twice in one object."""
    if not path.is_file():
        raise UsageError(f"{path}: no such boxes file")
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except UsageError as err:
        raise UsageError(f"{path}: {err}") from None


def _part_boxes(where: str, parts: object) -> dict[str, Box]:
    """The validated part -> box mapping of one image; ``where`` (file and key) starts each error message."""
    if not isinstance(parts, dict) or not parts:
        raise UsageError(f"{where}: expected an object of part names -> [x0, y0, x1, y1], got {parts!r}"[:300])
    boxes: dict[str, Box] = {}
    for part, box in parts.items():
        if not part or part.startswith("_") or not part.replace("_", "").isalnum():
            raise UsageError(f"{where}: part name {part!r} must be letters, digits and '_' (e.g. left_eye)")
        ok = (isinstance(box, list) and len(box) == 4
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box))
        if not ok:
            raise UsageError(f"{where}, part {part!r}: expected [x0, y0, x1, y1] (4 numbers), got {box!r}"[:300])
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x1 > x0 and y1 > y0):
            raise UsageError(f"{where}, part {part!r}: box {box} is empty; expected x0 < x1 and y0 < y1")
        boxes[part] = (x0, y0, x1, y1)
    return boxes


def read_boxes(path: str | Path) -> list[Annotation]:
    """Read and validate a boxes file (the format is in the package docstring); every problem is a ``UsageError``
    (exit 2) of one line naming the file and the key. Image paths are resolved against the file's folder and must
    exist."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object {{\"image path\": {{\"part\": [x0, y0, x1, y1]}}}}, got "
                         f"{type(data).__name__}")
    annotations = []
    for key, parts in data.items():
        if key.startswith("_"):
            continue  # a comment
        where = f"{path}: {key!r}"
        boxes = _part_boxes(where, parts)
        image = Path(key).expanduser()
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise UsageError(f"{where}: no image file at {image}")
        annotations.append(Annotation(image, key, boxes))
    if not annotations:
        raise UsageError(f"{path}: no images (keys starting with '_' are comments)")
    return annotations


def part_order(annotations: Sequence[Annotation]) -> list[str]:
    """The parts that occur, ``PARTS`` first in their order, then the others as they first appear."""
    seen = list(dict.fromkeys(p for a in annotations for p in a.boxes))
    return [p for p in PARTS if p in seen] + [p for p in seen if p not in PARTS]
