"""``python -m demo.sanity``: the command line of the sanity checks (options, the run, the files it writes). Its
``--help`` is the package docstring, which describes the method and the files."""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image

from base.cli import add_model_options, run_cli
from base.display import NORMS
from base.spec import RULES
from demo.analyses import sanity as package
from demo.analyses.figures import class_name
from demo.analyses.sanity.config import SanityConfig
from demo.analyses.sanity.figure import curves, filmstrip, stack
from demo.analyses.sanity.measure import METRICS, MODES, SanityResult, parse_rules, parse_target, sanity_checks
from demo.analyses.sanity.view import describe
from demo.onnx_forward import OnnxModel
from demo.preprocess import deprocess, load_image, preprocess

CSV_COLUMNS = ("mode", "step", "randomized", "rule", *METRICS)
CLASS_COLUMNS = ("rule", "class", "name", *METRICS)


def write_csvs(result: SanityResult, out: Path, class_names: Sequence[str] | None = None) -> None:
    """``sanity.csv`` and, with the class check, ``sanity_classes.csv`` in ``out`` (columns: ``CSV_COLUMNS`` and
    ``CLASS_COLUMNS``)."""
    with open(out / "sanity.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for m in result.modes:
            for s in result.steps(m):
                for rule in result.rules:
                    writer.writerow([m, s.step, s.label, rule, *(f"{v:.6f}" for v in s.scores[rule])])
    if result.classes is not None:
        with open(out / "sanity_classes.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CLASS_COLUMNS)
            for rule in result.rules:
                for k, row in enumerate(result.classes.scores[rule]):
                    writer.writerow([rule, k, class_name(class_names, k), *(f"{v:.6f}" for v in row)])


def parse_args(argv: list[str] | None = None) -> SanityConfig:
    """Fill a SanityConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.sanity", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="image file (any format Pillow reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the CSVs, PNGs and sanity.npz")
    add_model_options(p, resize=True, norm=True)
    p.add_argument("--target", default="conv5_3",
                   help="conv5_3 (a whole conv layer), LAYER/CHANNEL (e.g. conv5_3/85: that channel's strongest "
                        "activation), class (the trained model's top-1 class logit) or class/CLASS (index or name) "
                        "(default: %(default)s)")
    p.add_argument("--rules", default=",".join(RULES),
                   help=f"comma-separated backward rules from {', '.join(RULES)} (default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default="cascading",
                   help="cascading: re-draw the layers from the head down, one more per step; independent: one "
                        "layer at a time; both (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, >= 0 (default: %(default)s)")
    p.add_argument("--no-classes", dest="classes", action="store_false",
                   help="skip the class-sensitivity check (one class projection per class and rule)")
    args = p.parse_args(argv)
    return SanityConfig(**{f.name: getattr(args, f.name) for f in fields(SanityConfig)})


def run(config: SanityConfig) -> SanityResult:
    """Do the run that ``config`` describes; write the files; return the result."""
    if config.seed < 0:
        raise ValueError(f"--seed must be at least 0, got {config.seed}")
    if config.norm not in NORMS:
        raise ValueError(f"--norm must be one of {NORMS}, got {config.norm!r}")
    rules = parse_rules(config.rules)
    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    target = parse_target(config.target, model.class_names)
    x = preprocess(load_image(config.image), model.input_size, model.mean, model.std, config.resize)
    result = sanity_checks(model, x, target, rules, config.mode, config.seed, config.classes)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    picture = deprocess(x, model.mean, model.std)
    names = model.class_names
    write_csvs(result, out, names)
    strips = [filmstrip(result, m, config.norm, picture, names) for m in result.modes]
    Image.fromarray(strips[0]).save(out / "sanity_filmstrip.png")
    if len(strips) > 1:
        Image.fromarray(strips[1]).save(out / "sanity_filmstrip_independent.png")
    plot = curves(result, names)
    Image.fromarray(plot).save(out / "sanity_curves.png")
    Image.fromarray(stack([*strips, plot])).save(out / "sanity.png")
    arrays = {"input": x}
    for m in result.modes:
        for s in result.steps(m):
            for rule in result.rules:
                arrays[f"{m}/{s.step}/{rule}"] = s.maps[rule]
    np.savez(out / "sanity.npz", **arrays)
    print(describe(result, names).replace("**", ""))
    print(f"wrote sanity.csv{', sanity_classes.csv' if result.classes else ''}, "
          f"{', '.join(['sanity_filmstrip.png', *(['sanity_filmstrip_independent.png'] if len(strips) > 1 else [])])}"
          f", sanity_curves.png, sanity.png and sanity.npz to {out}/")
    return result


def main(argv: list[str] | None = None) -> int:
    """The command: parse ``argv`` (default: sys.argv), run, and return the exit status."""
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
