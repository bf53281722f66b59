"""The files a health run writes into its ``--out`` folder (``FILES``), and reading ``health.json`` back."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image

from base import spec
from base.cli import atomic_write
from demo.analyses.health.figure import filters_picture, health_figure
from demo.analyses.health.measure import CSV_COLUMNS, HealthStats, layer_table

HEALTH_VERSION = 1
FILES = ("health.csv", "health.json", "health.png", "conv1_filters.png")


def table_csv(stats: HealthStats) -> str:
    """``layer_table`` as CSV text (shares and quantiles to 6 significant digits; empty: not defined)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in layer_table(stats):
        writer.writerow({k: "" if v is None else f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def to_json(stats: HealthStats) -> dict:
    """``stats`` as a JSON-ready dict (read back by ``from_json``)."""
    meta = {f.name: getattr(stats, f.name) for f in fields(HealthStats)
            if f.name not in ("peak", "mean_max", "firing", "filter_norms")}
    return {"version": HEALTH_VERSION, **meta,
            "layers": {layer: {"channels": len(stats.peak[layer]), "peak": stats.peak[layer].tolist(),
                               "mean_max": stats.mean_max[layer].tolist(), "firing": stats.firing[layer].tolist(),
                               "filter_norms": stats.filter_norms[layer].tolist()} for layer in stats.layers}}


def from_json(data: Mapping) -> HealthStats:
    """The inverse of ``to_json``."""
    layers = data["layers"]
    arrays = {name: {layer: np.asarray(v[name], np.int64 if name == "firing" else np.float32)
                     for layer, v in layers.items()} for name in ("peak", "mean_max", "firing", "filter_norms")}
    meta = {f.name: data[f.name] for f in fields(HealthStats) if f.name in data and f.name not in arrays}
    return HealthStats(**arrays, **meta)


def load_health(folder: str | Path) -> HealthStats:
    """The stats a ``python -m demo.health --out FOLDER`` run wrote; FileNotFoundError when FOLDER is not one."""
    path = Path(folder) / "health.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no health.json: it is not the --out folder of a "
                                "`python -m demo.health --data DATA --out FOLDER` run")
    try:
        data = json.loads(path.read_text())
        if data.get("version") != HEALTH_VERSION:
            raise ValueError(f"version {data.get('version')}, expected {HEALTH_VERSION}")
        return from_json(data)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable health file ({err}); run python -m demo.health again") from None


def save(stats: HealthStats, out: str | Path, weights: Mapping[str, np.ndarray]) -> list[Path]:
    """Write ``FILES`` into ``out`` (created), each atomically; ``weights`` gives the conv1_1 filters."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = lambda picture: lambda tmp: Image.fromarray(picture).save(tmp, format="PNG")  # noqa: E731
    return [atomic_write(out / "health.csv", lambda tmp: tmp.write_text(table_csv(stats))),
            atomic_write(out / "health.json", lambda tmp: tmp.write_text(json.dumps(to_json(stats)))),
            atomic_write(out / "health.png", png(health_figure(stats))),
            atomic_write(out / "conv1_filters.png", png(filters_picture(weights[spec.CONV_LAYERS[0]])))]
