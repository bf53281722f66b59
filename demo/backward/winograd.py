"""Winograd's minimal filtering for the transposed 3x3 convolutions: F(4x4, 3x3) and F(2x2, 3x3).

Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks" (arXiv 1509.09308): an m x m tile of a 3x3
correlation's output is Y = A^T [(G g G^T) . (B^T d B)] A, computed from the n x n tile d (n = m + 2) of the input
around it, "." the elementwise product. Per pair of channels that is n^2 multiplications for m^2 outputs instead
of 9 m^2: 4x fewer for F(4x4, 3x3), 2.25x fewer for F(2x2, 3x3). Summed over the C_out channels of the input, the
n^2 elementwise products become n^2 GEMMs (tiles, C_out) @ (C_out, C_in), with U = G g G^T made once per layer
(``winograd_weight``, in float64). A transposed convolution is the correlation with the flipped kernel.

The matrices come from the Cook-Toom construction (``cook_toom``) on n - 1 points and infinity: 0, 1, -1 for
F(2, 3) (Lavin & Gray's), and 0, +-3/2, +-2/3 for F(4, 3). The transforms are GEMMs here, so the points cost
nothing in speed, only the float32 error depends on them. Against a float64 direct convolution, on VGG16's 12
layers with 64 input channels or more (largest error over largest value): Lavin & Gray's 0, +-1, +-2 reach
1.1e-5 on random data and 3.3e-6 on a photo through trained weights; +-1/2 instead of +-2 the same; 0, +-3/2,
+-2/3 reach 2.5e-6 and 1.0e-6 (the relative L2 error slabs, to 1e-6 and 4e-7); F(2, 3) 6e-7. Those errors
add up over a descent: a conv5_3 projection stays near 1.5e-6 of torch's (the parity bound is 1e-4).

Data movement. The input is a zero-padded frame (B, m * Th + 2, m * Tw + 2, C_out) of B rows, Th x Tw tiles
each (``frame_size``), channels last. It is transformed, multiplied and transformed back in blocks of whole tile
rows, sized so that a block's arrays stay in the cache (``BLOCK_BYTES``) while its GEMMs keep enough tiles
(``MIN_BLOCK_TILES``). Each of the four one-dimensional transforms (B^T on the rows, then on the columns; A^T
on the columns, then on the rows) is one small GEMM (n, n) @ (n, everything else) on a strided view of the block:
the tiles overlap by 2, so a view with a stride of m rows (or columns) and an extra axis of n offsets reads every
tile without a loop over tiles, and with the channels last each copy moves runs of C contiguous floats. The last
step writes the m x m output tiles into place through the same kind of view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np

BLOCK_BYTES = 1 << 19  # transformed input (V) of one block: it and the block's other arrays stay in the caches
MIN_BLOCK_TILES = 64  # ... unless that leaves a block's GEMMs fewer columns (tiles) than this
GEMMS_PER_THREAD = 2  # small maps: pieces of a step's n^2 GEMMs per thread


def cook_toom(points: Sequence[int | Fraction], m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A^T (m, n), G (n, r), B^T (n, n) of Winograd's F(m, r), n = m + r - 1, on n - 1 points and infinity.

    F(m, r) is the transpose of the Toom-Cook linear convolution on those points (Lavin & Gray 2016, sec. 4):
    column i of A^T evaluates a polynomial of degree m - 1 at point a_i (the powers a_i^k; infinity gives the
    leading coefficient), row i of G evaluates the filter there, divided by f_i = prod_{j != i} (a_i - a_j), and
    row i of B^T holds the coefficients of prod_{j != i} (x - a_j), the Lagrange interpolation with f_i moved into
    G (the infinity row: those of prod_j (x - a_j)). Each row of B^T and column of A^T is then scaled to integers
    (G divided by the same numbers, the infinity row's too), so that A^T and B^T are exact in float32; G only
    meets float64 (the weights are transformed once). Exact arithmetic (Fractions), returned as float64.
    """
    a = [Fraction(p) for p in points]
    n = m + r - 1
    if len(a) != n - 1 or len(set(a)) != n - 1:
        raise ValueError(f"F({m}, {r}) needs {n - 1} distinct points, got {points}")

    def coefficients(roots: list[Fraction]) -> list[Fraction]:  # of prod (x - root), lowest power first
        c = [Fraction(1)]
        for root in roots:
            c = [(c[k - 1] if k else 0) - root * (c[k] if k < len(c) else 0) for k in range(len(c) + 1)]
        return c + [Fraction(0)] * (n - len(c))

    def integer_scale(values: list[Fraction]) -> int:  # the least common multiple of the denominators
        return int(np.lcm.reduce([v.denominator for v in values]))

    AT_cols, G, BT = [], [], []
    for i, p in enumerate(a):
        others = a[:i] + a[i + 1 :]
        col, row = [p**k for k in range(m)], coefficients(others)
        sa, sb = integer_scale(col), integer_scale(row)
        f = np.prod([p - q for q in others])
        AT_cols.append([v * sa for v in col])
        BT.append([v * sb for v in row])
        G.append([p**k / (f * sa * sb) for k in range(r)])
    row = coefficients(a)
    sb = integer_scale(row)
    AT_cols.append([Fraction(int(k == m - 1)) for k in range(m)])
    BT.append([v * sb for v in row])
    G.append([Fraction(int(k == r - 1), sb) for k in range(r)])
    return (np.array(AT_cols, dtype=np.float64).T, np.array(G, dtype=np.float64), np.array(BT, dtype=np.float64))


