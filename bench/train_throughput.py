"""How much of the training step's speed survives the real data pipeline? Images/s, measured side by side.

For each image size, in one run and on one model:

- **real loop**: the training's own pieces (model/augment.py, model/loop.py) - ``make_transforms`` (random
  resized crop, flip, colour jitter, normalise), ``ImageDataset`` (JPEG decoding, EXIF transpose, RGB), a
  shuffling ``DataLoader`` with ``--workers`` processes and ``run_epoch`` (forward, cross-entropy, backward,
  optimizer step, metrics);
- **bare loop**: forward, cross-entropy, backward and the same optimizer step on one fixed batch already in memory
  (on the device), i.e. the ceiling the data pipeline can at best reach.

The ratio real / bare says how much time goes to data loading (1.0: none; the pipeline keeps up). The images
come from ../shared/data/cat12 when it is there, else from generated JPEGs (400 x 300) in a temporary folder.
Each loop first runs ``--warmup`` untimed batches (kernels, allocator, page cache). The real loop is then timed
over one whole epoch of ``--steps`` batches, as train.py runs it: the data-loading workers start afresh (train.py
does not keep them between epochs) and the first batch is waited for, amortised over ``--steps`` batches here
instead of a whole epoch, so few steps understate the real loop a little.

    python bench/train_throughput.py                          # 3 timed batches of 16 at 128 and 224
    python bench/train_throughput.py --steps 20 --batch-size 32 --workers 4 --amp --sizes 128 224
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from base.labels import Sample, find_samples  # noqa: E402
from model.augment import make_transforms  # noqa: E402
from model.config import TrainConfig  # noqa: E402
from model.data import ImageDataset  # noqa: E402
from model.loop import pick_device, run_epoch  # noqa: E402
from model.vgg import VGG  # noqa: E402


@dataclass
class BenchConfig:
    data: str = str(REPO.parent / "shared" / "data" / "cat12")  # used when present, else generated JPEGs
    sizes: list[int] = field(default_factory=lambda: [128, 224])  # image sides in pixels
    batch_size: int = 16
    steps: int = 3  # timed batches per loop
    warmup: int = 1  # untimed batches before them
    workers: int = 2  # data-loading processes of the real loop
    amp: bool = False  # bfloat16 autocast in both loops
    batch_norm: bool = False
    threads: int = 0  # torch intra-op threads, 0 = torch's default
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(
        description="Images/s of the real training loop (JPEG decoding, augmentation, DataLoader, step) against a "
                    "bare forward/backward/step loop on a fixed in-memory batch, and their ratio, per image size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=d.data, help="label file, folder with train_list.txt, or ImageFolder; "
                   "generated JPEGs when it does not exist")
    p.add_argument("--sizes", type=int, nargs="+", default=d.sizes, help="image sides in pixels (multiples of 16)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--steps", type=int, default=d.steps, help="timed batches per loop")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed batches before the timed ones")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loading processes of the real loop")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp, help="bfloat16 autocast")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=d.batch_norm)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads, 0 = torch's default")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=d.seed)
    config = BenchConfig(**vars(p.parse_args(argv)))
    if any(s <= 0 or s % 16 for s in config.sizes):
        p.error(f"--sizes must be positive multiples of 16, got {config.sizes}")
    if config.steps < 1 or config.batch_size < 1 or config.warmup < 0:
        p.error("--steps and --batch-size must be at least 1, --warmup at least 0")
    return config


def generate_jpegs(folder: Path, count: int, seed: int) -> list[Sample]:
    """``count`` 400 x 300 JPEGs (smooth colour fields plus noise, quality 90, like the real photos), 12 labels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:300, 0:400].astype(np.float32)
    samples = []
    for i in range(count):
        f = rng.uniform(0.005, 0.05, 3)
        base = 127 + 100 * np.sin(x[..., None] * f + y[..., None] * f[::-1] + rng.uniform(0, 6, 3))
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        samples.append(Sample(path, i % 12))
    return samples


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(config: BenchConfig, device: torch.device) -> tuple[VGG, torch.optim.Optimizer]:
    torch.manual_seed(config.seed)
    model = VGG(num_classes=12, batch_norm=config.batch_norm).to(device)
    d = TrainConfig()  # the original notebook's optimizer
    optimizer = torch.optim.SGD(model.parameters(), lr=d.lr, momentum=d.momentum, weight_decay=d.weight_decay)
    return model, optimizer


def real_loop(config: BenchConfig, samples: list[Sample], size: int, device: torch.device) -> float:
    """Images/s of the training loop (model/loop.py): a DataLoader decoding and augmenting JPEGs, fed to run_epoch.

    An untimed epoch of ``warmup`` batches first (kernels, allocator, page cache); then one timed epoch of
    ``steps`` batches from a fresh loader, workers started afresh as train.py does every epoch.
    """
    model, optimizer = make_model(config, device)
    train_tf, _ = make_transforms(size, augment=True)
    generator = torch.Generator().manual_seed(config.seed)
    train_config = TrainConfig(amp=config.amp, image_size=size)

    def epoch(batches: int, desc: str) -> float:
        dataset = ImageDataset(samples[: batches * config.batch_size], train_tf)
        loader = DataLoader(dataset, config.batch_size, shuffle=True, drop_last=True, num_workers=config.workers,
                            generator=generator, pin_memory=device.type == "cuda")
        started = time.perf_counter()
        run_epoch(model, loader, device, train_config, optimizer, desc=desc)  # loss.item() syncs every step
        return time.perf_counter() - started

    if config.warmup:
        epoch(config.warmup, f"real {size} warm-up")
    return config.steps * config.batch_size / epoch(config.steps, f"real {size}")


def bare_loop(config: BenchConfig, size: int, device: torch.device) -> float:
    """Images/s of forward + cross-entropy + backward + step on one fixed batch already on the device."""
    model, optimizer = make_model(config, device)
    model.train()
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.randn(config.batch_size, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 12, (config.batch_size,), generator=generator).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # as run_epoch does

    for _ in range(config.warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(config.steps):
        step()
    synchronize(device)
    return config.steps * config.batch_size / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> list[dict]:
    config = parse_args(argv)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device, 0)
    needed = (config.warmup + config.steps) * config.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        if Path(config.data).exists():
            samples, _ = find_samples(config.data)
            source = f"{config.data} ({len(samples)} images)"
        else:
            samples, source = generate_jpegs(Path(tmp), needed, config.seed), f"{needed} generated 400x300 JPEGs"
        if len(samples) < needed:
            raise SystemExit(f"{needed} images needed, {len(samples)} found in {config.data}")
        samples = [samples[i] for i in np.random.default_rng(config.seed).permutation(len(samples))[:needed]]
        print(f"device {device}, {torch.get_num_threads()} threads, {config.workers} workers, batch "
              f"{config.batch_size}, {config.steps} timed + {config.warmup} warm-up steps, amp {config.amp}, "
              f"batch norm {config.batch_norm}; images: {source}")
        results = []
        for size in config.sizes:
            bare = bare_loop(config, size, device)
            real = real_loop(config, samples, size, device)
            results.append({"size": size, "real": real, "bare": bare, "ratio": real / bare})
    print(f"\n{'size':>6} {'real img/s':>12} {'bare img/s':>12} {'real/bare':>10}")
    for r in results:
        print(f"{r['size']:>6} {r['real']:>12.2f} {r['bare']:>12.2f} {r['ratio']:>10.2f}")
    return results


if __name__ == "__main__":
    main()
