"""Display normalisation: the three modes, flat maps, RGB reconstructions, feature grids, tiles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from base.display import GREY, NORMS, map_image, normalize, reconstruction_image
from demo.display import GridLayout, feature_grid, grid, merge_channels, tile_images


def test_minmax_uses_the_maps_own_minimum_when_it_is_above_zero():
    """The original notebook's bug: a map living in [5, 6] must still span black to white."""
    x = 5.0 + np.linspace(0.0, 1.0, 11, dtype=np.float32).reshape(1, 11)
    img, flat = map_image(x, "minmax")
    assert not flat
    assert img[0, 0, 0] == 0 and img[0, -1, 0] == 255 and img[0, 5, 0] in (127, 128)


def test_minmax_with_negative_values():
    out, flat = normalize(np.array([-3.0, -1.0, 1.0]), "minmax")
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])
    assert not flat


def test_signed_keeps_zero_at_mid_grey_with_a_symmetric_scale():
    out, flat = normalize(np.array([-2.0, 0.0, 1.0, 2.0]), "signed")
    np.testing.assert_allclose(out, [0.0, 0.5, 0.75, 1.0])
    img, _ = map_image(np.array([[0.0, 4.0]]), "signed")  # no negative values: zero still grey, not black
    assert img[0, 0, 0] == GREY and img[0, 1, 0] == 255
    assert not flat


def test_percentile_clips_outliers():
    x = np.concatenate([np.linspace(0.0, 1.0, 1000), [1000.0]])
    out, _ = normalize(x, "percentile", (1.0, 99.0))
    minmax, _ = normalize(x, "minmax")
    assert out[-1] == 1.0 and out[500] == pytest.approx(0.5, abs=0.02)  # the bulk spans the range
    assert minmax[500] < 0.001  # min-max lets one outlier flatten everything else


def test_percentile_falls_back_to_minmax_on_a_sparse_map():
    x = np.zeros(1000)
    x[3] = 2.0  # both percentiles are 0
    out, flat = normalize(x, "percentile")
    assert not flat and out[3] == 1.0 and out[0] == 0.0


@pytest.mark.parametrize("mode", NORMS)
@pytest.mark.parametrize("value", [0.0, 3.5, -2.0, 1e30])
def test_constant_maps_are_flagged_grey_tiles(mode, value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or invalid-value warnings either
        img, flat = map_image(np.full((4, 5), value, dtype=np.float32), mode)
        rgb, rgb_flat = reconstruction_image(np.full((3, 4, 5), value, dtype=np.float32), mode)
    assert flat and rgb_flat
    assert (img == GREY).all() and (rgb == GREY).all()
    assert img.dtype == np.uint8 and img.shape == (4, 5, 3)


def test_non_finite_values_never_give_nan():
    x = np.array([[np.nan, 1.0], [np.inf, -np.inf]], dtype=np.float32)
    img, flat = map_image(x)
    assert img.dtype == np.uint8 and not flat
    out, _ = normalize(np.full(3, np.nan))
    assert np.isfinite(out).all()


def test_reconstructions_stay_rgb_with_one_scale():
    recon = np.zeros((3, 4, 4), dtype=np.float32)
    recon[0, :2] = 1.0  # red on top
    recon[2, 2:] = 0.5  # half-strength blue at the bottom
    img, flat = reconstruction_image(recon[None], "minmax")  # (1, 3, H, W) accepted
    assert img.shape == (4, 4, 3) and img.dtype == np.uint8 and not flat
    np.testing.assert_array_equal(img[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(img[3, 0], [0, 0, 128])  # shares red's scale: not stretched to 255
    with pytest.raises(ValueError):
        reconstruction_image(np.zeros((4, 4)))


def test_feature_grid_normalises_each_channel_alone_and_flags_dead_ones():
    a = np.zeros((5, 3, 4), dtype=np.float32)
    a[0] = np.arange(12).reshape(3, 4)
    a[1] = 1000.0 * np.arange(12).reshape(3, 4)  # same picture as channel 0, 1000x larger
    a[3] = 7.0  # constant
    factor = 2  # tiles enlarged from 4 to 8 px wide
    th, tw = 3 * factor, 4 * factor
    img, flags, layout = feature_grid(a, "minmax", GridLayout(channels=5, columns=3, tile_h=th, tile_w=tw, gap=1))
    assert img.shape == (2 * th + 1, 3 * tw + 2, 3)
    np.testing.assert_array_equal(flags, [False, False, True, True, True])
    tile = lambda i: img[(i // 3) * (th + 1) : (i // 3) * (th + 1) + th, (i % 3) * (tw + 1) : (i % 3) * (tw + 1) + tw]
    np.testing.assert_array_equal(tile(0), tile(1))
    assert (tile(2) == GREY).all() and (tile(3) == GREY).all()
    assert tile(0).min() == 0 and tile(0).max() == 255


def test_merge_channels_sum_and_mean():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(merge_channels(a), a[0] + a[1])
    np.testing.assert_array_equal(merge_channels(a[None], "mean"), (a[0] + a[1]) / 2)
    np.testing.assert_array_equal(map_image(merge_channels(a))[0], map_image(merge_channels(a, "mean"))[0])


def test_grid_and_tiles_with_captions():
    tiles = [np.full((4, 6, 3), i * 40, dtype=np.uint8) for i in range(5)]
    g = grid(tiles, columns=2, gap=2)
    assert g.shape == (3 * 4 + 2 * 2, 2 * 6 + 2, 3)
    assert (g[4 + 2 : 8 + 2, 0:6] == 80).all()  # tile 2: second row, first column
    pictures = [np.zeros((10, 8, 3), np.uint8), np.zeros((6, 12, 3), np.uint8)]
    out = tile_images(pictures, ["ch 3: 1.2", "ch 9: 0.4"], gap=4, font_size=10)
    assert out.shape[1] == 2 * 12 + 4 and out.shape[0] > 10
    assert (out[10:, :12] < 128).any()  # the caption's dark pixels under the first picture
    with pytest.raises(ValueError):
        tile_images(pictures, ["one caption"])


