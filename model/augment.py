"""Training-time data choices: the image transforms, the progressive-resizing schedule, mixup and CutMix.

Everything random here is drawn from generators seeded by (seed, epoch) or from the DataLoader's own seeded
workers, so a resumed run repeats each epoch exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import transforms

from base.spec import MEAN, SIZE_MULTIPLE, STD

# --- transforms -------------------------------------------------------------------------------------------------


def make_transforms(size: int, augment: bool,
                    randaugment: tuple[int, int] | None = None) -> tuple[transforms.Compose, transforms.Compose]:
    """Training and evaluation transforms: PIL RGB -> (3, size, size) float32, normalised with MEAN/STD.

    Evaluation: short side resized to ``size``, centre crop. Training with ``augment``: random resized crop
    (35-100% of the area, aspect 3/4-4/3), horizontal flip, colour jitter, and torchvision's RandAugment with
    ``randaugment = (N ops, magnitude M of 0-30)`` when given.
    """
    normalise = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    evaluate = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), *normalise])
    if not augment:
        return evaluate, evaluate
    steps: list = [
        transforms.RandomResizedCrop(size, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.3, 0.3, 0.3, 0.03),
    ]
    if randaugment is not None:
        steps.append(transforms.RandAugment(num_ops=randaugment[0], magnitude=randaugment[1]))
    return transforms.Compose([*steps, *normalise]), evaluate


def parse_randaugment(text: str) -> tuple[int, int] | None:
    """``"N,M"`` -> (N, M): N operations per image (1-10), magnitude M (0-30); ``""`` -> None."""
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--randaugment expects N,M (two integers, e.g. 2,9), got {text!r}")
    n, m = (int(p) for p in parts)
    if not 1 <= n <= 10 or not 0 <= m <= 30:
        raise ValueError(f"--randaugment N,M needs 1 <= N <= 10 and 0 <= M <= 30, got {text!r}")
    return n, m


# --- progressive resizing ---------------------------------------------------------------------------------------


def parse_size_schedule(text: str) -> list[tuple[int, int]]:
    """``"64:20,80:15,112:12"`` -> [(64, 20), (80, 15), (112, 12)]: (side in pixels, epochs) in training order.

    Sides must be positive multiples of 16 (four 2x2 pools), epochs at least 1; ``""`` -> [] (one size).
    """
    if not text:
        return []
    schedule = []
    for part in text.split(","):
        fields = part.strip().split(":")
        if len(fields) != 2 or not all(f.strip().isdigit() for f in fields):
            raise ValueError(f"--size-schedule expects SIZE:EPOCHS pairs separated by commas (e.g. 64:20,112:12), "
                             f"got {part.strip()!r}")
        size, epochs = int(fields[0]), int(fields[1])
        if size <= 0 or size % SIZE_MULTIPLE:
            raise ValueError(f"--size-schedule: sizes must be positive multiples of {SIZE_MULTIPLE}, got {size}")
        if epochs < 1:
            raise ValueError(f"--size-schedule: each size needs at least 1 epoch, got {size}:{epochs}")
        schedule.append((size, epochs))
    return schedule


def size_at(schedule: list[tuple[int, int]], epoch: int, default: int) -> int:
    """Training image side for ``epoch`` (1-based); the last size goes on after the schedule ends."""
    end = 0
    for size, epochs in schedule:
        end += epochs
        if epoch <= end:
            return size
    return schedule[-1][0] if schedule else default


# --- mixup and CutMix -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixSettings:
    """mixup / CutMix: Beta(alpha, alpha) mixing weights; 0 switches a method off."""

    mixup: float = 0.0  # mixup alpha
    cutmix: float = 0.0  # CutMix alpha
    prob: float = 1.0  # share of batches that are mixed at all
    switch: float = 0.5  # with both on: share of mixed batches that use CutMix

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0


def mix_batch(images: Tensor, labels: Tensor, num_classes: int, settings: MixSettings,
              rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Mix a batch with itself in a random order; returns (images (N, C, H, W), soft targets (N, num_classes)).

    mixup: ``lam * x + (1 - lam) * x[perm]``; CutMix: a box of ``x[perm]`` pasted into ``x``, ``lam`` then being
    the share of pixels left from ``x``. Targets are ``lam * onehot(y) + (1 - lam) * onehot(y[perm])``; a batch
    left unmixed gets plain one-hot targets. All draws come from ``rng``.
    """
    targets = F.one_hot(labels, num_classes).to(torch.float32)
    if not settings.enabled or rng.random() >= settings.prob:
        return images, targets
    use_cutmix = settings.cutmix > 0 and (settings.mixup <= 0 or rng.random() < settings.switch)
    lam = float(rng.beta(settings.cutmix, settings.cutmix) if use_cutmix else rng.beta(settings.mixup, settings.mixup))
    perm = torch.from_numpy(rng.permutation(images.shape[0]))
    if use_cutmix:
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        images = images.clone()
        images[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)
    else:
        images = lam * images + (1 - lam) * images[perm]
    return images, lam * targets + (1 - lam) * targets[perm]


def soft_cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of logits (N, K) against probability targets (N, K), smoothed as torch does:
    ``targets * (1 - eps) + eps / K``. For one-hot targets it equals ``F.cross_entropy(logits, labels, eps)``."""
    k = logits.shape[1]
    smoothed = targets * (1 - label_smoothing) + label_smoothing / k
    return -(smoothed * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
