"""The command lines of feature visualization: ``python -m demo.featurevis`` (options, the run, the files; its
``--help`` is the package docstring), ``python -m demo.featurevis_pack`` (``pack_main``: a run packed into the
compact shipped set, ``demo.analyses.featurevis.shipped``) and ``python -m demo.featurevis_figure``
(``figure_main``: the README's figure, ``demo.analyses.featurevis.figure``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from base.cli import add_model_options, atomic_write, run_cli
from demo.analyses import featurevis as package
from demo.analyses.featurevis import figure, shipped
from demo.analyses.featurevis.config import QUALITY, FeaturevisConfig, FigureConfig, PackConfig
from demo.analyses.featurevis.objective import CLASS, Target, check_position, parse_targets
from demo.analyses.featurevis.optimize import Result, Settings, batches, load, visualize


def parse_args(argv: list[str] | None = None) -> FeaturevisConfig:
    """Fill a FeaturevisConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.featurevis", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="LAYER/C (a channel's mean, e.g. conv5_3/7), LAYER/C/Y/X (one position), class/K or "
                        "class/NAME (a class logit); LAYER/all, LAYER/A-B and class/all for many; a leading '-' "
                        "minimises")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and JSONs (OUT/LAYER/CCCC.png)")
    add_model_options(p, resize=False)
    p.add_argument("--steps", type=int, default=512, help="Adam steps per picture (default: %(default)s)")
    p.add_argument("--size", type=int, default=None,
                   help="picture side in pixels, a multiple of 16 (default: the model's input size)")
    p.add_argument("--batch", type=int, default=8, help="targets optimised together per step (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting images and the transformations, >= 0 "
                                                       "(default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate (default: %(default)s)")
    p.add_argument("--copies", type=int, default=1,
                   help="pictures per target, pushed apart by the diversity term (default: %(default)s)")
    p.add_argument("--diversity-weight", type=float, default=100.0,
                   help="weight of the diversity term when --copies > 1 (default: %(default)s)")
    p.add_argument("--randomize", metavar="LAYERS", default=None,
                   help="visualise on a copy whose LAYERS (comma-separated conv names and/or 'head') are re-drawn at "
                        "random, as demo.sanity does (e.g. conv5_3,head)")
    p.add_argument("--randomize-seed", type=int, default=0, help="seed of those random weights (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="skip targets already written with the same settings")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads on the CPU (default: all cores)")
    args = p.parse_args(argv)
    return FeaturevisConfig(**{f.name: getattr(args, f.name) for f in fields(FeaturevisConfig)})


def paths(out: Path, target: Target) -> tuple[Path, Path]:
    """The PNG and the JSON of ``target`` in ``out``."""
    folder = out / target.layer
    return folder / f"{target.stem}.png", folder / f"{target.stem}.json"


def settings_record(config: FeaturevisConfig, settings: Settings, model_path: str) -> dict:
    """What the JSON records of how a picture was made (and what ``--resume`` compares)."""
    return {**asdict(settings), "model": Path(model_path).name, "randomize": config.randomize,
            "randomize_seed": config.randomize_seed if config.randomize else None,
            **({"tf32": True} if config.tf32 else {})}


def to_png(images: np.ndarray) -> np.ndarray:
    """(copies, 3, P, P) float RGB in [0, 1] -> (P, copies * P, 3) uint8, the copies side by side."""
    n, _, P, _ = images.shape
    strip = images.transpose(2, 0, 3, 1).reshape(P, n * P, 3)
    return (np.clip(strip, 0, 1) * 255 + 0.5).astype(np.uint8)


def write(out: Path, result: Result, record: dict, class_names: list[str]) -> None:
    """The target's PNG and JSON (each written atomically, the JSON last: it marks the target done)."""
    png, meta = paths(out, result.target)
    t = result.target
    atomic_write(png, lambda p: Image.fromarray(to_png(result.images)).save(p, format="PNG"), sync=False)
    info = {"target": t.text, "layer": t.layer, "channel": t.channel, "position": t.position,
            "maximise": t.sign > 0, "class_name": class_names[t.channel] if t.layer == CLASS else None,
            "objective_first": result.first, "objective_last": result.last, "objective_final": result.final,
            "flat": result.flat, "settings": record, "seeds": result.seeds}
    atomic_write(meta, lambda p: p.write_text(json.dumps(info, indent=1) + "\n"), sync=False)


def done(out: Path, target: Target, record: dict) -> bool:
    """Whether ``target``'s JSON exists with the same settings."""
    png, meta = paths(out, target)
    try:
        return png.is_file() and json.loads(meta.read_text()).get("settings") == record
    except (OSError, ValueError):
        return False


