"""The transposed-convolution kernels: Winograd's matrices, every method against a float64 direct convolution.

- ``cook_toom``: Lavin & Gray's F(4, 3) matrices written out from the paper, the minimal-filtering identity of
  every point set exact in float64, and A^T, B^T exact in float32 (integers);
- hand-computed transposed convolutions of one-hot inputs (the kernel appears, cut by the border), every method;
- every layer shape of VGG16 (C_out -> C_in) at odd, non-square and tiny sizes, every method, against float64;
- several rows in windows at offsets (``Place``), the block layouts of F(4x4) (bands of tile rows, groups of
  rows, a block's GEMMs split between threads), and the unpooling fused into the copy (hand-computed 4x4, each rule).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import demo.backward.winograd as dw
from base import spec
from demo.backward.kernels import METHODS, Place, _deconv_rows, _unpool_into, deconv, prepare_weight, switch_codes
from demo.backward.threads import parts

LAYER_SHAPES = sorted({(spec.conv_channels(name), ([3] + [spec.conv_channels(n) for n in spec.CONV_LAYERS])[i])
                       for i, name in enumerate(spec.CONV_LAYERS)})  # (C_out, C_in) of VGG16's transposed convs


def direct64(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The transposed convolution, padding 1, in float64: y[n, ci, p, q] = sum W[co, ci, kh, kw] x[n, co, p + 1 - kh,
    q + 1 - kw] (N, C_out, H, W) -> (N, C_in, H, W), as 9 shifted products."""
    N, C_out, H, W = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    w = weight.astype(np.float64)
    y = np.zeros((N, w.shape[1], H, W))
    for kh in range(3):
        for kw in range(3):
            y += np.einsum("oc,nohw->nchw", w[:, :, kh, kw], xp[:, :, 2 - kh : 2 - kh + H, 2 - kw : 2 - kw + W])
    return y


def test_lavin_gray_matrices_of_f4x4():
    """F(4, 3) on 0, +-1, +-2 and infinity: the matrices of Lavin & Gray 2016 (sec. 4.2), term by term."""
    AT, G, BT = dw.cook_toom((0, 1, -1, 2, -2), 4)
    np.testing.assert_array_equal(BT, [[4, 0, -5, 0, 1, 0],
                                       [0, -4, -4, 1, 1, 0],
                                       [0, 4, -4, -1, 1, 0],
                                       [0, -2, -1, 2, 1, 0],
                                       [0, 2, -1, -2, 1, 0],
                                       [0, 4, 0, -5, 0, 1]])  # fmt: skip
    np.testing.assert_allclose(G, [[1 / 4, 0, 0],
                                   [-1 / 6, -1 / 6, -1 / 6],
                                   [-1 / 6, 1 / 6, -1 / 6],
                                   [1 / 24, 1 / 12, 1 / 6],
                                   [1 / 24, -1 / 12, 1 / 6],
                                   [0, 0, 1]], rtol=1e-15)  # fmt: skip
    np.testing.assert_array_equal(AT, [[1, 1, 1, 1, 1, 0],
                                       [0, 1, -1, 2, -2, 0],
                                       [0, 1, 1, 4, 4, 0],
                                       [0, 1, -1, 8, -8, 1]])  # fmt: skip


@pytest.mark.parametrize("points,m", [((0, 1, -1), 2), ((0, 1, -1, 2, -2), 4), (dw.POINTS[4], 4),
                                      ((0, 1, -1, Fraction(1, 2), Fraction(-1, 2)), 4)])
def test_minimal_filtering_identity(points, m):
    """y_k = sum_j g_j d_(k+j) for every unit d and g (1D), and its 2D nesting on one tile; A^T, B^T integers."""
    AT, G, BT = dw.cook_toom(points, m)
    n = m + 2
    for i in range(n):
        for j in range(3):
            d, g = np.eye(n)[i], np.eye(3)[j]
            want = [d[k + j] for k in range(m)]
            np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), want, atol=1e-13)
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal((n, n)), rng.standard_normal((3, 3))
    want = [[np.sum(d[p : p + 3, q : q + 3] * g) for q in range(m)] for p in range(m)]
    np.testing.assert_allclose(AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T, want, atol=1e-12)
    assert np.array_equal(AT, np.round(AT)) and np.array_equal(BT, np.round(BT))


def test_cook_toom_rejects_repeated_points():
    with pytest.raises(ValueError, match="distinct points"):
        dw.cook_toom((0, 1, 1, 2, -2), 4)


@pytest.mark.parametrize("method", METHODS)
def test_one_hot_inputs_hand_computed(method):
    """A single 1 at (1, 1) of a 4x4 map gives the kernel itself in the top-left 3x3; at (0, 0) its lower-right
    2x2 (kh = p + 1, kw = q + 1); at (3, 3) its upper-left 2x2 at the bottom-right corner."""
    w = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    x = np.zeros((3, 1, 4, 4), dtype=np.float32)
    x[0, 0, 1, 1] = x[1, 0, 0, 0] = x[2, 0, 3, 3] = 1.0
    got = deconv(x, w, method)[:, 0]
    want = np.zeros((3, 4, 4), dtype=np.float32)
    want[0, :3, :3] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    want[1, :2, :2] = [[5, 6], [8, 9]]
    want[2, 2:, 2:] = [[1, 2], [4, 5]]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * 9)  # Winograd rounds (G g G^T is not exact)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("c_out,c_in", LAYER_SHAPES)
