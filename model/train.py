"""Train the seed's VGG16 on cat-12 (or any labelled image folder), with checkpoints that resume exactly.

    python -m model.train --data ../shared/data/cat12 --out runs/seed            # the seed's recipe
    python -m model.train --data ../shared/data/cat12 --out runs/bn128 --batch-norm --image-size 128 \
        --optimizer adamw --lr 2e-3 --schedule onecycle --label-smoothing 0.1 --epochs 30 --amp
    python -m model.train --out runs/bn128 --resume                                # go on after a kill
    python -m model.train --out runs/bn128 --resume --epochs 50                    # or train it for longer
    torchrun --nproc-per-node 2 -m model.train ...                                 # several GPUs (or CPU/gloo)

Per epoch it writes ``metrics.csv`` and ``curves.png`` (loss and accuracy), ``last.pt`` and ``best.pt``
(atomically: temporary file, then rename), and every ``--snapshot-every`` epochs the deconvnet projections of
the probe images for all 13 layers (``evolution/epoch_NNN.png``), the paper's Fig. 4 as training goes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from torchvision import transforms
from tqdm import tqdm

from model.data import ImageDataset, check_images, find_samples, load_image, split_samples, write_label_file
from model.spec import CAT12_BREEDS, MEAN, SIZE_MULTIPLE, STD
from model.vgg import VGG

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
    image_size: int = 224
    batch_norm: bool = False
    dropout: float = 0.0
    augment: bool = True  # random resized crop, flip, colour jitter
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bfloat16 autocast (CPUs with AVX512-BF16/AMX, recent GPUs)
    threads: int = 0  # torch intra-op threads on CPU, 0 = all cores
    snapshot_every: int = 5  # feature-evolution snapshot every N epochs (0 = never)
    probe: list[str] = field(default_factory=lambda: [str(DEFAULT_PROBE)])
    resume: bool = False
    limit: int = 0  # use only the first N training images (quick trials and tests), 0 = all


# On --resume the run's saved settings are kept; only these may be given anew (how long, on what, with what data).
RESUME_OVERRIDES = ("epochs", "workers", "device", "threads", "data")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m model.train``; its defaults are TrainConfig's."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train VGG16 on cat-12 (or any labelled images) and watch its features form. Writes "
                    "metrics.csv, curves.png, last.pt, best.pt and evolution/epoch_NNN.png into --out.",
        epilog="With --resume, the run's saved settings are used; only --epochs, --workers, --device, --threads "
               "and --data may be given anew (a scheduled run keeps its --epochs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=d.data, help="label file ('path<TAB>label' lines), a folder holding "
                   "train_list.txt, or an ImageFolder tree (one sub-folder per class)")
    p.add_argument("--out", default=d.out, help="run folder for checkpoints, metrics.csv, curves.png, evolution/")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training images")
    p.add_argument("--batch-size", "--batch", type=int, default=d.batch_size, help="images per step, all processes")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (the peak for onecycle)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=d.optimizer)
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=("constant", "cosine", "onecycle"), default=d.schedule,
                   help="learning-rate schedule over the whole run")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--image-size", type=int, default=d.image_size, help="side in pixels, a multiple of 16")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=d.batch_norm,
                   help="BatchNorm after each conv (folded into the convs at export)")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the classifier")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=d.augment,
                   help="random resized crops, horizontal flips and colour jitter")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="held-out share of each class, in [0, 1); 0 = no validation")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split, the initial weights and the batches")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loading processes (0 = in the main one)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp, help="bfloat16 autocast")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for torch, 0 = all cores")
    p.add_argument("--snapshot-every", type=int, default=d.snapshot_every,
                   help="save the deconvnet projections of the probe images every N epochs (0 = never)")
    p.add_argument("--probe", nargs="+", default=d.probe, help="probe images for the feature-evolution snapshots")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--limit", type=int, default=d.limit,
                   help="train on N training images drawn at random with --seed (0 = all)")
    return p


def given_options(argv: list[str] | None = None) -> set[str]:
    """The TrainConfig fields that ``argv`` sets explicitly (as opposed to leaving at their defaults)."""
    unset = object()  # not a string, so argparse never runs it through an option's type
    p = build_parser()
    p.set_defaults(**{f.name: unset for f in dataclasses.fields(TrainConfig)})
    return {name for name, value in vars(p.parse_args(argv)).items() if value is not unset}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from the command line; with --resume, the run's saved settings fill what is not given."""
    p = build_parser()
    config = TrainConfig(**vars(p.parse_args(argv)))
    problems = [
        (config.image_size <= 0 or config.image_size % SIZE_MULTIPLE,
         f"--image-size must be a positive multiple of {SIZE_MULTIPLE}, got {config.image_size}"),
        (config.epochs < 1, f"--epochs must be at least 1, got {config.epochs}"),
        (config.batch_size < 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (not 0 <= config.val_fraction < 1, f"--val-fraction must be in [0, 1), got {config.val_fraction}"),
        (config.workers < 0 or config.threads < 0 or config.limit < 0 or config.snapshot_every < 0,
         "--workers, --threads, --limit and --snapshot-every must not be negative"),
        (config.lr <= 0, f"--lr must be positive, got {config.lr}"),
    ]
    for bad, message in problems:
        if bad:
            p.error(message)
    if config.resume:
        last = Path(config.out) / "last.pt"
        if not last.is_file():
            p.error(f"--resume: {last} does not exist")
        saved = torch.load(last, map_location="cpu", weights_only=True)["config"]
        given = given_options(argv)
        changed = sorted(k for k in given - {"resume", "out", *RESUME_OVERRIDES} if saved.get(k) != getattr(config, k))
        if changed:
            p.error(f"--resume keeps the run's own settings; {', '.join('--' + k.replace('_', '-') for k in changed)} "
                    f"differ from {last} (only {', '.join('--' + k for k in RESUME_OVERRIDES)} may change)")
        config = TrainConfig(**{**saved, **{k: getattr(config, k) for k in given if k in RESUME_OVERRIDES},
                                "out": config.out, "resume": True})
    return config


# --- data -------------------------------------------------------------------------------------------------------

def make_transforms(size: int, augment: bool) -> tuple[transforms.Compose, transforms.Compose]:
    """Training and evaluation transforms: PIL RGB -> (3, size, size) float32, normalised with MEAN/STD."""
    normalise = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    evaluate = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), *normalise])
    if not augment:
        return evaluate, evaluate
    train = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.3, 0.3, 0.3, 0.03),
        *normalise,
    ])
    return train, evaluate