def run(config: FeaturevisConfig) -> list[Result]:
    """Do the run that ``config`` describes; write the files; return the results."""
    if config.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {config.batch}")
    if config.threads is not None and config.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {config.threads}")
    if config.size is not None and (config.size < 16 or config.size % 16):
        raise ValueError(f"--size must be a positive multiple of 16, got {config.size}")
    if config.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {config.steps}")
    vis = load(config.model, config.device, config.threads, config.randomize, config.randomize_seed, config.tf32)
    names = vis.model.class_names
    targets: list[Target] = []
    for text in config.targets:
        targets += parse_targets(text, names)
    settings = Settings(steps=config.steps, size=config.size or vis.model.input_size, lr=config.lr, seed=config.seed,
                        copies=config.copies, diversity_weight=config.diversity_weight)
    settings.check()
    for t in targets:
        check_position(t, settings.size)
    targets = list(dict.fromkeys(targets))  # each once, in order
    out = Path(config.out)
    record = settings_record(config, settings, str(vis.model.path))
    todo = [t for t in targets if not (config.resume and done(out, t, record))]
    if len(todo) < len(targets):
        print(f"resuming: {len(targets) - len(todo)} of {len(targets)} targets already done", file=sys.stderr)
    results: list[Result] = []
    work = batches(todo, config.batch)
    logging = not sys.stderr.isatty()  # a log file: a progress line every 30 s, and one per batch
    started = time.perf_counter()
    with tqdm(total=sum(len(b) for b in work) * settings.steps, unit="unit-step", desc="featurevis", file=sys.stderr,
              mininterval=30 if logging else 0.1) as bar:
        for group in work:
            bar.set_postfix_str(f"{group[0].text} .. {group[-1].text}")
            width = len(group)
            batch_results = visualize(vis, group, settings, progress=lambda k, w=width: bar.update(k * w))
            for r in batch_results:
                write(out, r, record, names)
            results += batch_results
            if logging:
                elapsed = time.perf_counter() - started
                print(f"done {group[0].text} .. {group[-1].text}: {len(results)} of {len(todo)} targets, "
                      f"{elapsed / len(results):.1f} s per target", flush=True)
    flat = [r.target.text for r in results if r.flat]
    t = vis.timings
    print(f"wrote {len(results)} target(s) to {out}/ (forward {t.forward:.1f} s, backward {t.backward:.1f} s, "
          f"parametrization and transforms {t.transforms:.1f} s)")
    if flat:
        print(f"flat (no structure came back): {', '.join(flat)}")
    return results


def main(argv: list[str] | None = None) -> int:
    """The command: parse ``argv`` (default: sys.argv), run, and return the exit status."""
    return run_cli(run, parse_args(argv))


def pack_main(argv: list[str] | None = None) -> int:
    """``python -m demo.featurevis_pack SRC DST``: pack a run into the compact shipped set; the exit status."""
    p = argparse.ArgumentParser(prog="python -m demo.featurevis_pack", description=shipped.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="folder python -m demo.featurevis wrote")
    p.add_argument("dst", help="folder of the packed set (default set: models/featurevis)")
    p.add_argument("--model", metavar="FILE.onnx", help="the model they were made from (default: the default model)")
    p.add_argument("--quality", type=int, default=QUALITY, help="WebP quality 1..100 (default: %(default)s)")
    p.add_argument("--replace", action="store_true",
                   help="start DST afresh (default: add to a set of the same model and settings already there)")
    args = p.parse_args(argv)
    return run_cli(shipped.run, PackConfig(**{f.name: getattr(args, f.name) for f in fields(PackConfig)}))


def figure_main(argv: list[str] | None = None) -> int:
    """``python -m demo.featurevis_figure IMAGE --out PNG``: the README's figure; the exit status."""
    p = argparse.ArgumentParser(prog="python -m demo.featurevis_figure", description=figure.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="the image the projections are made on (e.g. examples/chelsea.png)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--units", default=FigureConfig.units, help="comma-separated channels (default: %(default)s)")
    p.add_argument("--score", default="", metavar="UNITS",
                   help="more channels of the same layer (e.g. conv5_3/0-31): measured on every model like --units, "
                        "not drawn (default: none)")
    p.add_argument("--csv", default=None, help="the measures' CSV (default: --out with .csv)")
    p.add_argument("--pictures", default=None, help="a python -m demo.featurevis folder of the trained model")
    p.add_argument("--steps", type=int, default=128, help="steps of the pictures made now (default: %(default)s)")
    p.add_argument("--size", type=int, default=96, help="their side in pixels (default: %(default)s)")
    add_model_options(p, resize=False)
    args = p.parse_args(argv)
    return run_cli(figure.run, FigureConfig(**{f.name: getattr(args, f.name) for f in fields(FigureConfig)}))


if __name__ == "__main__":
    sys.exit(main())
