"""One image's evidence for one class by one method, as a person looks at it: the map over the image, the deletion
and insertion curves with their areas, and what the sanity checks measured for the method (from a CSV)."""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from base.cli import REPO_ROOT
from demo.analyses.evidence.faithfulness import Scores, faithfulness
from demo.analyses.evidence.methods import METHODS, as_network, attribute
from demo.analyses.figures import class_name, figure_to_array, new_figure
from demo.preprocess import deprocess

SANITY_RESULTS = REPO_ROOT / "docs" / "sanity_summary.csv"  # the sanity checks' summary over many images, if measured
FAITHFULNESS_RESULTS = REPO_ROOT / "docs" / "methods_faithfulness.csv"  # demo.faithfulness's rows over many images
NOT_MEASURED = "not measured"
SHOWN_STEPS = ("head", "head+conv5_3", "head+conv5_3+conv5_2+conv5_1")  # the cascading steps quoted, when measured


def sanity_result(method: str, path: str | Path | None = SANITY_RESULTS) -> str:
    """What the sanity checks' CSV at ``path`` says about ``method`` (rows whose ``method`` or ``rule`` column is
    it), one line, or ``NOT_MEASURED``.

    A summary of ``demo.sanity`` over many images (columns target, mode, randomized, metric, mean, sd) is quoted
    as the Spearman rank correlation of |map| with the trained model's after the cascading steps ``SHOWN_STEPS``
    (class target when present); a ``sanity_classes_summary.csv`` beside it adds the class sensitivity. Any other
    CSV: its matching rows as "column value" pairs.
    """
    if path is None or not Path(path).is_file():
        return NOT_MEASURED
    rows = _rows(Path(path), method)
    if not rows:
        return NOT_MEASURED
    if not {"randomized", "metric", "mean"} <= rows[0].keys():
        return "; ".join(", ".join(f"{k} {v}" for k, v in r.items() if k not in ("method", "rule")) for r in rows)
    rows = [r for r in rows if r["metric"] == "spearman_abs" and r.get("mode", "cascading") == "cascading"]
    targets = {r.get("target") for r in rows}
    target = "class" if "class" in targets else next(iter(sorted(t for t in targets if t)), None)
    parts = [f"{r['randomized']} random: {float(r['mean']):.2f} +- {float(r.get('sd') or 'nan'):.2f}"
             for step in SHOWN_STEPS for r in rows if r["randomized"] == step and r.get("target") == target]
    text = f"Spearman |map| vs the trained model's ({target} target; near 1 = fails), " + ", ".join(parts) \
        if parts else ""
    classes = [r for r in _rows(Path(path).with_name("sanity_classes_summary.csv"), method)
               if r.get("metric") == "spearman_abs"]
    if classes:
        text += ("; " if text else "") + (f"class sensitivity: Spearman |map| between classes "
                                          f"{float(classes[0]['mean']):.2f} (near 1 = ignores the class)")
    return text or NOT_MEASURED


def faithfulness_result(method: str, path: str | Path | None = FAITHFULNESS_RESULTS) -> str:
    """What a ``faithfulness.csv`` of ``python -m demo.faithfulness`` over many images (one row per image and method)
    says about ``method``, one line, or ``NOT_MEASURED``: the mean +- sd of its deletion and insertion AUCs, and on
    how many of the images it beat the random map (a lower deletion, a higher insertion AUC on the same image)."""
    if path is None or not Path(path).is_file():
        return NOT_MEASURED
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    mine = {r["image"]: r for r in rows if r.get("method") == method}
    if not mine:
        return NOT_MEASURED
    random = {r["image"]: r for r in rows if r.get("method") == "random"}

    def stats(key: str) -> str:
        v = np.array([float(r[key]) for r in mine.values()])
        return f"{np.nanmean(v):.3f} +- {np.nanstd(v):.3f}"

    text = f"over {len(mine)} images, deletion AUC {stats('deletion_auc')}, insertion AUC {stats('insertion_auc')}"
    paired = [i for i in mine if i in random] if method != "random" else []
    if paired:
        dele = sum(float(mine[i]["deletion_auc"]) < float(random[i]["deletion_auc"]) for i in paired)
        ins = sum(float(mine[i]["insertion_auc"]) > float(random[i]["insertion_auc"]) for i in paired)
        text += f"; beats the random map on {dele} (deletion) and {ins} (insertion) of {len(paired)}"
    return text


