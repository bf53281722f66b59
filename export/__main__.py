"""``python -m export``: a checkpoint (ours or torchvision's VGG16) -> one .onnx file the demo runs on.

    python -m export --checkpoint runs/cat12/best.pt --out models/vgg16_cat12.onnx
    python -m export --checkpoint vgg16-397923af.pth --out models/vgg16_imagenet.onnx   # torchvision weights
    python -m export --random --batch-norm --out /tmp/random.onnx                       # for tests

The export checks itself (ONNX checker, then onnxruntime against PyTorch on three inputs) and writes nothing
if the check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from base import spec
from base.cli import add_debug_option, run_cli

try:
    import torch

    from export.onnx_export import ExportCheckError, export_onnx
    from model.vgg import HEADS, VGG, load_model
except ImportError as err:  # PyTorch or ONNX missing: one line that says what to install, not a traceback
    if __name__ != "__main__":
        raise
    print(f"error: the export needs PyTorch and ONNX ({err}); install them with: pip install -r requirements-dev.txt",
          file=sys.stderr)
    sys.exit(2)


@dataclass
class ExportConfig:
    """What to export and where; every field is a command-line option of the same name."""

    out: str = "models/vgg16_cat12.onnx"  # the .onnx file to write
    checkpoint: str | None = None  # our checkpoint (.pt) or a torchvision vgg16 / vgg16_bn state dict (.pth)
    random: bool = False  # export random weights instead of a checkpoint (tests, demos of the pipeline)
    batch_norm: bool = False  # --random only: a BatchNorm2d after each conv (folded at export)
    num_classes: int = spec.NUM_CLASSES  # --random only
    head: str = "gmp"  # --random only: "gmp" (global max-pool, as the cat-12 models) or "torchvision"
    seed: int = 0  # --random only
    input_size: int | None = None  # side in pixels; default: the checkpoint's, else spec.INPUT_SIZE
    class_names: str | None = None  # a text file, one class name per line (overrides the checkpoint's)
    check_size: int | None = None  # side of the three check inputs; default: input_size


def parse_args(argv: list[str] | None = None) -> ExportConfig:
    """Fill an ExportConfig from the command line."""
    p = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH",
                     help="our training checkpoint, or a torchvision vgg16/vgg16_bn state dict file")
    src.add_argument("--random", action="store_true", help="random weights (for tests and trying the pipeline)")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="where to write the .onnx file")
    p.add_argument("--batch-norm", action="store_true", help="with --random: batch norm after each conv")
    p.add_argument("--num-classes", type=int, default=spec.NUM_CLASSES, help="with --random (default: %(default)s)")
    p.add_argument("--head", choices=HEADS, default="gmp",
                   help="with --random: gmp (a global max-pool and one Linear, as the cat-12 models) or "
                        "torchvision's (three Linear layers) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="with --random: the weights' seed (default: %(default)s)")
    p.add_argument("--input-size", type=int, metavar="PX",
                   help=f"input side in pixels stored in the metadata (default: the checkpoint's, else "
                        f"{spec.INPUT_SIZE})")
    p.add_argument("--class-names", metavar="FILE", help="text file with one class name per line")
    p.add_argument("--check-size", type=int, metavar="PX",
                   help="side of the onnxruntime-vs-PyTorch check inputs (default: the input size)")
    add_debug_option(p)
    args = p.parse_args(argv)
    for name in ("input_size", "check_size"):
        value = getattr(args, name)
        if value is not None and (value < spec.SIZE_MULTIPLE or value % spec.SIZE_MULTIPLE):
            p.error(f"--{name.replace('_', '-')} must be a positive multiple of {spec.SIZE_MULTIPLE}, got {value}")
    if args.num_classes < 1:
        p.error(f"--num-classes must be at least 1, got {args.num_classes}")
    return ExportConfig(**{f.name: getattr(args, f.name) for f in fields(ExportConfig)})


def default_class_names(num_classes: int) -> list[str]:
    """cat-12's breeds for 12 classes, ImageNet's categories for 1000 (from torchvision, offline), else class_i."""
    if num_classes == len(spec.CAT12_BREEDS):
        return list(spec.CAT12_BREEDS)
    if num_classes == 1000:
        from torchvision.models import VGG16_Weights

        return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])
    return spec.default_class_names(num_classes)


def _load(path: str) -> tuple[VGG, dict]:
    """``load_model``, with anything that is not a loadable VGG16 checkpoint reported as a ValueError naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    try:
        return load_model(path)
    except ValueError:
        raise
    except Exception as err:  # torch.load's UnpicklingError, RuntimeError (truncated zip), KeyError, size mismatch
        detail = " ".join(str(err).split())[:160]
        raise ValueError(f"{path}: not a loadable checkpoint of this project or torchvision's VGG16 "
                         f"({type(err).__name__}: {detail})") from None


def build(config: ExportConfig) -> tuple[VGG, list[str], int, dict]:
    """The model, class names, input size and model card that ``config`` asks for."""
    if config.random:
        torch.manual_seed(config.seed)
        model = VGG(config.num_classes, config.batch_norm, config.head).eval()
        meta: dict = {}
        card = {"data": "none: random weights", "source": f"random (seed {config.seed})"}
    else:
        model, meta = _load(config.checkpoint)
        card = {"source": Path(config.checkpoint).name}
        if meta.get("source") == "torchvision state dict":
            card["data"] = "ImageNet-1k (torchvision VGG16 weights)" if model.num_classes == 1000 else "unknown"
        else:
            card["data"] = meta.get("data") or (meta.get("config") or {}).get("data") or (
                "cat-12 (12 cat breeds)" if model.num_classes == spec.NUM_CLASSES else "unknown")
            for key in ("val_acc", "epoch", "best_epoch", "test_acc", "weights"):
                if key in meta:
                    card[key] = meta[key]
            if "config" in meta:
                card["training_config"] = meta["config"]
            history = meta.get("history") or []
            if history:
                card["epochs_trained"] = history[-1]["epoch"]
                card["training_wall_time_s"] = round(sum(row.get("seconds", 0) for row in history))
    if config.class_names:
        names = [line.strip() for line in Path(config.class_names).read_text().splitlines() if line.strip()]
    else:
        names = list(meta.get("class_names") or default_class_names(model.num_classes))
    size = config.input_size or int(meta.get("input_size") or spec.INPUT_SIZE)
    return model, names, size, card


def run(config: ExportConfig) -> dict:
    """Export what ``config`` describes; returns the export report (``export_onnx``'s)."""
    model, names, size, card = build(config)
    from export.onnx_export import check_inputs

    print(f"exporting VGG16 ({model.head} head, {model.num_classes} classes, batch norm "
          f"{'folded' if model.batch_norm else 'none'}) -> {config.out}", file=sys.stderr)
    try:
        report = export_onnx(model, config.out, names, size, card,
                             check_images=check_inputs(config.check_size or size))
    except ExportCheckError as err:
        print(json.dumps(err.report, indent=1), file=sys.stderr)
        raise RuntimeError(f"export FAILED, nothing written: {err}") from None
    worst = max(report["max_abs_diff"].values())
    flips = sum(report["switch_index_flips"].values())
    print(f"wrote {report['path']} ({report['bytes'] / 2**20:.1f} MiB, opset {report['opset']}, "
          f"{report['seconds']:.1f} s); check passed on inputs {report['inputs']}: "
          f"max |onnxruntime - torch| = {worst:.2g}, switch index flips (near-ties) = {flips}")
    return report


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
