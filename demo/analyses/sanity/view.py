"""What the app's sanity-checks view shows: the filmstrip, the similarity curves and a Markdown summary of the
checks on one image (``sanity_view``), and that summary on its own (``describe``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from base.spec import RULES
from demo.analyses.figures import class_name
from demo.analyses.sanity.figure import curves, filmstrip, target_text
from demo.analyses.sanity.measure import SanityResult, sanity_checks
from demo.analyses.sanity.randomize import ORDER
from demo.onnx_forward import OnnxModel
from demo.preprocess import deprocess


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.2f}"


def describe(result: SanityResult, class_names: Sequence[str] | None = None) -> str:
    """A short Markdown summary: per rule, the similarity once every layer is randomized (cascading) and the
    lowest after one layer alone (independent), and the class sensitivity."""
    lines = [f"**Sanity checks** of {target_text(result, class_names)}, seed {result.seed}: model randomization "
             "(Adebayo et al. 2018), similarity to the trained model's map as Spearman of |map| / Spearman / SSIM "
             "(1: unchanged); class sensitivity (Nie et al. 2018; Sixt et al. 2020's random-logit test)."]
    header = ["rule"]
    if result.cascading:
        header.append(f"{len(result.cascading[-1].randomized)} layers random")
    if result.independent:
        header.append("least similar, one layer alone")
    if result.classes is not None:
        header.append(f"vs other classes (mean Spearman of abs; top-1 {class_name(class_names, result.classes.top)})")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rule in result.methods:
        row = [rule]
        if result.cascading:
            row.append(" / ".join(_fmt(v) for v in result.cascading[-1].scores[rule]))
        if result.independent:
            worst = min(result.independent[1:], key=lambda s: np.nan_to_num(s.scores[rule][0], nan=2.0))
            row.append(f"{worst.label}: " + " / ".join(_fmt(v) for v in worst.scores[rule]))
        if result.classes is not None:
            row.append(_fmt(result.classes.mean(rule)))
        lines.append("| " + " | ".join(row) + " |")
    above = [name for name in ORDER if not result.target.depends_on(name)]
    if above:
        lines += ["", f"Re-drawing {', '.join(above)} cannot change a projection from {result.target.layer}: those "
                      "steps reuse the trained maps (similarity 1 by construction)."]
    return "\n".join(lines)


def sanity_view(model: OnnxModel, x: np.ndarray, target: str = "conv5_3", rules: Sequence[str] = RULES,
                progress: Callable[[int, int], None] | None = None, mode: str = "cascading", seed: int = 0,
                norm: str = "minmax", classes: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """What the app shows for ``x`` (1, 3, S, S) normalised: the filmstrip (h, w, 3) uint8 (of ``mode``'s first
    mode), the curves (h, w, 3) uint8 and a Markdown summary. ``target``: "conv5_3", "LAYER/CHANNEL", "class" or
    "class/C". ``progress(done, total)`` is called after each step. Bad input raises ValueError."""
    result = sanity_checks(model, x, target, rules, mode, seed, classes, progress=progress, bar=False)
    picture = deprocess(x, model.mean, model.std)
    strip = filmstrip(result, result.modes[0], norm, picture, model.class_names)
    return strip, curves(result, model.class_names), describe(result, model.class_names)
