"""Correspondence analysis (demo/analyses/correspondence/): Delta against a brute-force double loop, the box
mapping against the preprocessing itself, a synthetic set whose answer is known, and the command line on generated
images with the tiny random-weight model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY_SIZE, make_image
from PIL import Image

from base import spec
from demo.analyses.correspondence import cli
from demo.analyses.correspondence.boxes import PARTS, box_to_input, input_transform, random_box
from demo.analyses.correspondence.config import DEFAULT_LAYERS
from demo.analyses.correspondence.figure import correspondence_chart, correspondence_figure
from demo.analyses.correspondence.measure import (
    correspondence,
    delta,
    delta_from_counts,
    model_features,
    sign_counts,
    signs,
)
from demo.analyses.correspondence.table import COLUMNS, read_csv_rows
from demo.preprocess import fit


def brute_force_delta(sign: np.ndarray) -> float:
    """The definition, term by term: Hamming distances over ordered pairs i != j, over pairs and features."""
    N, D = sign.shape
    total = 0
    for i in range(N):
        for j in range(N):
            if i != j:
                total += sum(int(sign[i, d] != sign[j, d]) for d in range(D))
    return total / (N * (N - 1) * D)


@pytest.mark.parametrize("seed, n, d", [(0, 2, 1), (1, 3, 7), (2, 5, 13), (3, 8, 40)])
def test_delta_equals_the_double_loop(seed, n, d):
    rng = np.random.default_rng(seed)
    sign = rng.integers(-1, 2, size=(n, d)).astype(np.int8)  # zeros included, as a value of their own
    assert delta(sign) == pytest.approx(brute_force_delta(sign), abs=1e-12)


def test_delta_extremes_and_zero_as_its_own_value():
    assert delta(np.ones((4, 6), np.int8)) == 0.0
    assert delta(np.zeros((3, 5), np.int8)) == 0.0
    assert delta(np.array([[1, -1], [-1, 1]], np.int8)) == 1.0
    assert delta(np.array([[0], [1]], np.int8)) == 1.0  # 0 differs from +1
    assert delta(np.array([[0], [-1]], np.int8)) == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        delta(np.ones((1, 3), np.int8))


def test_sign_counts_add_up_over_images():
    rng = np.random.default_rng(5)
    sign = rng.integers(-1, 2, size=(6, 9)).astype(np.int8)
    counts = sign_counts(sign[:2]) + sign_counts(sign[2:5]) + sign_counts(sign[5:])
    assert delta_from_counts(counts, 6) == pytest.approx(brute_force_delta(sign))


def test_signs_tolerance_is_relative_to_the_original():
    reference = np.array([[10.0, 0.0, 5.0, 1.0]], np.float32)
    eps = np.array([[1e-4, -2e-3, -1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(signs(eps, reference, 0.0), [[1, -1, -1, 0]])
    np.testing.assert_array_equal(signs(eps, reference, 1e-4), [[0, -1, -1, 0]])  # limit 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Geometry


def coloured_box_in_input(width: int, height: int, box: tuple[int, int, int, int], size: int,
                          resize: str) -> tuple[int, int, int, int]:
    """An independent measurement: paint ``box`` red on a grey image, resize and crop it as the preprocessing
    does, and return the bounding box (x0, y0, x1, y1), half-open, of the pixels that are mostly red."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = (255, 0, 0)
    out = np.asarray(fit(Image.fromarray(pixels), size, resize), np.float32)
    redness = (out[..., 0] - out[..., 1]) / 255.0  # 0 on grey, 1 on red
    rows, cols = np.nonzero(redness > 0.5)
    assert rows.size, "the box vanished"
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


@pytest.mark.parametrize("width, height, box, size, resize", [
    (97, 61, (40, 10, 70, 35), 32, "crop"),  # landscape, downscaled, the crop cuts the sides
    (61, 97, (10, 40, 35, 70), 32, "crop"),  # portrait
    (400, 256, (150, 60, 230, 140), 112, "crop"),  # like cat-12, a short side of 256
    (24, 40, (4, 12, 16, 30), 48, "crop"),  # upscaled
    (97, 61, (5, 5, 40, 30), 32, "stretch"),
])
def test_box_mapping_matches_the_preprocessing(width, height, box, size, resize):
    mapped = box_to_input(box, width, height, size, resize)
    found = coloured_box_in_input(width, height, box, size, resize)
    assert mapped is not None
    # the mapped box covers every pixel the box touches: the mostly-red pixels, and at most one more at each edge
    assert mapped[0] <= found[0] and mapped[1] <= found[1] and mapped[2] >= found[2] and mapped[3] >= found[3]
    assert all(abs(m - f) <= 1 for m, f in zip(mapped, found, strict=True)), (mapped, found)


