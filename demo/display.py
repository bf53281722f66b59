"""Pictures for people: feature-map grids, tiles with captions, receptive-field windows.

How numbers become grey levels is ``base.display`` (the normalisation every stage shares); this module lays the
normalised pictures out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from base import spec
from base.display import map_image, reconstruction_image

OUTSIDE = 230  # grey of window pixels that lie outside the picture


def merge_channels(activation: np.ndarray, how: str = "sum") -> np.ndarray:
    """The "merged" view of a layer (as the original notebook showed it): its (C, h, w) or (1, C, h, w) feature
    maps summed (or averaged).

    Sum and mean give the same picture after normalisation; they differ only in the raw numbers.
    """
    a = np.asarray(activation, dtype=np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"expected (C, h, w) feature maps, got shape {a.shape}")
    if how not in ("sum", "mean"):
        raise ValueError(f"how must be 'sum' or 'mean', got {how!r}")
    return a.sum(axis=0) if how == "sum" else a.mean(axis=0)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W, ...) picture by an integer ``factor``."""
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


@dataclass(frozen=True)
class GridLayout:
    """How ``feature_grid`` lays out C feature maps: row-major tiles of tile_h x tile_w, ``gap`` apart."""

    channels: int
    columns: int
    tile_h: int
    tile_w: int
    gap: int = 1

    @property
    def rows(self) -> int:
        return math.ceil(self.channels / self.columns)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the grid picture in pixels."""
        return (self.rows * (self.tile_h + self.gap) - self.gap, self.columns * (self.tile_w + self.gap) - self.gap)

    @classmethod
    def for_maps(cls, C: int, h: int, w: int, min_tile: int = 32, max_width: int = 1024, gap: int = 1) -> GridLayout:
        """A square-ish grid for C maps of (h, w): small maps enlarged to ``min_tile`` px, big ones shrunk so that
        the grid is at most about ``max_width`` px wide."""
        columns = math.ceil(math.sqrt(C))
        side = max(h, w)
        if side < min_tile:
            factor = math.ceil(min_tile / side)
            return cls(C, columns, h * factor, w * factor, gap)
        shrink = max(1, math.ceil(side / max(min_tile, max_width // columns - gap)))
        return cls(C, columns, max(1, h // shrink), max(1, w // shrink), gap)

    def channel_at(self, x: float, y: float) -> int | None:
        """The channel whose tile holds pixel (x, y) of the grid picture, or None for a gap or outside."""
        col, dx = divmod(int(x), self.tile_w + self.gap)
        row, dy = divmod(int(y), self.tile_h + self.gap)
        if x < 0 or y < 0 or dx >= self.tile_w or dy >= self.tile_h or col >= self.columns:
            return None
        channel = row * self.columns + col
        return channel if channel < self.channels else None


def feature_grid(activation: np.ndarray, norm: str = "minmax",
                 layout: GridLayout | None = None) -> tuple[np.ndarray, np.ndarray, GridLayout]:
    """Each channel of a layer as its own tile: (C, h, w) or (1, C, h, w) feature maps -> (H, W, 3) uint8 grid,
    flat flags (C,) and the ``GridLayout`` (which channel is where: ``layout.channel_at(x, y)``).

    Each tile is normalised alone; flat channels (a ReLU that never fires here) are mid-grey and flagged. Tiles
    are enlarged by nearest neighbour or shrunk by box averaging to the layout's tile size (default:
    ``GridLayout.for_maps``, a square-ish grid about 1024 px wide at most), ``layout.gap`` white pixels apart.
    """
    activation = np.asarray(activation, dtype=np.float32)
    if activation.ndim == 4 and activation.shape[0] == 1:
        activation = activation[0]
    if activation.ndim != 3:
        raise ValueError(f"expected (C, h, w) feature maps, got shape {activation.shape}")
    C, h, w = activation.shape
    layout = layout or GridLayout.for_maps(C, h, w)
    tiles, flags = [], np.zeros(C, dtype=bool)
    for c in range(C):
        tile, flags[c] = map_image(activation[c], norm)
        if (layout.tile_h, layout.tile_w) != (h, w):
            if layout.tile_h >= h:
                tile = upscale(tile, layout.tile_h // h)
            else:
                tile = np.asarray(Image.fromarray(tile).resize((layout.tile_w, layout.tile_h), Image.Resampling.BOX))
        tiles.append(tile)
    return grid(tiles, layout.columns, layout.gap), flags, layout


def enlarge(picture: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (h, w, 3) picture by the smallest integer factor reaching ``min_side``."""
    side = max(picture.shape[:2])
    return upscale(picture, math.ceil(min_side / side)) if side < min_side else picture


def grid(tiles: Sequence[np.ndarray], columns: int | None = None, gap: int = 1, background: int = 255) -> np.ndarray:
    """Same-sized (h, w, 3) uint8 tiles -> one (H, W, 3) uint8 picture, row-major, ``gap`` pixels apart."""
    if not tiles:
        return np.full((1, 1, 3), background, dtype=np.uint8)
    h, w = tiles[0].shape[:2]
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), background, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def tile_images(images: Sequence[np.ndarray], captions: Sequence[str] | None = None, columns: int | None = None,
                gap: int = 6, font_size: int = 12, background: int = 255) -> np.ndarray:
    """Pictures (h, w, 3) uint8, possibly of different sizes, side by side with a caption under each.

    Returns one (H, W, 3) uint8 picture; each cell is as large as the largest picture (centred in it).
    """
    if not images:
        return np.full((1, 1, 3), background, dtype=np.uint8)
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    text_h = font_size + 4 if captions else 0
    cells = []
    for i, im in enumerate(images):
        cell = np.full((cell_h + text_h, cell_w, 3), background, dtype=np.uint8)
        top, left = (cell_h - im.shape[0]) // 2, (cell_w - im.shape[1]) // 2
        cell[top : top + im.shape[0], left : left + im.shape[1]] = im
        if captions:
            pil = Image.fromarray(cell)
            ImageDraw.Draw(pil).text((2, cell_h + 1), captions[i], fill=(0, 0, 0), font=_font(font_size))
            cell = np.asarray(pil)
        cells.append(cell)
    return grid(cells, columns or len(cells), gap, background)


def field_tile(picture: np.ndarray, top: int, left: int, side: int, fill: int = OUTSIDE) -> np.ndarray:
    """Cut the window (top, left, side) from ``picture`` (H, W, 3) uint8 -> (side, side, 3) uint8.

    The window keeps its place: pixels outside the picture are ``fill``, so the unit stays at the tile's centre.
    """
    H, W = picture.shape[:2]
    r0, r1, c0, c1 = spec.clip_box(top, left, side, H, W)
    tile = np.full((side, side, 3), fill, dtype=np.uint8)
    if r1 > r0 and c1 > c0:
        tile[r0 - top : r1 - top, c0 - left : c1 - left] = picture[r0:r1, c0:c1]
    return tile


def projection_tile(projection: np.ndarray, top: int, left: int, side: int, norm: str = "minmax") -> np.ndarray:
    """A single activation's projection (3, H, W) cut to its receptive field (top, left, side) -> (side, side, 3)
    uint8, normalised over the part inside the image (where all of its non-zero values lie)."""
    C, H, W = projection.shape
    r0, r1, c0, c1 = spec.clip_box(top, left, side, H, W)
    picture, _ = reconstruction_image(projection[:, r0:r1, c0:c1], norm)
    tile = np.full((side, side, 3), OUTSIDE, dtype=np.uint8)
    tile[r0 - top : r1 - top, c0 - left : c1 - left] = picture
    return tile
