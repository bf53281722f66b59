"""The model's health in words: a Markdown summary of a measurement (totals, the worst layers, a per-layer
table), shown by the app and printed by the command."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from demo.analyses.health.measure import HealthStats, layer_table


def floor_percent(share: float) -> str:
    """A share (0-1) as a percentage rounded down to 0.1 (99.95 % reads 99.9 %, never 100 % unless it is)."""
    return f"{np.floor(1000 * share + 1e-9) / 10:g}"


def describe(stats: HealthStats, model_sha1_now: str | None = None) -> str:
    """A Markdown summary: totals, the worst layers and a per-layer table; a warning when ``model_sha1_now`` (the
    model in use) is not the model that was measured."""
    rows = layer_table(stats)
    channels = sum(r["channels"] for r in rows)
    dead, rare = sum(r["dead"] for r in rows), sum(r["rare"] for r in rows)
    lines = []
    if model_sha1_now is not None and stats.model_sha1 and model_sha1_now != stats.model_sha1:
        lines += [f"**Warning: these statistics were measured on another model** ({Path(stats.model).name}, SHA-1 "
                  f"{stats.model_sha1[:12]}); the conv1_1 filters are the current model's. Run `python -m demo.health "
                  "--data ... --out ...` again for this one.", ""]
    worst = sorted(rows, key=lambda r: -(r["dead"] + r["rare"]))[:3]
    least = min(rows, key=lambda r: r["firing_min"])
    worst_text = ", ".join(f"{r['layer']} {100 * (r['dead_share'] + r['rare_share']):.1f} %" for r in worst
                           if r["dead"] + r["rare"])
    lines += [f"**{Path(stats.model).name}** over **{stats.images} images** of {stats.data or 'the data set'} at "
              f"{stats.input_size} px: **{dead} of {channels} channels dead** ({100 * dead / channels:.1f} %), "
              f"{rare} rare (above zero on fewer than {100 * stats.rare_fraction:g} % of the images)."
              + (f" Most affected: {worst_text}." if worst_text else "")
              + f" The least active channel fires on {floor_percent(least['firing_min'])} % of the images "
              f"({least['layer']}).", "",
              "| layer | channels | dead | rare | peak p50 | peak p90 | peak max | filter norm mean ± std |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['channels']} | {r['dead']} | {r['rare']} | {r['max_p50']:#.3g} | "
                     f"{r['max_p90']:#.3g} | {r['max']:#.3g} | "
                     f"{r['filter_norm_mean']:#.3g} ± {r['filter_norm_std']:#.2g} |")
    return "\n".join(lines)
