"""Label files and ImageFolder trees: which image files carry which class (torch-free).

Two layouts are read:

- a label file with one ``path<TAB>label`` line per image (cat-12's ``train_list.txt``); paths are resolved
  against the label file's folder; spaces instead of the tab, CRLF line ends, a UTF-8 BOM and blank lines are
  tolerated, anything else is an error naming the file and the line;
- an ImageFolder tree: one sub-folder per class, classes in sorted order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from base.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Sample:
    """One labelled image: its file, its class index, and the label file's line that named it (0: none)."""

    path: Path
    label: int
    line: int = field(default=0, compare=False)


def parse_label_file(path: str | Path, num_classes: int | None = None) -> list[Sample]:
    """Read ``path<TAB>label`` lines; relative paths are resolved against the label file's folder.

    ``num_classes``: labels must lie in ``0 .. num_classes - 1`` (an error naming the file and line otherwise).
    """
    path = Path(path)
    samples = []
    text = path.read_text(encoding="utf-8-sig")  # drops a BOM
    for number, raw in enumerate(text.splitlines(), start=1):  # splitlines handles CRLF
        line = raw.strip()
        if not line:
            continue
        # Tab-separated: exactly two fields (a third column is an error, not part of the path). Without a tab the
        # label is the last whitespace-separated field, so a path may contain spaces.
        parts = [f for f in line.split("\t") if f.strip()] if "\t" in line else line.rsplit(None, 1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip().lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected 'image_path<TAB>integer_label', got {raw!r}")
        label = int(parts[1])
        if label < 0:
            raise ValueError(f"{path}:{number}: negative label {label}")
        if num_classes is not None and label >= num_classes:
            raise ValueError(f"{path}:{number}: label {label} is outside the {num_classes} classes 0-{num_classes - 1} "
                             "(set the number of classes with --classes)")
        samples.append(Sample(path.parent / parts[0].strip(), label, number))
    if not samples:
        raise ValueError(f"{path}: no labelled images")
    return samples


def write_label_file(samples: Sequence[Sample], path: str | Path) -> None:
    """Write ``absolute_path<TAB>label`` lines that :func:`parse_label_file` reads back unchanged."""
    lines = [f"{Path(s.path).resolve()}\t{s.label}\n" for s in samples]
    Path(path).write_text("".join(lines), encoding="utf-8")


def scan_image_folder(root: str | Path) -> tuple[list[Sample], list[str]]:
    """Samples of an ImageFolder tree (one sub-folder per class) and the class names, sorted."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class folders")
    samples = [
        Sample(p, label)
        for label, name in enumerate(classes)
        for p in sorted((root / name).rglob("*"))
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    ]
    return samples, classes


def find_samples(data: str | Path, num_classes: int | None = None) -> tuple[list[Sample], list[str] | None]:
    """Samples of a label file, of a folder holding ``train_list.txt``, or of an ImageFolder tree.

    Returns the samples and the class names when the layout names them (ImageFolder), else None.
    ``num_classes``: the labels must lie in ``0 .. num_classes - 1`` (an ImageFolder must have that many classes).
    """
    data = Path(data)
    if data.is_file():
        return parse_label_file(data, num_classes), None
    if (data / "train_list.txt").is_file():
        return parse_label_file(data / "train_list.txt", num_classes), None
    if data.is_dir():
        samples, classes = scan_image_folder(data)
        if num_classes is not None and len(classes) != num_classes:
            raise ValueError(f"{data}: {len(classes)} class folders, but {num_classes} classes were asked for")
        return samples, classes
    raise FileNotFoundError(f"{data}: no such label file or folder")
