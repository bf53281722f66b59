"""Transposed 3x3 convolutions and unpooling in float32 NumPy: the kernels of the NumPy deconvnet.

``demo/backward/descent.py`` runs the descent (which layers, which windows, which rows); this module does each
step's arithmetic, on rows stored channels last (B, h, w, C), each row an (h, w) window of its feature map.

One step (``_deconv_rows``): the rows' input is copied into a zero-padded frame (B, Hf, Wf, C_out) (``_fill``),
which also applies the backward rule of the layer's ReLU (``relu_backward``: deconvnet, guided or gradient,
``base.spec.RULES``) and, below a pool, the unpooling (``_unpool_into``, by switch codes): a rule and an
unpooling cost no pass of their own. Then the transposed convolution, padding 1, by one of these methods, chosen
per call from the layer's channel counts and the windows (``DeconvWeight.method_for``):

- ``"winograd4"``, Winograd's F(4x4, 3x3) (``demo.backward.winograd``, Lavin & Gray 2016): 4x fewer
  multiplications than the direct convolution, in 36 GEMMs between input and output transforms that read and
  write the frames in place, in cache-sized blocks. Every layer with 64 input channels or more, on whole maps.
- ``"winograd"``, F(2x2, 3x3): 2.25x fewer multiplications, a 16-GEMM weight (not 36): for maps of a few tiles,
  where reading F(4x4)'s larger weight costs more than its multiplications save (conv5 at 224 px).
- ``"im2col"`` over shifted rows (``demo.backward.direct``): the 9-tap weight, for the smallest windows (the top of
  a single activation's descent).
- ``"col2im"`` (``demo.backward.direct``), when C_in is small: conv1_1's 3 output channels.

The threads (``demo.backward.threads``, their count set at run time by ``set_threads``): each step's copies, blocks
(or, on small maps, groups of Winograd's GEMMs) and chunks are split between our threads, BLAS running on one
thread meanwhile; every thread count gives the same results (bit for bit in the tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from base.spec import RULES
from demo.backward.direct import col2im, im2col
from demo.backward.threads import each, our_threads, parts, serial, threads_now
from demo.backward.winograd import frame_size, winograd, winograd_weight

COL2IM_MAX_CHANNELS = 16  # layers with fewer output channels (C_in: conv1_1's 3) use col2im
WEIGHT_COLUMNS = 32  # reading a weight once costs about as much as this many columns of its GEMMs
PARALLEL_MIN_FLOPS = 0  # smaller transposed convolutions (direct-convolution FLOPs) run on one thread
METHODS = ("im2col", "col2im", "winograd", "winograd4")

Box = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1 of the non-zero part of a (C, H, W) signal


@dataclass(frozen=True)
class DeconvWeight:
    """A conv weight prepared for the transposed convolution: its layouts per method, and which method to use.

    ``weight`` is the forward conv's (C_out, C_in, 3, 3) float32. ``method`` is the layer's method for large
    windows ("winograd4", or "col2im" for few output channels), or the one forced by ``prepare_weight``;
    ``method_for`` picks the method of one call. ``matrix(method)`` is the weight in that method's layout, made
    on first use and kept (the methods a descent never uses cost no memory):

    - ``"im2col"``: (9 * C_out, C_in), row (j * 3 + i) * C_out + co holding weight[co, :, 2 - j, 2 - i] (the
      transposed convolution correlates with the flipped, in/out-swapped kernel);
    - ``"col2im"``: (C_out, 9 * C_in), column (kh * 3 + kw) * C_in + ci holding weight[:, ci, kh, kw];
    - ``"winograd4"`` / ``"winograd"``: U (36, C_out, C_in) / (16, C_out, C_in), G g G^T of the flipped kernel
      (``demo.backward.winograd.winograd_weight``).
    """

    weight: np.ndarray
    method: str
    forced: bool = False
    matrices: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @property
    def c_out(self) -> int:
        return self.weight.shape[0]

    @property
    def c_in(self) -> int:
        return self.weight.shape[1]

    def matrix(self, method: str) -> np.ndarray:
        """The weight in ``method``'s layout (made once)."""
        if method not in self.matrices:
            w, C_out, C_in = self.weight, self.c_out, self.c_in
            if method == "im2col":
                matrix = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(9 * C_out, C_in)
            elif method == "col2im":
                matrix = w.transpose(0, 2, 3, 1).reshape(C_out, 9 * C_in)
            else:
                matrix = winograd_weight(w, 4 if method == "winograd4" else 2)
            self.matrices[method] = np.ascontiguousarray(matrix, dtype=np.float32)
        return self.matrices[method]

    def method_for(self, rows: int, height: int, width: int) -> str:
        """The method for ``rows`` windows of (height, width) outputs, unless forced: col2im for few output channels;
        else the cheapest by ``k * (columns + WEIGHT_COLUMNS)``, k the GEMM's count of taps (9, 16, 36 for im2col,
        F(2x2), F(4x4)) and columns its positions or tiles: the weight's k * C_out * C_in floats are read once,
        costing about as much as ``WEIGHT_COLUMNS`` columns of the GEMMs (F(4x4) needs enough tiles to pay for
        its 4x larger weight)."""
        if self.forced or self.method == "col2im":
            return self.method
        costs = {"winograd4": 36 * (rows * -(-height // 4) * -(-width // 4) + WEIGHT_COLUMNS),
                 "winograd": 16 * (rows * -(-height // 2) * -(-width // 2) + WEIGHT_COLUMNS),
                 "im2col": 9 * (rows * (height + 2) * (width + 2) + WEIGHT_COLUMNS)}
        return min(costs, key=costs.get)


def prepare_weight(weight: np.ndarray, method: str | None = None) -> DeconvWeight:
    """Forward conv weight (C_out, C_in, 3, 3) -> a ``DeconvWeight`` (``method`` None: chosen per call; the layouts
    are made on first use)."""
    C_out, C_in, kh, kw = weight.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"expected a 3x3 kernel, got {kh}x{kw}")
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    default = "col2im" if C_in < COL2IM_MAX_CHANNELS else "winograd4"
    return DeconvWeight(np.ascontiguousarray(weight, dtype=np.float32), method or default, forced=method is not None)


def relu_backward(signal: np.ndarray, activation: np.ndarray | None, rule: str,
                  out: np.ndarray | None = None) -> np.ndarray:
    """The signal a projection passes back through one ReLU, by ``rule`` (``base.spec.RULES``).

    ``signal`` arrives from above; ``activation`` is the ReLU's forward output, broadcastable to ``signal``
    (> 0 exactly where the ReLU's input is; unused, may be None, for "deconvnet"). Elementwise:

    - "deconvnet" (Zeiler & Fergus 2014): relu(signal), whatever the forward pass did;
    - "guided" (Springenberg et al. 2015): signal where signal > 0 and activation > 0, else 0;
    - "gradient" (Simonyan et al. 2014): signal where activation > 0, else 0 (the ReLU's true derivative).

    Written into ``out`` (same shape as ``signal``, float32) when given, so that the copy into a transposed
    convolution's frame and the rule are one pass. The masks multiply (by 0 or 1): a ufunc's ``where=`` is
    more than 10x slower on irregular masks.
    """
    if out is None:
        out = np.empty(np.shape(signal), dtype=np.float32)
    if rule == "deconvnet":
        return np.maximum(signal, 0, out=out)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if activation is None:
        raise ValueError(f"rule {rule!r} needs the forward activation of the ReLU")
    if rule == "guided":
        signal = np.maximum(signal, 0, out=out)
    return np.multiply(signal, activation > 0, out=out)


class Place(NamedTuple):
    """How rows a:b of x (B, h, w, C) enter their frames: the rectangle ``rect`` (r0, r1, c0, c1) of x goes to
    ``at`` (row, column) of each row's window. ``act``: the forward activation (h', w', C) of the layer's ReLU at
    the destination (the rows' common image), for the rules that mask with it, else None. ``codes``: None, or the
    rectangle is pooled and is unpooled on the way (twice its size at ``at``) by these switch codes (h, w, C)
    (``switch_codes``)."""

    a: int
    b: int
    rect: Box
    at: tuple[int, int]
    act: np.ndarray | None = None
    codes: np.ndarray | None = None


def _runs(keys: np.ndarray) -> list[tuple[int, int]]:
    """The maximal ranges [a, b) of consecutive equal rows of ``keys`` (B, K): rows that one vectorised step serves."""
    B = keys.shape[0]
    cuts = (np.flatnonzero((keys[1:] != keys[:-1]).any(axis=1)) + 1).tolist()
    bounds = [0, *cuts, B]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def switch_codes(switches: np.ndarray) -> np.ndarray:
    """Max-pool switches (N, C, h, w) -> (N, h, w, C) uint8 codes 2 * dy + dx: where in its 2x2 window each max was.

    Switch s of pooled position (i, j) is the flat index row * 2w + col in the (2h, 2w) plane
    (``base.spec.SWITCH_CONVENTION``); its window's columns 2j, 2j + 1 make dx = s mod 2, and dy = 1 from the
    window's second row on, s >= (2i + 1) * 2w + 2j.
    """
    N, C, h, w = switches.shape
    second_row = (2 * np.arange(h)[:, None] + 1) * (2 * w) + 2 * np.arange(w)  # (h, w)
    codes = np.empty((N, h, w, C), dtype=np.uint8)
    for n in range(N):
        s = switches[n]
        code = (s & 1).astype(np.uint8)
        code += (s >= second_row).view(np.uint8) << 1
        codes[n] = code.transpose(1, 2, 0)
    return codes


def _unpool_into(out: np.ndarray, x: np.ndarray, codes: np.ndarray, rule: str | None, act: np.ndarray | None) -> None:
    """Unpool x (n, h, w, C) by ``codes`` (h, w, C) into ``out`` (n, 2h, 2w, C), every element written, through
    the backward ``rule`` at its ReLU (None: as it is) with the activation ``act`` (2h, 2w, C) there.

    Each of the four positions (dy, dx) of the 2x2 windows is one multiplication of x by the mask of the values
    whose max was there (and, for "guided" and "gradient", whose activation is positive): the zeros come with it.
    """
    n, h, w, C = x.shape
    if rule in ("deconvnet", "guided"):
        x = np.maximum(x, 0)
    elif rule not in (None, "gradient"):
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule in ("guided", "gradient") and act is None:
        raise ValueError(f"rule {rule!r} needs the forward activation of the ReLU")
    windows = out.reshape(n, h, 2, w, 2, C)
    for dy in range(2):
        for dx in range(2):
            mask = codes == 2 * dy + dx
            if rule in ("guided", "gradient"):
                mask &= act[dy::2, dx::2] > 0
            np.multiply(x, mask, out=windows[:, :, dy, :, dx])


def _frame(method: str, Sh: int, Sw: int) -> tuple[int, int, int, int]:
    """(padding, Hf, Wf, spare positions after the frames) of ``method``'s input frame for (Sh, Sw) outputs."""
    if method == "im2col":  # padding 1, and 2 spare positions for the last tap's slice
        return 1, Sh + 2, Sw + 2, 2
    if method in ("winograd", "winograd4"):  # padding 1 around whole tiles (extra zero rows/columns are harmless)
        return 1, *frame_size(Sh, Sw, 4 if method == "winograd4" else 2), 0
    return 0, Sh, Sw, 0  # col2im pads its output instead


def _size(place: Place, channels: int) -> int:
    """Elements a place copies."""
    (r0, r1, c0, c1), unpooled = place.rect, 4 if place.codes is not None else 1
    return (place.b - place.a) * (r1 - r0) * (c1 - c0) * channels * unpooled


def _fill(frame: np.ndarray, x: np.ndarray, places: Sequence[Place], rule: str | None, pad: int,
          size: tuple[int, int]) -> None:
    """Copy the ``places`` of x (B, h, w, C) into ``frame`` (B, Hf, Wf, C), (Sh, Sw) ``size`` windows at ``pad``,
    through the backward ``rule`` (``relu_backward``; None: as they are); zeros everywhere else. Each place goes
    in parts of its rows (``each``)."""
    B, Hf, Wf, C = frame.shape
    Sh, Sw = size
    p = places[0]
    span = (p.rect[1] - p.rect[0], p.rect[3] - p.rect[2])
    if p.codes is not None:
        span = (2 * span[0], 2 * span[1])
    if len(places) == 1 and (p.a, p.b, p.at, span) == (0, B, (0, 0), (Sh, Sw)):  # the windows are full
        frame[:, :pad], frame[:, pad + Sh :], frame[:, :, :pad], frame[:, :, pad + Sw :] = 0.0, 0.0, 0.0, 0.0
    else:
        each(lambda i: frame[i].fill(0.0), B)
    jobs = [(place, i0, i1) for place in places for i0, i1 in parts(place.rect[1] - place.rect[0], _size(place, C))]

    def fill(job: int) -> None:
        (a, b, (r0, r1, c0, c1), (dr, dc), act, codes), i0, i1 = jobs[job]
        src = x[a:b, r0 + i0 : r0 + i1, c0:c1]
        k = 1 if codes is None else 2  # destination rows per source row
        dst = frame[a:b, pad + dr + k * i0 : pad + dr + k * i1, pad + dc : pad + dc + k * (c1 - c0)]
        act = None if act is None else act[k * i0 : k * i1]
        if codes is not None:
            _unpool_into(dst, src, codes[i0:i1], rule, act)
        elif rule is None:
            np.copyto(dst, src)
        else:
            relu_backward(src, act, rule, out=dst)

    each(fill, len(jobs))


def _deconv_rows(x: np.ndarray, places: Sequence[Place], w: DeconvWeight, rule: str | None,
                 size: tuple[int, int]) -> np.ndarray:
    """Transposed 3x3 conv, padding 1, of B rows in one pass: x (B, h, w, C_out) -> (B, Sh, Sw, C_in) (channels last).

    Each row's output is an (Sh, Sw) ``size`` window of its feature map, whose input there is zero except for the
    rectangles of ``x`` that ``places`` copy in (``Place``; unpooled on the way when they carry switch codes).
    Exact when the row's input is zero outside the window, up to the map's border (zero padding there). With a
    ``rule``, the input first goes back through the layer's ReLU by that rule (``relu_backward``, fused into the
    copy, with each place's activation); None copies it as it is. The GEMMs take all B rows at once.
    """
    B = x.shape[0]
    C_out = w.c_out
    Sh, Sw = size
    method = w.method_for(B, Sh, Sw)
    pad, Hf, Wf, extra = _frame(method, Sh, Sw)
    matrix = w.matrix(method)
    buf = np.empty((B * Hf * Wf + extra, C_out), dtype=np.float32)
    buf[B * Hf * Wf :] = 0.0
    frame = buf[: B * Hf * Wf].reshape(B, Hf, Wf, C_out)
    with our_threads():
        _fill(frame, x, places, rule, pad, size)
        if method == "im2col":
            return im2col(buf, matrix, B, Sh, Sw)
        if method == "col2im":
            return col2im(frame, matrix)
        small = 18 * w.c_in * C_out * B * Sh * Sw < PARALLEL_MIN_FLOPS  # FLOPs of the direct convolution
        return winograd(frame, matrix, 4 if method == "winograd4" else 2, Sh, Sw, *((serial, 1) if small else
                                                                                     (each, threads_now())))


def _deconv_plane(x: np.ndarray, w: DeconvWeight, relu: bool) -> np.ndarray:
    """Transposed 3x3 conv, padding 1, of one sample: x (H, W, C_out) -> (H, W, C_in) (channels last).

    With ``relu``, ReLU is applied to ``x`` first (fused into the first copy).
    """
    H, W, C_out = x.shape
    rule = "deconvnet" if relu else None
    return _deconv_rows(x[None], [Place(0, 1, (0, H, 0, W), (0, 0))], w, rule, (H, W))[0]


def deconv(x: np.ndarray, weight: np.ndarray, method: str | None = None) -> np.ndarray:
    """Transposed 3x3 convolution, padding 1, no bias: (N, C_out, H, W) -> (N, C_in, H, W) float32.

    ``weight`` is the forward conv's (C_out, C_in, 3, 3), as in ``F.conv_transpose2d(x, weight, padding=1)``;
    ``method`` forces one of ``METHODS`` (default: chosen by the channel counts and the size).
    """
    N, C_out, H, W = x.shape
    wmat = prepare_weight(weight, method)
    xt = np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1)  # (N, H, W, C_out), a view
    y = _deconv_rows(xt, [Place(0, N, (0, H, 0, W), (0, 0))], wmat, rule=None, size=(H, W))
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def unpool(x: np.ndarray, switches: np.ndarray) -> np.ndarray:
    """Undo a 2x2/2 max-pool: (N, C, h, w) values and per-plane switches -> (N, C, 2h, 2w).

    Switch s of pooled position (n, c, i, j) is the flat index s = row * 2w + col of the maximum in the
    (2h, 2w) input plane of (n, c) (``base.spec.SWITCH_CONVENTION``); every other position gets zero.
    """
    N, C, h, w = x.shape
    out = np.zeros((N, C, 4 * h * w), dtype=np.float32)
    np.put_along_axis(out, switches.reshape(N, C, h * w), x.reshape(N, C, h * w), axis=2)
    return out.reshape(N, C, 2 * h, 2 * w)


def _unpool_rows(x: np.ndarray, switches: np.ndarray, image_of: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """``unpool`` of B windows: x (C, B, h, w) -> (C, B, 2h, 2w) (channel-major, as the tests write them).

    Row b of ``x`` is the (h, w) window at ``origin[b]`` (B, 2) of a pooled (H, W) map, whose switches are
    ``switches[image_of[b]]`` ((N, C, H, W)); the result's row b is the window at 2 * origin[b] of the (2H, 2W)
    map. The descent does the same inside the copy into the next frame (``_unpool_into``).
    """
    C, B, h, w = x.shape
    codes = switch_codes(switches)
    out = np.empty((B, 2 * h, 2 * w, C), dtype=np.float32)
    for b, (n, (r0, c0)) in enumerate(zip(np.asarray(image_of).tolist(), np.asarray(origin).tolist(), strict=True)):
        _unpool_into(out[b : b + 1], x[:, b : b + 1].transpose(1, 2, 3, 0), codes[n, r0 : r0 + h, c0 : c0 + w],
                     None, None)
    return out.transpose(3, 0, 1, 2)
