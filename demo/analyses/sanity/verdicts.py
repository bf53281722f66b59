"""The sanity checks over many images and seeds: the run over every (image, seed) pair, the comparison with
another model, and mean +- sd per method and step (the images: ``demo.analyses.dataset.gather_images``).

Each image gets ``sanity_results`` once per seed (every target from the same randomized forward passes); the
class check depends on no seed and runs once per image; the other model (``compare``) once per image. The long
rows (``ROW_COLUMNS``, ``CLASS_COLUMNS``, ``COMPARE_COLUMNS``) go to CSV files; ``summarize`` reduces them to
mean +- sd: ``sd`` over every (image, seed) pair, ``sd_images`` over the images of the per-image means (over
seeds), ``sd_seeds`` over the seeds of the per-seed means (over images).
"""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from base.labels import Sample
from demo.analyses.sanity.measure import METRICS, Target, compare_maps, sanity_results
from demo.onnx_forward import OnnxModel
from demo.preprocess import preprocess

ROW_COLUMNS = ("image", "seed", "target", "mode", "step", "randomized", "method", *METRICS)
CLASS_COLUMNS = ("image", "top", "method", *(f"{m}_mean_others" for m in METRICS))
COMPARE_COLUMNS = ("image", "target", "method", *METRICS)
SUMMARY_COLUMNS = ("target", "mode", "step", "randomized", "method", "metric", "mean", "sd", "sd_images",
                   "sd_seeds", "n")


# ----------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Verdicts:
    """The long rows of a run over many images (columns ``ROW_COLUMNS``, ``CLASS_COLUMNS``, ``COMPARE_COLUMNS``)."""

    rows: list[tuple] = field(default_factory=list)
    classes: list[tuple] = field(default_factory=list)
    compare: list[tuple] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # per image, every seed and check


def run_verdicts(model: OnnxModel, samples: Sequence[Sample], targets: Sequence[Target], methods: Sequence[str],
                 seeds: Sequence[int], mode: str = "cascading", classes: bool = True, other: OnnxModel | None = None,
                 resize: str = "crop", names: Sequence[str] | None = None, bar: bool = True,
                 steps: Sequence[int] | None = None,
                 after_image: Callable[[Verdicts], None] | None = None) -> Verdicts:
    """The checks for every image of ``samples`` and every seed; with ``other``, the data-randomization comparison.
    An unreadable image is one ``skipped ...`` line on stderr and no row. ``names``: how rows name the images
    (default: their paths); ``steps``: only these steps (``sanity_results``); ``after_image(verdicts)`` is called
    after each image (e.g. to write what is done so far)."""
    import time

    out = Verdicts()
    names = list(names) if names is not None else [str(s.path) for s in samples]
    labels = [target_label(t) for t in targets]
    pairs = tqdm(total=len(samples) * len(seeds), unit="run", desc="images x seeds", disable=not bar,
                 file=sys.stderr)
    with pairs:
        for sample, name in zip(samples, names, strict=True):
            try:
                x = preprocess(sample.path, model.input_size, model.mean, model.std, resize)
            except ValueError as err:  # base.images.ImageError: one line naming the file
                tqdm.write(f"skipped {err}", file=sys.stderr)
                out.skipped.append(name)
                pairs.update(len(seeds))
                continue
            start = time.perf_counter()
            for i, seed in enumerate(seeds):
                results = sanity_results(model, x, targets, methods, mode, seed, classes and i == 0, bar=False,
                                         steps=steps)
                for label, result in zip(labels, results, strict=True):
                    t = label
                    for m in result.modes:
                        for s in result.steps(m):
                            for method in result.methods:
                                out.rows.append((name, seed, t, m, s.step, s.label, method, *s.scores[method]))
                checked = results[0].classes
                if checked is not None:
                    for method in results[0].methods:
                        out.classes.append((name, checked.top, method,
                                            *(checked.mean(method, metric) for metric in METRICS)))
                pairs.update(1)
            if other is not None:
                for target, label in zip(targets, labels, strict=True):
                    for (_, method), scores in compare_maps(model, other, x, [target], methods).items():
                        out.compare.append((name, label, method, *scores))
            out.seconds.append(time.perf_counter() - start)
            if after_image is not None:
                after_image(out)
    return out


