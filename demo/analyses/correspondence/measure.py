"""The measure of the correspondence analysis: the signs of eps = x - x~, Delta (the mean Hamming distance between
them over ordered pairs of images and features), the random baseline, and the feature functions over a model."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from base import spec
from base.cli import UsageError
from demo.analyses.correspondence.boxes import InputBox, mask, random_box
from demo.backward import adaptive_pool_matrix, max_pool_2x2
from demo.onnx_forward import OnnxModel

POOLED = "pooled"  # the feature vector before the classifier

FeatureFn = Callable[[np.ndarray], dict[str, np.ndarray]]  # (B, 3, H, W) -> {layer: (B, D) float32}


# ----------------------------------------------------------------------------------------------------------------
# The consistency measure


def signs(eps: np.ndarray, reference: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """sign(eps) (N, D) int8 in {-1, 0, 1}, where |eps| <= ``tolerance`` * max |reference| of the same row counts
    as 0; ``reference`` (N, D) is the original's feature vector."""
    N, D = eps.shape
    limit = tolerance * np.abs(reference).max(axis=1, keepdims=True) if tolerance > 0 else 0.0
    out = np.sign(eps).astype(np.int8)
    if tolerance > 0:
        out[np.abs(eps) <= limit] = 0
    return out


def sign_counts(sign: np.ndarray) -> np.ndarray:
    """(2, D) int64: per feature, how many of the N rows of ``sign`` (N, D) are -1 and how many are +1."""
    N, D = sign.shape
    return np.stack([(sign < 0).sum(axis=0), (sign > 0).sum(axis=0)]).astype(np.int64)


def delta_from_counts(counts: np.ndarray, n: int) -> float:
    """Delta of ``n`` sign vectors from their ``sign_counts`` (2, D): the ordered pairs i != j whose signs differ,
    summed over the D features, divided by n (n - 1) D. A value of a feature differs from another value unless
    both are equal, so per feature the differing ordered pairs are n^2 - (n_-^2 + n_0^2 + n_+^2)."""
    _, D = counts.shape
    if n < 2:
        raise ValueError(f"Delta needs at least 2 images, got {n}")
    neg, pos = counts
    zero = n - neg - pos
    differing = n * n - (neg * neg + zero * zero + pos * pos)
    return float(differing.sum() / (n * (n - 1) * D))


def delta(sign: np.ndarray) -> float:
    """Delta (a mean in [0, 1]) of the sign vectors ``sign`` (N, D) in {-1, 0, 1}: the Hamming distance summed over
    ordered pairs i != j, divided by the number of pairs N (N - 1) and the feature length D."""
    N, D = sign.shape
    return delta_from_counts(sign_counts(sign), N)


# ----------------------------------------------------------------------------------------------------------------
# Features


def pooled_features(conv5_3: np.ndarray, head: str) -> np.ndarray:
    """The feature vector the classifier reads, from conv5_3's activation (N, C, h, w): (N, C) per-channel maxima
    for the "gmp" head; (N, C * 7 * 7) flattened adaptive-average-pooled pool5 for the "torchvision" head."""
    N, C, h, w = conv5_3.shape
    if head == "gmp":
        return conv5_3.reshape(N, C, h * w).max(axis=2)
    if head == "torchvision":
        pooled, _ = max_pool_2x2(conv5_3)  # (N, C, h // 2, w // 2)
        _, _, h2, w2 = pooled.shape
        return (adaptive_pool_matrix(h2) @ pooled @ adaptive_pool_matrix(w2).T).reshape(N, -1)
    raise UsageError(f"layer {POOLED!r}: unsupported head {head!r} (known: gmp, torchvision)")


def model_features(model: OnnxModel, layers: Sequence[str]) -> FeatureFn:
    """A feature function over ``model``: (B, 3, H, W) normalised -> {layer: (B, D) float32} for ``layers`` (conv
    names and ``pooled``); only the needed activations leave onnxruntime."""
    convs = [n for n in spec.CONV_LAYERS if n in layers or (n == "conv5_3" and POOLED in layers)]
    head = model.head.kind if POOLED in layers else ""

    def features(x: np.ndarray) -> dict[str, np.ndarray]:
        B, C, H, W = x.shape
        values = model.session_for(convs).run(convs, {spec.INPUT_NAME: np.ascontiguousarray(x, np.float32)})
        acts = dict(zip(convs, values, strict=True))
        return {n: pooled_features(acts["conv5_3"], head) if n == POOLED else acts[n].reshape(B, -1)
                for n in layers}

    return features


def parse_layer_list(text: str) -> list[str]:
    """"conv4_3,conv5_3,pooled" -> the names, validated (conv layers and ``pooled``), duplicates dropped."""
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in spec.CONV_LAYERS and n != POOLED]
    if unknown or not names:
        raise UsageError(f"unknown layer(s) {unknown or text!r}; expected names from {', '.join(spec.CONV_LAYERS)} "
                         f"or {POOLED}")
    return names


# ----------------------------------------------------------------------------------------------------------------
# The analysis


