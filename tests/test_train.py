"""model.train / model.loop / model.checkpoint: a whole tiny run, exact resume in fresh processes, atomic
checkpoints, the command line and torchrun.

Everything trains on 12 generated 48 x 40 images of 3 classes at 32 x 32 pixels, a couple of steps per epoch.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tinted_data
from PIL import Image

import model.checkpoint as checkpoint_module
import model.loop as loop_module
from base.cli import UsageError
from model.checkpoint import resolve_resume, save_checkpoint
from model.config import TrainConfig
from model.train import build_parser, parse_args, parse_command_line, train
from model.vgg import VGG, load_model

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_KEYS = {"model", "ema", "model_config", "optimizer", "scheduler", "epoch", "config", "class_names",
                   "input_size", "val_acc", "best_acc", "history", "rng"}
METRIC_COLUMNS = ["epoch", "size", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
# The tiny recipe: 12 images -> 9 train / 3 validation (one per class), batch 4 -> 2 steps per epoch.
TINY = ["--image-size", "32", "--batch-size", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A cat-12-style folder: train_list.txt + 12 JPEG/PNG images (3 classes, each tinted by its class)."""
    root = tinted_data(tmp_path_factory.mktemp("tiny_data"), folder="cat_12_train", png_last=True)
    probe = np.random.default_rng(99).integers(0, 256, (36, 36, 3), dtype=np.uint8)
    Image.fromarray(probe).save(root / "probe.png")
    return root


