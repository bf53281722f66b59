"""A static site of a top-9 atlas (Zeiler & Fergus, Fig. 2), browsable from the file system with no server.

    python -m demo.mine --data ../shared/data/cat12 --out atlas --html      # mine, draw, and write the site
    python -m demo.atlas_site atlas                                         # (re)write the site of an atlas

Written beside the atlas (see ``demo/analyses/atlas/__init__.py``), in the same folder:

    index.html          the layers: channels, live channels, pictures drawn, receptive field
    L/index.html        every channel of layer L, strongest first: its top activation and a thumbnail when drawn
    L/CCCC.html         one channel: its picture ``L/CCCC.png`` (the k projections beside their k patches), the
                        entries' activations, positions, image file names and classes; links to the previous and
                        next channel (by number and by strength) and back to the layer. A channel not drawn yet
                        shows the exact command that draws it.
    L/thumbs/CCCC.png   the thumbnails: the strongest entry's projection beside its patch, 64 px high
    L/featurevis/CCCC.* with ``--featurevis DIR`` (a ``python -m demo.featurevis`` folder, or a packed set such as
                        ``models/featurevis``): the channel's feature visualization, copied in and shown on its
                        page beside the data set's examples

Plain HTML with inline CSS: relative links only, no external resource, no JavaScript. Every string read from the
atlas's files (paths, class names, the data and model names) is HTML-escaped. Building again rewrites the pages
(quick) and only the thumbnails whose picture changed, so it also picks up pictures drawn later (by ``--resume
--render all`` or by the app).
"""

from __future__ import annotations

import html
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from base import spec
from base.cli import DEFAULT_MODEL, atomic_write
from demo.analyses.atlas import DEFAULT_LAYERS, grid_path
from demo.analyses.atlas.config import MineConfig
from demo.analyses.atlas.read import Atlas, AtlasEntry

