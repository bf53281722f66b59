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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from model.spec import CONV_LAYERS, pool_below

MODES = ("layer", "channel", "topk")
CHUNK_BYTES = 8 << 20  # size of one block of im2col columns (stays in the L3 cache, keeps GEMMs large)

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


def _deconv_plane(x: np.ndarray, w: DeconvWeight, relu: bool) -> np.ndarray:
    """Transposed 3x3 conv, padding 1, of one sample: x (C_out, H, W) -> (C_in, H, W) (possibly a strided view).

    With ``relu``, ReLU is applied to ``x`` first (fused into the first copy).
    """
    if w.method == "winograd":
        return _winograd(x, w, relu)
    return _col2im(x, w, relu) if w.method == "col2im" else _im2col(x, w, relu)


def _im2col(x: np.ndarray, w: DeconvWeight, relu: bool) -> np.ndarray:
    C_out, H, W = x.shape
    Wp = W + 2
    L = H * Wp  # output positions, W + 2 per row (the last 2 of each row are discarded)
    xp = np.empty((C_out, (H + 2) * Wp + 2), dtype=np.float32)  # +2: the last tap's slice runs 2 past the end

    def pad(cs: slice) -> None:
        xp[cs] = 0.0
        inner = xp[cs, : (H + 2) * Wp].reshape(-1, H + 2, Wp)[:, 1 : H + 1, 1 : W + 1]
        np.maximum(x[cs], 0, out=inner) if relu else np.copyto(inner, x[cs])

    _by_channels(pad, C_out, xp.size)
    offsets = [j * Wp + i for j in range(3) for i in range(3)]  # tap (j, i) of the flipped kernel
    y = np.empty((w.c_in, L), dtype=np.float32)
    chunk = max(Wp, CHUNK_BYTES // (4 * 9 * C_out))
    cols = np.empty((9 * C_out, min(chunk, L)), dtype=np.float32)
    for n0 in range(0, L, chunk):
        n = min(chunk, L - n0)
        block = cols[:, :n]

        def gather(cs: slice, n0: int = n0, n: int = n, block: np.ndarray = block) -> None:
            for k, off in enumerate(offsets):
                block[k * C_out + cs.start : k * C_out + cs.stop] = xp[cs, off + n0 : off + n0 + n]

        _by_channels(gather, C_out, block.size)
        np.matmul(w.matrix, block, out=y[:, n0 : n0 + n])
    return y.reshape(w.c_in, H, Wp)[:, :, :W]


def _col2im(x: np.ndarray, w: DeconvWeight, relu: bool) -> np.ndarray:
    C_out, H, W = x.shape
    flat = np.maximum(x, 0).reshape(C_out, H * W) if relu else np.ascontiguousarray(x).reshape(C_out, H * W)
    taps = (w.matrix @ flat).reshape(3, 3, w.c_in, H, W)  # each tap's contribution at the input positions
    yp = np.empty((w.c_in, H + 2, W + 2), dtype=np.float32)  # output with a 1-pixel margin

    def scatter(cs: slice) -> None:
        yp[cs] = 0.0
        for kh in range(3):
            for kw in range(3):
                yp[cs, kh : kh + H, kw : kw + W] += taps[kh, kw, cs]

    _by_channels(scatter, w.c_in, taps.size)
    return yp[:, 1 : H + 1, 1 : W + 1]


def _winograd(x: np.ndarray, w: DeconvWeight, relu: bool) -> np.ndarray:
    """F(2x2, 3x3): each 2x2 output tile from a 4x4 input tile, y = A^T [U . (B^T d B)] A, per channel pair."""
    C_out, H, W = x.shape
    He, We = H + H % 2, W + W % 2  # even sizes: an extra zero row/column is harmless ("same" padding)
    Th, Tw = He // 2, We // 2
    v = np.empty((16, C_out, Th, Tw), dtype=np.float32)

    def transform_input(cs: slice) -> None:  # B^T d B, rows then columns; tile (a, b) starts at (2a, 2b)
        xp = np.zeros((cs.stop - cs.start, He + 2, We + 2), dtype=np.float32)
        np.maximum(x[cs], 0, out=xp[:, 1 : H + 1, 1 : W + 1]) if relu else np.copyto(xp[:, 1 : H + 1, 1 : W + 1],
                                                                                      x[cs])
        d = [xp[:, r : r + 2 * Th : 2] for r in range(4)]  # (c, Th, We + 2) each
        for k, t in enumerate((d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3])):
            c = [t[:, :, s : s + 2 * Tw : 2] for s in range(4)]
            np.subtract(c[0], c[2], out=v[4 * k, cs])
            np.add(c[1], c[2], out=v[4 * k + 1, cs])
            np.subtract(c[2], c[1], out=v[4 * k + 2, cs])
            np.subtract(c[1], c[3], out=v[4 * k + 3, cs])

    _by_channels(transform_input, C_out, v.size)
    m = np.matmul(w.matrix, v.reshape(16, C_out, Th * Tw)).reshape(4, 4, w.c_in, Th, Tw)
    y = np.empty((w.c_in, He, We), dtype=np.float32)

    def transform_output(cs: slice) -> None:  # A^T m A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
        mc = m[:, :, cs]
        for r, u in enumerate((mc[0] + mc[1] + mc[2], mc[1] - mc[2] - mc[3])):  # (4, c, Th, Tw) each
            np.add(u[0] + u[1], u[2], out=y[cs, r::2, 0::2])
            np.subtract(u[1] - u[2], u[3], out=y[cs, r::2, 1::2])

    _by_channels(transform_output, w.c_in, m.size)
    return y[:, :H, :W]


