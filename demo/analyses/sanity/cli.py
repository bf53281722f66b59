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
from base.images import IMAGE_EXTENSIONS
from base.spec import RULES
from demo.analyses import sanity as package
from demo.analyses.dataset import gather_images, image_name
from demo.analyses.figures import class_name
from demo.analyses.sanity.config import SanityConfig
from demo.analyses.sanity.figure import curves, filmstrip, stack, summary_curves
from demo.analyses.sanity.measure import (
    EVIDENCE,
    METHODS,
    METRICS,
    MODES,
    SanityResult,
    evidence_method,
    parse_methods,
    parse_target,
    register_method,
    sanity_results,
)
from demo.analyses.sanity.verdicts import (
    Verdicts,
    run_verdicts,
    summarize,
    summarize_by,
    write_verdicts,
)
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
    p.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="image file(s), label file(s) ('path<TAB>label' lines, e.g. docs/heldout_val.txt) or "
                        "folder(s); one image and one seed: the filmstrip and the per-step CSV; more: mean +- sd "
                        "over images and seeds")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the CSVs, PNGs and summaries")
    add_model_options(p, resize=True, norm=True)
    p.add_argument("--target", default="conv5_3",
                   help="conv5_3 (a whole conv layer), LAYER/CHANNEL (e.g. conv5_3/85: that channel's strongest "
                        "activation), class (the trained model's top-1 class logit) or class/CLASS (index or name); "
                        "several, comma-separated, share each step's forward pass (default: %(default)s)")
    p.add_argument("--methods", "--rules", dest="methods", default=",".join(RULES),
                   help=f"comma-separated methods from {', '.join(METHODS)}; the rules ({', '.join(RULES)}) map "
                        f"every target, the others ({', '.join(EVIDENCE)}) class targets only "
                        "(default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default="cascading",
                   help="cascading: re-draw the layers from the head down, one more per step; independent: one "
                        "layer at a time; both (default: %(default)s)")
    p.add_argument("--seeds", "--seed", dest="seeds", default="0",
                   help="seed(s) of the random weights, >= 0, comma-separated, e.g. 0,1,2 (default: %(default)s)")
    p.add_argument("--no-classes", dest="classes", action="store_false",
                   help="skip the class-sensitivity check (Nie et al. 2018; Sixt et al. 2020's random-logit test)")
    p.add_argument("--compare-model", metavar="OTHER.onnx",
                   help="also compare each method's maps with those of this model (e.g. one trained on permuted "
                        "labels with `python -m model.train --shuffle-labels`: the data-randomization test)")
    p.add_argument("--root", metavar="DIR",
                   help="resolve the relative paths of label files against DIR (default: the label file's folder), "
                        "e.g. --root ../shared/data/cat12 for docs/heldout_val.txt")
    p.add_argument("--limit", type=int, default=0,
                   help="at most this many images, taken round-robin over the labels (default: all)")
    p.add_argument("--samples", type=int, default=25,
                   help="SmoothGrad's noisy copies per map (default: %(default)s)")
    p.add_argument("--ig-steps", type=int, default=32,
                   help="Integrated Gradients' path points per map (default: %(default)s)")
    p.add_argument("--steps", default="",
                   help="only these step numbers, comma-separated (step 0, the trained model, always), e.g. 1,2,7,14: "
                        "head; conv5_3; conv5 and conv4; every layer random (default: every step)")
    args = p.parse_args(argv)
    return SanityConfig(**{f.name: getattr(args, f.name) for f in fields(SanityConfig)})


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]; ValueError on anything but non-negative integers, or none."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts or not all(t.isdigit() for t in parts):
        raise ValueError(f"--seeds must be non-negative integers, comma-separated, got {text!r}")
    return list(dict.fromkeys(int(t) for t in parts))


def parse_steps(text: str) -> list[int] | None:
    """"1,2,7,14" -> [1, 2, 7, 14]; "" -> None (every step); ValueError on anything else."""
    if not str(text).strip():
        return None
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not all(t.isdigit() for t in parts):
        raise ValueError(f"--steps must be step numbers, comma-separated, got {text!r}")
    return [int(t) for t in parts]