def target_label(target: Target) -> str:
    """A target as rows name it: "conv5_3", "conv5_3/85", "class" (each image's top-1 class) or "class/3"."""
    if target.kind == "class":
        return f"class/{target.class_index}" if target.class_index is not None else "class"
    return target.layer if target.kind == "layer" else f"{target.layer}/{target.channel}"


# ----------------------------------------------------------------------------------------------------------------
# Mean +- sd


def _sd(values: Iterable[float]) -> float:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    return float(v.std(ddof=1)) if v.size > 1 else math.nan


def _mean(values: Iterable[float]) -> float:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    return float(v.mean()) if v.size else math.nan


def summarize(rows: Sequence[tuple]) -> list[tuple]:
    """``ROW_COLUMNS`` rows -> ``SUMMARY_COLUMNS`` rows: per (target, mode, step, method) and metric, the mean and
    sd over every (image, seed) pair, the sd over images of the per-image means, the sd over seeds of the per-seed
    means, and the number of pairs (NaNs, e.g. constant maps, left out)."""
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for r in rows:
        groups[(r[2], r[3], r[4], r[5], r[6])].append(r)
    out = []
    for (target, mode, step, label, method), members in groups.items():
        for k, metric in enumerate(METRICS):
            values = [r[7 + k] for r in members]
            per_image: dict[str, list[float]] = defaultdict(list)
            per_seed: dict[int, list[float]] = defaultdict(list)
            for r in members:
                per_image[r[0]].append(r[7 + k])
                per_seed[r[1]].append(r[7 + k])
            out.append((target, mode, step, label, method, metric, _mean(values), _sd(values),
                        _sd(_mean(v) for v in per_image.values()), _sd(_mean(v) for v in per_seed.values()),
                        sum(not math.isnan(v) for v in values)))
    return out


def summarize_by(rows: Sequence[tuple], keys: Sequence[int], first_metric: int) -> list[tuple]:
    """Rows grouped by the columns ``keys`` -> (*key, metric, mean, sd, n) over the rows of each group, for the
    ``METRICS`` columns starting at ``first_metric``."""
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    out = []
    for key, members in groups.items():
        for k, metric in enumerate(METRICS):
            values = [r[first_metric + k] for r in members]
            out.append((*key, metric, _mean(values), _sd(values), sum(not math.isnan(v) for v in values)))
    return out


