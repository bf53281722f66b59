"""The training loop of ``python -m model.train``: data, model, epochs, validation, checkpoints, snapshots.

``train(config)`` validates everything (options, data, labels, images, probe images, the checkpoint to resume)
before it creates or replaces anything in the run folder. Every epoch's randomness is a function of
(seed, epoch), and the checkpoint holds every state (weights, EMA, optimizer, schedule, RNG), so a run that is
killed and resumed ends bit for bit where an uninterrupted run does (same device and thread count).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from base.cli import UsageError
from base.labels import write_label_file
from model.augment import (
    MixSettings,
    make_transforms,
    mix_batch,
    parse_randaugment,
    parse_size_schedule,
    size_at,
    soft_cross_entropy,
)
from model.checkpoint import (
    check_architecture,
    check_run_folder,
    clear_run_folder,
    contiguous_state,
    resolve_resume,
    save_checkpoint,
    write_metrics,
)
from model.data import Data, ImageDataset, load_data, load_image
from model.ema import ModelEMA
from model.vgg import VGG

if TYPE_CHECKING:
    from model.config import TrainConfig

# --- one epoch --------------------------------------------------------------------------------------------------

Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def run_epoch(model: nn.Module, loader: Iterable, device: torch.device, config: TrainConfig,
              optimizer: torch.optim.Optimizer | None = None, scheduler: LRScheduler | None = None, desc: str = "",
              ema: ModelEMA | None = None, mixer: Mixer | None = None) -> tuple[float, float]:
    """One pass over ``loader``; trains when an optimizer is given. Returns (mean loss, accuracy) over all ranks.

    ``mixer(images, labels) -> (images, soft targets (N, K))`` mixes training batches (mixup/CutMix); the loss is
    then the cross-entropy against the mixed targets and the accuracy is against the unmixed labels. ``ema`` is
    updated after every optimizer step.
    """
    training = optimizer is not None
    model.train(training)
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count (NaN results when there is nothing)
    show = not dist.is_initialized() or dist.get_rank() == 0
    memory_format = torch.channels_last if getattr(config, "channels_last", False) else torch.contiguous_format
    bar = tqdm(loader, desc=desc, leave=False, disable=not show)
    with torch.set_grad_enabled(training):
        for images, labels in bar:  # images (N, 3, H, W), labels (N,)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            targets = None
            if training and mixer is not None:
                images, targets = mixer(images, labels)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                logits = model(images)  # (N, K)
            smoothing = config.label_smoothing if training else 0.0
            if targets is not None:
                loss = soft_cross_entropy(logits, targets.to(device), smoothing)
            else:
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if ema is not None:
                    ema.update(model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model)
            n = labels.shape[0]
            totals += torch.tensor([loss.item() * n, (logits.argmax(1) == labels).sum().item(), n], dtype=torch.float64)
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}", acc=f"{totals[1] / totals[2]:.3f}")
    if dist.is_initialized():
        dist.all_reduce(totals)
    if totals[2] == 0:
        return math.nan, math.nan
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> LRScheduler | None:
    """The learning-rate schedule over the whole run, stepped once per batch (None for a constant rate)."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=0.15)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return None


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the original PaddlePaddle notebook's) or AdamW, with decoupled weight decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


# --- the run ----------------------------------------------------------------------------------------------------

@dataclass
class Process:
    """Where this process trains, and its place among torchrun's processes."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is usable, else the CPU; any other name as given."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def start_process(config: TrainConfig) -> Process:
    """Pick the device, join torchrun's process group when there is one, set the CPU thread count."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", 0)))
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    return Process(device, *(dist.get_rank(), dist.get_world_size()) if distributed else (0, 1))


@dataclass
class Run:
    """Everything the epochs work on."""

    config: TrainConfig
    process: Process
    data: Data
    model: VGG
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None
    ema: ModelEMA | None
    train_set: ImageDataset
    val_set: ImageDataset
    train_loader: DataLoader
    val_loader: DataLoader
    train_sampler: DistributedSampler | None
    generator: torch.Generator
    probes: torch.Tensor | None  # (P, 3, S, S) at the final size, or None
    rows: list[dict]
    start_epoch: int = 1
    best_acc: float = -1.0