@dataclass
class Row:
    """One part at one layer: Delta, the random baseline's mean and sample std over the draws, and how many
    images had the part."""

    part: str
    layer: str
    delta: float
    random_mean: float
    random_std: float
    images: int


@dataclass
class CorrespondenceResult:
    """What ``correspondence`` measured."""

    rows: list[Row]  # one per part and layer, parts outer
    parts: list[str]
    layers: list[str]
    random: dict[tuple[str, str], np.ndarray]  # (part, layer) -> (draws,) float64, Delta of each random draw
    boxes: list[dict[str, InputBox]]  # per image, the input boxes of its parts (absent: no box or skipped)
    draws: int
    seed: int
    tolerance: float
    size: int  # input side in pixels
    notes: list[str] = field(default_factory=list)  # what was skipped, one line each


Group = tuple[str, int]  # (part, draw); draw -1: the part's own boxes
Job = tuple[Group, int, InputBox]  # (group, image index, input box to cover)


def _count_signs(images: np.ndarray, jobs: Sequence[Job], features: FeatureFn, batch_size: int, tolerance: float,
                 pbar: tqdm) -> tuple[list[str], dict[tuple[Group, str], np.ndarray]]:
    """Run the originals ``images`` (N, 3, H, W) and every masked copy of ``jobs`` through ``features``: the
    layers ``features`` returns, and per group and layer the ``sign_counts`` (2, D) of eps = x - x~ summed over the
    group's images."""
    N = len(images)
    base: dict[str, list[np.ndarray]] = {}
    for start in range(0, N, batch_size):
        for name, value in features(images[start : start + batch_size]).items():
            base.setdefault(name, []).append(np.asarray(value, np.float32))
        pbar.update(min(batch_size, N - start))
    original = {name: np.concatenate(chunks) for name, chunks in base.items()}  # layer -> (N, D)
    counts = {(g, name): np.zeros((2, original[name].shape[1]), np.int64)
              for g in dict.fromkeys(j[0] for j in jobs) for name in original}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        index = np.array([i for _, i, _ in chunk])
        batch = np.stack([mask(images[i], box) for _, i, box in chunk])  # (B, 3, H, W)
        for name, value in features(batch).items():
            reference = original[name][index]  # (B, D)
            s = signs(reference - np.asarray(value, np.float32), reference, tolerance)
            for row, (group, _, _) in enumerate(chunk):
                counts[group, name] += sign_counts(s[row : row + 1])
        pbar.update(len(chunk))
    return list(original), counts


def correspondence(images: np.ndarray, boxes: Sequence[Mapping[str, InputBox]], features: FeatureFn,
                   parts: Sequence[str] | None = None, draws: int = 10, seed: int = 0, batch_size: int = 16,
                   tolerance: float = 1e-4, bar: bool = True) -> CorrespondenceResult:
    """Delta of each part and of its random baseline at each layer ``features`` returns.

    ``images``: (N, 3, H, W) normalised inputs (H == W); ``boxes[i]``: part -> input box (x0, y0, x1, y1) of image
    i (a part may be absent); ``features``: (B, 3, H, W) -> {layer: (B, D)}. Random boxes are drawn in a fixed
    order (draw, part, image) from ``np.random.default_rng(seed)``, so the result does not depend on
    ``batch_size``. Forward passes: N * (1 + (1 + draws) * parts), ``batch_size`` at a time.
    """
    N, C, H, W = images.shape
    if H != W:
        raise ValueError(f"expected square inputs, got {H}x{W}")
    if len(boxes) != N:
        raise ValueError(f"{len(boxes)} box sets for {N} images")
    if draws < 1 or batch_size < 1:
        raise ValueError(f"draws and batch_size must be at least 1, got {draws} and {batch_size}")
    parts = list(parts) if parts is not None else list(dict.fromkeys(p for b in boxes for p in b))
    members = {p: [i for i in range(N) if p in boxes[i]] for p in parts}
    few = [f"{p} ({len(m)})" for p, m in members.items() if len(m) < 2]
    if few:
        raise UsageError(f"Delta compares pairs of images: part(s) {', '.join(few)} in fewer than 2 images")

    rng = np.random.default_rng(seed)
    jobs: list[Job] = [((p, -1), i, tuple(boxes[i][p])) for p in parts for i in members[p]]
    jobs += [((p, d), i, random_box(rng, boxes[i][p], H)) for d in range(draws) for p in parts for i in members[p]]
    with tqdm(total=N + len(jobs), unit="img", desc="forward passes", disable=not bar, file=sys.stderr) as pbar:
        layers, counts = _count_signs(images, jobs, features, batch_size, tolerance, pbar)

    rows, random = [], {}
    for p in parts:
        n = len(members[p])
        for name in layers:
            per_draw = np.array([delta_from_counts(counts[(p, d), name], n) for d in range(draws)])
            random[p, name] = per_draw
            std = float(per_draw.std(ddof=1)) if draws > 1 else 0.0
            rows.append(Row(p, name, delta_from_counts(counts[(p, -1), name], n), float(per_draw.mean()), std, n))
    return CorrespondenceResult(rows, parts, layers, random, [dict(b) for b in boxes], draws, seed, tolerance, H)
