"""The Zeiler & Fergus deconvnet in float32 NumPy: onnxruntime's activations and switches -> pixel space.

It mirrors the PyTorch reference ``model/deconvnet.py`` (same functions, same three modes, same result order)
and must agree with it to a relative error of 1e-4 (``tests/test_deconv_numpy.py``). The recipe, from a conv
layer down to the image, for that layer and each conv layer below it:

1. ReLU on the reconstruction,
2. the transposed 3x3 convolution (padding 1) with the layer's own weights, batch norm folded, no bias,
3. if a 2x2 max-pool feeds the layer, unpooling: each value goes back to where its switch says the maximum
   was (``model.spec.SWITCH_CONVENTION``: per-plane flat index), the other three positions get zero.

Speed. A transposed 3x3 convolution becomes BLAS GEMMs plus cheap data movement, by one of three methods,
chosen per layer by its channel counts (``prepare_weight``):

- im2col over "shifted rows": pad the (C_out, H, W) input to (C_out, H + 2, W + 2) and flatten it; the input
  seen through kernel tap (j, i) at output (p, q) is then the flat element (p * (W + 2) + q) + (j * (W + 2) + i),
  so each of the 9 taps is one contiguous slice of the flattened planes. Stacking the 9 slices gives the
  (9 * C_out, H * (W + 2)) column matrix and one GEMM, W_flipped (C_in, 9 * C_out) @ cols, computes every
  output, in rows of W + 2 of which the last 2 are discarded. Built and multiplied in cache-sized blocks.
- col2im, when C_in < C_out (conv1_1 has C_in = 3): W (9 * C_in, C_out) @ x (C_out, H * W) gives each tap's
  contribution, and 9 shifted adds into a zero-bordered output sum them.
- Winograd F(2x2, 3x3), from 128 channels on: 2.25x fewer multiplications than the direct convolution, in 16
  GEMMs (C_in, C_out) @ (C_out, H * W / 4) between elementwise input and output transforms.

Threads: BLAS runs the GEMMs on its threads; the copies and transforms around them use as many (the
``OPENBLAS_NUM_THREADS`` setting, else every core). On a CPU shared with other busy processes, threads that wait
for each other cost more than they bring: run with ``OPENBLAS_NUM_THREADS=1`` there.

Projections of single activations ("channel", "topk") touch only the receptive field: each step computes the
bounding box of the non-zero signal (grown by 1 per convolution, doubled by unpooling) and nothing outside it.

Batches. Several rows (the k of "topk", the images of a batch, any B signals of ``project_down``) go down in one
pass, stored channel-major (C, B, h, w) so that every GEMM takes all rows at once: im2col stacks the B padded
planes one after another in the same shifted-rows matrix, col2im and Winograd put the B rows side by side in
their GEMMs' columns. Each row keeps its own receptive-field window: all windows of a step have one size (the
largest box) but each sits around its own row's box, so nine activations far apart cost what they cost alone.
Unpooling reads each row's switches in place, from its image (``image_of``). While windows are small the rows
go through each layer together; once a batch would outgrow the cache (``BATCH_BYTES``), it goes on in groups.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from model.spec import CONV_LAYERS, pool_below

MODES = ("layer", "channel", "topk")
CHUNK_BYTES = 8 << 20  # size of one block of im2col columns (stays in the L3 cache, keeps GEMMs large)
BLOCK_BYTES = 8 << 20  # Winograd / col2im intermediates of one group of rows (they stay in the L3 cache)
BATCH_BYTES = 4 << 20  # rows go through a layer together while their inputs and outputs fit this

Box = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1 of the non-zero part of a (C, H, W) signal
PARALLEL_MIN_ELEMENTS = 1 << 18  # arrays smaller than this are moved by one thread


def _cpu_threads() -> int:
    """Threads for the data movement: as many as BLAS uses (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS), else cores."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_THREADS = _cpu_threads()
_POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="deconv") if _THREADS > 1 else None