def build_run(config: TrainConfig, process: Process, data: Data) -> Run:
    """Model, optimizer, schedule, EMA, data loaders and probes for ``config`` (nothing written yet)."""
    world, device = process.world, process.device
    if config.batch_size % world:
        raise UsageError(f"--batch-size {config.batch_size} is not divisible by {world} processes")
    per_process = config.batch_size // world
    if len(data.train) // world < per_process:
        raise UsageError(f"{len(data.train)} training images make no full batch of {per_process} per process; "
                         "lower --batch-size or add images")
    _, eval_tf = make_transforms(config.image_size, False)
    probes = None
    if process.main and config.snapshot_every and config.probe:
        probes = torch.stack([eval_tf(load_image(p)) for p in config.probe])
    model = VGG(num_classes=len(data.class_names), batch_norm=config.batch_norm, dropout=config.dropout).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if process.distributed:
        if config.batch_norm and device.type == "cuda":  # SyncBatchNorm has no CPU implementation
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, config)
    train_set, val_set = ImageDataset(data.train, eval_tf), ImageDataset(data.val, eval_tf)
    sampler = (DistributedSampler(train_set, world, process.rank, shuffle=True, seed=config.seed)
               if process.distributed else None)
    generator = torch.Generator()
    pin = device.type == "cuda"
    train_loader = DataLoader(train_set, per_process, shuffle=sampler is None, sampler=sampler, drop_last=True,
                              num_workers=config.workers, generator=generator, persistent_workers=False, pin_memory=pin)
    # Each process validates every world-th image, none twice (DistributedSampler would pad with repeats).
    val_shard = Subset(val_set, range(process.rank, len(val_set), world)) if process.distributed else val_set
    val_loader = DataLoader(val_shard, per_process, num_workers=config.workers, pin_memory=pin)
    scheduler = make_scheduler(optimizer, config, len(train_loader))
    ema = ModelEMA(model, config.ema) if config.ema else None
    return Run(config, process, data, model, net, optimizer, scheduler, ema, train_set, val_set, train_loader,
               val_loader, sampler, generator, probes, rows=[])


def restore(run: Run, state: dict, path: Path) -> None:
    """Put the saved states of ``state`` (a checkpoint) into ``run``; UsageError when they do not fit."""
    check_architecture(state, run.model, path)
    if (state.get("ema") is None) != (run.ema is None):
        raise UsageError(f"{path}: the checkpoint {'lacks' if run.ema else 'has'} EMA weights but the run "
                         f"{'has' if run.ema else 'lacks'} --ema")
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        if run.scheduler is not None and state.get("scheduler"):
            run.scheduler.load_state_dict(state["scheduler"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["rng"]["python"]))
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise UsageError(f"{path}: its training state does not fit this run ({' '.join(str(err).split())[:200]})"
                         ) from None
    run.start_epoch, run.rows, run.best_acc = state["epoch"] + 1, list(state["history"]), state["best_acc"]


def prepare(config: TrainConfig, given: set[str] | None = None) -> tuple[Run, dict | None]:
    """Check the run folder, data and checkpoint and build the run; nothing in ``config.out`` is changed yet.

    ``config``'s values are taken as checked (``model.config.config_problems``).
    """
    config, state = resolve_resume(config, given)
    check_run_folder(config)
    process = start_process(config)
    random.seed(config.seed)
    torch.manual_seed(config.seed)  # the initial weights
    run = build_run(config, process, load_data(config, progress=process.main))
    if state is not None:
        restore(run, state, Path(config.out) / "last.pt")
    return run, state


def open_run_folder(run: Run) -> None:
    """Create (or, with --overwrite, clear) the run folder; write the split, config.json and snapshot 0."""
    config, out = run.config, Path(run.config.out)
    if not run.process.main:
        return
    if config.overwrite and not config.resume:
        clear_run_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    # The split as label files, so that any tool can score exactly the held-out images:
    # python -m demo.predict --labels RUN/val_list.txt --model FILE.onnx
    write_label_file(run.data.train, out / "train_list.txt")
    write_label_file(run.data.val, out / "val_list.txt")
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    if run.probes is not None:
        (out / "evolution").mkdir(exist_ok=True)
        if run.start_epoch == 1:
            snapshot(run, 0, "epoch 0 (random)")


def snapshot(run: Run, epoch: int, title: str) -> None:
    """The feature-evolution PNG of ``epoch`` and its weights, ``evolution/epoch_NNN.png`` and ``.pt`` (the weights
    an export would use: the EMA's when there is one), so that ``python -m export --checkpoint
    RUN/evolution/epoch_NNN.pt`` makes an early model to compare with (``python app.py --compare``)."""
    from model.evolution import evolution_snapshot

    model = run.ema.module if run.ema is not None else run.model
    path = Path(run.config.out) / "evolution" / f"epoch_{epoch:03d}.png"
    evolution_snapshot(model, run.probes.to(run.process.device), path, title)
    weights = {"model": contiguous_state(model), "model_config": model.config(), "epoch": epoch,
               "class_names": run.data.class_names, "input_size": run.config.image_size,
               "config": dataclasses.asdict(run.config)}
    save_checkpoint(weights, path.with_suffix(".pt"))