def class_names_for(data: str, found: list[str] | None, num_classes: int) -> list[str]:
    """Class names: the ImageFolder's, cat-12's breeds for a cat-12 folder, else ``class 0`` ... ."""
    if found is not None:
        return found
    if num_classes == len(CAT12_BREEDS) and re.search(r"cat[ _-]?12", str(Path(data).resolve()).lower()):
        return list(CAT12_BREEDS)
    return [f"class {i}" for i in range(num_classes)]


# --- checkpoints and logs --------------------------------------------------------------------------------------

def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, flushed to disk, then renamed over ``path``.

    A crash at any point leaves either the old file or the new one at ``path``, never a partial file.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for key, style in (("train", "-"), ("val", "--")):
        ax1.plot(epochs, [r[f"{key}_loss"] for r in rows], style, label=key)
        ax2.plot(epochs, [r[f"{key}_acc"] for r in rows], style, label=key)
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_metrics(rows: list[dict], out: Path) -> None:
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_curves(rows, out / "curves.png")


# --- feature evolution ------------------------------------------------------------------------------------------

@torch.no_grad()
def evolution_snapshot(model: VGG, probes: torch.Tensor, path: Path, title: str) -> None:
    """Deconvnet projections of each probe (rows) for all 13 conv layers (columns), saved as one PNG."""
    from model.deconvnet import Deconvnet

    was_training = model.training
    model.eval()
    try:
        features = model.forward_all(probes)
        deconvnet = Deconvnet(model)
        images = {layer: deconvnet.project(features.activations, features.switches, layer).images.float().cpu().numpy()
                  for layer in features.activations}
    finally:
        model.train(was_training)
    save_layer_grid(images, path, title)


