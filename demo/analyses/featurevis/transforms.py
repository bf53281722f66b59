"""The random transformations of each optimisation step, and their exact adjoints, in float32 NumPy.

Lucid's ``standard_transforms`` (``lucid.optvis.transform``; Olah et al., "Feature Visualization", Distill 2017):
pad 12 with grey (0.5), jitter 8, scale by one of 0.90, 0.92, ..., 1.10, rotate by one of -10..10 degrees (0
counted 5 more times), jitter 4. A jitter of d crops d pixels off the image at a random offset 0..d per axis.

The network takes sides that are multiples of 16, so the sizes are fixed here: a (P, P) image is padded to P + 24,
jittered to P + 16; scaling and rotation are one bilinear resampling about the centre to P + 4 (grey where the
source falls outside); the last jitter gives (P, P) again. Each operation is a linear map of the image (the grey
fill makes pad and resampling affine: ``T(x) = A (x - 0.5) + 0.5``), and the gradient goes back through its
adjoint A^T: a crop's is zero padding, a padding's is a crop, the resampling's scatters each output's gradient back
to the four source pixels with the same bilinear weights.

Every function works on (B, C, H, W) float32, row b with its own parameters (``Params``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD = 12
FILL = 0.5  # grey
JITTER1, JITTER2 = 8, 4
SCALES = tuple(1 + (i - 5) / 50 for i in range(11))  # 0.90 ... 1.10
ANGLES = (*range(-10, 11), *(0,) * 5)  # degrees
MARGIN = 2 * PAD - JITTER1  # the resampling's input is P + 16 ...
MARGIN_OUT = JITTER2  # ... and its output P + 4


@dataclass(frozen=True)
class Params:
    """One step's random transformation of B images: jitters (B, 2) ints (row, column offsets), scales (B,),
    angles (B,) in degrees."""

    jitter1: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    jitter2: np.ndarray


def draw(rng: np.random.Generator, batch: int) -> Params:
    """Lucid's random choices for ``batch`` images."""
    return Params(rng.integers(0, JITTER1 + 1, (batch, 2)), rng.choice(np.asarray(SCALES), batch),
                  rng.choice(np.asarray(ANGLES, dtype=np.float64), batch), rng.integers(0, JITTER2 + 1, (batch, 2)))


def pad(x: np.ndarray, p: int, fill: float = FILL) -> np.ndarray:
    """(B, C, H, W) -> (B, C, H + 2p, W + 2p), ``fill`` around."""
    B, C, H, W = x.shape
    out = np.full((B, C, H + 2 * p, W + 2 * p), fill, dtype=np.float32)
    out[:, :, p : p + H, p : p + W] = x
    return out


def pad_adjoint(g: np.ndarray, p: int) -> np.ndarray:
    """Adjoint of ``pad``'s linear part: (B, C, H + 2p, W + 2p) -> the centre (B, C, H, W)."""
    return np.ascontiguousarray(g[:, :, p:-p, p:-p]) if p else g


def crop(x: np.ndarray, offsets: np.ndarray, d: int) -> np.ndarray:
    """Jitter: (B, C, H, W) -> (B, C, H - d, W - d), row b's window starting at ``offsets[b]`` (row, column)."""
    B, C, H, W = x.shape
    out = np.empty((B, C, H - d, W - d), dtype=np.float32)
    for b, (r, c) in enumerate(np.asarray(offsets).tolist()):
        out[b] = x[b, :, r : r + H - d, c : c + W - d]
    return out


def crop_adjoint(g: np.ndarray, offsets: np.ndarray, d: int) -> np.ndarray:
    """Adjoint of ``crop``: (B, C, h, w) -> (B, C, h + d, w + d), zero outside each window."""
    B, C, h, w = g.shape
    out = np.zeros((B, C, h + d, w + d), dtype=np.float32)
    for b, (r, c) in enumerate(np.asarray(offsets).tolist()):
        out[b, :, r : r + h, c : c + w] = g[b]
    return out


