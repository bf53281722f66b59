"""The measurement of the model's health: one streaming pass over a data set (per layer and channel: the peak, the
mean per-image maximum, the images it fires on), the filter norms, and the per-layer statistics drawn from them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from base import spec
from base.labels import Sample
from demo.analyses.dataset import ChannelMaxima, Loader, batches, model_sha1
from demo.onnx_forward import OnnxModel

RARE_FRACTION = 0.01  # a channel firing on fewer than this share of the images is "rare"
CSV_COLUMNS = ("layer", "channels", "dead", "dead_share", "rare", "rare_share", "firing_min", "firing_p50",
               "max_p10", "max_p50", "max_p90", "max", "mean_max_p50", "filter_norm_mean", "filter_norm_std",
               "filter_norm_min", "filter_norm_max", "filter_norm_dead_mean")


@dataclass
class HealthStats:
    """What one pass over a data set measured, per conv layer (each array is (C,), one entry per channel)."""

    images: int  # images measured (unreadable ones are skipped)
    peak: dict[str, np.ndarray]  # float32: the channel's largest activation over the data set (0: dead)
    mean_max: dict[str, np.ndarray]  # float32: the mean over images of the channel's per-image maximum
    firing: dict[str, np.ndarray]  # int64: images on which the channel is above zero somewhere
    filter_norms: dict[str, np.ndarray]  # float32: L2 norm of the channel's (C_in, 3, 3) filter, BN folded
    rare_fraction: float = RARE_FRACTION
    model: str = ""  # the .onnx file
    model_sha1: str = ""
    data: str = ""
    input_size: int = 0  # pixels
    resize: str = "crop"
    skipped: list[str] = field(default_factory=list)  # unreadable images

    @property
    def layers(self) -> list[str]:
        return list(self.peak)

    def dead(self, layer: str) -> np.ndarray:
        """(C,) bool: the channel is zero on every image."""
        return self.firing[layer] == 0

    def rare(self, layer: str) -> np.ndarray:
        """(C,) bool: the channel fires on some images, but on fewer than ``rare_fraction`` of them."""
        return (self.firing[layer] > 0) & (self.firing[layer] < self.rare_fraction * self.images)


def filter_norms(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{layer: (C_out, C_in, kh, kw) weights} -> {layer: (C_out,) float32 L2 norm of each output filter}."""
    return {layer: np.linalg.norm(w.reshape(w.shape[0], -1).astype(np.float64), axis=1).astype(np.float32)
            for layer, w in weights.items()}


def measure(model: OnnxModel, samples: Sequence[Sample], size: int | None = None, resize: str = "crop",
            batch_size: int = 16, workers: int = 2, rare_fraction: float = RARE_FRACTION, data: str = "",
            progress: Callable[[int, int], None] | None = None, bar: bool = True) -> HealthStats:
    """Stream ``samples`` through ``model`` once; per layer and channel, the peak, the mean per-image maximum and
    the number of images on which it fires. ``progress(done, total)`` runs after each batch. Unreadable images are
    one ``skipped`` line each on stderr; ValueError when none can be read."""
    size = size or model.input_size
    layers = list(spec.CONV_LAYERS)
    maxima = ChannelMaxima(model, layers)
    load = Loader(samples, size, model.mean, model.std, resize)
    peak = {layer: np.zeros(spec.conv_channels(layer), np.float32) for layer in layers}
    total = {layer: np.zeros(spec.conv_channels(layer), np.float64) for layer in layers}
    firing = {layer: np.zeros(spec.conv_channels(layer), np.int64) for layer in layers}
    images, skipped = 0, []
    with tqdm(total=len(samples), unit="img", desc="health", disable=not bar, file=sys.stderr) as pbar:
        for chunk, ids, x, failed in batches(load, range(len(samples)), batch_size, workers):
            skipped += [str(samples[i].path) for i in failed]
            if ids:
                add_tally(peak, total, firing, batch_tally(maxima.run(x)))
                images += len(ids)
            pbar.update(len(chunk))
            if progress is not None:
                progress(chunk[-1] + 1, len(samples))
    return health_stats(model, images, peak, total, firing, len(samples), size, resize, rare_fraction, data, skipped)


def batch_tally(maxima: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, ...]]:
    """One batch's share of the measures, per layer, from ``ChannelMaxima.run``'s (maxima (B, C), positions):
    (peak (C,) float32, sum of the maxima (C,) float64, images firing (C,) int64)."""
    return {layer: (values.max(axis=0), values.sum(axis=0, dtype=np.float64), (values > 0).sum(axis=0))
            for layer, (values, _) in maxima.items()}


def add_tally(peak: dict[str, np.ndarray], total: dict[str, np.ndarray], firing: dict[str, np.ndarray],
              tally: Mapping[str, tuple[np.ndarray, ...]]) -> None:
    """Add one ``batch_tally`` to the running measures, in place. Batches must come in data-set order for the
    float64 sums to be the same to the last bit (float addition is not associative)."""
    for layer, (batch_peak, batch_total, batch_firing) in tally.items():
        peak[layer] = np.maximum(peak[layer], batch_peak)
        total[layer] += batch_total
        firing[layer] += batch_firing


def health_stats(model: OnnxModel, images: int, peak: dict[str, np.ndarray], total: dict[str, np.ndarray],
                 firing: dict[str, np.ndarray], num_samples: int, size: int, resize: str, rare_fraction: float,
                 data: str, skipped: list[str]) -> HealthStats:
    """The ``HealthStats`` of a finished pass (``total``: the float64 sums of the per-image maxima); ValueError
    when no image could be read."""
    if images == 0:
        raise ValueError(f"none of the {num_samples} images could be read")
    return HealthStats(images, peak, {layer: (t / images).astype(np.float32) for layer, t in total.items()}, firing,
                       filter_norms(model.weights), rare_fraction, str(model.path), model_sha1(model.path), data,
                       size, resize, skipped)


def layer_table(stats: HealthStats) -> list[dict[str, object]]:
    """One row per layer (keys ``CSV_COLUMNS``): counts, shares (0-1), quantiles over the layer's channels of the
    firing shares (the share of the images on which a channel is above zero), of the peaks (activation units; dead
    channels count as 0) and of the filter norms."""
    rows = []
    for layer in stats.layers:
        peak, norms, dead, rare = stats.peak[layer], stats.filter_norms[layer], stats.dead(layer), stats.rare(layer)
        C = len(peak)
        p10, p50, p90 = np.quantile(peak, [0.1, 0.5, 0.9])
        rows.append({"layer": layer, "channels": C, "dead": int(dead.sum()), "dead_share": float(dead.mean()),
                     "rare": int(rare.sum()), "rare_share": float(rare.mean()),
                     "firing_min": float(stats.firing[layer].min() / stats.images),
                     "firing_p50": float(np.median(stats.firing[layer] / stats.images)),
                     "max_p10": float(p10), "max_p50": float(p50), "max_p90": float(p90), "max": float(peak.max()),
                     "mean_max_p50": float(np.median(stats.mean_max[layer])),
                     "filter_norm_mean": float(norms.mean()), "filter_norm_std": float(norms.std()),
                     "filter_norm_min": float(norms.min()), "filter_norm_max": float(norms.max()),
                     "filter_norm_dead_mean": float(norms[dead].mean()) if dead.any() else None})
    return rows
