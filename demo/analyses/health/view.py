"""What the app's "Model health" tab shows: the conv1_1 filters of the model in use, and the figure and summary of
a ``python -m demo.health`` output folder (cached while its health.json is unchanged)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from demo.analyses.dataset import model_sha1
from demo.analyses.health.figure import conv1_filters, health_figure
from demo.analyses.health.files import load_health
from demo.analyses.health.measure import HealthStats
from demo.analyses.health.summary import describe
from demo.onnx_forward import OnnxModel


@lru_cache(maxsize=4)
def _figure_and_stats(path: str, mtime_ns: int) -> tuple[np.ndarray, HealthStats]:
    stats = load_health(path)
    return health_figure(stats), stats


def health_view(model: OnnxModel, health_dir: str | Path | None = None
                ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """What the app's "Model health" tab shows: the conv1_1 filters of ``model`` (H, W, 3) uint8 (no data needed),
    the figure (H, W, 3) uint8 of a ``python -m demo.health`` output folder ``health_dir`` (None without one), and a
    Markdown summary (which says so when the folder was measured on another model).

    FileNotFoundError when ``health_dir`` is given but holds no health.json.
    """
    filters = conv1_filters(model)
    caption = ("**conv1_1**: the 64 first-layer filters (3 x 3, RGB), each stretched to its own min-max so its "
               "colours show (the paper's Fig. 6c).")
    if health_dir is None:
        return filters, None, caption + ("\n\nNo health statistics: run `python -m demo.health --data DATA --out "
                                         "DIR` and open DIR here for dead and rare channels, peaks and filter norms.")
    path = Path(health_dir)
    json_path = path / "health.json"
    if not json_path.is_file():
        load_health(path)  # raises FileNotFoundError with the explanation
    figure, stats = _figure_and_stats(str(path.resolve()), json_path.stat().st_mtime_ns)
    return filters, figure, caption + "\n\n" + describe(stats, model_sha1(model.path))
