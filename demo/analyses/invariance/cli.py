"""``python -m demo.invariance``: the command line of ``demo.analyses.invariance``: options -> ``InvarianceConfig``
-> the curves, their figures and ``invariance.npz``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image

from base import spec
from base.cli import add_model_options, collect_images, parse_class, run_cli
from base.labels import parse_label_file
from demo.analyses import invariance as package
from demo.analyses.invariance import (
    DEFAULT_LAYERS,
    InvarianceResult,
    default_ranges,
    examples_strip,
    invariance_curves,
    invariance_figure,
    parse_range,
)
from demo.analyses.invariance.config import InvarianceConfig
from demo.onnx_forward import OnnxModel
from demo.preprocess import load_image, preprocess


def parse_args(argv: list[str] | None = None) -> InvarianceConfig:
    """Fill an InvarianceConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.invariance", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDER", help="image files and/or folders (recursive)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and invariance.npz")
    add_model_options(p, resize=True, norm=False)
    p.add_argument("--labels", metavar="LABEL_FILE", help="cat-12 label file: the true class of each image")
    p.add_argument("--label", metavar="CLASS", help="true class of every image, index or name")
    p.add_argument("--translate", metavar="A:B:STEP",
                   help="vertical shifts in pixels, e.g. --translate=-60:60:10 (note the '=' before a minus sign; "
                        "default: +-60 px at 224 px, scaled to the input size)")
    p.add_argument("--scale", metavar="A:B:STEP", help="scale factors (default: 0.6:1.8:0.1)")
    p.add_argument("--rotate", metavar="A:B:STEP", help="rotations in degrees (default: 0:360:15)")
    p.add_argument("--layers", default=",".join(DEFAULT_LAYERS), help="conv layers (default: %(default)s)")
    p.add_argument("--limit", type=int, default=5, help="at most this many images (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    args = p.parse_args(argv)
    if args.labels and args.label:
        p.error("give --labels or --label, not both")
    try:
        for name in ("translate", "scale", "rotate"):
            if getattr(args, name):
                parse_range(getattr(args, name))
        layers = [t.strip() for t in args.layers.split(",") if t.strip()]
        bad = [n for n in layers if n not in spec.CONV_LAYERS]
        if bad or not layers:
            raise ValueError(f"unknown layer(s) {bad}; expected names from {', '.join(spec.CONV_LAYERS)}")
    except ValueError as err:
        p.error(str(err))
    if args.limit < 1 or args.batch_size < 1:
        p.error("--limit and --batch-size must be at least 1")
    return InvarianceConfig(**{f.name: getattr(args, f.name) for f in fields(InvarianceConfig)})


def run(config: InvarianceConfig) -> InvarianceResult:
    """Do the run that ``config`` describes; return the curves."""
    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    paths = collect_images(config.inputs)[: config.limit]
    if not paths:
        raise ValueError("no images found")
    if config.labels:
        known = {s.path.resolve(): s.label for s in parse_label_file(config.labels)}
        targets = [known.get(p.resolve()) for p in paths]
    else:
        targets = [parse_class(config.label, model.class_names)] * len(paths)
    size = model.input_size
    kept, tensors = [], []
    for path, target in zip(paths, targets, strict=True):
        try:
            tensors.append(preprocess(load_image(path), size, model.mean, model.std, config.resize))
        except ValueError as err:  # base.images.ImageError: names the file and the reason
            print(f"skipped {err}", file=sys.stderr)
            continue
        kept.append((path, target))
    if not kept:
        raise ValueError("none of the images could be read")
    paths, targets = [p for p, _ in kept], [t for _, t in kept]
    x = np.concatenate(tensors)
    ranges = default_ranges(size)
    for kind, option in (("translation", config.translate), ("scale", config.scale), ("rotation", config.rotate)):
        if option:
            ranges[kind] = parse_range(option)
    layers = [t.strip() for t in config.layers.split(",") if t.strip()]
    result = invariance_curves(model, x, targets, ranges, layers, config.batch_size, [p.stem for p in paths])

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(invariance_figure(result, model.class_names)).save(out / "invariance.png")
    arrays: dict[str, np.ndarray] = {"paths": np.array([str(p) for p in paths]), "targets": result.targets,
                                     "target_is_label": result.target_is_label}
    for kind in result.params:
        Image.fromarray(invariance_figure(result, model.class_names, [kind])).save(out / f"invariance_{kind}.png")
        Image.fromarray(examples_strip(x[0], kind, result.params[kind], model.mean, model.std)).save(
            out / f"examples_{kind}.png")
        arrays[f"{kind}/params"] = result.params[kind]
        arrays[f"{kind}/probability"] = result.probability[kind]
        for layer in result.layers:
            arrays[f"{kind}/{layer}"] = result.distances[kind][layer]
    np.savez(out / "invariance.npz", **arrays)
    for kind in result.params:
        summary = ", ".join(f"{layer} {np.nanmean(result.distances[kind][layer]):.3f}" for layer in result.layers)
        print(f"{kind}: mean distance / norm {summary}; mean p(target) {result.probability[kind].mean():.3f}")
    print(f"wrote invariance.png, invariance_<transform>.png, examples_<transform>.png and invariance.npz to {out}/")
    return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))

