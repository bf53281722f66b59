"""The figures of the sanity checks: the filmstrip of the maps (rows: rules, columns: steps), the similarity
curves against the step (and the class sensitivity), and pictures stacked one above the other."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from base.display import map_image, reconstruction_image
from base.spec import RULES
from demo.analyses.figures import class_name, figure_to_array, new_figure
from demo.analyses.sanity.measure import METRICS, SanityResult, Step
from demo.analyses.sanity.randomize import ORDER


def _column_title(step: Step) -> str:
    if step.step == 0:
        return "trained"
    return f"+{step.randomized[-1]}" if step.mode == "cascading" else f"{step.randomized[0]} only"


def _tile(m: np.ndarray, norm: str) -> tuple[np.ndarray, bool]:
    """A method's map (3, H, W) or (1, H, W) -> (H, W, 3) uint8 and ``flat``."""
    return map_image(m[0], norm) if m.shape[0] == 1 else reconstruction_image(m, norm)


def filmstrip(result: SanityResult, mode: str = "cascading", norm: str = "minmax", picture: np.ndarray | None = None,
              class_names: Sequence[str] | None = None) -> np.ndarray:
    """The maps of ``mode``'s steps -> (h, w, 3) uint8 RGB: rows the methods, columns the steps (each tile
    normalised on its own by ``base.display.reconstruction_image``, a one-channel map (1, H, W) by
    ``base.display.map_image``; captioned with its spearman_abs); ``picture`` (H, W, 3) uint8, the input as the
    network saw it, opens the first row."""
    steps = result.steps(mode)
    if not steps:
        raise ValueError(f"the result has no {mode} steps")
    offset = picture is not None
    cols = len(steps) + offset
    fig = new_figure(0.95 * cols + 0.5, 1.2 * len(result.rules) + 0.55)
    axes = fig.subplots(len(result.rules), cols, squeeze=False)
    for r, rule in enumerate(result.rules):
        if offset:
            axes[r, 0].set_axis_off()
            if r == 0:
                axes[r, 0].imshow(picture)
                axes[r, 0].set_title("input", fontsize=7)
        for c, step in enumerate(steps):
            ax = axes[r, c + offset]
            tile, flat = _tile(step.maps[rule], norm)
            ax.imshow(tile)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(_column_title(step), fontsize=7)
            ax.set_xlabel("zero map" if flat else f"ρ|·| {step.scores[rule][0]:.2f}", fontsize=7, labelpad=1)
            if c == 0:
                ax.set_ylabel(rule, fontsize=9)
    fig.suptitle(f"{mode} randomization (seed {result.seed}): {target_text(result, class_names)}; ρ|·| = Spearman "
                 "of |map| against the trained model's", fontsize=9)
    return figure_to_array(fig)


def target_text(result: SanityResult, class_names: Sequence[str] | None) -> str:
    """What ``result`` projected, for titles: "the NAME logit" for a class target, else ``Target.describe``."""
    if result.target.kind == "class":
        return f"the {class_name(class_names, result.class_index)} logit"
    return result.target.describe(class_names)