def save_layer_grid(images: dict[str, np.ndarray], path: Path, title: str) -> None:
    """One PNG: a row per probe image, a column per layer; each tile min-max stretched on its own (RGB kept)."""
    import matplotlib

    from demo.display import reconstruction_image

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(images)
    n = next(iter(images.values())).shape[0]
    fig, axes = plt.subplots(n, len(layers), figsize=(1.4 * len(layers), 1.5 * n + 0.4), dpi=100, squeeze=False)
    for col, layer in enumerate(layers):
        for row in range(n):
            ax = axes[row, col]
            ax.imshow(reconstruction_image(images[layer][row], "minmax")[0])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(layer, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- the loop ---------------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def run_epoch(model: nn.Module, loader: DataLoader, device: torch.device, config: TrainConfig,
              optimizer: torch.optim.Optimizer | None = None, scheduler=None, desc: str = "") -> tuple[float, float]:
    """One pass over ``loader``; trains when an optimizer is given. Returns (mean loss, accuracy) over all ranks."""
    training = optimizer is not None
    model.train(training)
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count (NaN results when there is nothing)
    show = not dist.is_initialized() or dist.get_rank() == 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not show)
    with torch.set_grad_enabled(training):
        for images, labels in bar:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing if training else 0.0)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            n = labels.shape[0]
            totals += torch.tensor([loss.item() * n, (logits.argmax(1) == labels).sum().item(), n], dtype=torch.float64)
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}", acc=f"{totals[1] / totals[2]:.3f}")
    if dist.is_initialized():
        dist.all_reduce(totals)
    if totals[2] == 0:
        return math.nan, math.nan
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=0.15)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return None


