"""The headless CLIs, run as a user would (subprocess) on the tiny model: demo.visualize and demo.predict."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY_SIZE, make_image

from base import spec
from base.labels import parse_label_file
from demo.backward.deconvnet import Deconvnet
from demo.onnx_forward import DEFAULT_MODEL
from demo.preprocess import load_image, preprocess


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "cat.png"
    make_image("RGB", (48, 40)).save(path)
    return path


def test_visualize_channel_writes_pngs_and_raw_reconstructions(picture, tiny_onnx, onnx_model, tmp_path):
    out = tmp_path / "out"
    proc = run("demo.visualize", str(picture), "--layer", "conv2_1", "--mode", "channel", "--channel", "3",
               "--model", str(tiny_onnx), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in ["input.png", "conv2_1_channel3.png", "conv2_1_features.png", "conv2_1_merged.png"]:
        assert (out / name).is_file(), name
    data = np.load(out / "reconstructions.npz")
    assert sorted(data.files) == ["conv2_1/channel/3/deconvnet", "input"]
    x = data["input"]
    assert x.shape == (1, 3, TINY_SIZE, TINY_SIZE) and x.dtype == np.float32
    np.testing.assert_allclose(x, preprocess(load_image(picture), TINY_SIZE, spec.MEAN, spec.STD), atol=1e-6)
    recon = data["conv2_1/channel/3/deconvnet"]
    assert recon.shape == (3, TINY_SIZE, TINY_SIZE) and recon.dtype == np.float32
    _, acts, switches = onnx_model.run(x)  # the same functions in-process give the same numbers
    expected = Deconvnet(onnx_model.weights).project(acts, switches, "conv2_1", "channel", channel=3).images[0]
    np.testing.assert_allclose(recon, expected, rtol=1e-5, atol=1e-6)


def test_visualize_topk_on_several_layers(picture, tiny_onnx, tmp_path):
    out = tmp_path / "out"
    proc = run("demo.visualize", str(picture), "--layer", "conv1_2,conv5_3", "--mode", "topk", "--k", "3",
               "--model", str(tiny_onnx), "--out", str(out), "--norm", "signed", "--no-features")
    assert proc.returncode == 0, proc.stderr
    data = np.load(out / "reconstructions.npz")
    for layer in ("conv1_2", "conv5_3"):
        keys = [k for k in data.files if k.startswith(f"{layer}/topk/")]
        assert len(keys) == 3
        assert (out / f"{layer}_topk.png").is_file()
        for key in keys:
            assert key.endswith("/deconvnet") and (out / f"{layer}_topk_{key.split('/')[2]}.png").is_file()
    assert not (out / "conv1_2_features.png").exists()


def test_visualize_layer_mode_all_layers(picture, tiny_onnx, tmp_path):
    out = tmp_path / "out"
    proc = run("demo.visualize", str(picture), "--layer", "all", "--model", str(tiny_onnx), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = np.load(out / "reconstructions.npz")
    assert sorted(data.files) == sorted(["input", *(f"{layer}/layer/deconvnet" for layer in spec.CONV_LAYERS)])
    assert all(np.abs(data[f"{layer}/layer/deconvnet"]).max() > 0 for layer in spec.CONV_LAYERS)
    assert "top classes" in proc.stdout


def test_visualize_rejects_bad_arguments(picture, tiny_onnx, tmp_path):
    proc = run("demo.visualize", str(picture), "--mode", "channel", "--model", str(tiny_onnx), "--out", str(tmp_path))
    assert proc.returncode == 2 and "--channel" in proc.stderr
    proc = run("demo.visualize", str(picture), "--layer", "conv9_9", "--out", str(tmp_path))
    assert proc.returncode == 2 and "conv9_9" in proc.stderr
    proc = run("demo.visualize", str(picture), "--mode", "channel", "--channel", "999", "--layer", "conv1_1",
               "--model", str(tiny_onnx), "--out", str(tmp_path))
    assert proc.returncode == 2 and "channels 0..63" in proc.stderr


def test_missing_default_model_says_what_to_do(monkeypatch, tmp_path):
    from demo import onnx_forward

    monkeypatch.setattr(onnx_forward, "DEFAULT_MODEL", onnx_forward.REPO_ROOT / "models" / "no_such_model.onnx")
    with pytest.raises(FileNotFoundError) as error:
        onnx_forward.resolve_model_path(None)
    assert "python -m export" in str(error.value) and "--model" in str(error.value)
    with pytest.raises(FileNotFoundError, match="no ONNX model at"):
        onnx_forward.resolve_model_path(tmp_path / "missing.onnx")


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="the embedded default model is not in this checkout")
def test_embedded_default_model_classifies_the_cat_example(tmp_path):
    """The committed model: 12 cat breeds in its metadata, and the CC0 cat gets a breed through the CLI."""
    cat = DEFAULT_MODEL.parent.parent / "examples" / "chelsea.png"
    out = tmp_path / "pred.csv"
    proc = run("demo.predict", str(cat), "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = _read_csv(out)
    from base.spec import CAT12_BREEDS

    assert len(rows) == 1 and rows[0]["breed"] in CAT12_BREEDS
    assert 1 / 12 < float(rows[0]["probability"]) <= 1


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_folder_with_labels(image_folder, tiny_onnx, onnx_model, tmp_path):
    out = tmp_path / "pred.csv"
    proc = run("demo.predict", str(image_folder), "--labels", str(image_folder / "labels.txt"),
               "--model", str(tiny_onnx), "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = _read_csv(out)
    assert list(rows[0]) == ["path", "class", "breed", "probability"]
    assert len(rows) == 5
    labels = {s.path.resolve(): s.label for s in parse_label_file(image_folder / "labels.txt")}
    correct = 0
    for row in rows:
        x = preprocess(load_image(row["path"]), onnx_model.input_size, onnx_model.mean, onnx_model.std)
        probs = onnx_model.predict(x)[0]
        assert int(row["class"]) == int(probs.argmax())
        assert row["breed"] == spec.CAT12_BREEDS[int(row["class"])]
        assert float(row["probability"]) == pytest.approx(float(probs.max()), abs=1e-5)
        correct += int(row["class"]) == labels[(ROOT / row["path"]).resolve()]
    assert f"accuracy: {correct / 5:.4f}" in proc.stdout
    assert "confusion matrix" in proc.stdout
    matrix = [line.split() for line in proc.stdout.splitlines() if line[:9].strip().isdigit()]
    assert [int(row[0]) for row in matrix] == list(range(12)) and all(len(row) == 13 for row in matrix)
    counts = np.array([[int(v) for v in row[1:]] for row in matrix])
    assert counts.sum() == 5 and np.trace(counts) == correct


def test_predict_images_of_the_label_file_and_skips_broken_ones(image_folder, tiny_onnx, tmp_path):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with open(image_folder / "labels.txt", "a") as f:
        f.write("broken.jpg\t1\n")
    out = tmp_path / "pred.csv"
    proc = run("demo.predict", "--labels", str(image_folder / "labels.txt"), "--model", str(tiny_onnx),
               "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "broken.jpg" in proc.stderr
    assert len(_read_csv(out)) == 5
    assert "accuracy: " in proc.stdout


def test_predict_with_flip_tta_reports_both_accuracies(image_folder, tiny_onnx, onnx_model, tmp_path):
    out = tmp_path / "pred.csv"
    proc = run("demo.predict", str(image_folder), "--labels", str(image_folder / "labels.txt"), "--tta",
               "--model", str(tiny_onnx), "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    labels = {s.path.resolve(): s.label for s in parse_label_file(image_folder / "labels.txt")}
    plain_correct = tta_correct = 0
    for row in _read_csv(out):
        x = preprocess(load_image(row["path"]), onnx_model.input_size, onnx_model.mean, onnx_model.std)
        plain = onnx_model.predict(x)[0]
        mirrored = onnx_model.predict(np.ascontiguousarray(x[..., ::-1]))[0]  # the image flipped left-right
        averaged = (plain + mirrored) / 2
        assert int(row["class"]) == int(averaged.argmax())
        assert float(row["probability"]) == pytest.approx(float(averaged.max()), abs=1e-5)
        label = labels[(ROOT / row["path"]).resolve()]
        plain_correct += int(plain.argmax()) == label
        tta_correct += int(averaged.argmax()) == label
    assert f"accuracy without flip TTA: {plain_correct / 5:.4f}" in proc.stdout
    assert f"accuracy with flip TTA: {tta_correct / 5:.4f}" in proc.stdout


def test_predict_needs_inputs(tmp_path):
    proc = run("demo.predict", "--csv", str(tmp_path / "x.csv"))
    assert proc.returncode == 2 and "--labels" in proc.stderr


def test_predict_on_a_folder_without_images_is_an_error(tiny_onnx, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    out = tmp_path / "out.csv"
    proc = run("demo.predict", str(empty), "--model", str(tiny_onnx), "--csv", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: no images found in {empty}"
    assert not out.exists()


@pytest.mark.parametrize("rule", ["guided", "gradient"])
def test_visualize_with_a_rule_writes_exactly_one_array(picture, tiny_onnx, onnx_model, tmp_path, rule):
    out = tmp_path / rule
    proc = run("demo.visualize", str(picture), "--layer", "conv3_2", "--mode", "channel", "--channel", "7", "--rule",
               rule, "--model", str(tiny_onnx), "--out", str(out), "--no-features")
    assert proc.returncode == 0, proc.stderr
    data = np.load(out / "reconstructions.npz")
    assert sorted(data.files) == [f"conv3_2/channel/7/{rule}", "input"]
    _, acts, switches = onnx_model.run(data["input"])
    expected = Deconvnet(onnx_model.weights).project(acts, switches, "conv3_2", "channel", channel=7, rule=rule)
    np.testing.assert_allclose(data[f"conv3_2/channel/7/{rule}"], expected.images[0], rtol=1e-5, atol=1e-6)
    assert (out / f"conv3_2_channel7_{rule}.png").is_file()


def test_visualize_a_class_score(picture, tiny_onnx, onnx_model, tmp_path):
    out = tmp_path / "class"
    name = onnx_model.class_names[4]
    proc = run("demo.visualize", str(picture), "--class", name, "--rule", "gradient", "--model", str(tiny_onnx),
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = np.load(out / "reconstructions.npz")
    assert sorted(data.files) == ["class/4/gradient", "input"]
    _, acts, switches = onnx_model.run(data["input"])
    images, _ = Deconvnet.from_model(onnx_model).project_class(acts, switches, 4, "gradient")
    np.testing.assert_allclose(data["class/4/gradient"], images[0], rtol=1e-5, atol=1e-6)
    assert (out / "class_4_gradient.png").is_file()
    bad = run("demo.visualize", str(picture), "--class", "Tiger", "--model", str(tiny_onnx), "--out", str(out))
    assert bad.returncode == 2 and "Tiger" in bad.stderr and "Traceback" not in bad.stderr
