"""Model health (demo/analyses/health/, the paper's Fig. 6) on the tiny random-weight model and generated images.

Checked against direct computations: the streamed firing counts, peaks and dead / rare channels equal those of the
full activations of ``OnnxModel.run``; filter norms equal NumPy's on the weights; each tile of the conv1_1 picture
is its filter, min-max normalised and enlarged. The command: files, CSV columns, bad input, Ctrl-C.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY_SIZE, make_image
from PIL import Image

from base import spec
from demo.analyses import dataset
from demo.analyses.health.figure import conv1_filters, normalised_filters
from demo.analyses.health.files import FILES, load_health, save
from demo.analyses.health.measure import CSV_COLUMNS, layer_table, measure
from demo.analyses.health.view import health_view
from demo.preprocess import load_image, preprocess

RARE = 0.3  # with 15 images, "rare" = above zero on 1 to 4 of them: not empty on the tiny model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """15 generated images (gradients, noise, flat colours) plus one unreadable file, in a cat-12 label file."""
    root = tmp_path_factory.mktemp("health_data")
    rng = np.random.default_rng(11)
    lines = []
    for i in range(15):
        if i % 3 == 0:
            picture = make_image("RGB", (40 + i, 32 + 2 * i), seed=i)
        elif i % 3 == 1:
            picture = Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8))
        else:
            picture = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 256, 3)))
        picture.save(root / f"im{i:02d}.png")
        lines.append(f"im{i:02d}.png\t{i % 12}")
        if i == 4:
            (root / "broken.png").write_bytes(b"not a png")
            lines.append("broken.png\t0")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root / "labels.txt"


@pytest.fixture(scope="module")
def stats(data, onnx_model):
    samples = dataset.read_samples(data)
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        result = measure(onnx_model, samples, batch_size=4, workers=1, rare_fraction=RARE, bar=False)
    assert "broken.png" in stderr.getvalue()
    return result


def full_activation_maxima(data, model) -> np.ndarray:
    """{layer: (N, C) maxima over each map} of the readable images, from the full activations of ``model.run``."""
    images = []
    for sample in dataset.read_samples(data):
        try:
            images.append(preprocess(load_image(sample.path), TINY_SIZE, model.mean, model.std)[0])
        except ValueError:
            continue
    _, acts, _ = model.run(np.stack(images))
    return {layer: a.reshape(a.shape[0], a.shape[1], -1).max(axis=2) for layer, a in acts.items()}


def test_counts_equal_brute_force(stats, data, onnx_model):
    maxima = full_activation_maxima(data, onnx_model)
    assert stats.images == 15 and len(stats.skipped) == 1 and stats.skipped[0].endswith("broken.png")
    assert stats.layers == list(spec.CONV_LAYERS)
    rows = {row["layer"]: row for row in layer_table(stats)}
    total_dead = total_rare = 0
    for layer, m in maxima.items():
        fires = (m > 0).sum(axis=0)  # (C,) images on which each channel is above zero
        dead, rare = fires == 0, (fires > 0) & (fires < RARE * 15)
        np.testing.assert_array_equal(stats.firing[layer], fires, err_msg=layer)
        np.testing.assert_array_equal(stats.dead(layer), dead)
        np.testing.assert_array_equal(stats.rare(layer), rare)
        np.testing.assert_allclose(stats.peak[layer], m.max(axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats.mean_max[layer], m.mean(axis=0), rtol=1e-5, atol=1e-7)
        row = rows[layer]
        assert row["channels"] == m.shape[1] and row["dead"] == dead.sum() and row["rare"] == rare.sum()
        assert row["dead_share"] == pytest.approx(dead.mean()) and row["rare_share"] == pytest.approx(rare.mean())
        assert row["max"] == pytest.approx(m.max()) and row["max_p50"] == pytest.approx(np.median(m.max(axis=0)))
        total_dead, total_rare = total_dead + dead.sum(), total_rare + rare.sum()
    assert total_dead > 0 and total_rare > 0  # the comparison is not trivial on this model


def test_filter_norms_equal_numpy(stats, onnx_model):
    for layer, w in onnx_model.weights.items():
        expected = np.sqrt((w.astype(np.float64) ** 2).sum(axis=(1, 2, 3)))
        np.testing.assert_allclose(stats.filter_norms[layer], expected, rtol=1e-6)
        row = next(r for r in layer_table(stats) if r["layer"] == layer)
        assert row["filter_norm_mean"] == pytest.approx(expected.mean(), rel=1e-5)
        assert row["filter_norm_std"] == pytest.approx(expected.std(), rel=1e-4)


def test_conv1_picture_tiles_are_the_normalised_filters(onnx_model):
    w = onnx_model.weights["conv1_1"]  # (64, 3, 3, 3)
    scale, gap = 16, 3
    picture = conv1_filters(onnx_model, scale=scale)
    side = 3 * scale
    assert picture.dtype == np.uint8 and picture.shape == (gap + 8 * (side + gap), gap + 8 * (side + gap), 3)
    for c in range(64):
        f = w[c].transpose(1, 2, 0).astype(np.float64)  # (3, 3, RGB)
        expected = np.round(255 * (f - f.min()) / (f.max() - f.min()))
        r, q = divmod(c, 8)
        y, x = gap + r * (side + gap), gap + q * (side + gap)
        tile = picture[y : y + side, x : x + side].astype(np.float64)
        np.testing.assert_allclose(tile, np.kron(expected, np.ones((scale, scale, 1))), atol=1, err_msg=str(c))
        assert tile.min() == 0 and tile.max() == 255
    assert (picture[:gap] == 255).all() and (picture[:, side + gap : side + 2 * gap] == 255).all()


def test_constant_filter_is_grey():
    tiles = normalised_filters(np.ones((2, 3, 3, 3), np.float32))
    assert tiles.shape == (2, 3, 3, 3) and (tiles == 0.5).all()


def test_files_round_trip_and_health_view(stats, onnx_model, tmp_path):
    save(stats, tmp_path, onnx_model.weights)
    back = load_health(tmp_path)
    assert back.images == stats.images and back.model_sha1 == stats.model_sha1
    for layer in stats.layers:
        np.testing.assert_array_equal(back.firing[layer], stats.firing[layer])
        np.testing.assert_array_equal(back.peak[layer], stats.peak[layer])
        np.testing.assert_array_equal(back.filter_norms[layer], stats.filter_norms[layer])
    filters, figure, summary = health_view(onnx_model, tmp_path)
    assert filters.dtype == np.uint8 and filters.ndim == 3 and figure.dtype == np.uint8 and figure.shape[2] == 3
    assert "| conv5_3 | 512 |" in summary and "another model" not in summary and "15 images" in summary

    filters_only, none, text = health_view(onnx_model, None)
    assert none is None and "python -m demo.health" in text
    np.testing.assert_array_equal(filters_only, filters)

    meta = json.loads((tmp_path / "health.json").read_text())
    meta["model_sha1"] = "0" * 40
    (tmp_path / "health.json").write_text(json.dumps(meta))
    assert "another model" in health_view(onnx_model, tmp_path)[2]
    with pytest.raises(FileNotFoundError, match="not the --out folder"):
        health_view(onnx_model, tmp_path / "nothing")


def test_cli(data, tiny_onnx, tmp_path):
    out = tmp_path / "health"
    proc = subprocess.run([sys.executable, "-m", "demo.health", "--data", str(data), "--model", str(tiny_onnx),
                           "--rare", str(RARE), "--batch-size", "4", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "broken.png" in proc.stderr and "Traceback" not in proc.stderr and "over 15 images" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    with open(out / "health.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and [r["layer"] for r in rows] == list(spec.CONV_LAYERS)
    assert int(rows[-1]["channels"]) == 512 and 0 <= float(rows[-1]["dead_share"]) <= 1
    meta = json.loads((out / "health.json").read_text())
    assert meta["images"] == 15 and meta["model_sha1"] == dataset.model_sha1(tiny_onnx)
    assert len(meta["layers"]["conv4_2"]["firing"]) == 512
    assert Image.open(out / "conv1_filters.png").size == (8 * 51 + 3, 8 * 51 + 3)


@pytest.mark.parametrize("bad", ["missing", "empty_dir", "bad_labels"])
def test_bad_data_is_one_error_line(bad, tiny_onnx, tmp_path):
    target = {"missing": tmp_path / "no_such_folder", "empty_dir": tmp_path / "empty",
              "bad_labels": tmp_path / "labels.txt"}[bad]
    (tmp_path / "empty").mkdir()
    (tmp_path / "labels.txt").write_text("a.png\tcat\n")
    proc = subprocess.run([sys.executable, "-m", "demo.health", "--data", str(target), "--model", str(tiny_onnx),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "health.json").exists()


def test_ctrl_c_exits_cleanly(data, tiny_onnx, tmp_path):
    """SIGINT in the middle of the pass: status 130, one "interrupted" line, no traceback, no files."""
    many = tmp_path / "many.txt"
    names = [line for line in data.read_text().splitlines() if "broken" not in line]
    many.write_text("".join(f"{data.parent / line}\n" for line in names * 400))  # 6000 images
    # the child starts with Ctrl-C's default action, as from a terminal, even when this run was started in the
    # background (a shell's `&` job ignores SIGINT, and a Python started so keeps ignoring it)
    proc = subprocess.Popen([sys.executable, "-m", "demo.health", "--data", str(many), "--model", str(tiny_onnx),
                             "--batch-size", "1", "--out", str(tmp_path / "out")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().startswith("measuring")  # the model is loaded, the pass begins
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted"
    assert not (tmp_path / "out" / "health.json").exists()