def train(config: TrainConfig) -> dict:
    """Run (or resume) training; returns the final metrics row. Works alone or under torchrun."""
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(config.device, local_rank)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.batch_size % world:
        raise ValueError(f"--batch-size {config.batch_size} is not divisible by {world} processes")
    out = Path(config.out)
    main_process = rank == 0
    if main_process:
        out.mkdir(parents=True, exist_ok=True)

    last_path = out / "last.pt"
    state = None
    if config.resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume: {last_path} does not exist")
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        saved = state["config"]
        # The run's own settings win, except where the user asks for more epochs or another machine setup.
        keep = {*RESUME_OVERRIDES, "resume", "out"}
        config = TrainConfig(**{**saved, **{k: getattr(config, k) for k in keep}})
        if config.schedule != "constant" and config.epochs != saved["epochs"]:
            raise ValueError(f"--resume: the {config.schedule} schedule of {last_path} spans {saved['epochs']} epochs; "
                             f"it cannot be stretched to {config.epochs} (resume with --epochs {saved['epochs']})")

    seed_everything(config.seed)
    samples, found_classes = find_samples(config.data)
    samples, digests = check_images(samples, progress=main_process)
    num_classes = max(s.label for s in samples) + 1
    class_names = class_names_for(config.data, found_classes, num_classes)
    train_samples, val_samples = split_samples(samples, digests, config.val_fraction, config.seed)
    if config.limit:
        train_samples = random.Random(config.seed).sample(train_samples, min(config.limit, len(train_samples)))
    train_tf, eval_tf = make_transforms(config.image_size, config.augment)
    train_set, val_set = ImageDataset(train_samples, train_tf), ImageDataset(val_samples, eval_tf)
    if main_process:
        print(f"{len(samples)} images, {num_classes} classes: {len(train_set)} train / {len(val_set)} validation "
              f"(duplicate-safe split, seed {config.seed}); device {device}, {world} process(es)")
        # The split as label files, so that any tool can score exactly the held-out images:
        # python -m demo.predict --labels RUN/val_list.txt --model FILE.onnx
        write_label_file(train_samples, out / "train_list.txt")
        write_label_file(val_samples, out / "val_list.txt")

    model = VGG(num_classes=num_classes, batch_norm=config.batch_norm, dropout=config.dropout).to(device)
    if distributed and config.batch_norm and device.type == "cuda":  # SyncBatchNorm has no CPU implementation
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    per_process = config.batch_size // world
    train_sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=config.seed) if distributed else None
    loader_generator = torch.Generator()
    train_loader = DataLoader(train_set, per_process, shuffle=train_sampler is None, sampler=train_sampler,
                              num_workers=config.workers, drop_last=True, generator=loader_generator,
                              persistent_workers=False, pin_memory=device.type == "cuda")
    if not len(train_loader):
        raise ValueError(f"{len(train_set)} training images make no full batch of {per_process} per process; "
                         "lower --batch-size or add images")
    # Each process validates every world-th image, none twice (DistributedSampler would pad with repeats).
    val_shard = Subset(val_set, range(rank, len(val_set), world)) if distributed else val_set
    val_loader = DataLoader(val_shard, per_process, num_workers=config.workers, pin_memory=device.type == "cuda")
    scheduler = make_scheduler(optimizer, config, len(train_loader))

    start_epoch, rows, best_acc = 1, [], -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, rows, best_acc = state["epoch"] + 1, state["history"], state["best_acc"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["rng"]["python"]))
        if main_process:
            print(f"resumed {last_path} after epoch {state['epoch']} (best validation accuracy {best_acc:.4f})")

    probes = None
    if main_process and config.snapshot_every and config.probe:
        probes = torch.stack([eval_tf(load_image(p)) for p in config.probe])
        (out / "evolution").mkdir(exist_ok=True)
        if start_epoch == 1:
            evolution_snapshot(model, probes.to(device), out / "evolution" / "epoch_000.png", "epoch 0 (random)")
    if main_process:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))

    row: dict = rows[-1] if rows else {}
    for epoch in range(start_epoch, config.epochs + 1):
        # Every epoch's randomness is a function of (seed, epoch): a resumed run repeats it exactly.
        torch.manual_seed(config.seed * 100_003 + epoch)
        loader_generator.manual_seed(config.seed * 100_003 + epoch)
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        started = time.time()
        train_loss, train_acc = run_epoch(net, train_loader, device, config, optimizer, scheduler,
                                          desc=f"epoch {epoch}/{config.epochs} train")
        # The bare model: no DDP collectives in a forward that ranks may run a different number of times.
        val_loss, val_acc = run_epoch(model, val_loader, device, config, desc=f"epoch {epoch}/{config.epochs} val")
        row = {"epoch": epoch, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
               "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5),
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - started, 1)}
        rows.append(row)
        if not main_process:
            continue
        print(f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
              f"val loss {val_loss:.4f} acc {val_acc:.4f} | {row['seconds']:.0f} s", flush=True)
        if math.isnan(val_acc):  # no validation set: the last is the best there is
            is_best = True
        else:
            is_best, best_acc = val_acc > best_acc, max(best_acc, val_acc)
        checkpoint = {
            "model": model.state_dict(), "model_config": model.config(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch, "config": dataclasses.asdict(config), "class_names": class_names,
            "input_size": config.image_size, "val_acc": val_acc, "best_acc": best_acc, "history": rows,
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
        }
        save_atomic(checkpoint, last_path)
        if is_best:
            save_atomic(checkpoint, out / "best.pt")
        write_metrics(rows, out)
        if probes is not None and (epoch % config.snapshot_every == 0 or epoch == config.epochs):
            evolution_snapshot(model, probes.to(device), out / "evolution" / f"epoch_{epoch:03d}.png",
                               f"epoch {epoch} (val acc {val_acc:.3f})")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return row


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
