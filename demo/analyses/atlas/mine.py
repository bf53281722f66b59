"""Mining the atlas: a running top-k per channel, merged batch by batch from the data set's per-channel maxima.

Streaming with bounded memory (one batch), resumable (the state is saved atomically every few batches and on
Ctrl-C), and ending in the atlas's index (``index.npz``, ``atlas.json``): every entry's image, position and value.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from base import spec
from base.cli import atomic_write
from base.labels import Sample
from demo.analyses.atlas import ATLAS_VERSION, BLOCK_GAP, STATE_FILE, TILE_GAP, save_npz, tile_side
from demo.analyses.dataset import ChannelMaxima, batches, file_sha1
from demo.display import OUTSIDE


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

    def union(self, other: TopK) -> TopK:
        """Both snapshots' entries in one: per channel the k largest values, ties to the smaller image id, which
        is the order ``merged`` keeps. Associative and commutative, so blocks of a data set mined apart (whose
        images do not overlap) merge into exactly the snapshot of one streaming pass over all of them."""
        values, images, positions = {}, {}, {}
        for layer in self.values:
            v = np.concatenate([self.values[layer], other.values[layer]], axis=1)  # (C, 2k)
            im = np.concatenate([self.images[layer], other.images[layer]], axis=1)
            pos = np.concatenate([self.positions[layer], other.positions[layer]], axis=1)
            empty_last = np.where(im < 0, np.iinfo(np.int64).max, im)  # entries of no image (-inf) after the rest
            order = np.lexsort((empty_last, -v), axis=1)[:, : self.k]
            values[layer] = np.take_along_axis(v, order, axis=1)
            images[layer] = np.take_along_axis(im, order, axis=1)
            positions[layer] = np.take_along_axis(pos, order, axis=1)
        return TopK(values, images, positions, max(self.next, other.next),
                    tuple(sorted(self.skipped + other.skipped)), self.done and other.done)

    def shifted(self, offset: int) -> TopK:
        """The snapshot of a block whose image 0 is image ``offset`` of the data set (ids and ``next`` moved)."""
        images = {n: np.where(im >= 0, im + offset, im) for n, im in self.images.items()}
        return TopK(self.values, images, self.positions, self.next + offset,
                    tuple(s + offset for s in self.skipped), self.done)

    def save(self, path: str | Path, fingerprint: str) -> None:
        """Write the snapshot to ``path`` atomically (a temporary file, then a rename)."""
        arrays = {"fingerprint": np.array(fingerprint), "next": np.array(self.next),
                  "skipped": np.array(self.skipped, np.int64), "done": np.array(self.done)}
        for layer in self.values:
            arrays.update({f"{layer}/values": self.values[layer], f"{layer}/images": self.images[layer],
                           f"{layer}/positions": self.positions[layer]})
        save_npz(Path(path), arrays)

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


def fingerprint(model_path: Path, samples: Sequence[Sample], layers: Sequence[str], k: int, size: int,
                resize: str, rendering: Mapping | None = None) -> str:
    """What a saved state must match to be resumed: the model's bytes, the image list and the settings."""
    listing = "\n".join(f"{s.path}\t{s.label}" for s in samples).encode()
    return json.dumps({"model": file_sha1(model_path), "data": hashlib.sha1(listing).hexdigest(),
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
            top, left, side = spec.field_box(layer, int(rows[c, r]), int(cols[c, r]))
            boxes[c, r] = spec.clip_box(top, left, side, size, size)
        arrays.update({f"{layer}/values": np.where(images >= 0, state.values[layer], 0).astype(np.float32),
                       f"{layer}/images": images, f"{layer}/positions": np.stack([rows, cols], axis=2),
                       f"{layer}/boxes": boxes})
        layers_info[layer] = {"channels": C, "receptive_field": spec.receptive_field(layer),
                              "stride": spec.stride_of(layer), "tile": tile_side(layer, info["tile"]),
                              "live_channels": int(live[:, 0].sum())}
    save_npz(out / "index.npz", arrays)
    meta = {**info, "version": ATLAS_VERSION, "layers": layers_info, "input_size": size,
            "images": len(samples) - len(state.skipped), "skipped": [str(samples[i].path) for i in state.skipped],
            "grid": {"layout": "k projections (left block) beside their k patches (right block), rank row-major",
                     "columns": math.ceil(math.sqrt(state.k)), "tile_gap": TILE_GAP, "block_gap": BLOCK_GAP,
                     "outside": OUTSIDE},
            "activation": "per image and channel, the channel's maximum over its map (k entries = k images)"}
    atomic_write(out / "atlas.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    (out / STATE_FILE).unlink(missing_ok=True)