def test_box_mapping_clips_and_skips_at_the_crop():
    # 200 x 100 -> 32 px: scaled by 0.32 to 64 x 32, the centre square keeps original x in [50, 150)
    assert input_transform(200, 100, 32) == (0.32, 0.32, 16.0, 0.0)
    assert box_to_input((50, 0, 150, 100), 200, 100, 32) == (0, 0, 32, 32)
    assert box_to_input((40, 10, 60, 20), 200, 100, 32) == (0, 3, 4, 7)  # partly outside: clipped
    assert box_to_input((0, 10, 49, 20), 200, 100, 32) is None  # entirely left of the crop
    assert box_to_input((160, 10, 190, 20), 200, 100, 32) is None  # entirely right of it
    assert box_to_input((0, 10, 49, 20), 200, 100, 32, "stretch") == (0, 3, 8, 7)  # stretch keeps it
    assert box_to_input((100.2, 50.1, 100.4, 50.3), 200, 100, 32) == (16, 16, 17, 17)  # thinner than a pixel


def test_random_boxes_keep_the_size_and_stay_inside():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, x1, y1 = random_box(rng, (3, 5, 13, 9), 16)
        assert (x1 - x0, y1 - y0) == (10, 4) and x0 >= 0 and y0 >= 0 and x1 <= 16 and y1 <= 16


# ----------------------------------------------------------------------------------------------------------------
# A synthetic set whose answer is known


PATCH = (8, 8, 16, 16)  # input box (x0, y0, x1, y1) of the shared patch


def patch_images(n: int = 6, size: int = TINY_SIZE, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) normalised images: different random backgrounds, the same striped patch at PATCH."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    x0, y0, x1, y1 = PATCH
    stripes = np.where(np.arange(x1 - x0) % 4 < 2, 2.0, -2.0).astype(np.float32)
    images[:, :, y0:y1, x0:x1] = stripes[None, None, None, :]
    return images