def train_epoch(run: Run, epoch: int) -> dict:
    """Train one epoch at its scheduled size and validate the raw (and EMA) weights; returns the metrics row."""
    config, device = run.config, run.process.device
    size = size_at(parse_size_schedule(config.size_schedule), epoch, config.image_size)
    train_tf, eval_tf = make_transforms(size, config.augment, parse_randaugment(config.randaugment))
    run.train_set.transform, run.val_set.transform = train_tf, eval_tf  # the loader's workers start each epoch
    # Every epoch's randomness is a function of (seed, epoch): a resumed run repeats it exactly.
    torch.manual_seed(config.seed * 100_003 + epoch)
    run.generator.manual_seed(config.seed * 100_003 + epoch)
    if run.train_sampler is not None:
        run.train_sampler.set_epoch(epoch)
    settings = MixSettings(config.mixup, config.cutmix, config.mix_prob, config.mix_switch)
    mixer = (partial(mix_batch, num_classes=len(run.data.class_names), settings=settings,
                     rng=np.random.default_rng([config.seed, epoch, run.process.rank])) if settings.enabled else None)
    started, tag = time.time(), f"epoch {epoch}/{config.epochs}"
    train_loss, train_acc = run_epoch(run.net, run.train_loader, device, config, run.optimizer, run.scheduler,
                                      desc=f"{tag} train {size}px", ema=run.ema, mixer=mixer)
    # The bare model: no DDP collectives in a forward that ranks may run a different number of times.
    val_loss, val_acc = run_epoch(run.model, run.val_loader, device, config, desc=f"{tag} val")
    row = {"epoch": epoch, "size": size, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
           "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5)}
    if run.ema is not None:
        ema_loss, ema_acc = run_epoch(run.ema.module, run.val_loader, device, config, desc=f"{tag} val EMA")
        row.update(ema_val_loss=round(ema_loss, 5), ema_val_acc=round(ema_acc, 5))
    row.update(lr=run.optimizer.param_groups[0]["lr"], seconds=round(time.time() - started, 1))
    return row


def checkpoint_of(run: Run, epoch: int, val_acc: float) -> dict:
    """The checkpoint dict after ``epoch`` (see model.checkpoint for the keys)."""
    config = run.config
    return {
        "model": contiguous_state(run.model), "ema": run.ema.state_dict() if run.ema is not None else None,
        "model_config": run.model.config(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "epoch": epoch, "config": dataclasses.asdict(config), "class_names": run.data.class_names,
        "input_size": config.image_size, "val_acc": val_acc, "best_acc": run.best_acc, "history": run.rows,
        "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
    }


def finish_epoch(run: Run, row: dict) -> None:
    """Print the epoch, save last.pt (and best.pt), metrics.csv, curves.png and the evolution snapshot."""
    epoch, out, config = row["epoch"], Path(run.config.out), run.config
    val_acc = row.get("ema_val_acc", row["val_acc"])  # the weights an export uses
    ema = f" | EMA val loss {row['ema_val_loss']:.4f} acc {row['ema_val_acc']:.4f}" if run.ema is not None else ""
    print(f"epoch {epoch} ({row['size']} px): train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
          f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}{ema} | {row['seconds']:.0f} s", flush=True)
    is_best = math.isnan(val_acc) or val_acc > run.best_acc  # no validation set: the last is the best there is
    if not math.isnan(val_acc):
        run.best_acc = max(run.best_acc, val_acc)
    checkpoint = checkpoint_of(run, epoch, val_acc)
    save_checkpoint(checkpoint, out / "last.pt")
    if is_best:
        save_checkpoint(checkpoint, out / "best.pt")
    write_metrics(run.rows, out)
    if run.probes is not None and (epoch % config.snapshot_every == 0 or epoch == config.epochs):
        snapshot(run, epoch, f"epoch {epoch} (val acc {val_acc:.3f})")


def train(config: TrainConfig, given: set[str] | None = None) -> dict:
    """Run (or resume) training; returns the final metrics row. Works alone or under torchrun.

    ``given``: the options set on the command line (for --resume's check of changed settings), None from Python.
    Bad input raises ``UsageError`` (or another ValueError) before anything in ``config.out`` is written.
    """
    run, state = prepare(config, given)
    process = run.process
    if process.main:
        d = run.data
        print(f"{d.total} images, {len(d.class_names)} classes: {len(d.train)} train / {len(d.val)} validation "
              f"(duplicate-safe split, seed {run.config.seed}); device {process.device}, {process.world} process(es)")
        if state is not None:
            print(f"resumed {Path(run.config.out) / 'last.pt'} after epoch {state['epoch']} "
                  f"(best validation accuracy {run.best_acc:.4f})", flush=True)
    del state  # the checkpoint's tensors are in the run now
    open_run_folder(run)
    row: dict = run.rows[-1] if run.rows else {}
    for epoch in range(run.start_epoch, run.config.epochs + 1):
        row = train_epoch(run, epoch)
        run.rows.append(row)
        if process.main:
            finish_epoch(run, row)
    if process.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return row
