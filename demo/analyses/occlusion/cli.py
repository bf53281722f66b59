"""``python -m demo.occlusion``: the command line of ``demo.analyses.occlusion``: options -> ``OcclusionConfig`` -> the
maps, their figures and ``occlusion.npz``."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image

from base import spec
from base.cli import add_model_options, parse_class, run_cli
from demo.analyses import occlusion as package
from demo.analyses.occlusion import MAPS, OcclusionResult, describe, occlusion_figure, occlusion_maps
from demo.analyses.occlusion.config import OcclusionConfig
from demo.onnx_forward import OnnxModel
from demo.preprocess import deprocess, load_image, preprocess


def parse_args(argv: list[str] | None = None) -> OcclusionConfig:
    """Fill an OcclusionConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.occlusion", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="image file (any format Pillow reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and occlusion.npz")
    add_model_options(p, resize=True, norm=False)
    p.add_argument("--size", type=int, default=48, metavar="PX", help="side of the grey square (default: %(default)s)")
    p.add_argument("--stride", type=int, default=16, metavar="PX",
                   help="pixels between square positions; the maps have ceil(side / stride)^2 entries, one forward "
                        "pass each (default: %(default)s)")
    p.add_argument("--label", metavar="CLASS", help="true class, index or name (default: the predicted class)")
    p.add_argument("--layer", choices=spec.CONV_LAYERS, default="conv5_3",
                   help="layer whose strongest feature map is followed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="occluded images per forward pass (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("size", "stride", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return OcclusionConfig(**{f.name: getattr(args, f.name) for f in fields(OcclusionConfig)})


def run(config: OcclusionConfig) -> OcclusionResult:
    """Do the run that ``config`` describes; return the maps."""
    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    target = parse_class(config.label, model.class_names)
    x = preprocess(load_image(config.image), model.input_size, model.mean, model.std, config.resize)
    result = occlusion_maps(model, x, config.size, config.stride, target, config.layer, config.batch_size)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    picture = deprocess(x, model.mean, model.std)
    Image.fromarray(picture).save(out / "input.png")
    Image.fromarray(occlusion_figure(result, picture, "all", model.class_names)).save(out / "occlusion.png")
    for name in MAPS:
        Image.fromarray(occlusion_figure(result, picture, name, model.class_names)).save(out / f"{name}.png")
    np.savez(out / "occlusion.npz", input=x, probability=result.probability, activation=result.activation,
             top_class=result.top_class, top_probability=result.top_probability, tops=result.tops,
             lefts=result.lefts, size=result.size, stride=result.stride, target=result.target,
             channel=result.channel, base_probs=result.base_probs)
    print(describe(result, model.class_names).replace("**", "").replace("  \n", "\n"))
    print(f"wrote occlusion.png, {', '.join(m + '.png' for m in MAPS)} and occlusion.npz to {out}/")
    return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))