def deconv(x: np.ndarray, weight: np.ndarray, method: str | None = None) -> np.ndarray:
    """Transposed 3x3 convolution, padding 1, no bias: (N, C_out, H, W) -> (N, C_in, H, W) float32.

    ``weight`` is the forward conv's (C_out, C_in, 3, 3), as in ``F.conv_transpose2d(x, weight, padding=1)``;
    ``method`` forces "im2col", "col2im" or "winograd" (default: chosen by the channel counts).
    """
    N, C_out, H, W = x.shape
    wmat = prepare_weight(weight, method)
    out = np.empty((N, wmat.c_in, H, W), dtype=np.float32)
    for n in range(N):
        out[n] = _deconv_plane(x[n], wmat, relu=False)
    return out


def unpool(x: np.ndarray, switches: np.ndarray) -> np.ndarray:
    """Undo a 2x2/2 max-pool: (N, C, h, w) values and per-plane switches -> (N, C, 2h, 2w).

    Switch s of pooled position (n, c, i, j) is the flat index s = row * 2w + col of the maximum in the
    (2h, 2w) input plane of (n, c) (``model.spec.SWITCH_CONVENTION``); every other position gets zero.
    """
    N, C, h, w = x.shape
    out = np.zeros((N, C, 4 * h * w), dtype=np.float32)
    np.put_along_axis(out, switches.reshape(N, C, h * w), x.reshape(N, C, h * w), axis=2)
    return out.reshape(N, C, 2 * h, 2 * w)


def _unpool_plane(x: np.ndarray, switches: np.ndarray, box: Box) -> np.ndarray:
    """``unpool`` of one sample x (C, h, w) restricted to its non-zero ``box``; returns (C, 2h, 2w)."""
    C, h, w = x.shape
    r0, r1, c0, c1 = box
    out = np.zeros(C * 4 * h * w, dtype=np.float32)
    targets = switches[:, r0:r1, c0:c1] + (np.arange(C, dtype=np.int64) * (4 * h * w))[:, None, None]
    out[targets.ravel()] = x[:, r0:r1, c0:c1].ravel()
    return out.reshape(C, 2 * h, 2 * w)


def _support(x: np.ndarray) -> Box | None:
    """Bounding box of the non-zero entries of x (C, H, W), or None when x is all zero."""
    rows = np.flatnonzero(x.any(axis=(0, 2)))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(x[:, rows[0] : rows[-1] + 1].any(axis=(0, 1)))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _project_plane(signal: np.ndarray, layer: str, wmats: Mapping[str, DeconvWeight],
                   switches: Mapping[str, np.ndarray]) -> np.ndarray:
    """Project one sample's ``signal`` (C, h, w) at the output of conv ``layer`` to pixels (3, H, W).

    ``switches`` maps pool names to this sample's (C, h', w') switches. Only the bounding box of the non-zero
    signal is computed: outside it everything is exactly zero, so the result equals the dense computation.
    """
    x = signal
    box = _support(x)
    for name in reversed(CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]):
        wmat = wmats[name]
        _, H, W = x.shape
        if box is None:
            x = np.zeros((wmat.c_in, H, W), dtype=np.float32)
        else:  # a 3x3 transposed conv spreads the signal by one position on each side
            box = (max(box[0] - 1, 0), min(box[1] + 1, H), max(box[2] - 1, 0), min(box[3] + 1, W))
            r0, r1, c0, c1 = box
            if (r1 - r0, c1 - c0) == (H, W):
                x = _deconv_plane(x, wmat, relu=True)
            else:
                y = np.zeros((wmat.c_in, H, W), dtype=np.float32)
                y[:, r0:r1, c0:c1] = _deconv_plane(x[:, r0:r1, c0:c1], wmat, relu=True)
                x = y
        pool = pool_below(name)
        if pool is not None:
            if box is None:
                x = np.zeros((x.shape[0], 2 * H, 2 * W), dtype=np.float32)
            else:  # switches stay inside their own 2x2 window, so the box doubles
                x = _unpool_plane(x, switches[pool], box)
                box = (2 * box[0], 2 * box[1], 2 * box[2], 2 * box[3])
    return x


