"""One image's evidence for one class by one method, as a person looks at it: the map over the image, the deletion
and insertion curves with their areas, and what the sanity checks measured for the method (from a CSV)."""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from demo.analyses.evidence.faithfulness import Scores, faithfulness
from demo.analyses.evidence.methods import METHODS, as_network, attribute
from demo.analyses.figures import class_name, figure_to_array, new_figure
from demo.cli import REPO_ROOT
from demo.preprocess import deprocess

SANITY_RESULTS = REPO_ROOT / "docs" / "sanity_methods.csv"  # per-method verdicts of the sanity checks, if measured
NOT_MEASURED = "not measured"


def sanity_result(method: str, path: str | Path | None = SANITY_RESULTS) -> str:
    """What the sanity-check CSV at ``path`` says about ``method``: its rows whose ``method`` (or ``rule``) column
    is the method, each as "column value" pairs joined by commas and rows by "; ", or ``NOT_MEASURED``."""
    if path is None or not Path(path).is_file():
        return NOT_MEASURED
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if (r.get("method") or r.get("rule")) == method]
    if not rows:
        return NOT_MEASURED
    return "; ".join(", ".join(f"{k} {v}" for k, v in r.items() if k not in ("method", "rule")) for r in rows)


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
                  mean=None, std=None) -> tuple[np.ndarray, str, Scores]:
    """The map of ``method`` for class ``class_index`` of ``image`` (1, 3, H, W) normalised, scored by deletion and
    insertion in ``steps`` steps: the figure (h, w, 3) uint8, a Markdown summary and the scores. ``model``: an
    ``OnnxModel`` or a ``Network``; ``mean``/``std``: the normalisation (default: the network's)."""
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
    lines.append(f"Sanity checks for {method}: {sanity_result(method, sanity_csv)}.")
    return figure, "  \n".join(lines), scores