def _rows(path: Path, method: str) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if (r.get("method") or r.get("rule")) == method]


def evidence_figure(picture: np.ndarray, saliency: np.ndarray, scores: Scores, title: str) -> np.ndarray:
    """``saliency`` (H, W) over ``picture`` (H, W, 3) uint8, beside the deletion and insertion curves:
    (h, w, 3) uint8."""
    fig = new_figure(9.6, 3.3)
    ax_map, ax_curve = fig.subplots(1, 2, width_ratios=(1, 1.5))
    ax_map.imshow(picture)
    lo, hi = np.percentile(saliency, [1, 99])
    ax_map.imshow(np.clip((saliency - lo) / max(hi - lo, 1e-12), 0, 1), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    ax_map.set_title(title, fontsize=9)
    ax_map.set_axis_off()
    x = np.linspace(0, 1, scores.deletion.size)
    ax_curve.plot(x, scores.deletion, label=f"deletion, AUC {scores.deletion_auc:.3f} (lower = faithful)")
    ax_curve.plot(x, scores.insertion, label=f"insertion, AUC {scores.insertion_auc:.3f} (higher = faithful)")
    ax_curve.set_xlabel("fraction of pixels deleted / inserted, most relevant first")
    ax_curve.set_ylabel("p(class)")
    ax_curve.set_ylim(0, 1.02)
    ax_curve.legend(fontsize=8)
    return figure_to_array(fig)


def evidence_view(model, image: np.ndarray, class_index: int, method: str, class_names: Sequence[str] | None = None,
                  steps: int = 32, sanity_csv: str | Path | None = SANITY_RESULTS,
                  mean=None, std=None,
                  faithfulness_csv: str | Path | None = FAITHFULNESS_RESULTS) -> tuple[np.ndarray, str, Scores]:
    """The map of ``method`` for class ``class_index`` of ``image`` (1, 3, H, W) normalised, scored by deletion and
    insertion in ``steps`` steps: the figure (h, w, 3) uint8, a Markdown summary and the scores. ``model``: an
    ``OnnxModel`` or a ``Network``; ``mean``/``std``: the normalisation (default: the network's). The summary
    quotes the many-image results in ``sanity_csv`` and ``faithfulness_csv`` (None: "not measured")."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    network = as_network(model)
    start = time.perf_counter()
    info: dict = {}
    saliency = attribute(method, network, image, class_index, info=info)[0]
    seconds = time.perf_counter() - start
    scores = faithfulness(network, image, saliency, class_index, steps, road=False)
    picture = deprocess(image, network.mean if mean is None else mean, network.std if std is None else std)
    name = class_name(class_names, class_index)
    figure = evidence_figure(picture, saliency, scores, f"{method}: evidence for {name}")
    lines = [f"**{method}** for **{name}** (p = {scores.deletion[0]:.3f}): map in {seconds:.2f} s.",
             f"Deletion AUC **{scores.deletion_auc:.3f}** (lower = more faithful), insertion AUC "
             f"**{scores.insertion_auc:.3f}** (higher = more faithful), {steps} steps."]
    if "completeness" in info:
        lines.append(f"Integrated Gradients' completeness error: {float(info['completeness'][0]):.3g} (sum of the "
                     "attributions minus the logit gap to the baseline).")
    lines.append(f"Faithfulness of {method} on held-out images: {faithfulness_result(method, faithfulness_csv)}.")
    lines.append(f"Sanity checks for {method}: {sanity_result(method, sanity_csv)}.")
    return figure, "  \n".join(lines), scores
