"""The cat-12 data for training: robust image loading, a duplicate-safe split, the training data set.

Which files carry which class (label files, ImageFolder trees) is ``base.labels``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from base import images
from base.labels import Sample, find_samples
from base.spec import CAT12_BREEDS, default_class_names

if TYPE_CHECKING:
    from model.config import TrainConfig


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB through the one safe decoding path (``base.images``); ``ImageError``
    (a ValueError naming the file and the reason) when it is not a usable image."""
    return images.open_image(path)


def file_digest(path: str | Path) -> str:
    """SHA-1 of the file's bytes (identifies byte-identical duplicates)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def warn_line(message: str) -> None:
    """Print ``warning: message`` as one line on stderr (above any progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def check_images(samples: Sequence[Sample], progress: bool = True,
                 warn: Callable[[str], None] = warn_line) -> tuple[list[Sample], list[str]]:
    """Decode every image once; keep the readable ones, report each unreadable one by name through ``warn``.

    Returns the readable samples and their SHA-1 digests (same order). A missing or unreadable file is one
    ``warn`` line (``skipping unreadable image PATH: reason``), then a count; ``ValueError`` when none is usable.
    """
    from tqdm import tqdm

    good, digests, bad = [], [], 0
    for sample in tqdm(samples, desc="checking images", disable=not progress, leave=False):
        try:
            decoded = images.open_file(sample.path)
        except images.ImageError as error:
            warn(f"skipping unreadable image {error}")
            bad += 1
            continue
        good.append(sample)
        digests.append(decoded.digest)
    if bad:
        warn(f"skipped {bad} unreadable image(s) of {len(samples)}")
    if samples and not good:
        raise ValueError(f"none of the {len(samples)} images can be read (the first: {samples[0].path})")
    return good, digests


def split_samples(samples: Sequence[Sample], digests: Sequence[str], val_fraction: float = 0.2,
                  seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """A stratified train/validation split that keeps byte-identical files on one side.

    Files are grouped by digest; whole groups are drawn per class (the class of the group's first file) until
    the class's validation share reaches ``val_fraction`` of its files (rounded; at least one group when
    ``val_fraction > 0`` and the class has two groups or more, so every class is validated). Deterministic for a
    given seed.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample, digest in zip(samples, digests, strict=True):
        groups[digest].append(sample)
    by_class: dict[int, list[str]] = defaultdict(list)
    for digest, members in groups.items():
        by_class[members[0].label].append(digest)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        rng.shuffle(keys)
        total = sum(len(groups[k]) for k in keys)
        target, taken = round(val_fraction * total), 0
        if val_fraction > 0 and len(keys) > 1:
            target = max(target, 1)
        for key in keys:
            side = val if taken < target else train
            if side is val:
                taken += len(groups[key])
            side.extend(groups[key])
    return train, val


class ImageDataset:
    """A map-style dataset of (transform(image), label) pairs; works as a torch DataLoader's dataset."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], object]) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        return self.transform(load_image(sample.path)), sample.label


# --- a run's data --------------------------------------------------------------------------------------------------

@dataclass
class Data:
    """The labelled images of a run, split, and what the classes are called."""

    train: list[Sample]
    val: list[Sample]
    class_names: list[str]
    total: int  # readable images before the split


def is_cat12(data: str) -> bool:
    """Whether the data path looks like cat-12's (``cat12``, ``cat_12``, ``cat-12`` somewhere in it)."""
    return re.search(r"cat[ _-]?12", str(Path(data).resolve()).lower()) is not None


def class_names_for(data: str, found: list[str] | None, num_classes: int) -> list[str]:
    """Class names: the ImageFolder's, cat-12's breeds for a cat-12 folder, else ``class_0`` ... ."""
    if found is not None:
        return found
    if num_classes == len(CAT12_BREEDS) and is_cat12(data):
        return list(CAT12_BREEDS)
    return default_class_names(num_classes)


def shuffle_labels(samples: Sequence[Sample], seed: int) -> list[Sample]:
    """The same files with their labels randomly permuted among them (seeded): the class counts stay the same, but a
    label says nothing about its image (the data-randomization test of Adebayo et al. 2018, arXiv 1810.03292)."""
    labels = [s.label for s in samples]
    random.Random(f"shuffle-labels-{seed}").shuffle(labels)
    return [dataclasses.replace(s, label=label) for s, label in zip(samples, labels, strict=True)]


def load_data(config: TrainConfig, progress: bool) -> Data:
    """Read and check the labels and images of ``config.data`` (a TrainConfig) and split them.

    Bad labels, a missing data path or no readable image raise ValueError/FileNotFoundError naming the file.
    """
    classes = config.classes or (len(CAT12_BREEDS) if is_cat12(config.data) else None)
    samples, found = find_samples(config.data, classes)
    samples, digests = check_images(samples, progress=progress)
    num_classes = classes or (len(found) if found is not None else max(s.label for s in samples) + 1)
    train_samples, val_samples = split_samples(samples, digests, config.val_fraction, config.seed)
    if config.limit:
        train_samples = random.Random(config.seed).sample(train_samples, min(config.limit, len(train_samples)))
    if getattr(config, "shuffle_labels", False):
        train_samples = shuffle_labels(train_samples, config.seed)
    return Data(train_samples, val_samples, class_names_for(config.data, found, num_classes), len(samples))


# --- the split as a file: ``python -m model.data --split`` -------------------------------------------------------

@dataclass
class SplitConfig:
    """One listing of the split; every field is a command-line option of the same name."""

    data: str  # label file, folder holding train_list.txt, or ImageFolder tree
    out: str  # the list to write
    val_fraction: float = 0.2
    seed: int = 0
    part: str = "val"  # val (held out) or train
    classes: int | None = None


def data_root(data: str | Path) -> Path:
    """The folder the paths of ``data`` are written relative to: a label file's folder, else ``data`` itself."""
    data = Path(data)
    return data.parent if data.is_file() else data


def split_lines(samples: Sequence[Sample], root: str | Path) -> list[str]:
    """``relative_path<TAB>label`` lines, paths relative to ``root`` in POSIX form (as in cat-12's label file)."""
    root = Path(root).resolve()
    return [f"{Path(s.path).resolve().relative_to(root).as_posix()}\t{s.label}\n" for s in samples]


def write_split(config: SplitConfig, progress: bool = True) -> tuple[list[Sample], list[Sample]]:
    """Read ``config.data``, drop unreadable images, split as training does (``split_samples``, same seed and
    fraction) and write ``config.part``'s ``relative_path<TAB>label`` lines to ``config.out``: file names and
    labels, no pixels. Returns (train, val). Needs no torch."""
    if not 0 <= config.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {config.val_fraction}")
    if config.part not in ("val", "train"):
        raise ValueError(f"--part must be val or train, got {config.part!r}")
    classes = config.classes or (len(CAT12_BREEDS) if is_cat12(config.data) else None)
    samples, _ = find_samples(config.data, classes)
    samples, digests = check_images(samples, progress=progress)
    train, val = split_samples(samples, digests, config.val_fraction, config.seed)
    lines = split_lines(val if config.part == "val" else train, data_root(config.data))
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines), encoding="utf-8")
    print(f"wrote {len(lines)} {config.part} paths ({len(train)} train, {len(val)} val; seed {config.seed}, "
          f"val fraction {config.val_fraction}) to {out}")
    return train, val