def python_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def start(args: list[str], **kwargs) -> subprocess.Popen:
    """A fresh Python process running ``args`` from the repo root."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=python_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(process: subprocess.Popen, expect: int = 0, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == expect, output[-3000:]
    return output


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_metrics(out: Path) -> tuple[list[str], list[dict]]:
    with open(out / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


# --- a whole run ------------------------------------------------------------------------------------------------

def test_tiny_run_writes_metrics_curves_checkpoints_and_evolution(tiny_data, tmp_path, one_thread):
    out = tmp_path / "run"
    # The default model's recipe (batch norm, AdamW, one-cycle, smoothing, dropout, bfloat16), scaled down.
    config = TrainConfig(data=str(tiny_data), out=str(out), epochs=2, batch_size=4, image_size=32, workers=0,
                         snapshot_every=1, probe=[str(tiny_data / "probe.png")], batch_norm=True, optimizer="adamw",
                         lr=2e-3, weight_decay=0.05, schedule="onecycle", label_smoothing=0.1, dropout=0.3, amp=True,
                         threads=one_thread)
    row = train(config)

    columns, rows = read_metrics(out)
    assert columns == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in ("train_loss", "val_loss", "lr", "seconds"))
        assert 0 <= float(r["train_acc"]) <= 1
        assert float(r["val_acc"]) * 3 == pytest.approx(round(float(r["val_acc"]) * 3), abs=1e-4)  # k of 3 images
    assert row["epoch"] == 2 and row["val_acc"] == pytest.approx(float(rows[-1]["val_acc"]))
    with Image.open(out / "curves.png") as curves:
        assert curves.format == "PNG" and curves.width > 300

    last, best = load(out / "last.pt"), load(out / "best.pt")
    assert set(last) == CHECKPOINT_KEYS and set(best) == CHECKPOINT_KEYS
    assert last["epoch"] == 2 and last["input_size"] == 32
    assert last["config"] == dataclasses.asdict(config)
    assert last["class_names"] == ["class_0", "class_1", "class_2"]
    assert last["ema"] is None and all(int(r["size"]) == 32 for r in rows)
    assert [h["epoch"] for h in last["history"]] == [1, 2]
    assert set(last["rng"]) == {"torch", "python"} and last["rng"]["torch"].dtype == torch.uint8
    assert last["optimizer"]["state"] and last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(row["lr"])
    assert last["scheduler"]["last_epoch"] == 4  # 2 epochs x 2 steps
    assert best["best_acc"] == best["val_acc"] == pytest.approx(max(h["val_acc"] for h in last["history"]), abs=1e-5)
    assert best["epoch"] == max(last["history"], key=lambda h: h["val_acc"])["epoch"]

    model, meta = load_model(out / "last.pt")
    assert isinstance(model, VGG) and model.batch_norm and meta["epoch"] == 2 and meta["weights"] == "raw"
    assert not any(k in meta for k in ("model", "optimizer", "rng"))
    fresh = VGG(**last["model_config"])
    assert not torch.equal(fresh.convs["conv1_1"].weight, model.convs["conv1_1"].weight)  # it trained
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()

    snapshots = sorted(p.name for p in (out / "evolution").iterdir())
    assert snapshots == [f"epoch_00{e}.{kind}" for e in range(3) for kind in ("png", "pt")]
    early, early_meta = load_model(out / "evolution" / "epoch_001.pt")  # an early model, for python -m export
    assert early_meta["epoch"] == 1 and early_meta["input_size"] == 32
    assert not torch.equal(early.convs["conv1_1"].weight, model.convs["conv1_1"].weight)
    with Image.open(out / "evolution" / "epoch_002.png") as grid:
        assert grid.width > 3 * grid.height  # one row for the probe, a column for each of the 13 layers
    assert not list(out.glob("*.tmp"))


def test_too_few_images_for_one_batch_is_a_clear_error(tiny_data, tmp_path, one_thread):
    config = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), batch_size=64, image_size=32, workers=0,
                         snapshot_every=0, threads=one_thread)
    with pytest.raises(ValueError, match="no full batch"):
        train(config)


# --- resume -----------------------------------------------------------------------------------------------------

class Killed(Exception):
    """Stands in for a SIGKILL in the middle of a run."""


def killed_at_epoch_2(monkeypatch) -> None:
    """Make the next train() die at the start of epoch 2's training pass (after epoch 1's checkpoints)."""
    real, calls = loop_module.run_epoch, []

    def run_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # epoch 1 train, epoch 1 val, epoch 2 train
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "run_epoch", run_epoch)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for name, value in state_a[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[index][name])), (index, name)
    assert a["scheduler"] == b["scheduler"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(a["history"]) == strip(b["history"])
    assert a["epoch"] == b["epoch"] == 2


def resume_in_fresh_process(out: Path, *extra: str) -> None:
    output = finish(start(["-m", "model.train", "--out", str(out), "--resume", "--threads", "1", *extra]))
    assert f"resumed {out / 'last.pt'} after epoch 1" in output


def test_one_epoch_then_resume_equals_two_epochs_straight(tiny_data, tmp_path, one_thread):
    """1 epoch, then ``--resume --epochs 2`` in a fresh process, gives exactly the weights of 2 epochs straight (CPU).

    SGD (the original PaddlePaddle notebook's optimizer) with batch norm, dropout and augmentation on, one
    data-loading worker: every random draw (crops, flips, jitter, dropout, batch order, worker seeds) and every
    state (BN statistics, momentum) must come back from last.pt. The straight run and the first half run in this
    process, the resume in a fresh one that is given only the run folder and the machine set-up, so nothing can
    leak through memory or the flags.
    """
    sgd = dict(data=str(tiny_data), image_size=32, batch_size=4, workers=1, snapshot_every=0, batch_norm=True,
               dropout=0.3, threads=one_thread)
    half, straight = tmp_path / "half", tmp_path / "straight"
    train(TrainConfig(out=str(straight), epochs=2, **sgd))
    train(TrainConfig(out=str(half), epochs=1, **sgd))
    resume_in_fresh_process(half, "--epochs", "2")
    assert_same_training_state(load(half / "last.pt"), load(straight / "last.pt"))
    assert [int(r["epoch"]) for r in read_metrics(half)[1]] == [1, 2]


def test_a_killed_run_resumes_exactly(tiny_data, tmp_path, monkeypatch, one_thread):
    """The default model's recipe (AdamW, one-cycle schedule, label smoothing), killed during epoch 2 and resumed
    in a fresh process with nothing but ``--out --resume``, ends exactly where the uninterrupted run does."""
    recipe = dict(data=str(tiny_data), image_size=32, batch_size=4, workers=0, snapshot_every=0, batch_norm=True,
                  dropout=0.3, optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="onecycle",
                  label_smoothing=0.1, epochs=2, threads=one_thread)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    train(TrainConfig(out=str(straight), **recipe))
    with monkeypatch.context() as patch:
        killed_at_epoch_2(patch)
        with pytest.raises(Killed):
            train(TrainConfig(out=str(killed), **recipe))
    assert load(killed / "last.pt")["epoch"] == 1
    resume_in_fresh_process(killed)  # --epochs 2 comes from last.pt, not TrainConfig's default of 40
    assert_same_training_state(load(killed / "last.pt"), load(straight / "last.pt"))


@pytest.fixture
def saved_run(tmp_path) -> tuple[Path, TrainConfig]:
    """A run folder whose last.pt holds a config and stand-ins for the weights (enough for resolve_resume)."""
    saved = TrainConfig(data=str(tmp_path / "somewhere"), out="elsewhere", epochs=3, lr=0.05, image_size=64,
                        schedule="onecycle", workers=3)
    (tmp_path / "run").mkdir()
    torch.save({"config": dataclasses.asdict(saved), "model": {}, "model_config": {}, "epoch": 1},
               tmp_path / "run" / "last.pt")
    return tmp_path / "run", saved


def resolved(argv: list[str]) -> TrainConfig:
    """The config a command line runs with: parsed, then merged with the run's saved settings (one read)."""
    return resolve_resume(*parse_command_line(argv))[0]


def test_resume_takes_the_runs_settings_unless_overridden(saved_run):
    run, saved = saved_run
    config = resolved(["--out", str(run), "--resume"])
    assert config == dataclasses.replace(saved, out=str(run), resume=True)  # not TrainConfig's defaults
    config = resolved(["--out", str(run), "--resume", "--epochs", "3", "--workers", "0", "--device", "cpu",
                       "--lr", "0.05"])  # the same --lr as saved is fine
    assert (config.epochs, config.workers, config.device, config.lr, config.data) == (3, 0, "cpu", 0.05, saved.data)


def test_resume_reads_last_pt_once(saved_run, monkeypatch):
    run, _ = saved_run
    reads, real = [], torch.load
    monkeypatch.setattr(checkpoint_module.torch, "load", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    config, state = resolve_resume(*parse_command_line(["--out", str(run), "--resume"]))
    assert reads == [run / "last.pt"] and state["epoch"] == 1 and config.resume


def test_resume_refuses_changed_settings(saved_run):
    run, _ = saved_run
    with pytest.raises(UsageError, match="--image-size, --lr differ"):
        resolved(["--out", str(run), "--resume", "--lr", "0.1", "--image-size", "32"])
    with pytest.raises(UsageError, match="does not exist"):
        resolved(["--out", str(run / "nothing-here"), "--resume"])


def test_resume_cannot_stretch_a_schedule(saved_run):
    run, saved = saved_run
    with pytest.raises(ValueError, match="onecycle schedule .* spans 3 epochs"):
        train(dataclasses.replace(saved, out=str(run), resume=True, epochs=5))


# --- atomic checkpoints -----------------------------------------------------------------------------------------

def test_save_checkpoint_writes_a_temporary_file_then_renames_it(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.zeros(3)}, path)
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        src, dst = Path(src), Path(dst)
        # At the moment of the rename the new checkpoint is complete in the temporary file, the old one untouched.
        renames.append((src, dst, load(src)["epoch"], load(dst)["epoch"]))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    save_checkpoint({"epoch": 2, "w": torch.ones(3)}, path)
    assert len(renames) == 1
    src, dst, new_epoch, old_epoch = renames[0]
    assert dst == path and src != path and src.parent == path.parent  # same folder: the rename is atomic
    assert (new_epoch, old_epoch) == (2, 1)
    assert load(path)["epoch"] == 2 and torch.equal(load(path)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def test_save_checkpoint_failing_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
import torch
import model.checkpoint as t
path = Path(sys.argv[1])
t.save_checkpoint({"epoch": 1, "w": torch.arange(4.0)}, path)
def dying_save(obj, f):
    with open(f, "wb") as out:
        out.write(b"PK\\x03\\x04" + bytes(100_000))
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # killed half-way through writing epoch 2's checkpoint
t.torch.save = dying_save
t.save_checkpoint({"epoch": 2, "w": torch.zeros(4)}, path)
"""


def test_a_kill_mid_write_cannot_corrupt_the_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    finish(start(["-c", KILLED_MID_WRITE, str(path)]), expect=-signal.SIGKILL)
    checkpoint = load(path)
    assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["w"], torch.arange(4.0))


# --- the command line -------------------------------------------------------------------------------------------

def test_help_mentions_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        parse_args(["--help"])
    assert done.value.code == 0
    output = capsys.readouterr().out
    assert output.startswith("usage: python -m model.train")
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name.replace('_', '-')}" in output, field.name
    assert "--no-augment" in output and "--no-batch-norm" in output and "(default: 0.01)" in output


def test_command_line_fills_the_config():
    config = parse_args(["--data", "d", "--out", "o", "--epochs", "3", "--batch", "8", "--lr", "0.1",
                         "--batch-norm", "--no-augment", "--image-size", "96", "--probe", "a.png", "b.png"])
    assert config == TrainConfig(data="d", out="o", epochs=3, batch_size=8, lr=0.1, batch_norm=True, augment=False,
                                 image_size=96, probe=["a.png", "b.png"])
    assert parse_args([]) == TrainConfig()  # the original PaddlePaddle notebook's recipe by default
    assert (TrainConfig().optimizer, TrainConfig().lr, TrainConfig().batch_size, TrainConfig().epochs,
            TrainConfig().image_size) == ("sgd", 0.01, 32, 40, 224)


@pytest.mark.parametrize("argv", [
    ["--image-size", "100"], ["--image-size", "0"], ["--image-size", "-32"], ["--image-size", "big"],
    ["--epochs", "0"], ["--batch-size", "0"], ["--val-fraction", "1"], ["--workers", "-1"], ["--lr", "0"],
    ["--optimizer", "lbfgs"],
])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as error:
        parse_args(argv)
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err
    if argv[0] == "--image-size" and argv[1] != "big":
        assert "multiple of 16" in err


def test_parser_defaults_are_the_configs():
    defaults = vars(build_parser().parse_args([]))
    assert defaults.pop("debug") is False
    assert defaults == dataclasses.asdict(TrainConfig())


# --- torchrun ---------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes_on_gloo(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    output = finish(start([
        "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()),
        "-m", "model.train", "--data", str(tiny_data), "--out", str(out), *TINY, "--workers", "0", "--epochs", "1",
        "--snapshot-every", "0", "--batch-norm",  # batch norm: SyncBatchNorm has no CPU kernel, plain BN must be used
    ]))
    assert "2 process(es)" in output
    checkpoint = load(out / "last.pt")
    assert checkpoint["epoch"] == 1
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # the bare model, not the DDP wrapper
    assert all(torch.isfinite(v.float()).all() for v in checkpoint["model"].values())
    columns, rows = read_metrics(out)
    assert columns == METRIC_COLUMNS and [r["epoch"] for r in rows] == ["1"]
    # Validation covers the 3 held-out images once each over both processes (no padding with repeats).
    assert float(rows[0]["val_acc"]) * 3 == pytest.approx(round(float(rows[0]["val_acc"]) * 3), abs=1e-4)
    VGG(**checkpoint["model_config"]).load_state_dict(checkpoint["model"])
