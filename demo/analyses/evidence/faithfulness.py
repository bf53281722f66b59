"""How faithful an evidence map is to the network: deletion, insertion and ROAD, on the class probability.

- Deletion and insertion (Petsiuk et al. 2018, RISE, arXiv 1806.07421): the pixels are taken in the map's order,
  most relevant first, ``steps`` equal groups. Deletion sets them to zero in the normalised image (the data
  set's mean colour) one group after another; insertion starts from a blurred copy (Gaussian, 11 x 11, sigma 5,
  ``methods.gaussian_blur``) and puts the image's pixels back in the same order. Each curve is the class
  probability at the ``steps + 1`` stages; its area (trapezoid rule, the x axis the fraction of pixels, 0 to 1)
  is the score: low for deletion and high for insertion mean a faithful map.
- ROAD (Rong et al. 2022, arXiv 2202.00449) as pytorch-grad-cam scores it: for each percentile p in 10, ..., 90
  the pixels at or above the p-th percentile of the map (most relevant first, MoRF) or of the negated map (least
  relevant first, LeRF) are removed, replaced by noisy linear imputation (each removed pixel the weighted mean of
  its 8 neighbours, 1/6 for edge neighbours and 1/12 for corner ones, solved as one sparse linear system per
  image, then Gaussian noise of sd 0.01 added), and the score is the mean over p of p(class | imputed) -
  p(class | image). MoRF: lower is better; LeRF: higher is better.

Ties in a map are broken in a seeded random order, so that a constant map removes pixels at random rather than
from the top left. All perturbed images go through onnxruntime in batches (``Network.probs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve

from demo.analyses.evidence.methods import Network, gaussian_blur

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # ROAD's removal thresholds (pytorch-grad-cam's)
ROAD_NOISE = 0.01  # sd of the noise added to imputed values (normalised units)
NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6), (-1, -1, 1 / 12),
              (1, 0, 1 / 6), (-1, 0, 1 / 6))  # (row offset, column offset, weight) of the linear imputation


@dataclass
class Scores:
    """The faithfulness of one map for one image and class."""

    deletion: np.ndarray  # (steps + 1,) float32, p(class) as the pixels are deleted, most relevant first
    insertion: np.ndarray  # (steps + 1,) float32, p(class) as the pixels are inserted into the blurred image
    deletion_auc: float  # area under ``deletion``, x from 0 to 1 (lower = more faithful)
    insertion_auc: float  # area under ``insertion`` (higher = more faithful)
    road_morf: float  # ROAD, most relevant first: mean change of p(class) (lower = more faithful)
    road_lerf: float  # ROAD, least relevant first (higher = more faithful)


def auc(curve: np.ndarray) -> float:
    """Area under ``curve`` (n,) sampled at n equally spaced points of [0, 1], by the trapezoid rule."""
    c = np.asarray(curve, np.float64)
    if c.size < 2:
        raise ValueError("a curve needs at least two points")
    return float((c.sum() - (c[0] + c[-1]) / 2) / (c.size - 1))


def ranking(saliency: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices (H * W,) of ``saliency`` (H, W), most relevant first; ties in a seeded random order."""
    s = np.asarray(saliency, np.float64).reshape(-1)
    tiebreak = np.random.default_rng(seed).random(s.size)
    return np.lexsort((tiebreak, -s))


