"""``python -m demo.mine``: the paper's top-9 atlas (Zeiler & Fergus, Fig. 2) of a whole data set.

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

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tqdm import tqdm

from demo.deconv_numpy import Deconvnet
from demo.display import NORMS, grid, reconstruction_image
from demo.onnx_forward import DEFAULT_MODEL, DEVICES, OnnxModel, cpu_threads
from demo.preprocess import RESIZE_MODES, deprocess, preprocess
from demo.visualize import parse_layers
from model import spec
from model.data import IMAGE_EXTENSIONS, Sample, find_samples

DEFAULT_LAYERS = "conv3_3,conv4_3,conv5_3"
STATE_FILE = "mine_state.npz"
TILES_DIR = ".tiles"
OUTSIDE = 230  # grey of tile pixels outside the image, and of empty entries
TILE_GAP = 2  # pixels between tiles of a block
BLOCK_GAP = 12  # pixels between the projections block and the patches block
ATLAS_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# Receptive-field geometry


def field_box(layer: str, row: int, col: int) -> tuple[int, int, int]:
    """(top, left, side) in input pixels of the receptive field of position (row, col) of conv ``layer``.

    Not clipped: top/left may be negative and the window may run past the image. For VGG16 (3x3 convs with
    padding 1, 2x2/2 pools) the window of position i starts at i * stride - (side - stride) / 2.
    """
    side, stride = spec.receptive_field(layer), spec.stride_of(layer)
    offset = (side - stride) // 2
    return row * stride - offset, col * stride - offset, side


def clip_box(top: int, left: int, side: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The part (r0, r1, c0, c1) of the square window (top, left, side) that lies inside an (height, width) image."""
    return max(top, 0), min(top + side, height), max(left, 0), min(left + side, width)


def field_tile(picture: np.ndarray, top: int, left: int, side: int, fill: int = OUTSIDE) -> np.ndarray:
    """Cut the window (top, left, side) from ``picture`` (H, W, 3) uint8 -> (side, side, 3) uint8.

    The window keeps its place: pixels outside the picture are ``fill``, so the unit stays at the tile's centre.
    """
    H, W = picture.shape[:2]
    r0, r1, c0, c1 = clip_box(top, left, side, H, W)
    tile = np.full((side, side, 3), fill, dtype=np.uint8)
    if r1 > r0 and c1 > c0:
        tile[r0 - top : r1 - top, c0 - left : c1 - left] = picture[r0:r1, c0:c1]
    return tile


# ----------------------------------------------------------------------------------------------------------------
# Streaming: per-image channel maxima from onnxruntime, running top-k


def reduction_graph(path: str | Path, layers: Sequence[str]) -> onnx.ModelProto:
    """A copy of the exported graph whose only outputs are, per layer L, ``L_max`` (N, C) float32, each channel's
    maximum over its feature map, and ``L_argmax`` (N, C) int64, its flat position (row * w + col, the first one
    on ties). Nodes the new outputs do not need (the head, the switches' index arithmetic) are dropped.
    """
    proto = onnx.load(str(path))
    graph = proto.graph
    flat_shape, plane_shape = "mine_flat_shape", "mine_plane_shape"
    graph.initializer.extend([numpy_helper.from_array(np.array([0, 0, -1], np.int64), flat_shape),
                              numpy_helper.from_array(np.array([0, 0], np.int64), plane_shape)])
    outputs = []
    for layer in layers:
        flat, where, value = f"mine_{layer}_flat", f"mine_{layer}_where", f"mine_{layer}_value"
        graph.node.extend([
            helper.make_node("Reshape", [layer, flat_shape], [flat], name=f"mine_{layer}_reshape"),
            helper.make_node("ArgMax", [flat], [where], name=f"mine_{layer}_argmax", axis=2, keepdims=1),
            helper.make_node("GatherElements", [flat, where], [value], name=f"mine_{layer}_gather", axis=2),
            helper.make_node("Reshape", [value, plane_shape], [f"{layer}_max"], name=f"mine_{layer}_max"),
            helper.make_node("Reshape", [where, plane_shape], [f"{layer}_argmax"], name=f"mine_{layer}_pos"),
        ])
        outputs += [helper.make_tensor_value_info(f"{layer}_max", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info(f"{layer}_argmax", TensorProto.INT64, None)]
    del graph.output[:]
    graph.output.extend(outputs)
    if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
               for a in n.attribute):  # no subgraphs: every input a node reads is in node.input
        producer = {out: node for node in graph.node for out in node.output}
        needed, stack, keep = set(), [o.name for o in outputs], set()
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            if name in producer:
                keep.add(id(producer[name]))
                stack.extend(producer[name].input)
        kept_nodes = [n for n in graph.node if id(n) in keep]
        del graph.node[:]
        graph.node.extend(kept_nodes)
        kept_inits = [i for i in graph.initializer if i.name in needed]
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
    return proto


