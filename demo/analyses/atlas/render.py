"""Drawing the atlas: each entry's single activation projected to pixels beside its image patch, both cut to
the unit's receptive field, composed into one picture per channel (the k projections left, the k patches right).

Each distinct image of the entries runs once more through the full graph (for its switches); tiles are saved as
they are done, so an interrupted rendering resumes too.
"""

from __future__ import annotations

import math
import shutil
import sys
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from base import spec
from base.labels import Sample
from demo.analyses.atlas import BLOCK_GAP, TILE_GAP, TILES_DIR, grid_path, save_png, tile_path, tile_side
from demo.analyses.atlas.read import Atlas, load_atlas
from demo.analyses.dataset import Loader, batches, model_sha1
from demo.backward import Deconvnet
from demo.display import OUTSIDE, field_tile, grid, projection_tile
from demo.onnx_forward import OnnxModel
from demo.preprocess import deprocess


def _shrink(tile: np.ndarray, max_tile: int) -> np.ndarray:
    if max_tile <= 0 or tile.shape[0] <= max_tile:
        return tile
    return np.asarray(Image.fromarray(tile).resize((max_tile, max_tile), Image.Resampling.LANCZOS))


def compose(projections: Sequence[np.ndarray], patches: Sequence[np.ndarray]) -> np.ndarray:
    """The paper's layout of one channel: k projection tiles (left block) beside their k patches (right block),
    each block ceil(sqrt(k)) tiles wide, rank-major -> (H, W, 3) uint8."""
    columns = math.ceil(math.sqrt(len(projections)))
    left, right = grid(list(projections), columns, TILE_GAP), grid(list(patches), columns, TILE_GAP)
    gap = np.full((left.shape[0], BLOCK_GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


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


def render(model: OnnxModel, atlas_dir: str | Path, channels: Mapping[str, Iterable[int]] | None = None,
           batch_size: int = 16, workers: int = 2, bar: bool = True, rule: str | None = None) -> int:
    """Draw the pictures of ``channels`` ({layer: channel indices}; default: every channel) that the atlas does not
    have yet; return how many were drawn. ``rule``: the backward rule of the projections (None: the atlas's own,
    ``atlas.json``'s "rule"; another rule draws pictures of its own beside them).

    Per entry, a (projection | patch) tile is saved under ``.tiles`` as soon as it is done, so an interrupted
    rendering resumes where it stopped; each distinct image is loaded and run through the full graph once (for
    its switches), and every entry of it is projected by the NumPy deconvnet from the activation at its recorded
    position. ``model`` must be the atlas's own (checked by its bytes).
    """
    atlas = Atlas(atlas_dir)
    out, info = atlas.dir, atlas.info
    if info.get("model_sha1") and model_sha1(model.path) != info["model_sha1"]:
        raise ValueError(f"{model.path} is not the model {out} was mined with ({info['model']})")
    own = info.get("rule", "deconvnet")
    rule = own if rule is None else rule
    tag = None if rule == own else rule  # what the file names carry
    wanted = channels if channels is not None else {layer: range(atlas.channels(layer)) for layer in atlas.layers}
    missing = [(layer, int(c)) for layer, chans in wanted.items() for c in chans
               if not grid_path(out, layer, int(c), tag).is_file()]
    if not missing:
        return 0
    for layer, c in missing:
        atlas.check(layer, c)
    _draw_tiles(model, atlas, _pending_entries(atlas, missing, tag), batch_size, workers, bar, rule, tag)
    for layer, c in tqdm(missing, desc="pictures", unit="ch", disable=not bar or len(missing) < 64, file=sys.stderr):
        _compose_channel(atlas, layer, c, tag)
    if not any((out / TILES_DIR).rglob("*.png")):
        shutil.rmtree(out / TILES_DIR, ignore_errors=True)
    return len(missing)


def _pending_entries(atlas: Atlas, missing: Sequence[tuple[str, int]],
                     tag: str | None) -> dict[int, list[tuple[str, int, int]]]:
    """The entries of the ``missing`` (layer, channel) pictures whose tile is not drawn yet, grouped by image:
    {image index: [(layer, channel, rank), ...]} (entries without activation have nothing to draw)."""
    index, todo = atlas.index, {}
    for layer, c in missing:
        (atlas.dir / TILES_DIR / layer).mkdir(parents=True, exist_ok=True)
        for r in range(index[f"{layer}/images"].shape[1]):
            image = int(index[f"{layer}/images"][c, r])
            done = tile_path(atlas.dir, layer, c, r, tag).exists()
            if image >= 0 and index[f"{layer}/values"][c, r] > 0 and not done:
                todo.setdefault(image, []).append((layer, c, r))
    return todo


ENTRIES_PER_PASS = 64  # entries projected in one call (their full-size projections are held at once)
# Rows per descent: 1 projects each entry exactly as ``Deconvnet.project_down`` projects it alone, bit for bit (the
# tiles are compared with that); rows descending together share GEMMs (faster at the deep layers) but round
# differently (a last-bit difference can flip a pixel of a tile by 1).
ROWS_PER_PASS: int | None = 1
_DECONVNETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its Deconvnet, made once


def _deconvnet(model: OnnxModel) -> Deconvnet:
    """The NumPy deconvnet of ``model``'s weights, made once per model (its layouts are kept between pictures)."""
    net = _DECONVNETS.get(model)
    if net is None:
        net = _DECONVNETS[model] = Deconvnet(model.weights)
    return net


def _draw_tiles(model: OnnxModel, atlas: Atlas, todo: Mapping[int, list[tuple[str, int, int]]], batch_size: int,
                workers: int, bar: bool, rule: str, tag: str | None) -> None:
    """Draw and save the (projection | patch) tile of every entry of ``todo`` ({image: entries}), projected with
    ``rule``; ``tag`` names the files of a rule other than the atlas's own.

    The images go through the full graph ``batch_size`` at a time; then the entries of those images at one layer
    are projected by one call (``Deconvnet.project_points``: each row cropped to its receptive field, the
    switch codes of the batch made once, ``ENTRIES_PER_PASS`` entries at most, ``ROWS_PER_PASS`` rows per
    descent), each from its recorded value.
    """
    out, info, index = atlas.dir, atlas.info, atlas.index
    size, max_tile, norm, projections = info["input_size"], info["tile"], info["norm"], info["projections"]
    samples = [Sample(Path(p), int(lab)) for p, lab in zip(index["paths"], index["labels"], strict=True)]
    load = Loader(samples, size, model.mean, model.std, info["resize"])
    deconvnet = _deconvnet(model) if projections and todo else None
    total = sum(len(v) for v in todo.values())
    with tqdm(total=total, unit="entry", desc="projecting" if projections else "cropping",
              disable=not bar or total == 0, file=sys.stderr) as pbar:
        for _, ids, x, failed in batches(load, sorted(todo), batch_size, workers):
            if failed:
                raise ValueError(f"image(s) {', '.join(str(samples[i].path) for i in failed)} of the atlas cannot be "
                                 "read any more")
            _, activations, switches = model.run(x) if projections else (None, {}, {})
            pictures = [deprocess(x[n], model.mean, model.std) for n in range(len(ids))]  # (H, W, 3) uint8
            entries = sorted((layer, n, c, r) for n, image_id in enumerate(ids) for layer, c, r in todo[image_id])
            for start in range(0, len(entries), ENTRIES_PER_PASS):
                chunk = entries[start : start + ENTRIES_PER_PASS]
                for layer in dict.fromkeys(e[0] for e in chunk):
                    group = [e[1:] for e in chunk if e[0] == layer]
                    projected = _project_entries(deconvnet, index, layer, group, activations, switches, rule)
                    for k, (n, c, r) in enumerate(group):
                        row, col = (int(v) for v in index[f"{layer}/positions"][c, r])
                        top, left, side = spec.field_box(layer, row, col)
                        patch = field_tile(pictures[n], top, left, side)
                        proj = (projection_tile(projected[k], top, left, side, norm) if projected is not None
                                else np.full_like(patch, OUTSIDE))
                        both = np.concatenate([_shrink(proj, max_tile), _shrink(patch, max_tile)], axis=1)
                        save_png(tile_path(out, layer, c, r, tag), both)
                        pbar.update()


def _project_entries(deconvnet: Deconvnet | None, index: Mapping[str, np.ndarray], layer: str,
                     group: Sequence[tuple[int, int, int]], activations: Mapping[str, np.ndarray],
                     switches: Mapping[str, np.ndarray], rule: str) -> np.ndarray | None:
    """The projections (B, 3, H, W) of ``group``'s entries (image in the batch, channel, rank) of ``layer``, each
    from its recorded value at its recorded position, in one call (None without projections)."""
    if deconvnet is None:
        return None
    image, channel, rank = (np.array(v, dtype=np.int64) for v in zip(*group, strict=True))
    row, col = index[f"{layer}/positions"][channel, rank].T
    values = index[f"{layer}/values"][channel, rank]
    return deconvnet.project_points(activations[layer], layer, switches, image, channel, row, col, ROWS_PER_PASS,
                                    rule=rule, activations=activations, values=values)


def _compose_channel(atlas: Atlas, layer: str, c: int, tag: str | None) -> None:
    """Compose the saved tiles of ``layer``'s channel ``c`` into its picture, then delete the tiles."""
    out, index = atlas.dir, atlas.index
    side = tile_side(layer, atlas.info["tile"])
    empty = np.full((side, side, 3), OUTSIDE, dtype=np.uint8)
    proj_tiles, patch_tiles, done = [], [], []
    for r in range(index[f"{layer}/images"].shape[1]):
        path = tile_path(out, layer, c, r, tag)
        if path.exists():
            with Image.open(path) as im:
                both = np.asarray(im.convert("RGB"))
            proj_tiles.append(both[:, :side])
            patch_tiles.append(both[:, side:])
            done.append(path)
        else:  # no activation: nothing to show
            proj_tiles.append(empty)
            patch_tiles.append(empty)
    grid_path(out, layer, c, tag).parent.mkdir(parents=True, exist_ok=True)
    save_png(grid_path(out, layer, c, tag), compose(proj_tiles, patch_tiles))
    for path in done:
        path.unlink()


def atlas_view(atlas: Atlas | str | Path, layer: str, channel: int, model: OnnxModel | None = None,
               rule: str | None = None) -> np.ndarray:
    """The atlas picture of ``layer``'s ``channel``: (H, W, 3) uint8, the k projections left, the k patches right.

    ``atlas``: an ``Atlas`` or its folder. With ``model`` (the atlas's own), a picture that was not drawn yet is
    drawn first (k projections, kept in the atlas); without it, FileNotFoundError. ``rule``: the backward rule of
    the projections (None: the atlas's own).
    """
    if not isinstance(atlas, Atlas):
        atlas = load_atlas(str(Path(atlas).resolve()))
    atlas.check(layer, int(channel))
    tag = None if rule in (None, atlas.rule) else rule
    if model is not None and not grid_path(atlas.dir, layer, int(channel), tag).is_file():
        render(model, atlas.dir, {layer: [int(channel)]}, bar=False, rule=rule)
    return atlas.view(layer, int(channel), rule)
