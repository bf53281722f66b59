"""Display normalisation: reconstructions and feature maps (float arrays) -> uint8 pictures.

One place decides how numbers become grey levels. Three modes:

- ``"minmax"``: per image, (x - min) / (max - min) with the map's own minimum and maximum, whatever their
  signs (the original notebook's stretch failed on maps whose minimum is above 0).
- ``"signed"``: zero is mid-grey and the scale is symmetric, 0.5 + 0.5 * x / max|x|: the sign of a
  deconvnet reconstruction stays visible (positive brighter, negative darker).
- ``"percentile"``: min-max between the 1st and 99th percentiles, clipping the rest, so that a few extreme
  values do not flatten the picture.

A constant (or all-zero) map has nothing to stretch: it becomes a uniform mid-grey tile and is *flagged*
(every function returns the flag), never NaN and never an error. Pixel-space reconstructions (3, H, W) stay
RGB: the three channels share one scale so their colours keep their relation.
"""

from __future__ import annotations

import numpy as np

NORMS = ("minmax", "signed", "percentile")
PERCENTILES = (1.0, 99.0)
GREY = 128  # the grey of a flat tile (and of zero in "signed" mode)


def _is_flat(lo: float, hi: float) -> bool:
    """Whether [lo, hi] is an empty range up to float32 rounding."""
    return not hi - lo > np.finfo(np.float32).eps * max(abs(lo), abs(hi))


def normalize(x: np.ndarray, mode: str = "minmax",
              percentiles: tuple[float, float] = PERCENTILES) -> tuple[np.ndarray, bool]:
    """Map ``x`` (any shape) to float32 in [0, 1] with one scale for the whole array; return it and ``flat``.

    ``flat`` is True when x is constant (or all zero); the result is then 0.5 everywhere. NaN and inf count
    as 0. ``percentiles`` (low, high) is used by the "percentile" mode; when the two coincide (a sparse map, say)
    it falls back to min-max.
    """
    if mode not in NORMS:
        raise ValueError(f"mode must be one of {NORMS}, got {mode!r}")
    a = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if _is_flat(lo, hi):
        return np.full(a.shape, 0.5, dtype=np.float32), True
    if mode == "signed":
        out = 0.5 + 0.5 * a / max(abs(lo), abs(hi))
    else:
        if mode == "percentile":
            p_lo, p_hi = (float(v) for v in np.percentile(a, percentiles))
            if not _is_flat(p_lo, p_hi):
                lo, hi = p_lo, p_hi
        out = (np.clip(a, lo, hi) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32), False


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 0-255 (rounded)."""
    return (np.clip(x01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def reconstruction_image(recon: np.ndarray, mode: str = "minmax",
                         percentiles: tuple[float, float] = PERCENTILES) -> tuple[np.ndarray, bool]:
    """A pixel-space reconstruction (3, H, W) or (1, 3, H, W) -> (H, W, 3) uint8 RGB, and ``flat``."""
    x = np.asarray(recon)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) reconstruction, got shape {x.shape}")
    x01, flat = normalize(x, mode, percentiles)
    return to_uint8(x01.transpose(1, 2, 0)), flat


def map_image(fmap: np.ndarray, mode: str = "minmax",
              percentiles: tuple[float, float] = PERCENTILES) -> tuple[np.ndarray, bool]:
    """One feature map (h, w) -> (h, w, 3) uint8 grey picture, and ``flat``."""
    x = np.asarray(fmap)
    if x.ndim != 2:
        raise ValueError(f"expected an (h, w) map, got shape {x.shape}")
    x01, flat = normalize(x, mode, percentiles)
    return np.repeat(to_uint8(x01)[:, :, None], 3, axis=2), flat