def _fmt(x: float, digits: int = 2) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.{digits}f}"


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """``rows`` under ``columns``; floats with 6 decimals."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in r])


def summary_markdown(verdicts: Verdicts, summary: Sequence[tuple], class_summary: Sequence[tuple],
                     compare_summary: Sequence[tuple], metric: str = "spearman_abs",
                     note: str = "") -> str:
    """A Markdown summary: per target and mode, a table of mean +- sd (over images and seeds) of ``metric`` per
    method (rows) and step (columns); the class check and the comparison with the other model below."""
    images = len({r[0] for r in verdicts.rows}) or len({r[0] for r in verdicts.compare})
    seeds = sorted({r[1] for r in verdicts.rows})
    lines = [f"# Sanity checks over {images} images and seeds {', '.join(map(str, seeds)) or '-'}", ""]
    if note:
        lines += [note, ""]
    lines += [f"Mean +- sd over every (image, seed) pair of the similarity to the trained model's map ({metric}; "
              "1: unchanged). Model randomization: Adebayo et al. 2018 (arXiv 1810.03292).", ""]
    cells = {(r[0], r[1], r[2], r[4]): (r[6], r[7]) for r in summary if r[5] == metric}
    for target, mode in dict.fromkeys((r[0], r[1]) for r in summary):
        steps = sorted({(r[2], r[3]) for r in summary if r[0] == target and r[1] == mode})
        methods = list(dict.fromkeys(r[4] for r in summary if r[0] == target and r[1] == mode))
        lines += [f"## {target}, {mode}", "", "| method | " + " | ".join(
            f"{s}: {label.split('+')[-1] if label != 'none' else 'trained'}" for s, label in steps) + " |",
            "|---|" + "---|" * len(steps)]
        for method in methods:
            row = [f"{_fmt(cells[(target, mode, s, method)][0])} +- {_fmt(cells[(target, mode, s, method)][1])}"
                   for s, _ in steps]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
    if class_summary:
        lines += ["## Class sensitivity", "",
                  "Similarity of the top-1 class's map to each other class's, mean over the other classes per "
                  "image, then mean +- sd over images (Nie, Zhang & Patel 2018, arXiv 1805.07039; the expected "
                  "result of Sixt, Granz & Landgraf 2020's random-logit test, arXiv 1912.09818). 1: the map does "
                  "not depend on the class.", "", "| method | " + " | ".join(METRICS) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for method in dict.fromkeys(r[0] for r in class_summary):
            vals = {r[1]: r for r in class_summary if r[0] == method}
            lines.append(f"| {method} | " + " | ".join(
                f"{_fmt(vals[m][2])} +- {_fmt(vals[m][3])}" for m in METRICS) + " |")
        lines.append("")
    if compare_summary:
        lines += ["## Data randomization: the other model's maps", "",
                  "Similarity of each map under the trained model to the same map under the other model (e.g. one "
                  "trained on permuted labels; Adebayo et al. 2018's second test), mean +- sd over images.", "",
                  "| target | method | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for target, method in dict.fromkeys((r[0], r[1]) for r in compare_summary):
            vals = {r[2]: r for r in compare_summary if r[0] == target and r[1] == method}
            lines.append(f"| {target} | {method} | " + " | ".join(
                f"{_fmt(vals[m][3])} +- {_fmt(vals[m][4])}" for m in METRICS) + " |")
        lines.append("")
    if verdicts.seconds:
        lines.append(f"{len(verdicts.seconds)} images, {_mean(verdicts.seconds):.1f} s per image (all seeds and "
                     f"checks); {len(verdicts.skipped)} skipped.")
    return "\n".join(lines) + "\n"


def write_verdicts(verdicts: Verdicts, out: Path, note: str = "") -> str:
    """Write ``sanity_rows.csv``, ``sanity_summary.csv``, ``sanity_classes_rows.csv``,
    ``sanity_classes_summary.csv``, ``sanity_compare_rows.csv``, ``sanity_compare_summary.csv`` (those with rows)
    and ``summary.md`` into ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(verdicts.rows)
    class_summary = summarize_by(verdicts.classes, (2,), 3)
    compare_summary = summarize_by(verdicts.compare, (1, 2), 3)
    if verdicts.rows:
        write_csv(out / "sanity_rows.csv", ROW_COLUMNS, verdicts.rows)
        write_csv(out / "sanity_summary.csv", SUMMARY_COLUMNS, summary)
    if verdicts.classes:
        write_csv(out / "sanity_classes_rows.csv", CLASS_COLUMNS, verdicts.classes)
        write_csv(out / "sanity_classes_summary.csv", ("method", "metric", "mean", "sd", "n"), class_summary)
    if verdicts.compare:
        write_csv(out / "sanity_compare_rows.csv", COMPARE_COLUMNS, verdicts.compare)
        write_csv(out / "sanity_compare_summary.csv", ("target", "method", "metric", "mean", "sd", "n"),
                  compare_summary)
    text = summary_markdown(verdicts, summary, class_summary, compare_summary, note=note)
    (out / "summary.md").write_text(text, encoding="utf-8")
    return text


def read_rows(path: str | Path) -> list[tuple]:
    """A CSV written by ``write_csv`` back as tuples: numbers as int or float, the rest as text."""
    def value(text: str):
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return [tuple(value(v) for v in row) for row in reader]