def test_every_layer_shape_against_float64(method, c_out, c_in):
    """Odd, non-square and tiny maps, two rows: within 1e-5 of the largest value (F(4x4) is near 1e-6)."""
    rng = np.random.default_rng(c_out + 7 * c_in)
    w = rng.standard_normal((c_out, c_in, 3, 3), dtype=np.float32) / np.sqrt(9 * c_out)
    prepared = prepare_weight(w, method)
    for h, wd in ((7, 5), (9, 14), (1, 3), (4, 4)):
        x = np.maximum(rng.standard_normal((2, h, wd, c_out), dtype=np.float32), 0)  # channels last
        got = _deconv_rows(x, [Place(0, 2, (0, h, 0, wd), (0, 0))], prepared, None, (h, wd)).transpose(0, 3, 1, 2)
        want = direct64(x.transpose(0, 3, 1, 2), w)
        assert got.shape == (2, c_in, h, wd) and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), (h, wd)


def test_f4x4_error_is_small_on_a_whole_layer():
    """conv3_2's shape on a 56x56 map: F(4x4)'s float32 error stays near 1e-6 of the largest value."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((256, 256, 3, 3), dtype=np.float32) / 48
    x = np.maximum(rng.standard_normal((1, 256, 56, 56), dtype=np.float32), 0)
    err = deconv(x, w, "winograd4") - direct64(x, w)
    ref = direct64(x, w)
    assert np.abs(err).max() <= 5e-6 * np.abs(ref).max() and np.linalg.norm(err) <= 2e-6 * np.linalg.norm(ref)


@pytest.mark.parametrize("method", ["winograd4", "winograd", "im2col"])
def test_rows_in_windows_at_offsets(method):
    """Three rows, rectangles of x copied to offsets of (11, 6) windows: each row equals the direct convolution of
    its own zero-padded window, through ReLU."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 5, 3, 3), dtype=np.float32)
    x = rng.standard_normal((3, 9, 7, 8), dtype=np.float32)  # (B, h, w, C_out), channels last
    places = [Place(0, 2, (1, 8, 0, 4), (2, 1)), Place(2, 3, (0, 9, 3, 7), (0, 2))]
    got = _deconv_rows(x, places, prepare_weight(w, method), "deconvnet", (11, 6))
    for p in places:
        window = np.zeros((p.b - p.a, 8, 11, 6), dtype=np.float32)
        r0, r1, c0, c1 = p.rect
        window[:, :, p.at[0] : p.at[0] + r1 - r0, p.at[1] : p.at[1] + c1 - c0] = \
            np.maximum(x[p.a : p.b, r0:r1, c0:c1], 0).transpose(0, 3, 1, 2)
        want = direct64(window, w)
        np.testing.assert_allclose(got[p.a : p.b].transpose(0, 3, 1, 2), want, rtol=0,
                                   atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("tiles,block_bytes,threads", [(1, 1, 1), (4, 1, 1), (1 << 20, 1 << 30, 1), (1, 1, 3),
                                                       (1 << 20, 1 << 30, 4)])
def test_winograd_blocks_bands_groups_and_gemm_groups(monkeypatch, tiles, block_bytes, threads):
    """Bands of tile rows, groups of whole rows, and blocks whose GEMMs are split between threads give the same
    output."""
    monkeypatch.setattr(dw, "MIN_BLOCK_TILES", tiles)
    monkeypatch.setattr(dw, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 7, 3, 3), dtype=np.float32)
    x = rng.standard_normal((3, 6, 13, 10), dtype=np.float32)
    H, W = 13, 10
    Hf, Wf = dw.frame_size(H, W, 4)
    frame = np.zeros((3, Hf, Wf, 6), dtype=np.float32)
    frame[:, 1 : H + 1, 1 : W + 1] = x.transpose(0, 2, 3, 1)
    seen = []

    def each(fn, count):  # one after another, recording the items
        seen.append(count)
        for i in range(count):
            fn(i)

    got = dw.winograd(frame, dw.winograd_weight(w, 4), 4, H, W, each, threads)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), direct64(x, w), rtol=0, atol=1e-4)
    assert seen and seen[0] >= 1


def test_switch_codes_and_unpooling_hand_computed_4x4():
    """The 4x4 plane of tests/test_deconv_numpy.py: switches (1,1) (0,2) (2,0) (3,3) of the four 2x2 windows are
    codes 2*dy + dx = 3, 0, 0, 3; unpooled into the copy, and through each rule at the activation there."""
    switches = np.array([[[[5, 2], [8, 15]]]])
    codes = switch_codes(switches)
    np.testing.assert_array_equal(codes[0, :, :, 0], [[3, 0], [0, 3]])
    x = np.array([1.0, -2.0, 3.0, 4.0], dtype=np.float32).reshape(1, 2, 2, 1)  # (n, h, w, C)
    act = np.ones((4, 4, 1), dtype=np.float32)
    act[3, 3] = 0.0  # the ReLU was off where 4 goes back
    expected = {None: [[0, 0, -2, 0], [0, 1, 0, 0], [3, 0, 0, 0], [0, 0, 0, 4]],
                "deconvnet": [[0, 0, 0, 0], [0, 1, 0, 0], [3, 0, 0, 0], [0, 0, 0, 4]],
                "guided": [[0, 0, 0, 0], [0, 1, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0]],
                "gradient": [[0, 0, -2, 0], [0, 1, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0]]}
    for rule, want in expected.items():
        out = np.full((1, 4, 4, 1), np.nan, dtype=np.float32)  # every element is written
        _unpool_into(out, x, codes[0], rule, act)
        np.testing.assert_array_equal(out[0, :, :, 0], want, err_msg=str(rule))


def test_parts_cover_the_range():
    for n, elements in ((10, 1 << 30), (1, 1 << 30), (7, 0)):
        got = parts(n, elements)
        assert got[0][0] == 0 and got[-1][1] == n and all(a[1] == b[0] for a, b in zip(got, got[1:], strict=False))