def _by_channels(fn: Callable[[slice], None], channels: int, elements: int) -> None:
    """Run ``fn(channel_slice)`` over slices covering ``range(channels)``, on all threads when the work is big.

    BLAS parallelises the GEMMs itself; this does the same for the copies and elementwise transforms around
    them (NumPy releases the GIL inside them).
    """
    parts = min(_THREADS, channels) if _POOL is not None and elements >= PARALLEL_MIN_ELEMENTS else 1
    bounds = [channels * i // parts for i in range(parts + 1)]
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if parts == 1:
        fn(slices[0])
    else:
        for future in [_POOL.submit(fn, s) for s in slices]:
            future.result()


@dataclass
class Projection:
    """Reconstructions in input space and what each one was projected from (NumPy twin of the reference's)."""

    images: np.ndarray  # (B, 3, H, W) float32; B = N for "layer"/"channel", N * k for "topk" (image-major)
    channels: np.ndarray | None  # (B,) int64 channel projected, None for "layer"
    values: np.ndarray | None  # (B,) float32 activation value the projection started from, None for "layer"


@dataclass(frozen=True)
class DeconvWeight:
    """A conv weight laid out for the transposed convolution, with the method that suits its channel counts.

    - ``"im2col"`` (C_in >= C_out, fewer than 128 channels): ``matrix`` (C_in, 9 * C_out), column
      (j * 3 + i) * C_out + co holding weight[co, :, 2 - j, 2 - i] (the transposed convolution correlates
      with the flipped, in/out-swapped kernel); the 9 shifted copies of the input are stacked, one GEMM.
    - ``"col2im"`` (C_in < C_out, e.g. conv1_1 with C_in = 3): ``matrix`` (9 * C_in, C_out), row
      (kh * 3 + kw) * C_in + ci holding weight[:, ci, kh, kw]; one GEMM gives each tap's contribution at the
      input positions and 9 shifted adds sum them; it moves 9 * C_in instead of 9 * C_out planes.
    - ``"winograd"`` (at least 128 channels in and out): Winograd's F(2x2, 3x3) (Lavin & Gray 2015): 2.25x
      fewer multiplications, 16 GEMMs (C_in, C_out) @ (C_out, tiles); ``matrix`` (16, C_in, C_out) = G g G^T
      of the flipped kernel. Its transforms are elementwise passes, worth it only once the GEMMs dominate.
    """

    matrix: np.ndarray
    method: str
    c_in: int
    c_out: int


WINOGRAD_MIN_CHANNELS = 128
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])  # F(2, 3) filter transform


def prepare_weight(weight: np.ndarray, method: str | None = None) -> DeconvWeight:
    """Forward conv weight (C_out, C_in, 3, 3) -> a ``DeconvWeight`` (``method`` None: chosen by channels)."""
    C_out, C_in, kh, kw = weight.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"expected a 3x3 kernel, got {kh}x{kw}")
    if method is None:
        method = ("winograd" if min(C_in, C_out) >= WINOGRAD_MIN_CHANNELS
                  else "col2im" if C_in < C_out else "im2col")
    w = np.asarray(weight, dtype=np.float32)
    flipped = w[:, :, ::-1, ::-1]  # the correlation kernel g[co, ci, j, i] = weight[co, ci, 2 - j, 2 - i]
    if method == "im2col":
        matrix = flipped.transpose(1, 2, 3, 0).reshape(C_in, 9 * C_out)
    elif method == "col2im":
        matrix = w.transpose(2, 3, 1, 0).reshape(9 * C_in, C_out)
    elif method == "winograd":
        u = np.einsum("rj,ocji,si->rsco", _G, flipped.astype(np.float64), _G)  # (4, 4, C_in, C_out)
        matrix = u.reshape(16, C_in, C_out)
    else:
        raise ValueError(f"method must be im2col, col2im or winograd, got {method!r}")
    return DeconvWeight(np.ascontiguousarray(matrix, dtype=np.float32), method, C_in, C_out)


Place = tuple[int, int, Box, tuple[int, int]]  # rows a:b of x, their rectangle r0:r1, c0:c1, its origin in the window


