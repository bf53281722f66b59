"""``python -m demo.correspondence``: the command line of the correspondence analysis (options, the run, the
files it writes). Its ``--help`` is the package docstring, which describes the method and the boxes file."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image

from base.cli import add_model_options, atomic_write, debug_requested, run_cli
from demo.analyses import correspondence as package
from demo.analyses.correspondence.boxes import Annotation, InputBox, box_to_input, mask, part_order, read_boxes
from demo.analyses.correspondence.config import DEFAULT_LAYERS, CorrespondenceConfig
from demo.analyses.correspondence.figure import correspondence_chart, correspondence_figure
from demo.analyses.correspondence.measure import (
    POOLED,
    CorrespondenceResult,
    correspondence,
    model_features,
    parse_layer_list,
)
from demo.analyses.correspondence.table import csv_text, format_table
from demo.onnx_forward import OnnxModel
from demo.preprocess import deprocess, load_image, normalise

FILES = ("correspondence.csv", "correspondence_chart.png", "correspondence.png")


def parse_args(argv: list[str] | None = None) -> CorrespondenceConfig:
    """Fill a CorrespondenceConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.correspondence", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boxes", required=True, metavar="FILE.json",
                   help='{"image path": {"left_eye": [x0, y0, x1, y1], ...}, ...}; boxes in original-image pixels, '
                        "paths relative to the file's folder")
    p.add_argument("--out", required=True, metavar="DIR", help=f"folder for {', '.join(FILES)}")
    add_model_options(p, resize=True, norm=False)
    p.add_argument("--draws", type=int, default=10, help="random-baseline draws, at least 2 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random boxes (default: %(default)s)")
    p.add_argument("--layers", default=",".join(DEFAULT_LAYERS), metavar="L1,L2",
                   help=f"conv layers and/or {POOLED} (the classifier's input vector) (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="differences up to this times the layer's largest original value count as 0 "
                        "(default: %(default)s)")
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error("--draws must be at least 2 (the baseline reports a standard deviation)")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if not (args.tolerance >= 0 and math.isfinite(args.tolerance)):
        p.error("--tolerance must be a finite number >= 0")
    return CorrespondenceConfig(**{f.name: getattr(args, f.name) for f in fields(CorrespondenceConfig)})


def load_inputs(config: CorrespondenceConfig, annotations: list[Annotation], model: OnnxModel
                ) -> tuple[np.ndarray, list[dict[str, InputBox]], list[str]]:
    """The images of ``annotations`` as normalised inputs (N, 3, size, size), their boxes mapped to input pixels,
    and one warning line (also printed to stderr) per box that lies outside the input."""
    size = model.input_size
    inputs, boxes, notes = [], [], []
    for a in annotations:
        picture = load_image(a.path)  # ImageError (exit 2) names the file
        inputs.append(normalise(picture, size, model.mean, model.std, config.resize)[0])
        width, height = picture.size
        mapped = {}
        for part, box in a.boxes.items():
            placed = box_to_input(box, width, height, size, config.resize)
            if placed is None:
                note = (f"warning: {config.boxes}: {a.key!r}: the {part} box {list(box)} lies outside the "
                        f"{'centre crop' if config.resize == 'crop' else 'image'}; image skipped for {part}")
                notes.append(note)
                print(note, file=sys.stderr)
            else:
                mapped[part] = placed
        boxes.append(mapped)
    return np.stack(inputs), boxes, notes


def save(out: Path, result: CorrespondenceResult, images: np.ndarray, model: OnnxModel, source: str) -> None:
    """Write ``FILES`` into ``out``, each atomically: the CSV, the photo-free chart, and the figure with the masked
    ``images`` (N, 3, H, W)."""
    out.mkdir(parents=True, exist_ok=True)
    text = csv_text(result, source)
    atomic_write(out / "correspondence.csv", lambda tmp: tmp.write_text(text))
    chart = correspondence_chart(result)
    atomic_write(out / "correspondence_chart.png", lambda tmp: Image.fromarray(chart).save(tmp, format="PNG"))
    originals = [deprocess(x, model.mean, model.std) for x in images]
    masked = {p: [deprocess(mask(images[i], b[p]), model.mean, model.std) if p in b else None
                  for i, b in enumerate(result.boxes)] for p in result.parts}
    figure = correspondence_figure(result, originals, masked)
    atomic_write(out / "correspondence.png", lambda tmp: Image.fromarray(figure).save(tmp, format="PNG"))


def run(config: CorrespondenceConfig) -> CorrespondenceResult:
    """Do the run that ``config`` describes; return the result."""
    layers = parse_layer_list(config.layers)
    annotations = read_boxes(config.boxes)
    parts = part_order(annotations)
    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    images, boxes, notes = load_inputs(config, annotations, model)  # images (N, 3, size, size)
    result = correspondence(images, boxes, model_features(model, layers), parts, config.draws, config.seed,
                            config.batch_size, config.tolerance)
    result.notes = notes

    out = Path(config.out)
    source = (f"model: {model.path.name} ({model.head.kind if POOLED in layers else 'conv'} head), input "
              f"{model.input_size} px, resize {config.resize}; boxes: {Path(config.boxes).name}, "
              f"{len(annotations)} images")
    save(out, result, images, model, source)
    print(format_table(result.rows))
    print(f"delta: mean Hamming distance between the sign patterns of x - x~ per pair of images and feature, in "
          f"[0, 1]; random: boxes of the part's size at random places ({config.draws} draws, seed {config.seed})")
    print(f"wrote {', '.join(FILES)} to {out}/ (correspondence.png shows the photos: keep it with your data)")
    return result


def main(argv: list[str] | None = None) -> int:
    """The command: parse ``argv`` (default: sys.argv), run, and return the exit status."""
    return run_cli(run, parse_args(argv), debug=debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
