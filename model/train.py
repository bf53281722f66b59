"""Train the VGG16 of the original PaddlePaddle notebook on cat-12 (or any labelled image folder), resumably.

    python -m model.train --data ../shared/data/cat12 --out runs/notebook        # the notebook's recipe
    python -m model.train --data ../shared/data/cat12 --out runs/v2 --batch-norm --amp --channels-last \\
        --optimizer adamw --lr 2e-3 --schedule onecycle --label-smoothing 0.1 --ema 0.998 \\
        --size-schedule 64:20,80:15,96:12,112:12                                 # progressive resizing
    python -m model.train --out runs/v2 --resume                                   # go on after a kill
    torchrun --nproc-per-node 2 -m model.train ...                                 # several GPUs (or CPU/gloo)

Per epoch it writes ``metrics.csv`` and ``curves.png`` (loss and accuracy), ``last.pt`` and ``best.pt``
(atomically: temporary file, then rename), and every ``--snapshot-every`` epochs the deconvnet projections of
the probe images for all 13 layers (``evolution/epoch_NNN.png``), the paper's Fig. 4 as training goes.
Bad input (options, label files, images, checkpoints) is one ``error: ...`` line and exit status 2.

This module is the command line; ``TrainConfig`` is ``model.config``, the loop ``model.loop``, the run's files
``model.checkpoint``, augmentation and resizing ``model.augment``, the weight average ``model.ema``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from base.cli import UsageError, run_cli
from model.config import TrainConfig, config_problems

INSTALL_HINT = "pip install -r requirements-dev.txt"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m model.train``; its defaults are TrainConfig's."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train VGG16 on cat-12 (or any labelled images) and watch its features form. Writes "
                    "metrics.csv, curves.png, last.pt, best.pt and evolution/epoch_NNN.png into --out.",
        epilog="With --resume, the run's saved settings are used; only --epochs, --workers, --device, --threads "
               "and --data may be given anew (a scheduled run keeps its --epochs). Bad input is one 'error:' line "
               "and exit status 2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=d.data, help="label file ('path<TAB>label' lines), a folder holding "
                   "train_list.txt, or an ImageFolder tree (one sub-folder per class)")
    p.add_argument("--out", default=d.out, help="run folder for checkpoints, metrics.csv, curves.png, evolution/")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="passes over the training images (with --size-schedule: its total unless given)")
    p.add_argument("--batch-size", "--batch", type=int, default=d.batch_size, help="images per step, all processes")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (the peak for onecycle)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=d.optimizer)
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=("constant", "cosine", "onecycle"), default=d.schedule,
                   help="learning-rate schedule over the whole run")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help="share of each target spread evenly over all classes, in [0, 1)")
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help="the model's input side in pixels, a multiple of 16 (with --size-schedule: its last size)")
    p.add_argument("--size-schedule", metavar="SIZE:EPOCHS,...", default=d.size_schedule,
                   help="progressive resizing: train the first EPOCHS at SIZE px, then the next pair, e.g. "
                        "64:20,80:15,96:13,112:12; sizes are multiples of 16, the last is the model's input size "
                        "(validation runs at each epoch's size); empty: --image-size throughout")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=d.batch_norm,
                   help="BatchNorm after each conv (folded into the convs at export)")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the classifier")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=d.augment,
                   help="random resized crops, horizontal flips and colour jitter")
    p.add_argument("--randaugment", metavar="N,M", default=d.randaugment,
                   help="add torchvision's RandAugment: N random operations per image at magnitude M of 30, "
                        "e.g. 2,9; empty: off")
    p.add_argument("--mixup", type=float, metavar="ALPHA", default=d.mixup,
                   help="mixup: blend each batch with itself shuffled, weight ~ Beta(ALPHA, ALPHA), e.g. 0.2; 0 = off")
    p.add_argument("--cutmix", type=float, metavar="ALPHA", default=d.cutmix,
                   help="CutMix: paste a box of a shuffled image, area share ~ Beta(ALPHA, ALPHA), e.g. 1.0; 0 = off")
    p.add_argument("--mix-prob", type=float, default=d.mix_prob, help="share of batches mixed by mixup/CutMix")
    p.add_argument("--mix-switch", type=float, default=d.mix_switch,
                   help="with both --mixup and --cutmix: share of the mixed batches that use CutMix")
    p.add_argument("--ema", type=float, metavar="DECAY", default=d.ema,
                   help="keep an exponential moving average of the weights (and batch-norm statistics) with this "
                        "decay, e.g. 0.998, warmed up as min(DECAY, (1+n)/(10+n)) after step n; it is validated "
                        "every epoch and is what python -m export exports; 0 = off")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="held-out share of each class, in [0, 1); 0 = no validation")
    p.add_argument("--classes", type=int, default=d.classes,
                   help="number of classes; a label outside 0..N-1 is an error. 0: from the data (12 for a cat-12 "
                        "folder, the folder count for an ImageFolder, else the largest label + 1)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split, the initial weights and the batches")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loading processes (0 = in the main one)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp, help="bfloat16 autocast")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=d.channels_last,
                   help="channels-last (NHWC) memory format: faster bfloat16 convolutions on recent CPUs")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for torch, 0 = all cores")
    p.add_argument("--snapshot-every", type=int, default=d.snapshot_every,
                   help="save the deconvnet projections of the probe images every N epochs (0 = never)")
    p.add_argument("--probe", nargs="+", default=d.probe, help="probe images for the feature-evolution snapshots")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="let a fresh run replace the run already in --out (without it, that is refused)")
    p.add_argument("--limit", type=int, default=d.limit,
                   help="train on N training images drawn at random with --seed (0 = all)")
    p.add_argument("--shuffle-labels", action="store_true",
                   help="train on randomly permuted labels (seeded by --seed; the validation labels stay true): "
                        "the model of the data-randomization sanity check (Adebayo et al. 2018)")
    p.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
    return p


def given_options(argv: list[str] | None = None) -> set[str]:
    """The TrainConfig fields that ``argv`` sets explicitly (as opposed to leaving at their defaults)."""
    unset = object()  # not a string, so argparse never runs it through an option's type
    p = build_parser()
    p.set_defaults(**{f.name: unset for f in dataclasses.fields(TrainConfig)})
    return {name for name, value in vars(p.parse_args(argv)).items() if value is not unset and name != "debug"}


def parse_command_line(argv: list[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """The TrainConfig the command line asks for, and the options it sets explicitly.

    A size schedule sets --epochs (its total) and --image-size (its last size) unless they are given. With
    --resume the run's saved settings are merged in by ``model.checkpoint.resolve_resume``, which reads last.pt.
    """
    args = vars(build_parser().parse_args(argv))
    args.pop("debug")
    config, given = TrainConfig(**args), given_options(argv)
    if config.size_schedule and not config.resume:
        try:
            from model.augment import parse_size_schedule

            schedule = parse_size_schedule(config.size_schedule)
        except ValueError:
            schedule = []  # reported by the checks in model.loop
        if schedule and "epochs" not in given:
            config.epochs = sum(epochs for _, epochs in schedule)
        if schedule and "image_size" not in given:
            config.image_size = schedule[-1][0]
    return config, given


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from the command line (exit status 2 with the option's name when a value is out of range)."""
    config, _ = parse_command_line(argv)
    problems = config_problems(config)
    if problems:
        build_parser().error(problems[0])
    return config


def train(config: TrainConfig, given: set[str] | None = None) -> dict:
    """Check ``config`` and run (or resume) training; returns the last metrics row. See ``model.loop.train``.

    Out-of-range values, bad data, labels or checkpoints raise ``base.cli.UsageError`` (or another ValueError)
    before anything in ``config.out`` is written.
    """
    from model.loop import train as run

    problems = config_problems(config)
    if problems:
        raise UsageError(problems[0])
    return run(config, given)


def torch_missing() -> str | None:
    """None when PyTorch and torchvision import, else the one line that says how to install them."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as err:
        return f"error: training needs PyTorch ({err}); install it with: {INSTALL_HINT}"
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m model.train``: the exit status (0 done, 2 bad input, 1 internal error, 130 interrupted)."""
    missing = torch_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    config, given = parse_command_line(argv)
    args = sys.argv[1:] if argv is None else argv
    return run_cli(lambda c: train(c, given), config, debug="--debug" in args or None)


if __name__ == "__main__":
    sys.exit(main())