THUMB_HEIGHT = 64  # pixels
THUMBS_DIR = "thumbs"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; background: #fafafa; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
a { color: #1f5fa8; text-decoration: none; } a:hover { text-decoration: underline; }
nav { margin: 0.6em 0 1em; display: flex; gap: 1.2em; flex-wrap: wrap; font-size: 0.95em; }
nav .off { color: #aaa; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #555; font-size: 0.92em; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; }
.card { display: flex; flex-direction: column; align-items: center; width: 140px; padding: 6px; background: #fff;
        border: 1px solid #ddd; border-radius: 4px; color: #222; font-size: 0.85em; }
.card:hover { border-color: #1f5fa8; text-decoration: none; }
.card img, .nothumb { height: 64px; max-width: 132px; image-rendering: pixelated; }
.nothumb { display: flex; align-items: center; justify-content: center; width: 132px; background: #eee;
           color: #888; font-size: 0.85em; }
.card .val { color: #555; font-variant-numeric: tabular-nums; }
.card.dead { opacity: 0.55; }
.picture { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; background: #fff; }
.picture.fv { width: 224px; image-rendering: auto; }
pre { background: #f0f0f0; padding: 0.7em; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
.undrawn { background: #fff8e0; border: 1px solid #e6d08a; padding: 0.6em 1em; border-radius: 4px; }
"""


def esc(value: object) -> str:
    """``value`` as text, HTML-escaped (quotes too, so it is safe in attributes as well)."""
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    """A whole HTML document: ``title`` (plain text, escaped here) and ``body`` (HTML, escaped by the caller)."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{esc(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def channel_page_name(channel: int) -> str:
    """The file name of a channel's page inside its layer's folder: ``CCCC.html``."""
    return f"{channel:04d}.html"


def thumb_path(atlas_dir: Path, layer: str, channel: int) -> Path:
    """Where the thumbnail of ``layer``'s ``channel`` lives: ``L/thumbs/CCCC.png``."""
    return atlas_dir / layer / THUMBS_DIR / f"{channel:04d}.png"


def draw_command(atlas: Atlas) -> str:
    """The shell command that draws every missing picture of ``atlas``: ``python -m demo.mine`` with the atlas's own
    settings (those that differ from the defaults), ``--resume --render all``."""
    info = atlas.info
    default = MineConfig(data="", out="")
    args = ["python", "-m", "demo.mine", "--data", str(info.get("data", "DATA")), "--out", str(atlas.dir)]
    model = str(info.get("model", ""))
    if model and Path(model).resolve() != DEFAULT_MODEL.resolve():
        args += ["--model", model]
    if atlas.layers != DEFAULT_LAYERS.split(","):
        args += ["--layers", ",".join(atlas.layers)]
    for option, value in (("k", int(atlas.index[f"{atlas.layers[0]}/values"].shape[1])),
                          ("resize", info.get("resize")), ("norm", info.get("norm")), ("tile", info.get("tile"))):
        if value is not None and value != getattr(default, option):
            args += [f"--{option}", str(value)]
    if _model_input_size(model) != info.get("input_size"):
        args += ["--size", str(info["input_size"])]
    if info.get("projections") is False:
        args.append("--patches-only")
    return shlex.join([*args, "--resume", "--render", "all"])


def _model_input_size(model: str) -> int | None:
    """The input size in the metadata of the .onnx file ``model`` (default model when empty); None if unreadable."""
    try:
        import onnx

        proto = onnx.load(model or str(DEFAULT_MODEL), load_external_data=False)
        return int(json.loads({p.key: p.value for p in proto.metadata_props}[spec.META_INPUT_SIZE]))
    except Exception:  # a missing or foreign model only means "say --size explicitly"
        return None


def make_thumbnail(atlas: Atlas, layer: str, channel: int) -> bool:
    """Write the channel's thumbnail (its strongest entry: projection tile beside patch tile, ``THUMB_HEIGHT`` px
    high) when its picture exists and the thumbnail is missing or older; return whether a thumbnail exists now."""
    picture, thumb = grid_path(atlas.dir, layer, channel), thumb_path(atlas.dir, layer, channel)
    if not picture.is_file():
        return False
    if thumb.is_file() and thumb.stat().st_mtime_ns >= picture.stat().st_mtime_ns:
        return True
    grid, side = atlas.info["grid"], int(atlas.info["layers"][layer]["tile"])
    columns, gap = int(grid["columns"]), int(grid["tile_gap"])
    block = columns * side + (columns - 1) * gap
    with Image.open(picture) as im:
        pixels = np.asarray(im.convert("RGB"))  # (H, W, 3): projections block | gap | patches block
    right = block + int(grid["block_gap"])
    pair = np.concatenate([pixels[:side, :side], np.full((side, max(1, side // 16), 3), 255, np.uint8),
                           pixels[:side, right : right + side]], axis=1)
    scale = THUMB_HEIGHT / side
    small = Image.fromarray(pair).resize((max(1, round(pair.shape[1] * scale)), THUMB_HEIGHT),
                                         Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
    atomic_write(thumb, lambda tmp: small.save(tmp, format="PNG"), sync=False)
    return True


@dataclass(frozen=True)
class _Layer:
    name: str
    ranked: list[int]  # channels, strongest first
    top: np.ndarray  # (C,) float32 top activation of each channel
    drawn: np.ndarray  # (C,) bool


def _class_name(names: Sequence[str], label: int) -> str:
    if label < 0:
        return "unknown"
    return str(names[label]) if label < len(names) else f"class {label}"


def _draw_block(atlas: Atlas, command: str, what: str) -> str:
    """The notice for pictures not drawn yet: ``what`` (HTML), then the commands that draw them and rewrite the site."""
    site = shlex.join(["python", "-m", "demo.atlas_site", str(atlas.dir)])
    app = shlex.join(["python", "app.py", "--atlas", str(atlas.dir)])
    return (f'<p class="undrawn">{what} Draw every missing picture, then write the site again, with:</p>\n'
            f"<pre>{esc(command)}\n{esc(site)}</pre>\n"
            f'<p class="meta">(The app draws one channel at a time on demand: <code>{esc(app)}</code>.)</p>\n')


def _index_page(atlas: Atlas, layers: list[_Layer], command: str) -> str:
    info = atlas.info
    model = Path(str(info.get("model", "?"))).name
    rows = "".join(
        f'<tr><td><a href="{esc(layer.name)}/index.html">{esc(layer.name)}</a></td>'
        f'<td class="num">{len(layer.top)}</td><td class="num">{int((layer.top > 0).sum())}</td>'
        f'<td class="num">{int(layer.drawn.sum())}</td>'
        f'<td class="num">{esc(info["layers"][layer.name]["receptive_field"])} px</td>'
        f'<td class="num">{esc(info["layers"][layer.name]["stride"])} px</td></tr>\n' for layer in layers)
    k = atlas.index[f"{atlas.layers[0]}/values"].shape[1]
    body = (f"<h1>Top-{k} atlas</h1>\n"
            f'<p class="meta">Model <b>{esc(model)}</b> (SHA-1 {esc(str(info.get("model_sha1", ""))[:12])}), '
            f"data {esc(info.get('data', '?'))}: {esc(info.get('images', '?'))} images at "
            f"{esc(info.get('input_size', '?'))} px.</p>\n"
            f"<p>For every channel of each layer, the {k} images of the data set that excite it most (one activation "
            "per image: the channel's maximum over its feature map). Each channel's picture shows, left, the "
            "deconvnet projection of that single activation down to pixels and, right, the image patch the unit "
            "sees (its receptive field), in rank order (Zeiler &amp; Fergus, Fig. 2).</p>\n"
            '<table>\n<tr><th>layer</th><th class="num">channels</th><th class="num">live</th>'
            '<th class="num">drawn</th><th class="num">receptive field</th><th class="num">stride</th></tr>\n'
            f"{rows}</table>\n")
    undrawn = sum(int((~layer.drawn).sum()) for layer in layers)
    if undrawn:
        body += _draw_block(atlas, command, f"{undrawn} channels have no picture yet.")
    return page(f"Top-{k} atlas", body)


def _layer_page(atlas: Atlas, layer: _Layer, command: str) -> str:
    cards = []
    for c in layer.ranked:
        value = float(layer.top[c])
        thumb = (f'<img src="{THUMBS_DIR}/{c:04d}.png" alt="channel {c}" loading="lazy">' if layer.drawn[c]
                 else '<span class="nothumb">not drawn</span>')
        cards.append(f'<a class="card{" dead" if value <= 0 else ""}" href="{channel_page_name(c)}">{thumb}'
                     f"<span>channel {c}</span><span class=\"val\">{f'{value:.4g}' if value > 0 else 'dead'}"
                     "</span></a>")
    drawn = int(layer.drawn.sum())
    body = (f'<nav><a href="../index.html">&larr; all layers</a></nav>\n<h1>{esc(layer.name)}</h1>\n'
            f'<p class="meta">{len(layer.top)} channels, strongest first (by top activation); '
            f"{int((layer.top > 0).sum())} live, {drawn} drawn. Receptive field "
            f"{esc(atlas.info['layers'][layer.name]['receptive_field'])} px.</p>\n")
    if drawn < len(layer.top):
        body += _draw_block(atlas, command, f"{len(layer.top) - drawn} channels of {esc(layer.name)} have no "
                                            "picture yet.")
    body += f'<div class="cards">\n{chr(10).join(cards)}\n</div>\n'
    return page(f"{layer.name}: top-{atlas.index[f'{layer.name}/values'].shape[1]} atlas", body)


def _link(href: str | None, text: str) -> str:
    return f'<a href="{esc(href)}">{text}</a>' if href else f'<span class="off">{text}</span>'


FEATUREVIS_DIR = "featurevis"


def featurevis_source(folder: Path, layer: str, channel: int) -> Path | None:
    """The feature visualization of ``layer``'s ``channel`` in ``folder`` (a packed set's ``LAYER/CCCC.webp`` or a
    run's ``LAYER/CCCC.png``), or None."""
    for suffix in (".webp", ".png"):
        path = folder / layer / f"{channel:04d}{suffix}"
        if path.is_file():
            return path
    return None


def copy_featurevis(atlas: Atlas, folder: Path, layer: str, channel: int) -> str | None:
    """Copy the channel's feature visualization into the site (``L/featurevis/``) when it changed; returns its path
    relative to the layer's folder, or None when ``folder`` has none."""
    source = featurevis_source(folder, layer, channel)
    if source is None:
        return None
    target = atlas.dir / layer / FEATUREVIS_DIR / source.name
    data = source.read_bytes()
    if not target.is_file() or target.read_bytes() != data:
        atomic_write(target, lambda tmp: tmp.write_bytes(data), sync=False)
    return f"{FEATUREVIS_DIR}/{source.name}"


def _featurevis_block(name: str, c: int, picture: str | None) -> str:
    if picture is None:
        return ""
    return (f'<h2>Feature visualization</h2>\n<p><img class="picture fv" src="{esc(picture)}" alt="{esc(name)} channel '
            f'{c}: feature visualization"></p>\n<p class="meta">An image optimised from noise to maximise this '
            "channel (python -m demo.featurevis): what the unit responds to, with no data set.</p>\n")


def _channel_page(atlas: Atlas, layer: _Layer, c: int, command: str, featurevis: str | None = None) -> str:
    name, C = layer.name, len(layer.top)
    rank = layer.ranked.index(c)
    names = [str(n) for n in atlas.info.get("class_names") or []]
    entries: list[AtlasEntry] = atlas.entries(name, c)
    k = atlas.index[f"{name}/values"].shape[1]
    nav = " ".join([
        _link("index.html", f"&uarr; {esc(name)}"),
        _link(channel_page_name(c - 1) if c > 0 else None, f"&larr; channel {c - 1}" if c > 0 else "&larr;"),
        _link(channel_page_name(c + 1) if c + 1 < C else None, f"channel {c + 1} &rarr;" if c + 1 < C else "&rarr;"),
        _link(channel_page_name(layer.ranked[rank - 1]) if rank > 0 else None, "stronger"),
        _link(channel_page_name(layer.ranked[rank + 1]) if rank + 1 < C else None, "weaker"),
        _link("../index.html", "all layers")])
    body = (f"<nav>{nav}</nav>\n<h1>{esc(name)} channel {c}</h1>\n"
            f'<p class="meta">Rank {rank + 1} of {C} by top activation; top {len(entries)} of '
            f"{esc(atlas.info.get('images', '?'))} images; receptive field "
            f"{esc(atlas.info['layers'][name]['receptive_field'])} px.</p>\n")
    if layer.drawn[c]:
        body += (f'<p><img class="picture" src="{c:04d}.png" alt="{esc(name)} channel {c}: projections and patches">'
                 f'</p>\n<p class="meta">Left: the deconvnet projection of each entry\'s single activation; right: '
                 f"its image patch (the unit's receptive field); both in rank order, row by row. Light grey: outside "
                 "the image.</p>\n")
    elif entries:
        body += _draw_block(atlas, command, "This channel's picture is not drawn yet.")
    body += _featurevis_block(name, c, featurevis)
    if not entries:
        body += "<p>This channel is zero on every image of the data set (a dead unit): nothing to show.</p>\n"
    else:
        rows = "".join(
            f'<tr><td class="num">{e.rank + 1}</td><td class="num">{e.value:.4g}</td>'
            f'<td class="num">({e.row}, {e.col})</td><td title="{esc(e.path)}">{esc(Path(e.path).name)}</td>'
            f"<td>{esc(_class_name(names, e.label))}</td></tr>\n" for e in entries)
        body += ('<table>\n<tr><th class="num">rank</th><th class="num">activation</th><th class="num">position '
                 "(row, col)</th><th>image</th><th>class</th></tr>\n" + rows + "</table>\n")
        if len(entries) < k:
            body += f'<p class="meta">The other {k - len(entries)} entries are zero (no image excites it more).</p>\n'
    return page(f"{name} channel {c}", body)


def build_site(atlas_dir: str | Path, bar: bool = True, featurevis: str | Path | None = None) -> Path:
    """Write the site of the atlas ``atlas_dir`` (its mining done) beside it; return the path of ``index.html``.
    ``featurevis``: a folder of feature visualizations (``featurevis_source``) shown on the channel pages.

    FileNotFoundError when ``atlas_dir`` is not an atlas; ValueError when atlas.json names a layer that is not one
    of VGG16's conv layers (the layer names become folder names).
    """
    atlas = Atlas(atlas_dir)
    unknown = [name for name in atlas.layers if name not in spec.CONV_LAYERS]
    if unknown:
        raise ValueError(f"{atlas.dir}/atlas.json names unknown layer(s) {unknown}")
    layers = []
    total = sum(atlas.channels(name) for name in atlas.layers)
    command = draw_command(atlas)
    with tqdm(total=total, unit="ch", desc="site", disable=not bar or total < 64, file=sys.stderr) as pbar:
        for name in atlas.layers:
            C = atlas.channels(name)
            drawn = np.array([make_thumbnail(atlas, name, c) for c in range(C)], dtype=bool)
            layer = _Layer(name, [int(c) for c in atlas.ranked_channels(name)],
                           atlas.index[f"{name}/values"][:, 0].astype(np.float32), drawn)
            layers.append(layer)
            for c in range(C):
                picture = copy_featurevis(atlas, Path(featurevis), name, c) if featurevis is not None else None
                _write(atlas.dir / name / channel_page_name(c), _channel_page(atlas, layer, c, command, picture))
                pbar.update()
            _write(atlas.dir / name / "index.html", _layer_page(atlas, layer, command))
    return _write(atlas.dir / "index.html", _index_page(atlas, layers, command))


def _write(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), sync=False)