def curves(result: SanityResult, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Similarity against step -> (h, w, 3) uint8 RGB: one panel per metric, one line per rule (solid: cascading,
    the layers randomized from the top down to the one named; dashed: that layer alone), and, when computed, a
    panel of the class sensitivity (each other class's spearman_abs to the top-1 class's map, and their mean)."""
    import matplotlib

    named = dict.fromkeys((*RULES, *result.methods))
    colours = {rule: matplotlib.colormaps["tab10"](i % 10) for i, rule in enumerate(named)}
    panels = len(METRICS) + (result.classes is not None)
    fig = new_figure(4.2 * panels, 3.9)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    titles = {"spearman_abs": "Spearman of |map|", "spearman": "Spearman of signed map", "ssim": "SSIM"}
    ticks = ["trained", *ORDER]
    for i, metric in enumerate(METRICS):
        ax = axes[i]
        for m in result.modes:
            steps = result.steps(m)
            for rule in result.rules:
                y = [s.scores[rule][i] for s in steps]
                ax.plot([s.step for s in steps], y, color=colours.get(rule), marker="o", markersize=3,
                        linestyle="-" if m == "cascading" else "--", label=f"{rule}, {m}")
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_ylim(-1.05 if metric == "spearman" else -0.05, 1.05)
        ax.set_xticks(range(len(ticks)))
        ax.set_xticklabels(ticks, rotation=90, fontsize=7)
        ax.set_xlabel("randomized down to (cascading) / alone (independent)", fontsize=8)
        ax.set_title(titles[metric], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("similarity to the trained model's map", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, frameon=False)
    if result.classes is not None:
        ax = axes[-1]
        cs = result.classes
        for j, rule in enumerate(result.rules):
            s = np.delete(cs.scores[rule][:, 0], cs.top)
            ax.scatter(np.full(s.size, j) + np.linspace(-0.15, 0.15, s.size), s, color=colours.get(rule), s=12)
            ax.hlines(cs.mean(rule), j - 0.3, j + 0.3, color="black")
        ax.set_xticks(range(len(result.rules)))
        ax.set_xticklabels(result.rules, fontsize=8)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_title(f"class sensitivity (Nie et al. 2018; Sixt et al. 2020):\nSpearman of |map|, other classes vs "
                     f"{class_name(class_names, cs.top)} (bar: mean)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Model randomization (Adebayo et al. 2018), {target_text(result, class_names)}, seed {result.seed}",
                 fontsize=10)
    return figure_to_array(fig)


def stack(pictures: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """(h_i, w_i, 3) uint8 pictures one above the other, left-aligned on white -> (H, W, 3) uint8."""
    width = max(p.shape[1] for p in pictures)
    height = sum(p.shape[0] for p in pictures) + gap * (len(pictures) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    top = 0
    for p in pictures:
        out[top : top + p.shape[0], : p.shape[1]] = p
        top += p.shape[0] + gap
    return out



def summary_curves(summary: Sequence[tuple], class_summary: Sequence[tuple] = (), metric: str = "spearman_abs",
                   title: str = "") -> np.ndarray:
    """Mean +- sd over images and seeds (``verdicts.SUMMARY_COLUMNS`` rows) against the step -> (h, w, 3) uint8 RGB:
    one panel per target and mode, one line per method with a band of +- 1 sd; a last panel with the class
    sensitivity (``(method, metric, mean, sd, n)`` rows) when given."""
    import matplotlib

    rows = [r for r in summary if r[5] == metric]
    panels = list(dict.fromkeys((r[0], r[1]) for r in rows))
    methods = list(dict.fromkeys(r[4] for r in rows))
    colours = {m: matplotlib.colormaps["tab10"](i % 10) for i, m in enumerate(dict.fromkeys((*RULES, *methods)))}
    n = len(panels) + bool(class_summary)
    fig = new_figure(4.4 * n, 3.9)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (target, mode) in zip(axes, panels, strict=False):
        for method in methods:
            pts = sorted((r[2], r[6], r[7]) for r in rows if r[0] == target and r[1] == mode and r[4] == method)
            x = np.array([p[0] for p in pts])
            mean, sd = np.array([p[1] for p in pts]), np.nan_to_num(np.array([p[2] for p in pts]))
            ax.plot(x, mean, marker="o", markersize=3, color=colours[method], label=method)
            ax.fill_between(x, mean - sd, mean + sd, color=colours[method], alpha=0.2, linewidth=0)
        ticks = sorted({r[2] for r in rows if r[0] == target and r[1] == mode})
        ax.set_xticks(ticks)
        ax.set_xticklabels(["trained" if k == 0 else f"{k}: {ORDER[k - 1]}" for k in ticks], rotation=90, fontsize=7)
        ax.set_ylim(-1.05 if metric == "spearman" else -0.05, 1.05)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_title(f"{target}, {mode}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric} to the trained model's map", fontsize=8)
    axes[0].legend(fontsize=8)
    if class_summary:
        ax = axes[-1]
        cls = [r for r in class_summary if r[1] == metric]
        ax.bar(range(len(cls)), [r[2] for r in cls], yerr=[0 if np.isnan(r[3]) else r[3] for r in cls],
               color=[colours.get(r[0]) for r in cls], capsize=3)
        ax.set_xticks(range(len(cls)))
        ax.set_xticklabels([r[0] for r in cls], fontsize=8)
        ax.set_ylim(-0.05 if metric != "spearman" else -1.05, 1.05)
        ax.set_title("class sensitivity (Nie et al. 2018; Sixt et al. 2020):\ntop-1 class vs the others", fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return figure_to_array(fig)