# The points of F(2, 3) (Lavin & Gray's) and F(4, 3), each with infinity; for F(4, 3), 0, +-3/2, +-2/3 halve the
# float32 error of Lavin & Gray's 0, +-1, +-2 (relative L2 error; the largest error 4x; see the module's doc).
POINTS = {2: (0, 1, -1), 4: (0, Fraction(3, 2), Fraction(-3, 2), Fraction(2, 3), Fraction(-2, 3))}
TRANSFORMS = {m: cook_toom(p, m) for m, p in POINTS.items()}  # m -> (A^T, G, B^T), float64
_TRANSFORMS32 = {m: (at.astype(np.float32), bt.astype(np.float32)) for m, (at, _, bt) in TRANSFORMS.items()}


def winograd_weight(weight: np.ndarray, m: int) -> np.ndarray:
    """Forward conv weight (C_out, C_in, 3, 3) -> U (n * n, C_out, C_in) float32 of the transposed convolution.

    The transposed convolution correlates with the flipped kernel, g[co, ci, j, i] = weight[co, ci, 2 - j, 2 - i];
    U[s * n + r] = (G g G^T)[r, s] (r the row, s the column of the transformed tile), computed in float64.
    """
    C_out, C_in = weight.shape[:2]
    _, G, _ = TRANSFORMS[m]
    g = np.asarray(weight, dtype=np.float64)[:, :, ::-1, ::-1]
    u = np.matmul(np.matmul(G, g), G.T)  # (C_out, C_in, n [r], n [s])
    n = m + 2
    return np.ascontiguousarray(u.transpose(3, 2, 0, 1).reshape(n * n, C_out, C_in), dtype=np.float32)


