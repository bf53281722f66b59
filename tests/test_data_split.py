"""``python -m model.data --split``: the split that training uses, written as relative paths, without torch."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, make_image

from base.labels import find_samples
from model.data import check_images, split_samples


def test_split_file_is_the_training_split(image_folder, tmp_path):
    for i in range(6):  # more images per label, and one byte-identical duplicate
        make_image("RGB", (30, 30), seed=20 + i).save(image_folder / f"x{i}.png")
    (image_folder / "dup.png").write_bytes((image_folder / "x0.png").read_bytes())
    labels = image_folder / "labels.txt"
    extra = [f"x{i}.png\t{i % 3}" for i in range(6)] + ["dup.png\t0", "missing.png\t1"]
    labels.write_text(labels.read_text() + "\n".join(extra) + "\n")
    out = tmp_path / "val.txt"
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "model.data", "--split", "--data", str(labels),
                          "--val-fraction", "0.3", "--seed", "4", "--out", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "torch" not in "".join(line.split("|")[-1] for line in run.stderr.splitlines() if "import time" in line)
    samples, _ = find_samples(labels)
    good, digests = check_images(samples, progress=False)
    _, val = split_samples(good, digests, 0.3, 4)
    want = [f"{s.path.relative_to(image_folder).as_posix()}\t{s.label}" for s in val]
    assert out.read_text().splitlines() == want and want
    assert ("x0.png\t0" in want) == ("dup.png\t0" in want)  # duplicates stay on one side
    assert not any("missing" in line for line in want)
    bad = subprocess.run([sys.executable, "-m", "model.data", "--split", "--data", str(labels), "--val-fraction",
                          "1.5", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --val-fraction")