def pixel_features(x: np.ndarray) -> dict[str, np.ndarray]:
    """A hand-made feature function: the pixels themselves, and a 4x4 average pool through a ReLU."""
    B, C, H, W = x.shape
    pooled = x.reshape(B, C, H // 4, 4, W // 4, 4).mean(axis=(3, 5))
    return {"pixels": x.reshape(B, -1), "pool4": np.maximum(pooled, 0).reshape(B, -1)}


def test_shared_patch_is_perfectly_consistent_with_hand_made_features():
    images = patch_images()
    boxes = [{"patch": PATCH} for _ in images]
    result = correspondence(images, boxes, pixel_features, draws=10, seed=1, batch_size=4, bar=False)
    rows = {r.layer: r for r in result.rows}
    # covering the same patch removes the same values everywhere: eps is identical in every image
    assert rows["pixels"].delta == 0.0 and rows["pool4"].delta == 0.0
    for row in rows.values():
        assert row.images == 6 and row.random_mean > 0.01 and row.random_std >= 0
        assert result.random["patch", row.layer].shape == (10,)


def test_shared_patch_is_more_consistent_than_random_in_the_tiny_model(onnx_model):
    images = patch_images(n=6, seed=3)
    boxes = [{"patch": PATCH} for _ in images]
    features = model_features(onnx_model, ["conv4_3", "conv5_3", "pooled"])
    result = correspondence(images, boxes, features, draws=10, seed=0, batch_size=8, bar=False)
    assert [r.layer for r in result.rows] == ["conv4_3", "conv5_3", "pooled"]
    for row in result.rows:
        assert 0.0 <= row.delta < row.random_mean - 3 * row.random_std, row  # margins of about 15 std


def test_model_features_are_the_activations(onnx_model):
    x = patch_images(n=2)
    features = model_features(onnx_model, ["conv4_3", "pooled"])(x)
    _, acts, _ = onnx_model.run(x)
    np.testing.assert_array_equal(features["conv4_3"], acts["conv4_3"].reshape(2, -1))
    np.testing.assert_array_equal(features["pooled"], acts["conv5_3"].max(axis=(2, 3)))  # the gmp head's input
    assert features["pooled"].shape == (2, spec.FEATURE_CHANNELS)


def test_result_does_not_depend_on_the_batch_size():
    images = patch_images(n=4)
    boxes = [{"patch": PATCH, "corner": (0, 0, 6, 5)} for _ in images]
    a = correspondence(images, boxes, pixel_features, draws=4, seed=7, batch_size=3, bar=False)
    b = correspondence(images, boxes, pixel_features, draws=4, seed=7, batch_size=32, bar=False)
    assert a.rows == b.rows and [r.part for r in a.rows] == ["patch", "patch", "corner", "corner"]


def test_a_part_needs_two_images():
    images = patch_images(n=3)
    boxes = [{"patch": PATCH}, {"patch": PATCH, "ear": (0, 0, 4, 4)}, {"patch": PATCH}]
    with pytest.raises(ValueError, match=r"ear \(1\)"):
        correspondence(images, boxes, pixel_features, draws=2, bar=False)


# ----------------------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture
def boxes_file(tmp_path):
    """Five generated images of different sizes (one in a sub-folder, one by absolute path) and their boxes file;
    the nose box of d.png lies outside the centre crop."""
    folder = tmp_path / "set"
    (folder / "sub").mkdir(parents=True)
    sizes = {"a.png": (48, 40), "b.png": (40, 56), "sub/c.jpg": (64, 48), "d.png": (80, 32), "e.png": (36, 36)}
    data: dict = {"_comment": "generated"}
    for k, (name, (w, h)) in enumerate(sizes.items()):
        make_image("RGB", (w, h), seed=k).save(folder / name)
        cx, cy = w // 2, h // 2
        key = str(folder / name) if name == "e.png" else name
        data[key] = {"left_eye": [cx + 2, cy - 8, cx + 10, cy - 2], "right_eye": [cx - 10, cy - 8, cx - 2, cy - 2],
                     "nose": [cx - 4, cy, cx + 4, cy + 6]}
    data["d.png"]["nose"] = [0, 4, 10, 12]  # d.png: 80 x 32 -> the crop keeps x in [24, 56)
    path = folder / "parts.json"
    path.write_text(json.dumps(data))
    return path


def test_cli_writes_table_and_figure(tiny_onnx, boxes_file, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "demo.correspondence", "--boxes", str(boxes_file), "--model",
                           str(tiny_onnx), "--draws", "10", "--seed", "3", "--batch-size", "7", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'d.png'" in warnings[0] and "nose" in warnings[0]
    rows = read_csv_rows(out / "correspondence.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["part"], r["layer"]) for r in rows] == [(p, la) for p in PARTS for la in DEFAULT_LAYERS]
    assert {r["images"] for r in rows if r["part"] == "nose"} == {"4"}
    assert {r["images"] for r in rows if r["part"] != "nose"} == {"5"}
    for r in rows:
        assert 0 <= float(r["delta"]) <= 1 and 0 <= float(r["random_mean"]) <= 1 and float(r["random_std"]) >= 0
    notes = [line for line in (out / "correspondence.csv").read_text().splitlines() if line.startswith("#")]
    assert any("mean in [0, 1]" in line for line in notes) and any("10 draws (seed 3)" in line for line in notes)
    assert "left_eye" in proc.stdout and "random" in proc.stdout
    figure = np.asarray(Image.open(out / "correspondence.png"))
    assert figure.ndim == 3 and figure.shape[0] > 300 and figure.std() > 0


def test_cli_writes_the_chart_from_the_numbers_alone(tiny_onnx, boxes_file, tmp_path):
    """The chart file is the rendering of the run's result with no image at all; the figure shows the photos."""
    out = tmp_path / "out"
    config = cli.CorrespondenceConfig(boxes=str(boxes_file), out=str(out), model=str(tiny_onnx), draws=3, seed=1)
    result = cli.run(config)
    assert sorted(p.name for p in out.iterdir()) == sorted(cli.FILES)
    chart = np.asarray(Image.open(out / "correspondence_chart.png").convert("RGB"))
    np.testing.assert_array_equal(chart, correspondence_chart(result))
    figure = np.asarray(Image.open(out / "correspondence.png").convert("RGB"))
    assert chart.shape[0] < figure.shape[0] and chart.std() > 0


def test_chart_holds_no_photo_pixels():
    """Photos of one colour that no chart element uses: it fills the figure's photo grid, never the chart."""
    images = patch_images(n=4)
    boxes = [{"patch": PATCH, "corner": (0, 0, 6, 5)} for _ in images]
    result = correspondence(images, boxes, pixel_features, draws=3, seed=2, batch_size=8, bar=False)
    magenta = np.zeros((TINY_SIZE, TINY_SIZE, 3), np.uint8)
    magenta[..., 0] = magenta[..., 2] = 255
    figure = correspondence_figure(result, [magenta] * 4, {p: [magenta] * 4 for p in result.parts})
    chart = correspondence_chart(result)

    def is_magenta(picture: np.ndarray) -> np.ndarray:
        return (picture[..., 0] > 200) & (picture[..., 1] < 60) & (picture[..., 2] > 200)

    assert is_magenta(figure).sum() > 12 * 20 * 20  # the 12 photo tiles, however small they are drawn
    assert not is_magenta(chart).any()
    assert chart.ndim == 3 and chart.dtype == np.uint8 and chart.std() > 0


def write(tmp_path, text: str) -> str:
    path = tmp_path / "boxes.json"
    path.write_text(text)
    make_image("RGB", (40, 40)).save(tmp_path / "cat.png")
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"_c": "only a comment"}', "no images"),
    ('{"cat.png": [1, 2, 3, 4]}', "'cat.png': expected an object"),
    ('{"cat.png": {"nose": [1, 2, 3]}}', "'cat.png', part 'nose': expected [x0, y0, x1, y1]"),
    ('{"cat.png": {"nose": [1, 2, "3", 4]}}', "'cat.png', part 'nose': expected [x0, y0, x1, y1]"),
    ('{"cat.png": {"nose": [10, 2, 3, 4]}}', "'cat.png', part 'nose': box [10, 2, 3, 4] is empty"),
    ('{"cat.png": {"no se": [1, 2, 3, 4]}}', "part name 'no se'"),
    ('{"dog.png": {"nose": [1, 2, 3, 4]}}', "'dog.png': no image file at"),
    ('{"cat.png": {"nose": [1, 2, 3, 4]}, "cat.png": {"nose": [1, 2, 3, 4]}}', "key 'cat.png' appears twice"),
])
def test_bad_boxes_files_are_one_error_line(tmp_path, capsys, text, expected):
    path = write(tmp_path, text)
    code = cli.main(["--boxes", path, "--out", str(tmp_path / "out"), "--model", "unused.onnx"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and path in lines[0] and expected in lines[0], err
    assert not (tmp_path / "out").exists()


def test_bad_boxes_in_a_subprocess_exit_2_without_traceback(tiny_onnx, tmp_path):
    path = write(tmp_path, '{"cat.png": {"nose": [1, 2, 3, 4]}}')  # one image: no pair to compare
    missing = subprocess.run([sys.executable, "-m", "demo.correspondence", "--boxes", str(tmp_path / "nope.json"),
                              "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    single = subprocess.run([sys.executable, "-m", "demo.correspondence", "--boxes", path, "--model", str(tiny_onnx),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    for proc, expected in [(missing, "nope.json: no such boxes file"), (single, "nose (1) in fewer than 2 images")]:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and expected in proc.stderr, proc.stderr


def test_bad_options_exit_2(tmp_path, capsys):
    path = write(tmp_path, '{"cat.png": {"nose": [1, 2, 3, 4]}}')
    with pytest.raises(SystemExit) as stop:
        cli.parse_args(["--boxes", path, "--out", str(tmp_path), "--draws", "1"])
    assert stop.value.code == 2 and "--draws must be at least 2" in capsys.readouterr().err
    code = cli.main(["--boxes", path, "--out", str(tmp_path), "--layers", "conv9_9"])
    assert code == 2 and "unknown layer(s) ['conv9_9']" in capsys.readouterr().err
