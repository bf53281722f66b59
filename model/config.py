"""What a training run depends on: ``TrainConfig`` (saved in every checkpoint and in ``config.json``) and the
check of its values. Torch-free; ``model.train`` fills it from the command line, ``model.loop`` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from base.spec import SIZE_MULTIPLE

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PROBE = REPO / "examples" / "chelsea.png"


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint and in ``config.json``."""

    data: str = "../shared/data/cat12"  # label file, folder with train_list.txt, or ImageFolder tree
    out: str = "runs/vgg16"  # run folder: checkpoints, metrics, plots, evolution snapshots
    epochs: int = 40
    batch_size: int = 32  # global batch (split across processes under torchrun)
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"  # constant | cosine | onecycle
    label_smoothing: float = 0.0
    image_size: int = 224  # the model's input side in pixels (the last size of a size schedule)
    size_schedule: str = ""  # progressive resizing, "SIZE:EPOCHS,...", e.g. "64:20,96:10,112:12"; "" = image_size
    batch_norm: bool = False
    dropout: float = 0.0
    augment: bool = True  # random resized crop, flip, colour jitter
    randaugment: str = ""  # "N,M": torchvision's RandAugment on top of --augment; "" = off
    mixup: float = 0.0  # mixup's Beta alpha, 0 = off
    cutmix: float = 0.0  # CutMix's Beta alpha, 0 = off
    mix_prob: float = 1.0  # share of batches mixed when mixup or CutMix is on
    mix_switch: float = 0.5  # with both on: share of the mixed batches that use CutMix
    ema: float = 0.0  # decay of the exponential moving average of the weights, 0 = off
    val_fraction: float = 0.2
    classes: int = 0  # number of classes; 0 = from the data (cat-12: 12, an ImageFolder: its folders)
    seed: int = 0
    workers: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bfloat16 autocast (CPUs with AVX512-BF16/AMX, recent GPUs)
    channels_last: bool = False  # NHWC memory format for the convolutions
    threads: int = 0  # torch intra-op threads on CPU, 0 = all cores
    snapshot_every: int = 5  # feature-evolution snapshot every N epochs (0 = never)
    probe: list[str] = field(default_factory=lambda: [str(DEFAULT_PROBE)])
    resume: bool = False
    overwrite: bool = False  # a fresh run may replace the run already in --out
    limit: int = 0  # use only the first N training images (quick trials and tests), 0 = all
    shuffle_labels: bool = False  # permute the training labels (seeded): the data-randomization test's model


def config_problems(config: TrainConfig) -> list[str]:
    """What is wrong with ``config``'s values, one sentence each naming the option (empty when all is well)."""
    problems = []
    if config.image_size <= 0 or config.image_size % SIZE_MULTIPLE:
        problems.append(f"--image-size must be a positive multiple of {SIZE_MULTIPLE}, got {config.image_size}")
    for name, bad in (("--epochs", config.epochs < 1), ("--batch-size", config.batch_size < 1)):
        if bad:
            problems.append(f"{name} must be at least 1, got {getattr(config, name[2:].replace('-', '_'))}")
    if not 0 <= config.val_fraction < 1:
        problems.append(f"--val-fraction must be in [0, 1), got {config.val_fraction}")
    if min(config.workers, config.threads, config.limit, config.snapshot_every, config.classes, config.seed) < 0:
        problems.append("--workers, --threads, --limit, --snapshot-every, --classes and --seed must not be negative")
    if config.lr <= 0:
        problems.append(f"--lr must be positive, got {config.lr}")
    if config.ema and not 0 < config.ema < 1:
        problems.append(f"--ema must be a decay in (0, 1) such as 0.998 (0 = off), got {config.ema}")
    if config.mixup < 0 or config.cutmix < 0 or not 0 <= config.mix_prob <= 1 or not 0 <= config.mix_switch <= 1:
        problems.append("--mixup and --cutmix must not be negative; --mix-prob and --mix-switch must be in [0, 1]")
    if not 0 <= config.label_smoothing < 1 or not 0 <= config.dropout < 1:
        problems.append("--label-smoothing and --dropout must be in [0, 1)")
    from model.augment import parse_randaugment, parse_size_schedule

    try:
        parse_randaugment(config.randaugment)
        schedule = parse_size_schedule(config.size_schedule)
    except ValueError as err:
        return [*problems, str(err)]
    if schedule and schedule[-1][0] != config.image_size:
        problems.append(f"--size-schedule ends at {schedule[-1][0]} px, the model's input size, but --image-size "
                        f"is {config.image_size} (leave --image-size out)")
    if schedule and sum(e for _, e in schedule) > config.epochs:
        problems.append(f"--size-schedule spans {sum(e for _, e in schedule)} epochs, more than --epochs "
                        f"{config.epochs} (leave --epochs out)")
    return problems