def _runs(keys: np.ndarray) -> list[tuple[int, int]]:
    """The maximal ranges [a, b) of consecutive equal rows of ``keys`` (B, K): rows that one vectorised step serves."""
    B = keys.shape[0]
    cuts = (np.flatnonzero((keys[1:] != keys[:-1]).any(axis=1)) + 1).tolist()
    bounds = [0, *cuts, B]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _deconv_rows(x: np.ndarray, places: Sequence[Place], w: DeconvWeight, relu: bool,
                 size: tuple[int, int]) -> np.ndarray:
    """Transposed 3x3 conv, padding 1, of B rows in one pass: x (C_out, B, h, w) -> (C_in, B, Sh, Sw) (channel-major).

    Each row's output is an (Sh, Sw) ``size`` window of its feature map, whose input there is zero except for the
    rectangles of ``x`` that ``places`` copy in (rows a:b, rectangle r0:r1, c0:c1 of x to origin (dr, dc) of the
    window). Exact when the row's input is zero outside the window, up to the map's border (zero padding there).
    With ``relu``, ReLU is applied to the input first (fused into the copy). The GEMMs take all B rows at once.
    """
    C_out, B = x.shape[:2]
    Sh, Sw = size
    if w.method == "im2col":  # padding 1, and 2 spare columns for the last tap's slice
        pad, Hf, Wf, extra = 1, Sh + 2, Sw + 2, 2
    elif w.method == "winograd":  # padding 1 around even sizes (an extra zero row/column is harmless)
        pad, Hf, Wf, extra = 1, Sh + Sh % 2 + 2, Sw + Sw % 2 + 2, 0
    else:  # col2im pads its output instead
        pad, Hf, Wf, extra = 0, Sh, Sw, 0
    buf = np.empty((C_out, B * Hf * Wf + extra), dtype=np.float32)
    frame = buf[:, : B * Hf * Wf].reshape(C_out, B, Hf, Wf)

    def fill(cs: slice) -> None:
        buf[cs] = 0.0
        for a, b, (r0, r1, c0, c1), (dr, dc) in places:
            dst = frame[cs, a:b, pad + dr : pad + dr + r1 - r0, pad + dc : pad + dc + c1 - c0]
            np.maximum(x[cs, a:b, r0:r1, c0:c1], 0, out=dst) if relu else np.copyto(dst, x[cs, a:b, r0:r1, c0:c1])

    _by_channels(fill, C_out, buf.size)
    if w.method == "im2col":
        return _im2col(buf, w, B, Sh, Sw)
    return _winograd(frame, w, Sh, Sw) if w.method == "winograd" else _col2im(frame, w)


def _deconv_plane(x: np.ndarray, w: DeconvWeight, relu: bool) -> np.ndarray:
    """Transposed 3x3 conv, padding 1, of one sample: x (C_out, H, W) -> (C_in, H, W) (possibly a strided view).

    With ``relu``, ReLU is applied to ``x`` first (fused into the first copy).
    """
    C_out, H, W = x.shape
    return _deconv_rows(x[:, None], [(0, 1, (0, H, 0, W), (0, 0))], w, relu, (H, W))[:, 0]


