"""Invariance curves (demo/analyses/invariance/) on the tiny random-weight model: the transforms against their
definitions, and the distances and probabilities against a direct computation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY_SIZE, make_image

from base import spec
from demo.analyses import invariance
from demo.preprocess import preprocess

LAYERS = ("conv1_2", "conv3_3", "conv5_3")


@pytest.fixture(scope="module")
def images():
    return np.concatenate([preprocess(make_image("RGB", (40, 36), seed=s), TINY_SIZE, spec.MEAN, spec.STD)
                           for s in (1, 2)])


@pytest.fixture(scope="module")
def result(onnx_model, images):
    ranges = {"translation": [-6, 0, 4], "scale": [0.75, 1.0, 1.5], "rotation": [0, 30, 90]}
    return invariance.invariance_curves(onnx_model, images, [4, None], ranges, LAYERS, batch_size=2, bar=False)


def test_distance_and_probability_equal_a_direct_computation(result, onnx_model, images):
    """Image 1 shifted down by 4 px (built here by slicing): ||f(Tx) - f(x)|| / ||f(x)|| per layer, p(class)."""
    x = images[1:2]
    shifted = np.zeros_like(x)
    shifted[:, :, 4:] = x[:, :, :-4]
    p0, f0, _ = onnx_model.run(x)
    p1, f1, _ = onnx_model.run(shifted)
    predicted = int(p0[0].argmax())
    assert result.targets.tolist() == [4, predicted] and result.target_is_label.tolist() == [True, False]
    for layer in LAYERS:
        a, b = f0[layer].astype(np.float64).ravel(), f1[layer].astype(np.float64).ravel()
        expected = np.sqrt(((b - a) ** 2).sum()) / np.sqrt((a**2).sum())
        assert result.distances["translation"][layer][1, 2] == pytest.approx(expected, rel=1e-4)
        assert result.distances["translation"][layer][1, 1] == pytest.approx(0.0, abs=1e-6)  # no shift
    assert result.probability["translation"][1, 2] == pytest.approx(float(p1[0, predicted]), rel=1e-5)
    assert result.probability["scale"][0, 1] == pytest.approx(float(onnx_model.predict(images[:1])[0, 4]), rel=1e-5)


def test_rotation_entry_equals_a_forward_pass_of_the_rotated_image(result, onnx_model, images):
    """A 90 degree rotation of a square picture is np.rot90 (counter-clockwise)."""
    rotated = np.rot90(images[0], k=1, axes=(1, 2))[None].copy()
    probs, f1, _ = onnx_model.run(rotated)
    _, f0, _ = onnx_model.run(images[:1])
    a, b = f0["conv3_3"].ravel().astype(np.float64), f1["conv3_3"].ravel().astype(np.float64)
    assert result.distances["rotation"]["conv3_3"][0, 2] == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a),
                                                                          rel=1e-3)
    assert result.probability["rotation"][0, 2] == pytest.approx(float(probs[0, 4]), rel=1e-3)


def test_transforms_follow_their_definitions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 16, 16)).astype(np.float32)
    for kind, identity in (("translation", 0), ("scale", 1.0), ("rotation", 0.0), ("rotation", 360.0)):
        np.testing.assert_allclose(invariance.transform(x, kind, identity), x, atol=1e-5)
    up = invariance.transform(x, "translation", -3)
    np.testing.assert_array_equal(up[:, :13], x[:, 3:])
    assert (up[:, 13:] == 0).all()
    np.testing.assert_allclose(invariance.transform(x, "rotation", 90), np.rot90(x, 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(invariance.transform(x, "rotation", 180), x[:, ::-1, ::-1], atol=1e-5)
    # zooming a ramp by 2 about the centre halves its slope; zooming out by 2 leaves a zero (mean colour) border
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32), (3, 16, 16)).copy()
    zoomed = invariance.transform(ramp, "scale", 2.0)
    np.testing.assert_allclose(zoomed[0, 5], 7.5 + (np.arange(16) - 7.5) / 2, atol=1e-5)
    small = invariance.transform(ramp, "scale", 0.5)
    assert (small[:, :, :3] == 0).all() and (small[:, :, -3:] == 0).all() and (small[:, 6:10, 6:10] != 0).all()
    with pytest.raises(ValueError, match="kind"):
        invariance.transform(x, "shear", 1.0)


def test_relative_distance():
    a = np.array([3.0, 4.0])
    np.testing.assert_allclose(invariance.relative_distance(a, np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])),
                               [0.0, 1.0, 1.0])
    assert np.isnan(invariance.relative_distance(np.zeros(2), np.ones((1, 2)))).all()


def test_parse_range_and_defaults():
    np.testing.assert_allclose(invariance.parse_range("-60:60:30"), [-60, -30, 0, 30, 60])
    np.testing.assert_allclose(invariance.parse_range("0.5:1.0:0.25"), [0.5, 0.75, 1.0])
    np.testing.assert_allclose(invariance.parse_range("0,90,180"), [0, 90, 180])
    with pytest.raises(ValueError):
        invariance.parse_range("1:0:1")
    ranges = invariance.default_ranges(224)
    assert ranges["translation"].min() == -60 and ranges["translation"].max() == 60 and len(ranges["translation"]) == 13
    assert ranges["rotation"][-1] == 360 and 1.0 in ranges["scale"]
    assert all(len(v) < len(ranges[k]) for k, v in invariance.default_ranges(224, quick=True).items())


def test_figure(result):
    picture = invariance.invariance_figure(result, [f"breed {i}" for i in range(12)])
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    one_row = invariance.invariance_figure(result, kinds=["scale"])
    assert one_row.shape[0] < picture.shape[0] / 2
    strip = invariance.examples_strip(np.zeros((3, 32, 32), np.float32), "rotation", [0, 45, 90], spec.MEAN, spec.STD)
    assert strip.dtype == np.uint8 and strip.shape[1] >= 3 * 32


def test_cli(tiny_onnx, tmp_path):
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"cat{seed}.png")
        make_image("RGB", (40, 36), seed=seed).save(paths[-1])
    labels = tmp_path / "labels.txt"
    labels.write_text("cat1.png\t2\ncat2.png\t7\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "demo.invariance", *map(str, paths), "--model", str(tiny_onnx),
                           "--labels", str(labels), "--translate=-4:4:4", "--scale", "0.8:1.2:0.2", "--rotate",
                           "0:90:45", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("invariance.png", "invariance_rotation.png", "examples_scale.png", "invariance.npz"):
        assert (out / name).is_file(), name
    data = np.load(out / "invariance.npz")
    assert data["targets"].tolist() == [2, 7] and data["target_is_label"].all()
    np.testing.assert_allclose(data["rotation/params"], [0, 45, 90])
    assert data["translation/conv5_3"].shape == (2, 3) and data["translation/conv5_3"][:, 1].max() < 1e-6


def test_invariance_view_for_the_app(onnx_model, images):
    picture, result = invariance.invariance_view(onnx_model, images[:1], target=2)
    assert picture.dtype == np.uint8 and picture.ndim == 3
    assert result.targets.tolist() == [2] and result.names == ["this image"]
    assert set(result.params) == set(invariance.TRANSFORMS)
    assert result.distances["rotation"]["conv5_3"][0, 0] == pytest.approx(0.0, abs=1e-6)  # 0 degrees
