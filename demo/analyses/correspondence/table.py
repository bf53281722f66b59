"""The numbers of a correspondence run as text: the aligned table the command prints, and ``correspondence.csv``
(``#`` lines saying what the numbers are, then one row per part and layer) with its reader."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from demo.analyses.correspondence.measure import POOLED, CorrespondenceResult, Row

COLUMNS = ("part", "layer", "delta", "random_mean", "random_std", "images")


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table."""
    lines = [f"{'part':<12} {'layer':<8} {'delta':>7}  {'random (mean +- std)':>21}  {'images':>6}"]
    lines += [f"{r.part:<12} {r.layer:<8} {r.delta:7.4f}  {r.random_mean:12.4f} +- {r.random_std:.4f}  {r.images:6d}"
              for r in rows]
    return "\n".join(lines)


def csv_text(result: CorrespondenceResult, source: str = "") -> str:
    """The CSV file's text: ``#`` lines saying what the numbers are, then the header ``COLUMNS`` and one row per
    part and layer."""
    notes = [
        "correspondence analysis, Zeiler & Fergus (arXiv 1311.2901) Sec. 5: eps_i = x_i - x~_i, the features of "
        "image i minus those of image i with the part covered by the mean colour",
        "delta = sum over ordered pairs i != j of Hamming(sign(eps_i), sign(eps_j)) / (images * (images - 1) * "
        "feature length): a mean in [0, 1], sign(0) = 0 a value of its own; lower = the part is related across images",
        f"|eps| <= {result.tolerance:g} * max |x_i| of the layer counts as 0",
        f"random_mean, random_std: delta of boxes of the part's size at random places, {result.draws} draws "
        f"(seed {result.seed}), std with ddof = 1; images: images whose box of the part lies inside the input "
        f"({result.size} px)",
        f"layers: conv activations after ReLU (C * h * w); {POOLED}: the classifier's input vector",
    ]
    if source:
        notes.append(source)
    lines = [f"# {n}" for n in notes] + [",".join(COLUMNS)]
    lines += [f"{r.part},{r.layer},{r.delta:.6f},{r.random_mean:.6f},{r.random_std:.6f},{r.images}"
              for r in result.rows]
    return "\n".join(lines) + "\n"


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    """The data rows of a ``correspondence.csv`` (its ``#`` lines skipped), as dicts keyed by ``COLUMNS``."""
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))
