"""The paper's top-9 atlas (Zeiler & Fergus, Fig. 2) of a whole data set.

    python -m demo.mine --data ../shared/data/cat12/train_list.txt --out atlas/
    python -m demo.mine --data photos/ --layers conv5_3 --model models/vgg16_imagenet.onnx --out atlas/
    python -m demo.mine --data ../shared/data/cat12/train_list.txt --out atlas/ --resume     # after Ctrl-C

For every channel of the chosen conv layers (default conv3_3, conv4_3, conv5_3): the k (default 9) images of the
data set on which the channel responds most strongly, each shown as its image patch (the unit's receptive field,
cut from the preprocessed input) and the deconvnet projection of that single activation, cropped the same way.

What counts as one activation: per image and channel, the channel's maximum over its feature map, so the k
entries of a channel are k different images (what the paper's figure shows). Ties go to the earlier image in
the data set's order, and inside an image to the first position in row-major order.

Two passes:

1. Mining (streaming). Batches of preprocessed images go through onnxruntime on a copy of the graph that ends,
   for each chosen layer, in an ArgMax and a GatherElements over the flattened maps: only the (N, C) maxima and
   their positions leave the runtime. A running (C, k) top-k per layer is merged with each batch. Memory is
   bounded by one batch; images are decoded by background threads while onnxruntime runs. The state is saved
   atomically every --save-every batches and on Ctrl-C; ``--resume`` continues from it. The result is the
   index (below): every entry's image, position and value.
2. Rendering. Keeping the pool switches of every candidate would cost megabytes per image, so the distinct images
   of the entries (at most k * C per layer) are run once more through the full graph; each entry's single
   activation is projected to pixels by the NumPy deconvnet and cut, with its image patch, to the unit's
   receptive field. Tiles are saved as they are done, so an interrupted rendering resumes too. This pass costs
   one projection per entry whatever the size of the data set, and deep layers dominate it (on the CPU a conv5_3
   projection at 224 px costs one to a few forward passes: ``python bench/mine.py`` measures both). ``--render N`` draws
   only the N strongest channels of each layer now; the rest can follow (``--resume --render all``) or be drawn
   by the app when asked for. ``--patches-only`` skips the projections.

The atlas (ATLAS_DIR):

    atlas.json     the settings (model and its SHA-1, data, layers, k, input size, tile size, normalisation) and
                   the grids' geometry; written when mining is done (with index.npz)
    index.npz      per layer L: ``L/values`` (C, k) float32 activations, ``L/images`` (C, k) int64 (index into
                   ``paths``, -1: no entry), ``L/positions`` (C, k, 2) int64 (row, col in L's feature map),
                   ``L/boxes`` (C, k, 4) int64 (r0, r1, c0, c1: the patch in input pixels, clipped to the image;
                   -1: no entry); ``paths`` (M,) str and ``labels`` (M,) int64 of the images (-1: unknown)
    L/CCCC.png     one picture per channel: the k projections on the left, their k patches on the right, both
                   3x3 by rank (row-major). Each tile is the unit's full receptive field, centred on the unit and
                   downscaled to at most --tile pixels; what lies outside the image is light grey. Entries whose
                   activation is 0 (a channel that never fires on that image) are left grey.

The atlas holds crops of the data: keep an atlas of a data set you may not redistribute out of the repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from base import spec
from base.cli import atomic_write

DEFAULT_LAYERS = "conv3_3,conv4_3,conv5_3"
STATE_FILE = "mine_state.npz"
TILES_DIR = ".tiles"
TILE_GAP = 2  # pixels between tiles of a block
BLOCK_GAP = 12  # pixels between the projections block and the patches block
ATLAS_VERSION = 1


def grid_path(out: Path, layer: str, channel: int, rule: str | None = None) -> Path:
    """Where the picture of ``layer``'s ``channel`` lives in the atlas ``out``: ``L/CCCC.png``, drawn with the
    atlas's own backward rule, or ``L/CCCC.<rule>.png`` for another rule (drawn on request)."""
    return out / layer / (f"{channel:04d}.png" if rule is None else f"{channel:04d}.{rule}.png")


def tile_path(out: Path, layer: str, channel: int, rank: int, rule: str | None = None) -> Path:
    """Where one entry's (projection | patch) tile waits until its channel's picture is composed."""
    name = f"{channel:04d}_{rank}.png" if rule is None else f"{channel:04d}_{rank}.{rule}.png"
    return out / TILES_DIR / layer / name


def save_png(path: Path, picture: np.ndarray) -> None:
    """Write ``picture`` (H, W, 3) uint8 as a PNG, atomically."""
    atomic_write(path, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"), sync=False)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an .npz, atomically and flushed to disk."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def tile_side(layer: str, max_tile: int) -> int:
    """Side in pixels of the atlas tiles of ``layer``: its receptive field, at most ``max_tile`` (0: no limit)."""
    side = spec.receptive_field(layer)
    return side if max_tile <= 0 else min(side, max_tile)