def _im2col(buf: np.ndarray, w: DeconvWeight, B: int, H: int, W: int) -> np.ndarray:
    """``buf`` (C_out, B * (H + 2) * (W + 2) + 2): B zero-padded planes, flattened -> (C_in, B, H, W) view."""
    C_out = buf.shape[0]
    Wp = W + 2
    P = (H + 2) * Wp  # one padded plane
    L = (B - 1) * P + H * Wp  # output positions up to the last plane's last row (2 discarded per row of W + 2)
    offsets = [j * Wp + i for j in range(3) for i in range(3)]  # tap (j, i) of the flipped kernel
    y = np.empty((w.c_in, B * P), dtype=np.float32)
    chunk = max(Wp, CHUNK_BYTES // (4 * 9 * C_out))
    cols = np.empty((9 * C_out, min(chunk, L)), dtype=np.float32)
    for n0 in range(0, L, chunk):
        n = min(chunk, L - n0)
        block = cols[:, :n]

        def gather(cs: slice, n0: int = n0, n: int = n, block: np.ndarray = block) -> None:
            for k, off in enumerate(offsets):
                block[k * C_out + cs.start : k * C_out + cs.stop] = buf[cs, off + n0 : off + n0 + n]

        _by_channels(gather, C_out, block.size)
        np.matmul(w.matrix, block, out=y[:, n0 : n0 + n])
    return y.reshape(w.c_in, B, H + 2, Wp)[:, :, :H, :W]


def _col2im(frame: np.ndarray, w: DeconvWeight) -> np.ndarray:
    """``frame`` (C_out, B, H, W) contiguous -> (C_in, B, H, W) view: per-tap GEMM, then 9 shifted adds."""
    C_out, B, H, W = frame.shape
    yp = np.empty((w.c_in, B, H + 2, W + 2), dtype=np.float32)  # output with a 1-pixel margin
    step = B if 36 * w.c_in * B * H * W <= BLOCK_BYTES else 1  # all rows in one GEMM, or one row at a time
    for b0 in range(0, B, step):
        rows = slice(b0, b0 + step)
        flat = frame.reshape(C_out, B * H * W) if step == B else frame[:, b0].reshape(C_out, H * W)
        taps = (w.matrix @ flat).reshape(3, 3, w.c_in, step, H, W)  # each tap's contribution at the input positions

        def scatter(cs: slice, rows: slice = rows, taps: np.ndarray = taps) -> None:
            yp[cs, rows] = 0.0
            for kh in range(3):
                for kw in range(3):
                    yp[cs, rows, kh : kh + H, kw : kw + W] += taps[kh, kw, cs]

        _by_channels(scatter, w.c_in, taps.size)
    return yp[:, :, 1 : H + 1, 1 : W + 1]


def _winograd(frame: np.ndarray, w: DeconvWeight, H: int, W: int) -> np.ndarray:
    """F(2x2, 3x3): each 2x2 output tile from a 4x4 input tile, y = A^T [U . (B^T d B)] A, per channel pair.

    ``frame`` (C_out, B, He + 2, We + 2): B zero-padded planes of even size -> (C_in, B, H, W) view. The rows go
    through the 16 GEMMs (C_in, C_out) @ (C_out, rows * tiles) together, in groups that keep them in memory.
    """
    C_out, B, Hf, Wf = frame.shape
    Th, Tw = (Hf - 2) // 2, (Wf - 2) // 2
    y = np.empty((w.c_in, B, 2 * Th, 2 * Tw), dtype=np.float32)
    step = max(1, BLOCK_BYTES // (64 * max(C_out, w.c_in) * Th * Tw))  # rows whose transforms fit BLOCK_BYTES
    for b0 in range(0, B, step):
        rows = slice(b0, min(b0 + step, B))
        nb = rows.stop - b0
        v = np.empty((16, C_out, nb, Th, Tw), dtype=np.float32)

        def transform_input(cs: slice, rows: slice = rows, v: np.ndarray = v) -> None:
            # B^T d B, rows then columns; tile (a, b) starts at (2a, 2b)
            d = [frame[cs, rows, r : r + 2 * Th : 2] for r in range(4)]  # (c, nb, Th, We + 2) each
            for k, t in enumerate((d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3])):
                c = [t[..., s : s + 2 * Tw : 2] for s in range(4)]
                np.subtract(c[0], c[2], out=v[4 * k, cs])
                np.add(c[1], c[2], out=v[4 * k + 1, cs])
                np.subtract(c[2], c[1], out=v[4 * k + 2, cs])
                np.subtract(c[1], c[3], out=v[4 * k + 3, cs])

        _by_channels(transform_input, C_out, v.size)
        m = np.matmul(w.matrix, v.reshape(16, C_out, nb * Th * Tw)).reshape(4, 4, w.c_in, nb, Th, Tw)

        def transform_output(cs: slice, rows: slice = rows, m: np.ndarray = m) -> None:
            # A^T m A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
            mc = m[:, :, cs]
            for r, u in enumerate((mc[0] + mc[1] + mc[2], mc[1] - mc[2] - mc[3])):  # (4, c, nb, Th, Tw) each
                np.add(u[0] + u[1], u[2], out=y[cs, rows, r::2, 0::2])
                np.subtract(u[1] - u[2], u[3], out=y[cs, rows, r::2, 1::2])

        _by_channels(transform_output, w.c_in, m.size)
    return y[:, :, :H, :W]


def deconv(x: np.ndarray, weight: np.ndarray, method: str | None = None) -> np.ndarray:
    """Transposed 3x3 convolution, padding 1, no bias: (N, C_out, H, W) -> (N, C_in, H, W) float32.

    ``weight`` is the forward conv's (C_out, C_in, 3, 3), as in ``F.conv_transpose2d(x, weight, padding=1)``;
    ``method`` forces "im2col", "col2im" or "winograd" (default: chosen by the channel counts).
    """
    N, C_out, H, W = x.shape
    wmat = prepare_weight(weight, method)
    xt = np.asarray(x, dtype=np.float32).transpose(1, 0, 2, 3)  # (C_out, N, H, W), a view
    y = _deconv_rows(xt, [(0, N, (0, H, 0, W), (0, 0))], wmat, relu=False, size=(H, W))
    return np.ascontiguousarray(y.transpose(1, 0, 2, 3))


def unpool(x: np.ndarray, switches: np.ndarray) -> np.ndarray:
    """Undo a 2x2/2 max-pool: (N, C, h, w) values and per-plane switches -> (N, C, 2h, 2w).

    Switch s of pooled position (n, c, i, j) is the flat index s = row * 2w + col of the maximum in the
    (2h, 2w) input plane of (n, c) (``model.spec.SWITCH_CONVENTION``); every other position gets zero.
    """
    N, C, h, w = x.shape
    out = np.zeros((N, C, 4 * h * w), dtype=np.float32)
    np.put_along_axis(out, switches.reshape(N, C, h * w), x.reshape(N, C, h * w), axis=2)
    return out.reshape(N, C, 2 * h, 2 * w)


def _unpool_rows(x: np.ndarray, switches: np.ndarray, image_of: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """``unpool`` of B windows: x (C, B, h, w) -> (C, B, 2h, 2w) (channel-major).

    Row b of ``x`` is the (h, w) window at ``origin[b]`` (B, 2) of a pooled (H, W) map, whose switches are
    ``switches[image_of[b]]`` ((N, C, H, W), ``model.spec.SWITCH_CONVENTION``); the result's row b is the window
    at 2 * origin[b] of the (2H, 2W) map. The switches are read in place (never gathered per row): consecutive
    rows of the same image and origin share one array of targets in the result, and each row is one scatter.
    """
    C, B, h, w = x.shape
    W2 = 2 * switches.shape[3]  # width of the unpooled map
    plane = 4 * h * w  # one row's unpooled window
    out = np.zeros(C * B * plane, dtype=np.float32)
    keys = np.column_stack([image_of, origin])
    runs = _runs(keys)

    def scatter(cs: slice) -> None:
        for a, b in runs:
            n, r0, c0 = keys[a].tolist()
            s = switches[n, cs, r0 : r0 + h, c0 : c0 + w]  # (c, h, w) flat indices into the (2H, 2W) map
            if 2 * w == W2:  # the window spans the map's width: an offset moves the indices into the window
                t = s - 2 * r0 * W2
            else:  # offset d from the 2x2 window's corner (0, 1, W2 or W2 + 1) onto the window's corner
                i, j = np.arange(h)[:, None], np.arange(w)
                t = s - (2 * (r0 + i) * W2 + 2 * (c0 + j))
                t += ((t >= W2) * (2 * w - W2) + 4 * w * i + 2 * j)
            t += (B * plane * np.arange(cs.start, cs.stop))[:, None, None]  # channel c's part of ``out``
            t = t.ravel()
            for row in range(a, b):
                out[row * plane :][t] = x[cs, row].ravel()

    _by_channels(scatter, C, out.size)
    return out.reshape(C, B, 2 * h, 2 * w)


def _support(x: np.ndarray) -> Box | None:
    """Bounding box of the non-zero entries of x (C, H, W), or None when x is all zero."""
    rows = np.flatnonzero(x.any(axis=(0, 2)))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(x[:, rows[0] : rows[-1] + 1].any(axis=(0, 1)))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _row_bytes(wmat: DeconvWeight, h: int, w: int) -> int:
    """Bytes of one row's input and output of a transposed convolution on an (h, w) window."""
    return 4 * h * w * (wmat.c_in + wmat.c_out)


def _descend(x: np.ndarray, boxes: np.ndarray, origin: np.ndarray, names: Sequence[str], size: tuple[int, int],
             wmats: Mapping[str, DeconvWeight], switches: Mapping[str, np.ndarray],
             image_of: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Project B rows through the conv layers ``names`` (top down, each with its unpooling) to pixels, in batches.

    x (C, B, h, w), channel-major: row b is the window at ``origin[b]`` (B, 2) of its ``size`` (H, W) feature map;
    ``boxes`` (B, 4) bound each row's non-zero part (r0, r1, c0, c1 in map coordinates, inside its window);
    ``image_of`` (B,) picks each row's image in ``switches``. Returns pieces (rows, windows (3, b, h', w'), origins
    (b, 2) in pixels), ``rows`` indexing the B rows.

    Each step works on windows of one common size, the largest box of the rows, each row's window placed around
    its own box: rows far apart cost no more than rows alone. Exact: a row's signal is zero outside its box, which
    a 3x3 transposed convolution grows by 1 on each side and unpooling doubles. The rows go through each layer
    together while their windows are small (their GEMMs need the rows for enough columns, and one call per step
    beats one per row); once their inputs and outputs would pass ``BATCH_BYTES``, the rest of the way goes in
    groups under it, one after another, each group's arrays staying in the cache from layer to layer.
    """
    B = x.shape[1]
    H, W = size
    for i, name in enumerate(names):
        wmat = wmats[name]
        grown = np.column_stack([np.maximum(boxes[:, 0] - 1, 0), np.minimum(boxes[:, 1] + 1, H),
                                 np.maximum(boxes[:, 2] - 1, 0), np.minimum(boxes[:, 3] + 1, W)])
        Sh, Sw = int((grown[:, 1] - grown[:, 0]).max()), int((grown[:, 3] - grown[:, 2]).max())
        group = max(1, BATCH_BYTES // _row_bytes(wmat, Sh, Sw))
        if B > group:  # split: each group goes the rest of the way on its own
            pieces = []
            for a in range(0, B, group):
                part = slice(a, a + group)
                for rows, y, at in _descend(x[:, part], boxes[part], origin[part], names[i:], (H, W), wmats,
                                            switches, image_of[part]):
                    pieces.append((rows + a, y, at))
            return pieces
        window = np.column_stack([np.minimum(grown[:, 0], H - Sh), np.minimum(grown[:, 2], W - Sw)])
        # each row's box, in its old window's coordinates, and where it lands in its new window
        keys = np.column_stack([boxes[:, :2] - origin[:, :1], boxes[:, 2:] - origin[:, 1:],
                                boxes[:, 0] - window[:, 0], boxes[:, 2] - window[:, 1]])
        places = [(a, b, tuple(keys[a, :4].tolist()), tuple(keys[a, 4:].tolist())) for a, b in _runs(keys)]
        x = _deconv_rows(x, places, wmat, relu=True, size=(Sh, Sw))
        boxes, origin = grown, window
        pool = pool_below(name)
        if pool is not None:
            s = switches[pool]
            if s.ndim != 4 or s.shape[1:] != (wmat.c_in, H, W):
                raise ValueError(f"{pool} switches of shape {s.shape} do not fit the reconstruction (C, H, W) = "
                                 f"{(wmat.c_in, H, W)} at {name}: they must come from the same forward pass")
            x = _unpool_rows(x, s, image_of, origin)
            boxes, origin, H, W = 2 * boxes, 2 * origin, 2 * H, 2 * W
    return [(np.arange(B), x, origin)]


def project_down(signal: np.ndarray, layer: str, weights: Mapping[str, np.ndarray],
                 switches: Mapping[str, np.ndarray], image_of: np.ndarray | None = None) -> np.ndarray:
    """Project ``signal`` (B, C, h, w), placed at the output of conv ``layer``, down to pixels (B, 3, H, W).

    ``weights`` maps conv names to (C_out, C_in, 3, 3); ``switches`` maps pool names to (N, C, h', w') int64, the
    switches of row b being those of image ``image_of[b]`` (default: N = B and row b's own).
    """
    wmats = {name: prepare_weight(weights[name]) for name in CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]}
    image_of = np.arange(signal.shape[0]) if image_of is None else image_of
    return _project_batch(signal, layer, wmats, switches, image_of)


def _pixel_size(layer: str, h: int, w: int) -> tuple[int, int]:
    """(H, W) of the image whose conv ``layer`` has an (h, w) feature map."""
    scale = 2 ** sum(pool_below(n) is not None for n in CONV_LAYERS[: CONV_LAYERS.index(layer) + 1])
    return h * scale, w * scale


def _project_rows(x: np.ndarray, boxes: np.ndarray, origin: np.ndarray, rows: np.ndarray, out: np.ndarray,
                  layer: str, size: tuple[int, int], wmats: Mapping[str, DeconvWeight],
                  switches: Mapping[str, np.ndarray], image_of: np.ndarray, max_rows: int | None) -> np.ndarray:
    """``_descend`` rows ``rows`` of ``out`` (B, 3, H, W) from x (C, len(rows), h, w) of a ``size`` (h, w) map.

    ``max_rows`` caps the rows of one pass (None: all in one pass; 1: each row alone, as a reference).
    """
    names = CONV_LAYERS[CONV_LAYERS.index(layer) :: -1]
    step = max_rows or max(len(rows), 1)
    for a in range(0, len(rows), step):
        part = slice(a, a + step)
        for done, y, at in _descend(x[:, part], boxes[part], origin[part], names, size, wmats, switches,
                                    image_of[rows[part]]):
            _, _, Sh, Sw = y.shape
            for i, (b, (r0, c0)) in enumerate(zip(rows[part][done].tolist(), at.tolist(), strict=True)):
                out[b, :, r0 : r0 + Sh, c0 : c0 + Sw] = y[:, i]
    return out


def _project_batch(signal: np.ndarray, layer: str, wmats: Mapping[str, DeconvWeight],
                   switches: Mapping[str, np.ndarray], image_of: np.ndarray, max_rows: int | None = None) -> np.ndarray:
    """``project_down`` of each row b of ``signal`` (B, C, h, w) with the switches of image ``image_of[b]``."""
    B, C, h, w = signal.shape
    signal = np.asarray(signal, dtype=np.float32)
    out = np.zeros((B, 3, *_pixel_size(layer, h, w)), dtype=np.float32)
    supports = [_support(signal[b]) for b in range(B)]
    rows = np.array([b for b, s in enumerate(supports) if s is not None], dtype=np.int64)
    if rows.size == 0:
        return out
    boxes = np.array([supports[b] for b in rows.tolist()], dtype=np.int64)
    x = (signal if rows.size == B else signal[rows]).transpose(1, 0, 2, 3)  # (C, B', h, w); windows = whole maps
    return _project_rows(x, boxes, np.zeros((rows.size, 2), np.int64), rows, out, layer, (h, w), wmats, switches,
                         np.asarray(image_of), max_rows)


def _project_points(activation: np.ndarray, layer: str, wmats: Mapping[str, DeconvWeight],
                    switches: Mapping[str, np.ndarray], image: np.ndarray, channel: np.ndarray, row: np.ndarray,
                    col: np.ndarray, max_rows: int | None = None) -> np.ndarray:
    """Project single activations, each alone: row b is ``activation[image[b], channel[b], row[b], col[b]]``.

    ``activation`` (N, C, h, w) of conv ``layer``; image, channel, row, col (B,) int. Returns (B, 3, H, W). The
    rows start as 1x1 windows (no (B, C, h, w) signal is built) and go down together.
    """
    N, C, h, w = activation.shape
    image, channel, row, col = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (image, channel, row, col))
    B = image.size
    out = np.zeros((B, 3, *_pixel_size(layer, h, w)), dtype=np.float32)
    values = np.asarray(activation[image, channel, row, col], dtype=np.float32)
    rows = np.flatnonzero(values != 0)  # a zero activation projects to zero
    x = np.zeros((C, rows.size, 1, 1), dtype=np.float32)
    x[channel[rows], np.arange(rows.size), 0, 0] = values[rows]
    boxes = np.column_stack([row, row + 1, col, col + 1])[rows]
    return _project_rows(x, boxes, boxes[:, [0, 2]], rows, out, layer, (h, w), wmats, switches, image, max_rows)


def strongest(activation: np.ndarray, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep only the strongest activation of ``channel``: (N, C, h, w) -> same shape, and its values (N,).

    Every other activation of the layer, in every channel, is set to zero. Ties go to the first position in
    row-major order.
    """
    N, C, h, w = activation.shape
    plane = activation[:, channel].reshape(N, h * w)
    index = plane.argmax(axis=1)
    values = plane[np.arange(N), index]
    signal = np.zeros_like(activation, dtype=np.float32)
    signal[np.arange(N), channel, index // w, index % w] = values
    return signal, values.astype(np.float32)


def top_channels(activation: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k channels with the largest maximum activation, per image: (N, C, h, w) -> channels, values (N, k).

    Sorted by decreasing value; equal values keep channel order.
    """
    N, C, h, w = activation.shape
    peaks = activation.reshape(N, C, h * w).max(axis=2)  # (N, C)
    channels = np.argsort(-peaks, axis=1, kind="stable")[:, : min(k, C)]
    return channels.astype(np.int64), np.take_along_axis(peaks, channels, axis=1).astype(np.float32)


class Deconvnet:
    """Projects conv activations of an exported VGG16 back to pixel space, in NumPy.

    Args:
        weights: conv name -> forward weight (C_out, C_in, 3, 3) float32, batch norm folded; for an
            ``demo.onnx_forward.OnnxModel`` that is ``model.weights`` (or use ``Deconvnet.from_model``).
    """

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = {name: np.asarray(weights[name], dtype=np.float32) for name in CONV_LAYERS}
        self._wmats = {name: prepare_weight(w) for name, w in self.weights.items()}

    @classmethod
    def from_model(cls, model) -> Deconvnet:
        """The deconvnet of anything with a ``weights`` dict, e.g. an ``OnnxModel``."""
        return cls(model.weights)

    def project_down(self, signal: np.ndarray, layer: str, switches: Mapping[str, np.ndarray],
                     image_of: np.ndarray | None = None) -> np.ndarray:
        """Project ``signal`` (B, C, h, w) at the output of conv ``layer`` to pixels (B, 3, H, W), in one pass.

        ``switches`` maps pool names to (N, C, h', w'); row b uses image ``image_of[b]``'s (default: its own, N = B).
        """
        image_of = np.arange(signal.shape[0]) if image_of is None else np.asarray(image_of, dtype=np.int64)
        return _project_batch(signal, layer, self._wmats, switches, image_of)

    def project_points(self, activation: np.ndarray, layer: str, switches: Mapping[str, np.ndarray],
                       image: np.ndarray, channel: np.ndarray, row: np.ndarray, col: np.ndarray,
                       rows_per_pass: int | None = None) -> np.ndarray:
        """Project single activations of conv ``layer``, each alone, together: -> (B, 3, H, W) float32.

        Row b starts from ``activation[image[b], channel[b], row[b], col[b]]`` ((N, C, h, w); image, channel,
        row, col (B,) ints) with every other activation zero, and uses image ``image[b]``'s switches. All rows go
        through each layer together (``rows_per_pass`` caps them; 1 projects one row at a time), each row
        cropped to its receptive field.
        """
        return _project_points(np.asarray(activation, dtype=np.float32), layer, self._wmats, switches, image,
                               channel, row, col, rows_per_pass)

    def project(self, activations: Mapping[str, np.ndarray], switches: Mapping[str, np.ndarray], layer: str,
                mode: str = "layer", channel: int | None = None, k: int = 9,
                rows_per_pass: int | None = None) -> Projection:
        """Reconstruct ``layer`` (a conv name) from a forward pass's ``activations`` and ``switches``.

        Modes: ``"layer"`` projects all feature maps of the layer together; ``"channel"`` projects the strongest
        activation of ``channel`` alone; ``"topk"`` takes the k channels with the largest activation and
        projects each one's strongest activation on its own (rows image-major: image 0's k, then image 1's...),
        all k (and all images) in one batched pass; ``rows_per_pass`` caps the rows of one pass (None: no cap).
        """
        if layer not in CONV_LAYERS:
            raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(CONV_LAYERS)}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        act = np.asarray(activations[layer], dtype=np.float32)
        N, C, h, w = act.shape
        if mode == "layer":
            images = _project_batch(act, layer, self._wmats, switches, np.arange(N), rows_per_pass)
            return Projection(images, None, None)
        if mode == "channel":
            if channel is None or not 0 <= channel < C:
                raise ValueError(f"{layer} has channels 0..{C - 1}, got {channel}")
            channels = np.full((N, 1), channel, dtype=np.int64)
        else:
            if k < 1:
                raise ValueError(f"mode 'topk' needs k >= 1, got {k}")
            channels, _ = top_channels(act, k)  # (N, kk)
        kk = channels.shape[1]
        image = np.repeat(np.arange(N), kk)  # (N * kk,) image-major rows
        channel_of = channels.reshape(-1)
        planes = act[image, channel_of].reshape(N * kk, h * w)
        index = planes.argmax(axis=1)  # each row's strongest activation (ties: first in row-major order)
        values = planes[np.arange(N * kk), index]
        images = _project_points(act, layer, self._wmats, switches, image, channel_of, index // w, index % w,
                                 rows_per_pass)
        return Projection(images, channel_of, values)
