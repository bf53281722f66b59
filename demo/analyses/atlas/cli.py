"""``python -m demo.mine``: the paper's top-9 atlas (Zeiler & Fergus, Fig. 2) of a whole data set.

    python -m demo.mine --data ../shared/data/cat12/train_list.txt --out atlas/
    python -m demo.mine --data photos/ --layers conv5_3 --model models/vgg16_imagenet.onnx --out atlas/
    python -m demo.mine --data ../shared/data/cat12/train_list.txt --out atlas/ --resume     # after Ctrl-C
    python -m demo.mine --data ../shared/data/cat12/train_list.txt --out atlas/ --resume --render all
    python -m demo.mine --data ../shared/data/cat12/train_list.txt --out atlas/ --html     # and a static site
    python -m demo.mine --data ../shared/data/cat12/train_list.txt --out atlas/ --engine ray --ray-workers 4

By default the pictures of the 16 strongest channels of each layer are drawn (a first atlas in about a minute);
the others are listed with their values and drawn later (``--resume --render all``) or by the app on demand.
The atlas's layout and its two passes are described in ``demo/analyses/atlas/__init__.py``. ``--html`` also
writes a static site beside it (``index.html``; ``demo/analyses/atlas/site.py``), which ``python -m demo.atlas_site
ATLAS_DIR`` rewrites alone (no model, no data). ``--engine ray`` mines on a Ray Data worker pool, here or on a
cluster (``--address``), with the same result (``demo/analyses/ray_engine.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from base import spec
from base.cli import add_debug_option, add_model_options, parse_layers, run_cli
from base.spec import RULES
from demo.analyses import ray_engine
from demo.analyses.atlas import DEFAULT_LAYERS, STATE_FILE, TILES_DIR, site
from demo.analyses.atlas.config import MineConfig
from demo.analyses.atlas.mine import TopK, fingerprint, stream, write_index
from demo.analyses.atlas.read import Atlas
from demo.analyses.atlas.render import render, render_selection
from demo.analyses.atlas.site import build_site, draw_command
from demo.analyses.dataset import ChannelMaxima, Loader, model_sha1, read_samples
from demo.onnx_forward import OnnxModel

FEATUREVIS_HELP = ("feature visualizations to show on the site's channel pages: a python -m demo.featurevis --out "
                   "folder, or a packed set such as models/featurevis")


def check_featurevis(folder: str | None) -> None:
    """FileNotFoundError when a --featurevis folder is given but is not a folder."""
    if folder is not None and not Path(folder).is_dir():
        raise FileNotFoundError(f"--featurevis {folder}: no such folder")


def parse_args(argv: list[str] | None = None) -> MineConfig:
    """Fill a MineConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.mine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR_OR_LABEL_FILE",
                   help="cat-12 label file, a folder holding train_list.txt, an ImageFolder tree or a folder of images")
    p.add_argument("--out", required=True, metavar="ATLAS_DIR", help="the atlas directory (created)")
    add_model_options(p, resize=True, norm=True)
    p.add_argument("--rule", choices=RULES, default="deconvnet",
                   help="backward rule of the projections: deconvnet (the paper), guided, gradient; the app draws "
                        "other rules on request (default: %(default)s)")
    p.add_argument("--layers", default=DEFAULT_LAYERS, help="conv layers, comma-separated, or 'all' "
                   "(default: %(default)s)")
    p.add_argument("--k", type=int, default=9, help="entries (images) per channel (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--size", type=int, metavar="PX", help="input side, a multiple of 16 (default: the model's)")
    p.add_argument("--tile", type=int, default=128, metavar="PX",
                   help="largest tile side; larger receptive fields are downscaled (0: full size; default: "
                        "%(default)s)")
    p.add_argument("--patches-only", action="store_true", help="skip the projections (much faster on deep layers)")
    p.add_argument("--render", default="16", metavar="all|none|N",
                   help="pictures to draw now: all, none, or the N strongest channels of each layer; the others "
                        "can be drawn later (--resume --render all) or on request by the app (default: %(default)s, "
                        "a first atlas in about a minute)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images of the data")
    p.add_argument("--workers", type=int, default=2, help="image-decoding threads (default: %(default)s)")
    p.add_argument("--save-every", type=int, default=20, metavar="BATCHES",
                   help="save the state every this many batches (default: %(default)s)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true",
                      help="continue an interrupted run in ATLAS_DIR (same settings), or draw more of its pictures")
    what.add_argument("--overwrite", action="store_true", help="discard what ATLAS_DIR holds and start again")
    p.add_argument("--html", action="store_true",
                   help="also write a static site into ATLAS_DIR (index.html: a page per layer and per channel, "
                        "opens from the file system); python -m demo.atlas_site ATLAS_DIR rewrites it alone")
    p.add_argument("--featurevis", metavar="DIR", default=None,
                   help="with --html: " + FEATUREVIS_HELP)
    ray_engine.add_engine_options(p)
    args = p.parse_args(argv)
    try:
        parse_layers(args.layers)
        render_selection(args.render, {})
    except ValueError as err:
        p.error(str(err))
    for name in ("k", "batch_size", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.featurevis is not None and not args.html:
        p.error("--featurevis needs --html (the pictures are shown on the site's channel pages)")
    if args.size is not None and (args.size < spec.SIZE_MULTIPLE or args.size % spec.SIZE_MULTIPLE):
        p.error(f"--size must be a positive multiple of {spec.SIZE_MULTIPLE}")
    return MineConfig(**{f.name: getattr(args, f.name) for f in fields(MineConfig)})


def run(config: MineConfig, progress: Callable[[int, int], None] | None = None, bar: bool = True) -> Path:
    """Do the run that ``config`` describes; return the atlas directory.

    ``progress(done, total)`` is called after each mined batch (the app can drive its own progress display with
    it); ``bar`` shows tqdm bars on stderr.
    """
    out = Path(config.out)
    layers = parse_layers(config.layers)
    check_featurevis(config.featurevis)
    ray_settings = ray_engine.settings_of(config)  # None: the local engine
    if out.exists() and any(out.iterdir()) and not (config.resume or config.overwrite):
        raise ValueError(f"{out} is not empty: pass --resume to continue a run there, or --overwrite")
    if config.overwrite and out.exists():
        for name in ("atlas.json", "index.npz", STATE_FILE, TILES_DIR, "index.html", *spec.CONV_LAYERS):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    size = config.size or model.input_size
    settings = {"model": str(model.path), "model_sha1": model_sha1(model.path), "data": str(config.data),
                "k": config.k, "resize": config.resize, "norm": config.norm, "rule": config.rule,
                "tile": config.tile, "projections": not config.patches_only}
    if (out / "atlas.json").is_file():  # mined already (--resume): check the settings, then draw what is missing
        info = json.loads((out / "atlas.json").read_text())
        theirs = {key: info.get(key) for key in settings} | {"layers": list(info["layers"]), "size": info["input_size"],
                                                             "rule": info.get("rule", "deconvnet")}
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
                          {"norm": config.norm, "rule": config.rule, "tile": config.tile,
                           "projections": not config.patches_only})
        state_path = out / STATE_FILE
        if config.resume and state_path.is_file():
            state = TopK.load(state_path, key, layers)
            print(f"resuming at image {state.next} of {len(samples)}")
        else:
            state = TopK.empty({layer: spec.conv_channels(layer) for layer in layers}, config.k)
        if ray_settings is not None:
            print(f"mining {', '.join(layers)} over {len(samples)} images at {size} px on Ray")
            state = ray_engine.mine(ray_settings, model, samples, state, layers, size, config.resize,
                                    config.batch_size, bar)
        else:
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
    if have < total:
        print(f"the other {total - have} channels are listed with their values; draw them with `{draw_command(atlas)}`"
              f", or let the app draw each one on demand (python app.py --atlas {out})")
    if config.html:
        index = build_site(out, bar, config.featurevis)
        print(f"site: open {index} in a browser (rewrite it with python -m demo.atlas_site {out})")
    return out


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)

    def mine(config: MineConfig) -> Path:
        try:
            return run(config)
        except KeyboardInterrupt:
            print(f"\nthe state is saved: run the same command with --resume to continue ({config.out})",
                  file=sys.stderr)
            raise

    return run_cli(mine, config)


def site_main(argv: list[str] | None = None) -> int:
    """``python -m demo.atlas_site ATLAS_DIR``: (re)write the static site of an atlas (no model, no data needed)."""
    p = argparse.ArgumentParser(prog="python -m demo.atlas_site", description=site.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("atlas", metavar="ATLAS_DIR", help="an atlas made by python -m demo.mine")
    p.add_argument("--featurevis", metavar="DIR", default=None, help=FEATUREVIS_HELP)
    add_debug_option(p)
    args = p.parse_args(argv)

    def write(atlas_dir: str) -> Path:
        check_featurevis(args.featurevis)
        index = build_site(atlas_dir, featurevis=args.featurevis)
        print(f"wrote the site of {atlas_dir}: open {index} in a browser")
        return index

    return run_cli(write, args.atlas)
