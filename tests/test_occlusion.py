"""Occlusion sensitivity (demo/analyses/occlusion/) on the tiny random-weight model: every map entry is one forward
pass of the image with the grey square at that place, built here by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY_SIZE, make_image

from base import spec
from base.cli import parse_class
from demo.analyses import occlusion
from demo.preprocess import deprocess, load_image, preprocess

SIZE, STRIDE = 12, 8  # a 4 x 4 map on the 32 px image, squares clipped at every border


@pytest.fixture(scope="module")
def image():
    return preprocess(make_image("RGB", (40, 36), seed=3), TINY_SIZE, spec.MEAN, spec.STD)


@pytest.fixture(scope="module")
def result(onnx_model, image):
    return occlusion.occlusion_maps(onnx_model, image, SIZE, STRIDE, batch_size=5, bar=False)


def square(i: int, j: int) -> tuple[slice, slice]:
    """The square of map entry (i, j), from the definition: SIZE pixels centred on the cell
    [i * STRIDE, (i + 1) * STRIDE), clipped to the image."""
    centre_y, centre_x = i * STRIDE + STRIDE / 2, j * STRIDE + STRIDE / 2
    r0, c0 = int(centre_y - SIZE / 2), int(centre_x - SIZE / 2)
    return slice(max(r0, 0), min(r0 + SIZE, TINY_SIZE)), slice(max(c0, 0), min(c0 + SIZE, TINY_SIZE))


def test_map_entries_equal_one_forward_pass_each(result, onnx_model, image):
    probs, acts, _ = onnx_model.run(image)
    channel = int(acts["conv5_3"][0].max(axis=(1, 2)).argmax())
    target = int(probs[0].argmax())
    assert result.probability.shape == (4, 4)
    assert (result.channel, result.target, result.target_is_label) == (channel, target, False)
    assert result.base_activation == pytest.approx(float(acts["conv5_3"][0, channel].sum()), rel=1e-5)
    for i, j in [(0, 0), (1, 2), (3, 3), (2, 0)]:
        occluded = image.copy()
        rows, cols = square(i, j)
        occluded[:, :, rows, cols] = 0.0
        p, a, _ = onnx_model.run(occluded)
        assert result.probability[i, j] == pytest.approx(float(p[0, target]), rel=1e-5, abs=1e-7)
        assert result.activation[i, j] == pytest.approx(float(a["conv5_3"][0, channel].sum()), rel=1e-5, abs=1e-6)
        assert result.top_class[i, j] == int(p[0].argmax())
        assert result.top_probability[i, j] == pytest.approx(float(p[0].max()), rel=1e-5)


def test_given_label_is_the_target(onnx_model, image):
    r = occlusion.occlusion_maps(onnx_model, image, 16, 16, target=5, bar=False)
    assert r.target == 5 and r.target_is_label and r.probability.shape == (2, 2)
    occluded = image.copy()
    occluded[:, :, 16:32, 0:16] = 0.0  # square (1, 0) of a 16 px square with stride 16: exactly that cell
    assert r.probability[1, 0] == pytest.approx(float(onnx_model.predict(occluded)[0, 5]), rel=1e-5)
    with pytest.raises(ValueError, match="classes 0..11"):
        occlusion.occlusion_maps(onnx_model, image, 16, 16, target=12, bar=False)


def test_grey_square_is_the_mean_colour(image):
    out = occlusion.occlude(image, 4, -3, 10)
    picture = deprocess(out, spec.MEAN, spec.STD)
    assert (out[:, :, 4:14, 0:7] == 0).all()
    np.testing.assert_array_equal(picture[4:14, 0:7], np.broadcast_to(np.round(np.array(spec.MEAN) * 255), (10, 7, 3)))
    np.testing.assert_array_equal(out[:, :, 14:], image[:, :, 14:])


@pytest.mark.parametrize("size, stride", [(8, 8), (16, 8), (5, 3), (20, 12)])
def test_squares_are_centred_on_cells_that_tile_the_image(size, stride):
    H = W = 32
    tops, lefts = occlusion.square_positions(H, W, size, stride)
    assert len(tops) == -(-H // stride) and len(lefts) == -(-W // stride)
    centres = tops + size / 2
    cells = np.arange(len(tops)) * stride + stride / 2
    assert np.abs(centres - cells).max() <= 0.5  # centred up to the half pixel of odd differences
    if size == stride:  # the squares tile the image exactly once
        cover = np.zeros((H, W), int)
        for t in tops:
            for lf in lefts:
                cover[max(t, 0) : t + size, max(lf, 0) : lf + size] += 1
        assert (cover == 1).all()


def test_figures_are_rgb_pictures(result, image):
    picture = deprocess(image, spec.MEAN, spec.STD)
    shapes = {}
    for which in (*occlusion.MAPS, "all"):
        fig = occlusion.occlusion_figure(result, picture, which, [f"breed {i}" for i in range(12)])
        assert fig.dtype == np.uint8 and fig.ndim == 3 and fig.shape[2] == 3 and fig.std() > 0
        shapes[which] = fig.shape
    assert shapes["all"][1] > 3 * shapes["probability"][1]
    with pytest.raises(ValueError, match="which"):
        occlusion.occlusion_figure(result, picture, "nonsense")


def test_parse_class():
    names = ["Abyssinian", "Bengal", "Birman"]
    assert parse_class("1", names) == 1
    assert parse_class("birman", names) == 2
    assert parse_class(None, names) is None
    with pytest.raises(ValueError, match="out of range"):
        parse_class("3", names)
    with pytest.raises(ValueError, match="unknown class"):
        parse_class("Sphynx", names)


def test_cli_writes_maps_and_pictures(tiny_onnx, onnx_model, tmp_path):
    path = tmp_path / "cat.png"
    make_image("RGB", (48, 40), seed=2).save(path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "demo.occlusion", str(path), "--model", str(tiny_onnx), "--size",
                           "16", "--stride", "8", "--label", "Bombay", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Bombay (true class)" in proc.stdout
    for name in ("occlusion.png", "probability.png", "activation.png", "class.png", "input.png"):
        assert (out / name).is_file(), name
    data = np.load(out / "occlusion.npz")
    x = preprocess(load_image(path), TINY_SIZE, spec.MEAN, spec.STD)
    np.testing.assert_allclose(data["input"], x, atol=1e-6)
    expected = occlusion.occlusion_maps(onnx_model, x, 16, 8, target=3, bar=False)
    assert int(data["target"]) == 3
    np.testing.assert_allclose(data["probability"], expected.probability, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(data["activation"], expected.activation, rtol=1e-5, atol=1e-6)
    bad = subprocess.run([sys.executable, "-m", "demo.occlusion", str(path), "--model", str(tiny_onnx), "--label",
                          "Lion", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown class 'Lion'" in bad.stderr


def test_occlusion_view_for_the_app(onnx_model, image, result):
    picture, text, again = occlusion.occlusion_view(onnx_model, image, SIZE, STRIDE, target=None)
    assert picture.dtype == np.uint8 and picture.ndim == 3
    np.testing.assert_allclose(again.probability, result.probability, rtol=1e-6)
    assert f"channel {result.channel}" in text and onnx_model.class_names[result.target] in text