def project_down(signal: np.ndarray, layer: str, weights: Mapping[str, np.ndarray],
                 switches: Mapping[str, np.ndarray]) -> np.ndarray:
    """Project ``signal`` (B, C, h, w), placed at the output of conv ``layer``, down to pixels (B, 3, H, W).

    ``weights`` maps conv names to (C_out, C_in, 3, 3); ``switches`` maps pool names to (B, C, h, w) int64.
    """
    wmats = {name: prepare_weight(weights[name]) for name in CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]}
    return _project_batch(signal, layer, wmats, switches, np.arange(signal.shape[0]))


def _pixel_size(layer: str, h: int, w: int) -> tuple[int, int]:
    """(H, W) of the image whose conv ``layer`` has an (h, w) feature map."""
    scale = 2 ** sum(pool_below(n) is not None for n in CONV_LAYERS[: CONV_LAYERS.index(layer) + 1])
    return h * scale, w * scale


def _project_batch(signal: np.ndarray, layer: str, wmats: Mapping[str, DeconvWeight],
                   switches: Mapping[str, np.ndarray], image_of: np.ndarray) -> np.ndarray:
    """``project_down`` of each row b of ``signal`` (B, C, h, w) with the switches of image ``image_of[b]``."""
    B, _, h, w = signal.shape
    out = np.empty((B, 3, *_pixel_size(layer, h, w)), dtype=np.float32)
    for b in range(B):
        sw = {pool: s[image_of[b]] for pool, s in switches.items()}
        out[b] = _project_plane(signal[b], layer, wmats, sw)
    return out


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

    def project_down(self, signal: np.ndarray, layer: str, switches: Mapping[str, np.ndarray]) -> np.ndarray:
        """Project ``signal`` (B, C, h, w) at the output of conv ``layer`` to pixels (B, 3, H, W)."""
        return _project_batch(signal, layer, self._wmats, switches, np.arange(signal.shape[0]))

    def project(self, activations: Mapping[str, np.ndarray], switches: Mapping[str, np.ndarray], layer: str,
                mode: str = "layer", channel: int | None = None, k: int = 9) -> Projection:
        """Reconstruct ``layer`` (a conv name) from a forward pass's ``activations`` and ``switches``.

        Modes: ``"layer"`` projects all feature maps of the layer together; ``"channel"`` projects the strongest
        activation of ``channel`` alone; ``"topk"`` takes the k channels with the largest activation and
        projects each one's strongest activation on its own (rows image-major: image 0's k, then image 1's...).
        """
        if layer not in CONV_LAYERS:
            raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(CONV_LAYERS)}")
        act = np.asarray(activations[layer], dtype=np.float32)
        N, C, h, w = act.shape
        if mode == "layer":
            return Projection(self.project_down(act, layer, switches), None, None)
        if mode == "channel":
            if channel is None or not 0 <= channel < C:
                raise ValueError(f"{layer} has channels 0..{C - 1}, got {channel}")
            signal, values = strongest(act, channel)
            return Projection(self.project_down(signal, layer, switches), np.full(N, channel, np.int64), values)
        if mode == "topk":
            channels, values = top_channels(act, k)  # (N, kk)
            kk = channels.shape[1]
            H, W = _pixel_size(layer, h, w)
            images = np.empty((N * kk, 3, H, W), dtype=np.float32)
            for b, c in enumerate(channels.reshape(-1).tolist()):
                n = b // kk
                signal, _ = strongest(act[n : n + 1], c)
                images[b] = _project_batch(signal, layer, self._wmats, switches, np.array([n]))[0]
            return Projection(images, channels.reshape(-1), values.reshape(-1))
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
