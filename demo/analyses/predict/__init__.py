"""Classification of image files with an exported model: probabilities per image (optionally with flip
test-time augmentation), the confusion matrix, its text and its plot. The command line is ``cli.py``."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from demo.onnx_forward import OnnxModel
from demo.preprocess import load_image, preprocess


def _batches(paths: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for i in range(0, len(paths), size):
        yield paths[i : i + size]


def classify(model: OnnxModel, paths: Sequence[Path], batch_size: int = 16, resize: str = "crop",
             tta: bool = False, bar: bool = True) -> tuple[list[Path], np.ndarray, list[str]]:
    """Probabilities (M, K) of the images that could be read, their paths, and messages for those that could not.

    ``tta``: probabilities (M, 2, K) instead: [:, 0] of the image, [:, 1] averaged with its mirror image.
    ``bar``: a tqdm bar on stderr (from 32 images on).
    """
    done, probs, errors = [], [], []
    with tqdm(total=len(paths), unit="img", disable=not bar or len(paths) < 32, file=sys.stderr) as bar:
        for batch in _batches(paths, batch_size):
            tensors = []
            for path in batch:
                try:
                    image = load_image(path)
                except ValueError as err:  # base.images.ImageError: names the file and the reason
                    errors.append(str(err))
                    continue
                tensors.append(preprocess(image, model.input_size, model.mean, model.std, resize))
                done.append(path)
            if tensors:
                x = np.concatenate(tensors)
                plain = model.predict(x)
                probs.append(np.stack([plain, model.predict(x, tta=True, probs=plain)], axis=1) if tta else plain)
            bar.update(len(batch))
    K = len(model.class_names)
    empty = np.zeros((0, 2, K) if tta else (0, K), np.float32)
    return done, (np.concatenate(probs) if probs else empty), errors


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(true), np.asarray(pred)), 1)
    return cm


def format_confusion(cm: np.ndarray, names: Sequence[str]) -> str:
    """The confusion matrix as a text table (rows and columns by class index) and a legend of the indices."""
    K = cm.shape[0]
    width = max(4, len(str(cm.max(initial=0))) + 1)
    lines = ["true\\pred" + "".join(f"{j:>{width}}" for j in range(K))]
    lines += [f"{i:>9}" + "".join(f"{v:>{width}}" for v in cm[i]) for i in range(K)]
    lines.append("classes: " + ", ".join(f"{i} {name}" for i, name in enumerate(names)))
    return "\n".join(lines)


def plot_confusion(cm: np.ndarray, names: Sequence[str], path: str | Path) -> None:
    """Save the confusion matrix as a picture (matplotlib, imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = cm.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * K, 0.8 + 0.5 * K))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(K), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(K), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(K):
        for j in range(K):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
