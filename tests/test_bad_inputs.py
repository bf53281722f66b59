"""Every command line meets a corpus of bad image files as a user would (subprocess): one clear line per file on
stderr, exit status 2 when nothing could be done, never a Python traceback.

The corpus is generated here: empty, truncated, random bytes, text and HTML named like images, SVG, PDF, a PNG
whose header claims 900 megapixels, a 3 x 5000 strip, a folder named like an image, a missing file, ...
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, encoded, make_image, png_header
from PIL import Image


def bad_corpus(folder: Path) -> list[Path]:
    """At least 15 files no command may choke on; returns their paths (one is missing, one is a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = encoded(make_image("RGB", (64, 64)), "JPEG", quality=95)
    png = encoded(make_image("RGB", (64, 64)), "PNG")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>'
    files = {
        "empty.png": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "truncated.png": png[: len(png) // 2],
        "random.jpg": np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "text.png": b"This is a text file, not a picture.\n" * 20,
        "page.jpg": b"<!DOCTYPE html><html><body>not an image</body></html>",
        "drawing.svg": svg,
        "drawing_named.png": svg,
        "document.jpg": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
        "bomb_900mp.png": png_header(30_000, 30_000),
        "bomb_header_only.png": png_header(8_000, 6_000),
        "strip_3x5000.png": encoded(Image.new("RGB", (3, 5000), (120, 80, 40)), "PNG"),
        "corrupt_body.jpg": jpeg[:200] + bytes(len(jpeg) - 200),
        "zero_width.png": png_header(0, 64),
        "gif_header_only.gif": b"GIF89a\x40\x00\x40\x00\x80\x00\x00",
        "bmp_truncated.bmp": encoded(make_image("RGB", (32, 32)), "BMP")[:100],
    }
    paths = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    (folder / "folder.png").mkdir(exist_ok=True)
    paths.append(folder / "folder.png")
    paths.append(folder / "missing.jpg")
    return paths


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_clean(proc: subprocess.CompletedProcess, status: int) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == status, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return bad_corpus(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("good")
    paths = []
    for i, size in enumerate([(48, 40), (40, 56)]):
        paths.append(folder / f"good{i}.png")
        make_image("RGB", size, i).save(paths[-1])
    return paths


def test_the_corpus_is_large_and_really_bad(corpus):
    from base.images import ImageError, open_image

    assert len(corpus) >= 15
    for path in corpus:
        with pytest.raises(ImageError) as caught:
            open_image(path)
        assert path.name in str(caught.value) and "\n" not in str(caught.value)


def test_predict_classifies_the_good_files_and_lists_each_bad_one(corpus, good, tiny_onnx, tmp_path):
    out = tmp_path / "p.csv"
    proc = run("demo.predict", *map(str, corpus), *map(str, good), "--model", str(tiny_onnx), "--csv", str(out))
    assert_clean(proc, 0)
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + len(good)
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    files = [p for p in corpus if not p.is_dir()]  # a folder given on the command line is searched, not read
    assert len(skipped) == len(files)
    for path in files:
        assert sum(path.name in line for line in skipped) == 1, path.name


def test_predict_on_only_bad_files_exits_2(corpus, tiny_onnx, tmp_path):
    proc = run("demo.predict", *map(str, corpus), "--model", str(tiny_onnx), "--csv", str(tmp_path / "p.csv"))
    assert_clean(proc, 2)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: none of the")


@pytest.mark.parametrize("command", ["demo.visualize", "demo.occlusion"])
def test_single_image_commands_refuse_every_bad_file_in_one_line(command, corpus, tiny_onnx, tmp_path):
    for path in corpus:
        proc = run(command, str(path), "--model", str(tiny_onnx), "--out", str(tmp_path / "out"))
        assert_clean(proc, 2)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and path.name in lines[0], (path.name, lines)


def test_invariance_skips_bad_files_and_refuses_when_none_is_left(corpus, good, tiny_onnx, tmp_path):
    small = ["--translate=-4:4:4", "--scale", "0.9:1.1:0.1", "--rotate", "0:10:10", "--limit", "100"]
    proc = run("demo.invariance", *map(str, corpus[:6]), str(good[0]), "--model", str(tiny_onnx), *small,
               "--out", str(tmp_path / "inv"))
    assert_clean(proc, 0)
    assert sum(line.startswith("skipped ") for line in proc.stderr.splitlines()) == 6
    proc = run("demo.invariance", *map(str, corpus), "--model", str(tiny_onnx), *small, "--out", str(tmp_path / "x"))
    assert_clean(proc, 2)


def test_mine_skips_bad_files_in_a_folder(corpus, good, tiny_onnx, tmp_path):
    data = corpus[0].parent  # the corpus folder, plus two good images
    for path in good:
        (data / path.name).write_bytes(path.read_bytes())
    try:
        proc = run("demo.mine", "--data", str(data), "--model", str(tiny_onnx), "--layers", "conv1_1",
                   "--out", str(tmp_path / "atlas"))
    finally:
        for path in good:
            (data / path.name).unlink()
    assert_clean(proc, 0)
    skipped = [line for line in proc.stderr.splitlines() if "skipped " in line]
    readable_names = {p.name for p in corpus if p.suffix.lower() in (".png", ".jpg", ".gif", ".bmp") and p.is_file()}
    assert len(skipped) >= len(readable_names) - 1, proc.stderr


def test_bad_model_files_are_one_line(good, tmp_path):
    for name, data in {"empty.onnx": b"", "text.onnx": b"not a model at all" * 10}.items():
        model = tmp_path / name
        model.write_bytes(data)
        proc = run("demo.predict", str(good[0]), "--model", str(model), "--csv", str(tmp_path / "p.csv"))
        assert_clean(proc, 2)
        assert name in proc.stderr
    proc = run("demo.visualize", str(good[0]), "--model", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "o"))
    assert_clean(proc, 2)


def test_debug_shows_the_traceback(corpus, tiny_onnx, tmp_path):
    proc = run("demo.visualize", str(corpus[0]), "--model", str(tiny_onnx), "--out", str(tmp_path), "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_training_names_every_bad_file_and_refuses_when_none_is_left(corpus, tmp_path):
    labels = tmp_path / "labels.txt"
    files = [p for p in corpus if not p.is_dir()]
    labels.write_text("".join(f"{p}\t{i % 12}\n" for i, p in enumerate(files)))
    proc = run("model.train", "--data", str(labels), "--out", str(tmp_path / "run"), "--epochs", "1",
               "--image-size", "32", "--batch-size", "2", "--workers", "0", "--threads", "1")
    assert_clean(proc, 2)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: skipping")]
    for path in files:
        assert sum(path.name in line for line in warnings) == 1, path.name
    assert proc.stderr.strip().splitlines()[-1].startswith("error: none of the")
    assert not (tmp_path / "run").exists()