def source_coords(in_size: int, out_size: int, scale: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of an (out_size, out_size) output samples the (in_size, in_size) input: rows, columns
    (out_size, out_size) float64, for a zoom by ``scale`` and a rotation by ``angle`` degrees about the centres."""
    c_out, c_in = (out_size - 1) / 2, (in_size - 1) / 2
    u = np.arange(out_size, dtype=np.float64)[:, None] - c_out  # (out, 1) rows from the centre
    v = np.arange(out_size, dtype=np.float64)[None, :] - c_out  # (1, out) columns
    t = np.deg2rad(angle)
    rows = (np.cos(t) * u + np.sin(t) * v) / scale + c_in
    cols = (-np.sin(t) * u + np.cos(t) * v) / scale + c_in
    return rows, cols


def bilinear_taps(rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The four source pixels and weights of bilinear sampling at (rows, cols) (n,) of an (height, width) plane:
    flat indices (4, n) int64 and weights (4, n) float32; a tap outside the plane gets weight 0 (zero padding)."""
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = rows - r0, cols - c0
    index, weight = [], []
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0.astype(np.int64) + dr, c0.astype(np.int64) + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        index.append(np.where(inside, r * width + c, 0))
        weight.append(np.where(inside, w, 0.0))
    return np.stack(index), np.stack(weight).astype(np.float32)


def resample_taps(in_size: int, out_size: int, scale: np.ndarray, angle: np.ndarray) -> list[tuple[np.ndarray,
                                                                                                   np.ndarray]]:
    """``bilinear_taps`` of each row's zoom and rotation (B,), flattened over the (out_size, out_size) output."""
    taps = []
    for s, a in zip(np.asarray(scale).tolist(), np.asarray(angle).tolist(), strict=True):
        rows, cols = source_coords(in_size, out_size, s, a)
        taps.append(bilinear_taps(rows.ravel(), cols.ravel(), in_size, in_size))
    return taps


def resample(x: np.ndarray, taps: list[tuple[np.ndarray, np.ndarray]], out_size: int,
             fill: float = FILL) -> np.ndarray:
    """Bilinear resampling (B, C, H, W) -> (B, C, out, out) by each row's ``taps``, ``fill`` outside the source:
    out = A (x - fill) + fill."""
    B, C, H, W = x.shape
    out = np.empty((B, C, out_size * out_size), dtype=np.float32)
    for b, (index, weight) in enumerate(taps):
        flat = x[b].reshape(C, H * W) - np.float32(fill)
        out[b] = np.einsum("ckn,kn->cn", flat[:, index], weight, optimize=True) + np.float32(fill)
    return out.reshape(B, C, out_size, out_size)


def resample_adjoint(g: np.ndarray, taps: list[tuple[np.ndarray, np.ndarray]], in_size: int) -> np.ndarray:
    """Adjoint A^T of ``resample``'s linear part: (B, C, out, out) -> (B, C, in, in); each output's gradient goes
    back to its four source pixels, times the bilinear weights."""
    B, C, h, w = g.shape
    out = np.empty((B, C, in_size * in_size), dtype=np.float32)
    for b, (index, weight) in enumerate(taps):
        gb = g[b].reshape(C, 1, h * w) * weight  # (C, 4, n)
        for c in range(C):
            out[b, c] = np.bincount(index.ravel(), gb[c].ravel(), minlength=in_size * in_size)
    return out.reshape(B, C, in_size, in_size)


@dataclass
class Transform:
    """One step's transformation of (B, 3, P, P) images, with what its adjoint needs."""

    params: Params
    size: int

    def __post_init__(self) -> None:
        self.taps = resample_taps(self.size + MARGIN, self.size + MARGIN_OUT, self.params.scale, self.params.angle)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, P, P) in [0, 1] -> (B, 3, P, P): pad, jitter, scale and rotate, jitter."""
        y = crop(pad(x, PAD), self.params.jitter1, JITTER1)
        y = resample(y, self.taps, self.size + MARGIN_OUT)
        return crop(y, self.params.jitter2, JITTER2)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """d objective / d input (B, 3, P, P) from d objective / d output (B, 3, P, P)."""
        g = crop_adjoint(g, self.params.jitter2, JITTER2)
        g = resample_adjoint(g, self.taps, self.size + MARGIN)
        return pad_adjoint(crop_adjoint(g, self.params.jitter1, JITTER1), PAD)