def frame_size(H: int, W: int, m: int) -> tuple[int, int]:
    """(Hf, Wf) of the zero-padded input frame of an (H, W) output: m * ceil(H / m) + 2, m * ceil(W / m) + 2."""
    return m * -(-H // m) + 2, m * -(-W // m) + 2


Blocks = Callable[[Callable[[int], None], int], None]  # runs fn(i) for i in range(count), possibly on threads


def _serial(fn: Callable[[int], None], count: int) -> None:
    for i in range(count):
        fn(i)


def winograd(frame: np.ndarray, U: np.ndarray, m: int, H: int, W: int, each: Blocks = _serial,
             threads: int = 1) -> np.ndarray:
    """F(m x m, 3 x 3) of B rows: ``frame`` (B, Hf, Wf, C_out) (``frame_size``) -> (B, H, W, C_in) view.

    Blocks: tile rows a0:a1 of one row b, or whole rows b0:b1 once a row has fewer tiles than a block; each block
    goes through ``_block``, ``each`` running them (one after another, or on threads: they write disjoint parts
    of the output). When whole blocks would leave the threads idle more than a fifth of the time (a small map:
    fewer blocks than threads, or just more), the n^2 GEMMs of each block are split between the threads instead
    (``_split_blocks``): every input transform, then the GEMMs in groups, then every output transform. Every GEMM
    of U is the same call whatever the split, and the transforms' GEMMs (sums of n terms) come out the same on any
    part of the tiles: the output does not depend on the thread count (the tests check it). ``U`` (n * n, C_out,
    C_in) from ``winograd_weight``.
    """
    B, Hf, Wf, C_out = frame.shape
    C_in = U.shape[2]
    Th, Tw = (Hf - 2) // m, (Wf - 2) // m
    n = m + 2
    y = np.empty((B, m * Th, m * Tw, C_in), dtype=np.float32)
    tiles = max(MIN_BLOCK_TILES, BLOCK_BYTES // (4 * n * n * max(C_out, C_in)))  # per block
    if Th * Tw >= tiles:  # bands of tile rows of one row b
        step = max(1, tiles // Tw)
        blocks = [(slice(b, b + 1), slice(a, min(a + step, Th))) for b in range(B) for a in range(0, Th, step)]
    else:  # groups of whole rows
        step = max(1, tiles // (Th * Tw))
        blocks = [(slice(b, min(b + step, B)), slice(0, Th)) for b in range(0, B, step)]
    if len(blocks) >= 0.8 * threads * -(-len(blocks) // threads):  # whole blocks keep the threads 80% busy
        each(lambda i: _block(frame, U, m, *blocks[i], y), len(blocks))
    else:
        _split_blocks(frame, U, m, blocks, y, each, threads)
    return y[:, :H, :W]


def _block(frame: np.ndarray, U: np.ndarray, m: int, rows: slice, band: slice, y: np.ndarray) -> None:
    """Tile rows ``band`` of rows ``rows``: frame (B, Hf, Wf, C_out) -> their m x m tiles in y (B, .., .., C_in)."""
    _transform_out(np.matmul(_transform_in(frame, m, rows, band), U), m, rows, band, y)


def _split_blocks(frame: np.ndarray, U: np.ndarray, m: int, blocks: list[tuple[slice, slice]], y: np.ndarray,
                  each: Blocks, threads: int) -> None:
    """``_block`` of each of ``blocks``, in three steps that each run on the threads: the input transforms, the
    n^2 GEMMs V[k] @ U[k] in groups of k, the output transforms; ``GEMMS_PER_THREAD`` pieces per thread in all,
    the transforms of a block in parts of its tile rows (or of its rows)."""
    nn, C_in = U.shape[0], U.shape[2]
    pieces = -(-GEMMS_PER_THREAD * threads // len(blocks))  # per block
    v, mm, parts = [], [], []  # per block: V, the products, the parts (rows, band, first tile, end tile)
    for rows, band in blocks:
        nb, na = rows.stop - rows.start, band.stop - band.start
        tiles = nb * na * (frame.shape[2] - 2) // m
        v.append(np.empty((nn, tiles, frame.shape[3]), dtype=np.float32))
        mm.append(np.empty((nn, tiles, C_in), dtype=np.float32))
        if nb > 1:  # whole rows: parts of the rows
            k = min(nb, pieces)
            cuts = [rows.start + nb * i // k for i in range(k + 1)]
            split = [(slice(r0, r1), band) for r0, r1 in zip(cuts[:-1], cuts[1:], strict=True)]
        else:  # tile rows of one row: parts of the tile rows
            k = min(na, pieces)
            cuts = [band.start + na * i // k for i in range(k + 1)]
            split = [(rows, slice(a0, a1)) for a0, a1 in zip(cuts[:-1], cuts[1:], strict=True)]
        per_tile = tiles // (nb * na)  # tiles of one tile row of one row
        firsts = [((r.start - rows.start) * na + (b.start - band.start)) * per_tile for r, b in split]
        parts.append([(r, b, t0, t0 + (r.stop - r.start) * (b.stop - b.start) * per_tile)
                      for (r, b), t0 in zip(split, firsts, strict=True)])
    slabs = [(i, *part) for i, block_parts in enumerate(parts) for part in block_parts]
    groups = min(nn, pieces)
    gemms = [(i, nn * g // groups, nn * (g + 1) // groups) for i in range(len(blocks)) for g in range(groups)]

    def transform_in(j: int) -> None:
        i, rows, band, t0, t1 = slabs[j]
        v[i][:, t0:t1] = _transform_in(frame, m, rows, band)

    def gemm(j: int) -> None:
        i, k0, k1 = gemms[j]
        np.matmul(v[i][k0:k1], U[k0:k1], out=mm[i][k0:k1])

    def transform_out(j: int) -> None:
        i, rows, band, t0, t1 = slabs[j]
        _transform_out(mm[i][:, t0:t1], m, rows, band, y)

    each(transform_in, len(slabs))
    each(gemm, len(gemms))
    each(transform_out, len(slabs))


def _transform_in(frame: np.ndarray, m: int, rows: slice, band: slice) -> np.ndarray:
    """B^T d B of the tiles of tile rows ``band`` of rows ``rows`` of frame (B, Hf, Wf, C_out): V (n * n, tiles,
    C_out), V[s * n + r] the (r, s) entry of every tile.

    Channels last: every strided view below moves whole runs of C_out contiguous floats.
    """
    B, Hf, Wf, C_out = frame.shape
    _, BT = _TRANSFORMS32[m]
    n = m + 2
    nb, na, Tw = rows.stop - rows.start, band.stop - band.start, (Wf - 2) // m
    sb, sh, sw, sc = frame.strides
    # B^T on the rows: d[b, a, r] = frame row m * a + r of row b, (Wf * C_out) contiguous floats: read in place
    d = np.ndarray((nb, na, n, Wf * C_out), np.float32, frame, rows.start * sb + m * band.start * sh,
                   (sb, m * sh, sh, sc))
    t = np.matmul(BT, d).reshape(nb, na, n, Wf, C_out)  # (nb, na, n [r'], Wf, C_out)
    # B^T on the columns: e[s, r', b, a, j, c] = t[b, a, r', m * j + s, c]
    st = t.strides
    e = np.ndarray((n, n, nb, na, Tw, C_out), np.float32, t, 0, (st[3], st[2], st[0], st[1], m * st[3], st[4]))
    return np.matmul(BT, e.reshape(n, -1)).reshape(n * n, nb * na * Tw, C_out)  # V[s' * n + r']: (tiles, C_out)


def _transform_out(mm: np.ndarray, m: int, rows: slice, band: slice, y: np.ndarray) -> None:
    """A^T M A of the products ``mm`` (n * n, tiles, C_in) of tile rows ``band`` of rows ``rows``: their m x m
    output tiles, written in place in y (B, .., .., C_in)."""
    AT, _ = _TRANSFORMS32[m]
    n, C_in = m + 2, y.shape[3]
    nb, na = rows.stop - rows.start, band.stop - band.start
    Tw = y.shape[2] // m
    # A^T on the columns (s' -> q), then on the rows (r' -> p)
    o = np.matmul(AT, mm.reshape(n, -1)).reshape(m, n, nb * na * Tw * C_in)
    o = np.matmul(AT, o).reshape(m, m, nb, na, Tw, C_in)  # (q, p, nb, na, Tw, C_in)
    out = y[rows, m * band.start : m * band.stop].reshape(nb, na, m, Tw, m, C_in)
    np.copyto(out, o.transpose(2, 3, 1, 4, 0, 5))