def many(config: SanityConfig) -> bool:
    """Whether ``config`` asks for mean +- sd over images and seeds rather than one image's filmstrip."""
    one = len(config.inputs) == 1 and Path(config.inputs[0]).suffix.lower() in IMAGE_EXTENSIONS \
        and Path(config.inputs[0]).is_file()
    return not one or len(parse_seeds(config.seeds)) > 1 or "," in config.target or config.compare_model is not None


def run_many(config: SanityConfig) -> Verdicts:
    """The checks over every image and seed (and, with ``--compare-model``, the comparison): the CSVs and
    ``summary.md`` of ``demo.analyses.sanity.verdicts``."""
    seeds = parse_seeds(config.seeds)
    methods = parse_methods(config.methods)
    if config.limit < 0:
        raise ValueError(f"--limit must be at least 0, got {config.limit}")
    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    targets = [parse_target(t, model.class_names) for t in config.target.split(",") if t.strip()]
    other = (OnnxModel(config.compare_model, device=config.device, allow_tf32=config.tf32)
             if config.compare_model else None)
    samples = gather_images(config.inputs, config.root, config.limit)
    root = Path(config.root) if config.root else None
    note = f"Model {Path(model.path).name}" + (f"; compared with {Path(other.path).name}" if other else "") + "."
    counts = [f"{what} {n}" for name, what, n in (("smoothgrad", "SmoothGrad's noisy copies", config.samples),
                                                   ("ig", "Integrated Gradients' steps", config.ig_steps))
              if name in methods]
    note += f" {'; '.join(counts)}." if counts else ""
    verdicts = run_verdicts(model, samples, targets, methods, seeds, config.mode, config.classes, other,
                            config.resize, [image_name(s, root) for s in samples], steps=parse_steps(config.steps),
                            after_image=lambda done: write_verdicts(done, Path(config.out), note))  # a run cut short
    text = write_verdicts(verdicts, Path(config.out), note)
    if verdicts.rows:
        picture = summary_curves(summarize(verdicts.rows), summarize_by(verdicts.classes, (2,), 3),
                                 title=f"{len(verdicts.seconds)} images, seeds {config.seeds}: mean +- sd")
        Image.fromarray(picture).save(Path(config.out) / "sanity_summary.png")
    print(text)
    print(f"wrote the CSVs and summary.md to {config.out}/")
    return verdicts


def run(config: SanityConfig) -> SanityResult | Verdicts:
    """Do the run that ``config`` describes; write the files; return the result. SmoothGrad's and Integrated
    Gradients' entries of ``METHODS`` take ``--samples`` and ``--ig-steps`` for the run and are restored after."""
    if config.samples < 1 or config.ig_steps < 2:
        raise ValueError(f"--samples must be at least 1 and --ig-steps at least 2, got {config.samples} and "
                         f"{config.ig_steps}")
    saved = {name: METHODS[name] for name in ("smoothgrad", "ig")}
    register_method(evidence_method("smoothgrad", samples=config.samples))
    register_method(evidence_method("ig", steps=config.ig_steps))
    try:
        return run_checks(config)
    finally:
        for method in saved.values():
            register_method(method)


def run_checks(config: SanityConfig) -> SanityResult | Verdicts:
    """``run`` with the methods registered."""
    parse_seeds(config.seeds)
    if config.norm not in NORMS:
        raise ValueError(f"--norm must be one of {NORMS}, got {config.norm!r}")
    if many(config):
        return run_many(config)
    seed = parse_seeds(config.seeds)[0]
    rules = parse_methods(config.methods)
    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    target = parse_target(config.target, model.class_names)
    x = preprocess(load_image(config.image), model.input_size, model.mean, model.std, config.resize)
    result = sanity_results(model, x, [target], rules, config.mode, seed, config.classes,
                            steps=parse_steps(config.steps))[0]
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
