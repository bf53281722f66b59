"""``python -m demo.health``: the command line of the model-health measurement (options, the run, the files it
writes). Its ``--help`` is the package docstring, which describes the measures and the files."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from base import spec
from base.cli import add_model_options, run_cli
from demo.analyses import health as package
from demo.analyses import ray_engine
from demo.analyses.dataset import read_samples
from demo.analyses.health.config import HealthConfig
from demo.analyses.health.files import FILES, save
from demo.analyses.health.measure import RARE_FRACTION, HealthStats, measure
from demo.analyses.health.summary import describe
from demo.onnx_forward import OnnxModel


def parse_args(argv: list[str] | None = None) -> HealthConfig:
    """Fill a HealthConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.health", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR_OR_LABEL_FILE",
                   help="cat-12 label file, a folder holding train_list.txt, an ImageFolder tree or a folder of images")
    p.add_argument("--out", required=True, metavar="DIR", help=f"folder for {', '.join(FILES)} (created)")
    add_model_options(p, resize=True, norm=False)
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images of the data")
    p.add_argument("--rare", type=float, default=RARE_FRACTION, metavar="SHARE",
                   help="a channel above zero on fewer than this share of the images (but on some) is rare "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding threads (default: %(default)s)")
    ray_engine.add_engine_options(p)
    args = p.parse_args(argv)
    for name in ("limit", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.rare <= 1:
        p.error("--rare must be a share in (0, 1]")
    if args.workers < 0:
        p.error("--workers must be at least 0")
    return HealthConfig(**{f.name: getattr(args, f.name) for f in fields(HealthConfig)})


def run(config: HealthConfig, bar: bool = True) -> HealthStats:
    """Do the run that ``config`` describes; return the stats."""
    ray_settings = ray_engine.settings_of(config)  # None: the local engine
    samples = read_samples(config.data)
    if config.limit is not None:
        samples = samples[: config.limit]
    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    print(f"measuring {len(spec.CONV_LAYERS)} conv layers over {len(samples)} images at {model.input_size} px on "
          f"{'Ray' if ray_settings else model.device}", flush=True)
    if ray_settings is not None:
        stats = ray_engine.measure(ray_settings, model, samples, None, config.resize, config.batch_size, config.rare,
                                   str(config.data), bar=bar)
    else:
        stats = measure(model, samples, None, config.resize, config.batch_size, config.workers, config.rare,
                        str(config.data), bar=bar)
    if stats.skipped:
        print(f"skipped {len(stats.skipped)} unreadable image(s)")
    save(stats, config.out, model.weights)
    print(describe(stats).replace("**", ""))
    print(f"wrote {', '.join(FILES)} to {config.out}/")
    return stats


def main(argv: list[str] | None = None) -> int:
    """The command: parse ``argv`` (default: sys.argv), run, and return the exit status."""
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