class ChannelMaxima:
    """onnxruntime on ``reduction_graph``: images (N, 3, H, W) -> per layer, channel maxima and their positions.

    Uses the same execution providers as ``model`` (CUDA when it runs there).
    """

    def __init__(self, model: OnnxModel, layers: Sequence[str], threads: int | None = None) -> None:
        self.layers = list(layers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        proto = reduction_graph(model.path, self.layers)
        self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=model.providers)
        self._names = [n for layer in self.layers for n in (f"{layer}_max", f"{layer}_argmax")]

    def run(self, image: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``image`` (N, 3, H, W) float32 -> {layer: (maxima (N, C) float32, positions (N, C) int64 flat)}."""
        values = self.session.run(self._names, {spec.INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)})
        return {layer: (values[2 * i], values[2 * i + 1]) for i, layer in enumerate(self.layers)}


@dataclass(frozen=True)
class TopK:
    """The running top-k of a stream of images, per layer and channel (an immutable snapshot).

    ``values`` (C, k) float32 sorted decreasing (-inf: no entry yet), ``images`` (C, k) int64 data-set indices (-1:
    none), ``positions`` (C, k) int64 flat positions in the layer's map; ``next`` the first image not yet seen,
    ``skipped`` the indices of unreadable images.
    """

    values: dict[str, np.ndarray]
    images: dict[str, np.ndarray]
    positions: dict[str, np.ndarray]
    next: int = 0
    skipped: tuple[int, ...] = ()
    done: bool = False

    @classmethod
    def empty(cls, channels: Mapping[str, int], k: int) -> TopK:
        """No image seen yet: ``channels`` maps each layer to its channel count."""
        return cls({n: np.full((C, k), -np.inf, np.float32) for n, C in channels.items()},
                   {n: np.full((C, k), -1, np.int64) for n, C in channels.items()},
                   {n: np.zeros((C, k), np.int64) for n, C in channels.items()})

    @property
    def k(self) -> int:
        return next(iter(self.values.values())).shape[1]

    def merged(self, image_ids: np.ndarray, maxima: Mapping[str, tuple[np.ndarray, np.ndarray]], next_index: int,
               skipped: Sequence[int] = ()) -> TopK:
        """A new snapshot with a batch merged in: ``image_ids`` (B,) increasing, larger than every id seen, and
        per layer (maxima (B, C), positions (B, C)). Each channel keeps its k largest of the k + B candidates;
        the stable sort keeps the earlier image first on ties (old entries precede the batch, in id order).
        """
        values, images, positions = {}, {}, {}
        ids = np.asarray(image_ids, dtype=np.int64)
        for layer, old in self.values.items():
            new_values, new_positions = maxima[layer]
            B, C = new_values.shape
            v = np.concatenate([old, new_values.T.astype(np.float32)], axis=1)  # (C, k + B)
            order = np.argsort(-v, axis=1, kind="stable")[:, : self.k]
            values[layer] = np.take_along_axis(v, order, axis=1)
            images[layer] = np.take_along_axis(
                np.concatenate([self.images[layer], np.broadcast_to(ids, (C, B))], axis=1), order, axis=1)
            positions[layer] = np.take_along_axis(
                np.concatenate([self.positions[layer], new_positions.T.astype(np.int64)], axis=1), order, axis=1)
        return TopK(values, images, positions, next_index, self.skipped + tuple(int(s) for s in skipped))

    def save(self, path: str | Path, fingerprint: str) -> None:
        """Write the snapshot to ``path`` atomically (a temporary file, then a rename)."""
        arrays = {"fingerprint": np.array(fingerprint), "next": np.array(self.next),
                  "skipped": np.array(self.skipped, np.int64), "done": np.array(self.done)}
        for layer in self.values:
            arrays.update({f"{layer}/values": self.values[layer], f"{layer}/images": self.images[layer],
                           f"{layer}/positions": self.positions[layer]})
        _atomic_write(Path(path), lambda f: np.savez(f, **arrays), sync=True)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str, layers: Sequence[str]) -> TopK:
        """A snapshot saved by ``save``; ValueError when it was made with another model, data or settings."""
        with np.load(path) as data:
            if str(data["fingerprint"]) != fingerprint:
                raise ValueError(f"{path} was made with another model, data set or settings; use --overwrite to "
                                 "start again")
            return cls({n: data[f"{n}/values"] for n in layers}, {n: data[f"{n}/images"] for n in layers},
                       {n: data[f"{n}/positions"] for n in layers}, int(data["next"]),
                       tuple(int(s) for s in data["skipped"]), bool(data["done"]))


def _atomic_write(path: Path, write: Callable, sync: bool = False) -> None:
    """Write ``path`` through a temporary file and a rename: an interrupted write never leaves half a file.
    ``sync`` also forces the bytes to disk before the rename (the state; tiles can be redone)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Data


def read_samples(data: str | Path) -> list[Sample]:
    """The images of a cat-12 label file, a folder holding ``train_list.txt``, an ImageFolder tree (one folder per
    class) or a plain folder of images (searched recursively, label -1)."""
    try:
        return find_samples(data)[0]
    except ValueError:
        root = Path(data)
        if not root.is_dir():
            raise
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise ValueError(f"{root}: no images") from None
        return [Sample(p, -1) for p in paths]


@dataclass(frozen=True)
class Loader:
    """Reads image i of ``samples`` as the network sees it: (3, size, size) float32, normalised."""

    samples: Sequence[Sample]
    size: int
    mean: np.ndarray
    std: np.ndarray
    resize: str = "crop"

    def __call__(self, index: int) -> np.ndarray | None:
        try:
            return preprocess(self.samples[index].path, self.size, self.mean, self.std, self.resize)[0]
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            warnings.warn(f"skipping unreadable image {self.samples[index].path}: {err}", stacklevel=1)
            return None


def batches(load: Callable[[int], np.ndarray | None], order: Sequence[int], batch_size: int,
            workers: int = 2) -> Iterator[tuple[list[int], np.ndarray, list[int], list[int]]]:
    """Yield (chunk, ids, images (B, 3, H, W), failed) per ``batch_size`` indices of ``order``; decoding runs in
    ``workers`` threads, one batch ahead of the consumer (0: in the calling thread)."""
    chunks = [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]

    def assemble(chunk: list[int], pictures: list[np.ndarray | None]):
        ids = [i for i, p in zip(chunk, pictures, strict=True) if p is not None]
        failed = [i for i, p in zip(chunk, pictures, strict=True) if p is None]
        x = np.stack([p for p in pictures if p is not None]) if ids else np.zeros((0, 3, 1, 1), np.float32)
        return chunk, ids, x, failed

    if workers <= 0:
        for chunk in chunks:
            yield assemble(chunk, [load(i) for i in chunk])
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mine-load")
    try:
        pending: deque = deque()
        it = iter(chunks)
        for chunk in it:
            pending.append((chunk, [pool.submit(load, i) for i in chunk]))
            if len(pending) == 2:
                break
        while pending:
            chunk, futures = pending.popleft()
            following = next(it, None)
            if following is not None:
                pending.append((following, [pool.submit(load, i) for i in following]))
            yield assemble(chunk, [f.result() for f in futures])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(model_path: Path, samples: Sequence[Sample], layers: Sequence[str], k: int, size: int,
                resize: str, rendering: Mapping | None = None) -> str:
    """What a saved state must match to be resumed: the model's bytes, the image list and the settings."""
    listing = "\n".join(f"{s.path}\t{s.label}" for s in samples).encode()
    return json.dumps({"model": _sha1_file(model_path), "data": hashlib.sha1(listing).hexdigest(),
                       "layers": list(layers), "k": k, "size": size, "resize": resize,
                       "rendering": dict(rendering or {})}, sort_keys=True)


def stream(maxima: ChannelMaxima, load: Callable[[int], np.ndarray | None], num_images: int, state: TopK,
           batch_size: int = 16, workers: int = 2, save: Callable[[TopK], None] | None = None, save_every: int = 20,
           progress: Callable[[int, int], None] | None = None, bar: bool = True) -> TopK:
    """The streaming pass: merge images ``state.next`` ... ``num_images - 1`` into ``state``; return the final one.

    ``save(state)`` runs every ``save_every`` batches, at the end (with ``done`` set) and on KeyboardInterrupt
    (then the interrupt propagates). ``progress(done, total)`` is called after each batch.
    """
    order = range(state.next, num_images)
    with tqdm(total=num_images, initial=state.next, unit="img", desc="mining", disable=not bar,
              file=sys.stderr) as pbar:
        try:
            for count, (chunk, ids, x, failed) in enumerate(batches(load, order, batch_size, workers), start=1):
                out = maxima.run(x) if ids else {n: (np.zeros((0, v.shape[0]), np.float32),
                                                     np.zeros((0, v.shape[0]), np.int64))
                                                 for n, v in state.values.items()}
                state = state.merged(np.array(ids, np.int64), out, chunk[-1] + 1, failed)  # one atomic rebind
                pbar.update(len(chunk))
                if save is not None and save_every > 0 and count % save_every == 0:
                    save(state)
                if progress is not None:
                    progress(state.next, num_images)
        except KeyboardInterrupt:
            if save is not None:
                save(state)
            raise
    state = TopK(state.values, state.images, state.positions, state.next, state.skipped, done=True)
    if save is not None:
        save(state)
    return state


# ----------------------------------------------------------------------------------------------------------------
# The index: what the stream found


def write_index(out: Path, state: TopK, samples: Sequence[Sample], size: int, info: Mapping) -> None:
    """index.npz and atlas.json from a finished stream (atlas.json last: it marks the mining as done)."""
    arrays: dict[str, np.ndarray] = {
        "paths": np.array([str(s.path.resolve()) for s in samples]),
        "labels": np.array([s.label for s in samples], np.int64)}
    layers_info = {}
    for layer, images in state.images.items():
        C, k = images.shape
        rows, cols = np.divmod(state.positions[layer], size // spec.stride_of(layer))
        live = (images >= 0) & (state.values[layer] > 0)
        boxes = np.full((C, k, 4), -1, dtype=np.int64)
        for c, r in zip(*np.nonzero(live), strict=True):
            top, left, side = field_box(layer, int(rows[c, r]), int(cols[c, r]))
            boxes[c, r] = clip_box(top, left, side, size, size)
        arrays.update({f"{layer}/values": np.where(images >= 0, state.values[layer], 0).astype(np.float32),
                       f"{layer}/images": images, f"{layer}/positions": np.stack([rows, cols], axis=2),
                       f"{layer}/boxes": boxes})
        layers_info[layer] = {"channels": C, "receptive_field": spec.receptive_field(layer),
                              "stride": spec.stride_of(layer), "tile": tile_side(layer, info["tile"]),
                              "live_channels": int(live[:, 0].sum())}
    _atomic_write(out / "index.npz", lambda f: np.savez(f, **arrays), sync=True)
    meta = {**info, "version": ATLAS_VERSION, "layers": layers_info, "input_size": size,
            "images": len(samples) - len(state.skipped), "skipped": [str(samples[i].path) for i in state.skipped],
            "grid": {"layout": "k projections (left block) beside their k patches (right block), rank row-major",
                     "columns": math.ceil(math.sqrt(state.k)), "tile_gap": TILE_GAP, "block_gap": BLOCK_GAP,
                     "outside": OUTSIDE},
            "activation": "per image and channel, the channel's maximum over its map (k entries = k images)"}
    _atomic_write(out / "atlas.json", lambda f: f.write(json.dumps(meta, indent=1).encode()), sync=True)
    (out / STATE_FILE).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# Rendering: projections and patches of the entries, one picture per channel


def projection_tile(projection: np.ndarray, top: int, left: int, side: int, norm: str = "minmax") -> np.ndarray:
    """A single activation's projection (3, H, W) cut to its receptive field (top, left, side) -> (side, side, 3)
    uint8, normalised over the part inside the image (where all of its non-zero values lie)."""
    C, H, W = projection.shape
    r0, r1, c0, c1 = clip_box(top, left, side, H, W)
    picture, _ = reconstruction_image(projection[:, r0:r1, c0:c1], norm)
    tile = np.full((side, side, 3), OUTSIDE, dtype=np.uint8)
    tile[r0 - top : r1 - top, c0 - left : c1 - left] = picture
    return tile


def _shrink(tile: np.ndarray, max_tile: int) -> np.ndarray:
    if max_tile <= 0 or tile.shape[0] <= max_tile:
        return tile
    return np.asarray(Image.fromarray(tile).resize((max_tile, max_tile), Image.Resampling.LANCZOS))


def tile_side(layer: str, max_tile: int) -> int:
    """Side in pixels of the atlas tiles of ``layer``: its receptive field, at most ``max_tile`` (0: no limit)."""
    side = spec.receptive_field(layer)
    return side if max_tile <= 0 else min(side, max_tile)


def compose(projections: Sequence[np.ndarray], patches: Sequence[np.ndarray]) -> np.ndarray:
    """The paper's layout of one channel: k projection tiles (left block) beside their k patches (right block),
    each block ceil(sqrt(k)) tiles wide, rank-major -> (H, W, 3) uint8."""
    columns = math.ceil(math.sqrt(len(projections)))
    left, right = grid(list(projections), columns, TILE_GAP), grid(list(patches), columns, TILE_GAP)
    gap = np.full((left.shape[0], BLOCK_GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def _grid_path(out: Path, layer: str, channel: int) -> Path:
    return out / layer / f"{channel:04d}.png"


def _tile_path(out: Path, layer: str, channel: int, rank: int) -> Path:
    return out / TILES_DIR / layer / f"{channel:04d}_{rank}.png"


def _save_png(path: Path, picture: np.ndarray) -> None:
    _atomic_write(path, lambda f: Image.fromarray(picture).save(f, format="PNG"))


_SHA1_CACHE: dict[tuple[str, int, int], str] = {}


def model_sha1(path: str | Path) -> str:
    """SHA-1 of a model file's bytes (cached by path, size and modification time)."""
    p = Path(path).resolve()
    stat = p.stat()
    key = (str(p), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA1_CACHE:
        _SHA1_CACHE[key] = _sha1_file(p)
    return _SHA1_CACHE[key]


def render(model: OnnxModel, atlas_dir: str | Path, channels: Mapping[str, Iterable[int]] | None = None,
           batch_size: int = 16, workers: int = 2, bar: bool = True) -> int:
    """Draw the pictures of ``channels`` ({layer: channel indices}; default: every channel) that the atlas does not
    have yet; return how many were drawn.

    Per entry, a (projection | patch) tile is saved under ``.tiles`` as soon as it is done, so an interrupted
    rendering resumes where it stopped; each distinct image is loaded and run through the full graph once (for
    its switches), and every entry of it is projected by the NumPy deconvnet from the activation at its recorded
    position. ``model`` must be the atlas's own (checked by its bytes).
    """
    atlas = Atlas(atlas_dir)
    out, info = atlas.dir, atlas.info
    if info.get("model_sha1") and model_sha1(model.path) != info["model_sha1"]:
        raise ValueError(f"{model.path} is not the model {out} was mined with ({info['model']})")
    size, max_tile, norm, projections = info["input_size"], info["tile"], info["norm"], info["projections"]
    wanted = channels if channels is not None else {layer: range(atlas.channels(layer)) for layer in atlas.layers}
    missing = [(layer, int(c)) for layer, chans in wanted.items() for c in chans
               if not _grid_path(out, layer, int(c)).is_file()]
    if not missing:
        return 0
    for layer, c in missing:
        atlas._check(layer, c)
    index = atlas._index
    todo: dict[int, list[tuple[str, int, int]]] = {}
    for layer, c in missing:
        (out / TILES_DIR / layer).mkdir(parents=True, exist_ok=True)
        for r in range(index[f"{layer}/images"].shape[1]):
            image = int(index[f"{layer}/images"][c, r])
            if image >= 0 and index[f"{layer}/values"][c, r] > 0 and not _tile_path(out, layer, c, r).exists():
                todo.setdefault(image, []).append((layer, c, r))
    samples = [Sample(Path(p), int(lab)) for p, lab in zip(index["paths"], index["labels"], strict=True)]
    load = Loader(samples, size, model.mean, model.std, info["resize"])
    deconvnet = Deconvnet(model.weights) if projections and todo else None
    total = sum(len(v) for v in todo.values())
    with tqdm(total=total, unit="entry", desc="projecting" if projections else "cropping",
              disable=not bar or total == 0, file=sys.stderr) as pbar:
        for _, ids, x, failed in batches(load, sorted(todo), batch_size, workers):
            if failed:
                raise OSError(f"image(s) {', '.join(str(samples[i].path) for i in failed)} of the atlas cannot be "
                              "read any more")
            switches = model.run(x)[2] if projections else {}
            N, _, H, W = x.shape
            for n, image_id in enumerate(ids):
                picture = deprocess(x[n], model.mean, model.std)  # (H, W, 3) uint8
                sw = {pool: s[n : n + 1] for pool, s in switches.items()}
                for layer, c, r in todo[image_id]:
                    row, col = (int(v) for v in index[f"{layer}/positions"][c, r])
                    top, left, side = field_box(layer, row, col)
                    patch = field_tile(picture, top, left, side)
                    if projections:
                        h, w = H // spec.stride_of(layer), W // spec.stride_of(layer)
                        signal = np.zeros((1, spec.conv_channels(layer), h, w), dtype=np.float32)
                        signal[0, c, row, col] = index[f"{layer}/values"][c, r]
                        proj = projection_tile(deconvnet.project_down(signal, layer, sw)[0], top, left, side, norm)
                    else:
                        proj = np.full_like(patch, OUTSIDE)
                    both = np.concatenate([_shrink(proj, max_tile), _shrink(patch, max_tile)], axis=1)
                    _save_png(_tile_path(out, layer, c, r), both)
                    pbar.update()
    for layer, c in tqdm(missing, desc="pictures", unit="ch", disable=not bar or len(missing) < 64, file=sys.stderr):
        side = tile_side(layer, max_tile)
        empty = np.full((side, side, 3), OUTSIDE, dtype=np.uint8)
        proj_tiles, patch_tiles, done = [], [], []
        for r in range(index[f"{layer}/images"].shape[1]):
            path = _tile_path(out, layer, c, r)
            if path.exists():
                with Image.open(path) as im:
                    both = np.asarray(im.convert("RGB"))
                proj_tiles.append(both[:, :side])
                patch_tiles.append(both[:, side:])
                done.append(path)
            else:  # no activation: nothing to show
                proj_tiles.append(empty)
                patch_tiles.append(empty)
        _grid_path(out, layer, c).parent.mkdir(parents=True, exist_ok=True)
        _save_png(_grid_path(out, layer, c), compose(proj_tiles, patch_tiles))
        for path in done:
            path.unlink()
    if not any((out / TILES_DIR).rglob("*.png")):
        shutil.rmtree(out / TILES_DIR, ignore_errors=True)
    return len(missing)


# ----------------------------------------------------------------------------------------------------------------
# Reading an atlas (for the app)


@dataclass(frozen=True)
class AtlasEntry:
    """One of a channel's top-k: which image, how strong, where (feature-map position and input-pixel box)."""

    rank: int
    image: int  # index into the atlas's image list
    path: str
    label: int  # -1: unknown
    value: float  # the activation
    row: int
    col: int
    box: tuple[int, int, int, int]  # r0, r1, c0, c1 in input pixels, clipped to the image


class Atlas:
    """An atlas directory whose mining is done: its layers, per-channel entries and pictures.

    Pictures of channels that were not rendered (``--render N`` or ``none``) are drawn on request when a model is
    given (``view(layer, channel, model)``), and kept.
    """

    def __init__(self, atlas_dir: str | Path) -> None:
        self.dir = Path(atlas_dir)
        meta = self.dir / "atlas.json"
        if not meta.is_file():
            state = " (mining was interrupted: run python -m demo.mine ... --resume)" if (
                self.dir / STATE_FILE).exists() else ""
            raise FileNotFoundError(f"{self.dir} is not an atlas: no atlas.json{state}")
        self.info: dict = json.loads(meta.read_text())
        with np.load(self.dir / "index.npz") as data:
            self._index = {key: data[key] for key in data.files}
        self.layers: list[str] = list(self.info["layers"])

    def channels(self, layer: str) -> int:
        """Number of channels of ``layer`` in the atlas."""
        return int(self.info["layers"][layer]["channels"])

    def ranked_channels(self, layer: str) -> np.ndarray:
        """Channels of ``layer`` by decreasing top activation (dead channels last): (C,) int64."""
        return np.argsort(-self._index[f"{layer}/values"][:, 0], kind="stable").astype(np.int64)

    def rendered(self, layer: str) -> np.ndarray:
        """(C,) bool: whether the channel's picture has been drawn."""
        return np.array([_grid_path(self.dir, layer, c).is_file() for c in range(self.channels(layer))])

    def entries(self, layer: str, channel: int) -> list[AtlasEntry]:
        """The top-k entries of ``channel``, strongest first (entries with no activation left out)."""
        self._check(layer, channel)
        values, images = self._index[f"{layer}/values"][channel], self._index[f"{layer}/images"][channel]
        positions, boxes = self._index[f"{layer}/positions"][channel], self._index[f"{layer}/boxes"][channel]
        paths, labels = self._index["paths"], self._index["labels"]
        return [AtlasEntry(r, int(images[r]), str(paths[images[r]]), int(labels[images[r]]), float(values[r]),
                           int(positions[r, 0]), int(positions[r, 1]), tuple(int(b) for b in boxes[r]))
                for r in range(len(values)) if images[r] >= 0 and values[r] > 0]

    def view(self, layer: str, channel: int, model: OnnxModel | None = None) -> np.ndarray:
        """The channel's picture (H, W, 3) uint8: projections left, patches right (``compose``'s layout).

        A picture not drawn yet is drawn now when ``model`` (the atlas's own) is given, else FileNotFoundError.
        """
        self._check(layer, channel)
        path = _grid_path(self.dir, layer, channel)
        if not path.is_file():
            if model is None:
                raise FileNotFoundError(f"{layer} channel {channel} has no picture yet: run python -m demo.mine "
                                        f"--out {self.dir} --resume (renders them all), or pass the model")
            render(model, self.dir, {layer: [channel]}, bar=False)
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))

    def caption(self, layer: str, channel: int, class_names: Sequence[str] | None = None) -> str:
        """A short Markdown description of the channel's entries (rank, activation, image, class)."""
        names = class_names or self.info.get("class_names") or []
        entries = self.entries(layer, channel)
        lines = [f"**{layer} channel {channel}**: top {len(entries)} of {self.info['images']} images "
                 f"(receptive field {self.info['layers'][layer]['receptive_field']} px)", ""]
        for e in entries:
            label = f", {names[e.label]}" if 0 <= e.label < len(names) else ""
            lines.append(f"{e.rank + 1}. {e.value:.3g} at ({e.row}, {e.col}): {Path(e.path).name}{label}")
        if not entries:
            lines.append("this channel is zero on every image (a dead unit)")
        return "\n".join(lines)

    def _check(self, layer: str, channel: int) -> None:
        if layer not in self.info["layers"]:
            raise ValueError(f"the atlas has layers {', '.join(self.layers)}, not {layer!r}")
        if not 0 <= channel < self.channels(layer):
            raise ValueError(f"{layer} has channels 0..{self.channels(layer) - 1}, got {channel}")


@lru_cache(maxsize=4)
def load_atlas(atlas_dir: str) -> Atlas:
    """``Atlas(atlas_dir)``, cached (the app calls this on every selection)."""
    return Atlas(atlas_dir)


def atlas_view(atlas_dir: str | Path, layer: str, channel: int, model: OnnxModel | None = None) -> np.ndarray:
    """The atlas picture of ``layer``'s ``channel``: (H, W, 3) uint8, the k projections left, the k patches right.

    With ``model`` (the atlas's own), a picture that was not rendered yet is drawn first (k projections).
    """
    return load_atlas(str(Path(atlas_dir).resolve())).view(layer, int(channel), model)


# ----------------------------------------------------------------------------------------------------------------
# The command line


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
    tile: int = 128  # largest tile side in pixels (0: the receptive field's full size)
    patches_only: bool = False  # skip the deconvnet projections
    render: str = "all"  # which pictures to draw: "all", "none", or N (the N strongest channels per layer)
    limit: int | None = None  # only the first N images of the data
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    workers: int = 2  # image-decoding threads
    save_every: int = 20  # batches between saved states
    resume: bool = False  # continue an interrupted run in --out
    overwrite: bool = False  # discard what --out holds and start again


def parse_args(argv: list[str] | None = None) -> MineConfig:
    """Fill a MineConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.mine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR_OR_LABEL_FILE",
                   help="cat-12 label file, a folder holding train_list.txt, an ImageFolder tree or a folder of images")
    p.add_argument("--out", required=True, metavar="ATLAS_DIR", help="the atlas directory (created)")
    p.add_argument("--model", metavar="FILE.onnx", help=f"exported model (default: {DEFAULT_MODEL})")
    p.add_argument("--layers", default=DEFAULT_LAYERS, help="conv layers, comma-separated, or 'all' "
                   "(default: %(default)s)")
    p.add_argument("--k", type=int, default=9, help="entries (images) per channel (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--size", type=int, metavar="PX", help="input side, a multiple of 16 (default: the model's)")
    p.add_argument("--resize", choices=RESIZE_MODES, default="crop",
                   help="crop: short side to the input size, centre square; stretch: whole image squashed "
                        "(default: %(default)s)")
    p.add_argument("--norm", choices=NORMS, default="minmax", help="how projections become pixels "
                   "(default: %(default)s)")
    p.add_argument("--tile", type=int, default=128, metavar="PX",
                   help="largest tile side; larger receptive fields are downscaled (0: full size; default: "
                        "%(default)s)")
    p.add_argument("--patches-only", action="store_true", help="skip the projections (much faster on deep layers)")
    p.add_argument("--render", default="all", metavar="all|none|N",
                   help="pictures to draw now: all, none, or the N strongest channels of each layer; the others "
                        "can be drawn later (--resume --render all) or on request by the app (default: all)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images of the data")
    p.add_argument("--device", choices=DEVICES, default="auto", help="onnxruntime device (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding threads (default: %(default)s)")
    p.add_argument("--save-every", type=int, default=20, metavar="BATCHES",
                   help="save the state every this many batches (default: %(default)s)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true",
                      help="continue an interrupted run in ATLAS_DIR (same settings), or draw more of its pictures")
    what.add_argument("--overwrite", action="store_true", help="discard what ATLAS_DIR holds and start again")
    args = p.parse_args(argv)
    try:
        parse_layers(args.layers)
        render_selection(args.render, {})
    except ValueError as err:
        p.error(str(err))
    for name in ("k", "batch_size", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.size is not None and (args.size < spec.SIZE_MULTIPLE or args.size % spec.SIZE_MULTIPLE):
        p.error(f"--size must be a positive multiple of {spec.SIZE_MULTIPLE}")
    return MineConfig(**{f.name: getattr(args, f.name) for f in fields(MineConfig)})


def render_selection(text: str, ranked: Mapping[str, np.ndarray]) -> dict[str, list[int]] | None:
    """``--render``: "all" -> None (every channel), "none" -> nothing, N -> the first N of each layer's ``ranked``
    channels."""
    text = text.strip().lower()
    if text == "all":
        return None
    if text == "none":
        return {}
    if not text.isdigit():
        raise ValueError(f"--render must be all, none or a number of channels, got {text!r}")
    return {layer: [int(c) for c in order[: int(text)]] for layer, order in ranked.items()}


def run(config: MineConfig, progress: Callable[[int, int], None] | None = None, bar: bool = True) -> Path:
    """Do the run that ``config`` describes; return the atlas directory.

    ``progress(done, total)`` is called after each mined batch (the app can drive its own progress display with
    it); ``bar`` shows tqdm bars on stderr.
    """
    out = Path(config.out)
    layers = parse_layers(config.layers)
    if out.exists() and any(out.iterdir()) and not (config.resume or config.overwrite):
        raise ValueError(f"{out} is not empty: pass --resume to continue a run there, or --overwrite")
    if config.overwrite and out.exists():
        for name in ("atlas.json", "index.npz", STATE_FILE, TILES_DIR, *spec.CONV_LAYERS):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    model = OnnxModel(config.model, device=config.device)
    size = config.size or model.input_size
    settings = {"model": str(model.path), "model_sha1": model_sha1(model.path), "data": str(config.data),
                "k": config.k, "resize": config.resize, "norm": config.norm, "tile": config.tile,
                "projections": not config.patches_only}
    if (out / "atlas.json").is_file():  # mined already (--resume): check the settings, then draw what is missing
        info = json.loads((out / "atlas.json").read_text())
        theirs = {key: info.get(key) for key in settings} | {"layers": list(info["layers"]), "size": info["input_size"]}
        ours = {**settings, "layers": layers, "size": size}
        differ = sorted(key for key in ours if key not in ("model", "data") and ours[key] != theirs[key])
        if differ:
            raise ValueError(f"{out} was mined with other settings ({', '.join(differ)}); use --overwrite to start "
                             "again")
    else:
        samples = read_samples(config.data)
        if config.limit is not None:
            samples = samples[: config.limit]
        if not samples:
            raise ValueError(f"{config.data}: no images")
        load = Loader(samples, size, model.mean, model.std, config.resize)
        key = fingerprint(model.path, samples, layers, config.k, size, config.resize,
                          {"norm": config.norm, "tile": config.tile, "projections": not config.patches_only})
        state_path = out / STATE_FILE
        if config.resume and state_path.is_file():
            state = TopK.load(state_path, key, layers)
            print(f"resuming at image {state.next} of {len(samples)}")
        else:
            state = TopK.empty({layer: spec.conv_channels(layer) for layer in layers}, config.k)
        maxima = ChannelMaxima(model, layers)
        print(f"mining {', '.join(layers)} over {len(samples)} images at {size} px on {model.device}")
        state = stream(maxima, load, len(samples), state, config.batch_size, config.workers,
                       lambda s: s.save(state_path, key), config.save_every, progress, bar)
        if state.skipped:
            print(f"skipped {len(state.skipped)} unreadable image(s)")
        write_index(out, state, samples, size, {**settings, "class_names": model.class_names,
                                                "mean": model.mean.tolist(), "std": model.std.tolist()})
    atlas = Atlas(out)
    selection = render_selection(config.render, {layer: atlas.ranked_channels(layer) for layer in atlas.layers})
    drawn = render(model, out, selection, config.batch_size, config.workers, bar)
    have = sum(int(atlas.rendered(layer).sum()) for layer in atlas.layers)
    total = sum(atlas.channels(layer) for layer in atlas.layers)
    print(f"atlas of {', '.join(atlas.layers)} over {atlas.info['images']} images in {out}/: drew {drawn} "
          f"picture(s), {have} of {total} channels drawn")
    return out


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        run(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the state is saved: run the same command with --resume to continue ({config.out})",
              file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
