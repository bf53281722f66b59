"""``python -m model.train`` on bad input: one ``error:`` line on stderr, exit status 2, no traceback, and an
existing run left exactly as it was.

Each case runs the command in a fresh process; the data are 12-16 generated images of 3 or 4 classes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tinted_data

from model.config import TrainConfig
from model.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "32", "--batch-size", "4", "--threads", "1", "--workers", "0", "--snapshot-every", "0",
        "--epochs", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tinted_data(tmp_path_factory.mktemp("cli_data"))


@pytest.fixture(scope="module")
def existing_run(data, tmp_path_factory) -> Path:
    """A finished one-epoch run; no test may change a byte of it."""
    out = tmp_path_factory.mktemp("cli_runs") / "run"
    before = torch.get_num_threads()
    try:
        train(TrainConfig(data=str(data), out=str(out), image_size=32, batch_size=4, threads=1, workers=0,
                          snapshot_every=0, epochs=1))
    finally:
        torch.set_num_threads(before)
    return out


def fingerprint(folder: Path) -> dict[str, str]:
    """SHA-1 of every file under ``folder`` (and its modification time, so a rewrite with equal bytes shows)."""
    return {str(p.relative_to(folder)): f"{hashlib.sha1(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}"
            for p in sorted(folder.rglob("*")) if p.is_file()}


def command(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m model.train ARGS`` (or ``python PREFIX ARGS``) in a fresh process from the repo root."""
    env = {k: v for k, v in os.environ.items() if k not in ("DECONVNET_DEBUG", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *(prefix or ["-m", "model.train"]), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_usage_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, no traceback, and one ``error:`` line holding every fragment; returns that line."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# --- bad data ---------------------------------------------------------------------------------------------------

def test_a_malformed_label_file_names_the_file_and_line(data, existing_run, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train_list.txt").write_text(f"{data}/images/0_0.jpg\t0\n{data}/images/0_1.jpg\tBengal\n")
    before = fingerprint(existing_run)
    done = command("--data", str(bad), "--out", str(existing_run), "--overwrite", *TINY)
    assert_usage_error(done, f"{bad / 'train_list.txt'}:2")
    assert fingerprint(existing_run) == before


def test_a_label_outside_the_classes_names_the_file_and_line(data, existing_run, tmp_path):
    labels = tmp_path / "labels.txt"
    lines = (data / "train_list.txt").read_text().splitlines()
    lines[2] = lines[2].split("\t")[0] + "\t5"
    labels.write_text("\n".join(f"{data}/{line}" for line in lines) + "\n")
    before = fingerprint(existing_run)
    done = command("--data", str(labels), "--classes", "3", "--out", str(existing_run), "--overwrite", *TINY)
    assert_usage_error(done, f"{labels}:3", "label 5", "3 classes")
    assert fingerprint(existing_run) == before


def test_missing_and_unreadable_images_are_one_warning_line_each_and_skipped(data, tmp_path):
    labels = tmp_path / "labels.txt"
    (tmp_path / "text.jpg").write_text("not a picture")
    lines = [f"{data}/{line}" for line in (data / "train_list.txt").read_text().splitlines()]
    labels.write_text("\n".join([*lines, f"{tmp_path}/missing.jpg\t0", f"{tmp_path}/text.jpg\t1"]) + "\n")
    done = command("--data", str(labels), "--out", str(tmp_path / "run"), *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert warnings == [f"warning: skipping unreadable image {tmp_path / 'missing.jpg'}: no such file",
                        next(w for w in warnings if str(tmp_path / "text.jpg") in w),
                        "warning: skipped 2 unreadable image(s) of 14"], done.stderr
    assert warnings[1].startswith("warning: skipping unreadable image") and "Traceback" not in done.stderr
    assert (tmp_path / "run" / "last.pt").is_file()


def test_no_usable_image_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_text("not a picture")
    (tmp_path / "labels.txt").write_text("a.jpg\t0\nb.jpg\t1\n")
    done = command("--data", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "run"), *TINY)
    assert_usage_error(done, "none of the 2 images can be read")
    assert not (tmp_path / "run").exists()


def test_too_few_images_for_one_batch(data, existing_run):
    before = fingerprint(existing_run)
    done = command("--data", str(data), "--out", str(existing_run), "--overwrite", *TINY, "--batch-size", "64")
    assert_usage_error(done, "no full batch of 64")
    assert fingerprint(existing_run) == before


# --- the run folder ---------------------------------------------------------------------------------------------

def test_out_that_is_a_file_is_refused(data, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    done = command("--data", str(data), "--out", str(out), *TINY)
    assert_usage_error(done, str(out), "is a file")
    assert out.read_text() == "keep me"
    debug = command("--data", str(data), "--out", str(out), *TINY, "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # --debug shows where it came from


def test_a_fresh_run_into_an_existing_run_is_refused_without_overwrite(data, existing_run):
    before = fingerprint(existing_run)
    done = command("--data", str(data), "--out", str(existing_run), *TINY)
    assert_usage_error(done, "already holds a run", "--resume", "--overwrite")
    assert fingerprint(existing_run) == before


def test_overwrite_replaces_the_run(data, existing_run, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in existing_run.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    (copy / "evolution").mkdir()
    (copy / "evolution" / "epoch_040.png").write_bytes(b"old")
    done = command("--data", str(data), "--out", str(copy), *TINY, "--overwrite", "--lr", "0.02")
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(copy / "last.pt", weights_only=True)["config"]["lr"] == 0.02
    assert not (copy / "evolution" / "epoch_040.png").exists()  # nothing of the old run is left to mislead


def test_resume_from_a_non_checkpoint_file_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"these are not the weights you are looking for")
    before = fingerprint(out)
    done = command("--out", str(out), "--resume")
    assert_usage_error(done, str(out / "last.pt"), "not a training checkpoint")
    assert fingerprint(out) == before
    torch.save({"features.0.weight": torch.zeros(1)}, out / "last.pt")  # a state dict, not a training checkpoint
    before = fingerprint(out)
    assert_usage_error(command("--out", str(out), "--resume"), "not a training checkpoint")
    assert fingerprint(out) == before


def test_resume_with_another_architecture_is_refused(existing_run, tmp_path):
    four_classes = tinted_data(tmp_path / "four", classes=4)
    before = fingerprint(existing_run)
    done = command("--out", str(existing_run), "--resume", "--epochs", "2", "--data", str(four_classes),
                   "--threads", "1")
    assert_usage_error(done, str(existing_run / "last.pt"), "another network")
    assert fingerprint(existing_run) == before


def test_resume_without_a_run_is_refused(tmp_path):
    assert_usage_error(command("--out", str(tmp_path / "nothing"), "--resume"), "does not exist")
    assert not (tmp_path / "nothing").exists()


# --- options and the environment --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--ema", "1.5"], "--ema"), (["--size-schedule", "64:x"], "--size-schedule"), (["--epochs", "0"], "--epochs"),
])
def test_bad_option_values(args, fragment, tmp_path):
    done = command("--out", str(tmp_path / "run"), *args)
    assert done.returncode == 2 and fragment in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


WITHOUT_TORCH = "import runpy, sys; sys.modules['torch'] = None; runpy.run_module('{}', run_name='__main__')"


def test_without_torch_the_command_says_what_to_install(tmp_path):
    done = command("--out", str(tmp_path / "run"), prefix=["-c", WITHOUT_TORCH.format("model.train")])
    assert_usage_error(done, "pip install -r requirements-dev.txt")
    assert done.stderr.count("\n") == 1
