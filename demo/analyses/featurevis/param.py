"""The image parametrization of feature visualization, forward and backward, in float32 NumPy.

Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017, and Lucid's defaults
(``lucid.optvis.param``: ``fft_image`` and ``to_valid_rgb``):

- a spectrum (B, 2, 3, H, W // 2 + 1) (real and imaginary parts) drawn from N(0, sd^2), sd 0.01;
- each frequency scaled by 1 / max(f, 1 / max(H, W)) ** decay_power (decay power 1: a 1/f spectrum);
- the orthonormal inverse real 2-D FFT, divided by 4 -> (B, 3, H, W) in a decorrelated colour space;
- colours mixed by Lucid's 3x3 square root of ImageNet's colour covariance (columns normalised to a largest norm of
  1), then squashed by a sigmoid -> RGB (B, 3, H, W) in (0, 1).

Every step is linear or elementwise, so ``backward`` is the exact adjoint: the orthonormal ``rfft2`` with the
columns the Hermitian extension mirrors counted twice (columns 1 .. W/2 - 1), the transposed colour matrix, the
sigmoid's derivative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Lucid's ``color_correlation_svd_sqrt`` (lucid/optvis/param/color.py), normalised as Lucid does.
COLOR_CORRELATION_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02],
                                         [0.27, 0.00, -0.05],
                                         [0.27, -0.09, 0.03]], dtype=np.float32)
COLOR_MATRIX = (COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))).astype(
    np.float32)  # (3, 3): rgb = COLOR_MATRIX @ decorrelated colour, per pixel
MAGIC = 4.0  # Lucid divides the inverse FFT by 4
SD = 0.01  # std of the initial spectrum
DECAY_POWER = 1.0


def spectrum_scale(height: int, width: int, decay_power: float = DECAY_POWER) -> np.ndarray:
    """(H, W // 2 + 1) float32: 1 / max(f, 1 / max(H, W)) ** decay_power, f the frequency (cycles per pixel)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    return (1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** decay_power).astype(np.float32)


def init_spectrum(rng: np.random.Generator, batch: int, size: int, sd: float = SD) -> np.ndarray:
    """The starting parameters (B, 2, 3, size, size // 2 + 1) float32 ~ N(0, sd^2)."""
    return (sd * rng.standard_normal((batch, 2, 3, size, size // 2 + 1))).astype(np.float32)


@dataclass
class FourierImage:
    """The parametrization of (size x size) images; ``size`` even."""

    size: int
    decay_power: float = DECAY_POWER

    def __post_init__(self) -> None:
        if self.size < 2 or self.size % 2:
            raise ValueError(f"the image size must be even and at least 2, got {self.size}")
        self.scale = spectrum_scale(self.size, self.size, self.decay_power)  # (H, W // 2 + 1)
        mirrored = np.full(self.size // 2 + 1, 2.0, dtype=np.float32)  # columns the Hermitian extension doubles
        mirrored[0] = mirrored[-1] = 1.0
        self.mirrored = mirrored

    def forward(self, spectrum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameters (B, 2, 3, H, W//2 + 1) -> RGB (B, 3, H, W) float32 in (0, 1), and the sigmoid's output (the same
        array, kept for ``backward``)."""
        B, _, C, H, Wf = spectrum.shape
        coeffs = (spectrum[:, 0] + 1j * spectrum[:, 1]) * self.scale  # (B, 3, H, Wf) complex
        t = np.fft.irfft2(coeffs, s=(self.size, self.size), norm="ortho").astype(np.float32) / np.float32(MAGIC)
        mixed = np.einsum("ij,bjhw->bihw", COLOR_MATRIX, t, optimize=True)
        rgb = (1.0 / (1.0 + np.exp(-mixed))).astype(np.float32)
        return rgb, rgb

    def backward(self, grad_rgb: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """d objective / d parameters (B, 2, 3, H, W//2 + 1) float32 from d objective / d RGB (B, 3, H, W) and the
        forward's RGB."""
        g = grad_rgb * rgb * (1.0 - rgb)  # through the sigmoid
        g = np.einsum("ji,bjhw->bihw", COLOR_MATRIX, g, optimize=True) / np.float32(MAGIC)
        G = np.fft.rfft2(g, norm="ortho") * self.mirrored * self.scale  # (B, 3, H, Wf) complex
        return np.stack([G.real, G.imag], axis=1).astype(np.float32)