def main(argv: list[str] | None = None) -> int:
    """``python -m model.data --split``: the exit status (0 written, 2 bad input)."""
    import argparse

    from base.cli import run_cli

    p = argparse.ArgumentParser(
        prog="python -m model.data",
        description="Write the duplicate-safe train/validation split that `python -m model.train` uses (the same "
                    "split_samples, seed and fraction) as a list of 'relative_path<TAB>label' lines, without "
                    "training and without torch. Paths are relative to the label file's folder (or the ImageFolder "
                    "root). Bad input is one 'error:' line and exit status 2.")
    p.add_argument("--split", action="store_true", required=True, help="write the split (the only action)")
    p.add_argument("--data", required=True,
                   help="label file, folder holding train_list.txt, or ImageFolder tree (e.g. ../shared/data/cat12)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class held out (default: 0.2)")
    p.add_argument("--seed", type=int, default=0, help="the training run's --seed (default: 0)")
    p.add_argument("--part", choices=("val", "train"), default="val",
                   help="which side to write (default: val, the held-out images)")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default: from the data)")
    p.add_argument("--out", required=True, metavar="FILE", help="the list to write")
    args = p.parse_args(argv)
    config = SplitConfig(args.data, args.out, args.val_fraction, args.seed, args.part, args.classes)
    return run_cli(write_split, config)


if __name__ == "__main__":
    sys.exit(main())