def perturbation_series(image: np.ndarray, saliency: np.ndarray, steps: int = 32,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The deletion and insertion images of ``image`` (1, 3, H, W) normalised: two (steps + 1, 3, H, W) float32
    arrays, stage k with the first round(k * H * W / steps) pixels of the ranking deleted / inserted."""
    _, C, H, W = image.shape
    if steps < 1:
        raise ValueError(f"the number of steps must be at least 1, got {steps}")
    order = ranking(saliency, seed)
    rank = np.empty(H * W, np.int64)
    rank[order] = np.arange(H * W)
    counts = np.round(np.arange(steps + 1) * (H * W) / steps).astype(np.int64)  # (steps + 1,)
    reached = (rank.reshape(1, H, W) < counts[:, None, None])[:, None]  # (steps + 1, 1, H, W)
    x = np.asarray(image, np.float32)
    deletion = np.where(reached, np.float32(0), x)
    insertion = np.where(reached, x, gaussian_blur(x))
    return deletion.astype(np.float32), insertion.astype(np.float32)


def impute(image: np.ndarray, removed: np.ndarray, noise: float = ROAD_NOISE,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """Noisy linear imputation: ``image`` (C, H, W) with the pixels where ``removed`` (H, W) bool is True replaced.

    Each removed pixel equals the weighted mean of its neighbours inside the image (``NEIGHBOURS``), known or
    removed: one sparse linear system for all removed pixels, every channel a right-hand side; then Gaussian
    noise of sd ``noise`` is added to the imputed values. Returns (C, H, W) float32.
    """
    C, H, W = image.shape
    removed = np.asarray(removed, bool)
    flat = np.asarray(image, np.float64).reshape(C, H * W)
    unknown = np.flatnonzero(removed.reshape(-1))
    n = unknown.size
    out = flat.copy()
    if n == 0:
        return image.astype(np.float32)
    var = np.full(H * W, -1, np.int64)
    var[unknown] = np.arange(n)
    r, c = unknown // W, unknown % W
    diag = np.zeros(n)
    rows, cols, vals = [], [], []
    rhs = np.zeros((n, C))
    for dr, dc, weight in NEIGHBOURS:
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        diag[inside] -= weight
        j = np.flatnonzero(inside)
        where = rr[j] * W + cc[j]
        free = var[where] >= 0
        rows.append(j[free])
        cols.append(var[where[free]])
        vals.append(np.full(int(free.sum()), weight))
        rhs[j[~free]] -= weight * flat[:, where[~free]].T
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    A = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsc()
    solution = np.asarray(spsolve(A, rhs)).reshape(n, C)
    rng = rng if rng is not None else np.random.default_rng(0)
    out[:, unknown] = solution.T + noise * rng.standard_normal((C, n))
    return out.reshape(C, H, W).astype(np.float32)


def road_images(image: np.ndarray, saliency: np.ndarray, percentiles=PERCENTILES, noise: float = ROAD_NOISE,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ROAD's imputed images of ``image`` (1, 3, H, W): MoRF and LeRF, each (len(percentiles), 3, H, W) float32.

    At percentile p, MoRF removes the pixels whose map value is at or above the map's p-th percentile, LeRF
    those at or above the p-th percentile of the negated map.
    """
    s = np.asarray(saliency, np.float64)
    rng = np.random.default_rng(seed)
    x = np.asarray(image, np.float32)[0]
    morf = [impute(x, s >= np.percentile(s, p), noise, rng) for p in percentiles]
    lerf = [impute(x, -s >= np.percentile(-s, p), noise, rng) for p in percentiles]
    return np.stack(morf), np.stack(lerf)


def faithfulness(network: Network, image: np.ndarray, saliency: np.ndarray, class_index: int, steps: int = 32,
                 seed: int = 0, batch_size: int = 16, road: bool = True) -> Scores:
    """Deletion, insertion and ROAD of map ``saliency`` (H, W) for class ``class_index`` of ``image`` (1, 3, H, W)
    normalised; every perturbed image goes through ``network`` in batches of ``batch_size``."""
    N, C, H, W = image.shape
    if N != 1:
        raise ValueError(f"expected one image, got a batch of {N}")
    if saliency.shape != (H, W):
        raise ValueError(f"the map is {saliency.shape}, the image {(H, W)}")
    deletion, insertion = perturbation_series(image, saliency, steps, seed)
    # deletion[0] and insertion[-1] are the image itself: it goes through the network once
    batch = [np.asarray(image, np.float32), deletion[1:], insertion[:-1]]
    if road:
        batch += list(road_images(image, saliency, seed=seed))
    probs = network.probs(np.concatenate(batch), batch_size)[:, class_index]
    base = probs[0]
    curves = np.concatenate([[base], probs[1 : steps + 1]]), np.concatenate([probs[steps + 1 : 2 * steps + 1], [base]])
    if road:
        p = len(PERCENTILES)
        morf = float(np.mean(probs[2 * steps + 1 : 2 * steps + 1 + p] - base))
        lerf = float(np.mean(probs[2 * steps + 1 + p :] - base))
    else:
        morf = lerf = float("nan")
    return Scores(curves[0].astype(np.float32), curves[1].astype(np.float32), auc(curves[0]), auc(curves[1]),
                  morf, lerf)
