"""Training features: the EMA of the weights, progressive resizing, mixup/CutMix, RandAugment, and an exact resume
with all of them on.

The runs train VGG16 on 12 generated 48 x 40 images of 3 classes at 16-48 px, two steps of 4 images per epoch.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tinted_data
from PIL import Image
from torch import nn
from torchvision import transforms

import model.loop as loop_module
from base.cli import UsageError
from model.augment import (
    MixSettings,
    make_transforms,
    mix_batch,
    parse_randaugment,
    parse_size_schedule,
    size_at,
    soft_cross_entropy,
)
from model.config import TrainConfig
from model.ema import ModelEMA, warmed_up_decay
from model.loop import run_epoch
from model.train import parse_args, train
from model.vgg import VGG, load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A cat-12-style folder: train_list.txt + 12 JPEG images, 3 classes, each tinted by its class."""
    return tinted_data(tmp_path_factory.mktemp("tiny_features"))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# --- EMA --------------------------------------------------------------------------------------------------------

def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def test_warmed_up_decay():
    assert warmed_up_decay(0.999, 1) == pytest.approx(2 / 11)
    assert warmed_up_decay(0.999, 100) == pytest.approx(101 / 110)
    assert warmed_up_decay(0.2, 5) == 0.2  # the cap


def test_ema_equals_a_hand_computed_average_of_weights_and_bn_statistics():
    model = toy_model()
    ema = ModelEMA(model, decay=0.2)  # warm-up 2/11 at step 1, then the cap 0.2 (3/12 > 0.2)
    w0 = model[0].weight.detach().clone()
    values = [torch.full((2, 2), 1.0), torch.full((2, 2), 3.0), torch.full((2, 2), -2.0)]
    means = [torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]), torch.tensor([5.0, 5.0])]
    expected_w, expected_mean = w0, torch.zeros(2)
    for step, (value, mean) in enumerate(zip(values, means, strict=True), start=1):
        with torch.no_grad():
            model[0].weight.copy_(value)
            model[1].running_mean.copy_(mean)
            model[1].num_batches_tracked.fill_(10 * step)
        ema.update(model)
        d = [2 / 11, 0.2, 0.2][step - 1]
        expected_w = d * expected_w + (1 - d) * value
        expected_mean = d * expected_mean + (1 - d) * mean
    torch.testing.assert_close(ema.module[0].weight, expected_w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ema.module[1].running_mean, expected_mean, rtol=1e-6, atol=1e-6)
    assert ema.module[1].num_batches_tracked.item() == 30  # integer buffers are copied
    assert ema.updates == 3 and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())

    restored = ModelEMA(toy_model(), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert (restored.updates, restored.decay) == (3, 0.2)
    torch.testing.assert_close(restored.module[0].weight, expected_w, rtol=1e-6, atol=1e-6)


def test_loading_and_exporting_a_checkpoint_picks_the_ema_weights(tmp_path):
    from export.__main__ import ExportConfig, build

    torch.manual_seed(1)
    raw, averaged = VGG(num_classes=3), VGG(num_classes=3)
    checkpoint = {"model": raw.state_dict(), "model_config": raw.config(), "epoch": 2, "input_size": 48,
                  "class_names": ["a", "b", "c"], "val_acc": 0.5,
                  "ema": {"model": averaged.state_dict(), "updates": 10, "decay": 0.99}}
    torch.save(checkpoint, tmp_path / "last.pt")
    for model in (load_model(tmp_path / "last.pt")[0], build(ExportConfig(checkpoint=str(tmp_path / "last.pt")))[0]):
        for name, value in averaged.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), name
    _, meta = load_model(tmp_path / "last.pt")
    assert meta["weights"] == "ema" and "ema" not in meta
    _, names, size, card = build(ExportConfig(checkpoint=str(tmp_path / "last.pt")))
    assert (names, size, card["weights"]) == (["a", "b", "c"], 48, "ema")
    checkpoint["ema"] = None
    torch.save(checkpoint, tmp_path / "raw.pt")
    model, meta = load_model(tmp_path / "raw.pt")
    assert meta["weights"] == "raw" and torch.equal(model.convs["conv1_1"].weight, raw.convs["conv1_1"].weight)


# --- progressive resizing ---------------------------------------------------------------------------------------

def test_size_schedule_parsing():
    schedule = parse_size_schedule("64:20, 80:15,112:12")
    assert schedule == [(64, 20), (80, 15), (112, 12)]
    assert [size_at(schedule, e, 224) for e in (1, 20, 21, 35, 36, 47, 48, 60)] == [64, 64, 80, 80, 112, 112, 112, 112]
    assert size_at([], 5, 224) == 224
    for bad in ("64", "64:0", "100:3", "a:b", "64:2,"):
        with pytest.raises(ValueError, match="--size-schedule"):
            parse_size_schedule(bad)


def test_size_schedule_sets_epochs_and_input_size_unless_given():
    config = parse_args(["--size-schedule", "32:2,64:3"])
    assert (config.epochs, config.image_size) == (5, 64)
    assert parse_args(["--size-schedule", "32:2,64:3", "--epochs", "7"]).epochs == 7
    with pytest.raises(SystemExit):
        parse_args(["--size-schedule", "32:2,64:3", "--image-size", "96"])
    with pytest.raises(SystemExit):
        parse_args(["--size-schedule", "32:2,64:3", "--epochs", "4"])


def record_sizes(monkeypatch) -> list[tuple[str, int]]:
    """Spy on run_epoch: (train | val | val EMA, image side) of every batch it is served."""
    real, seen = loop_module.run_epoch, []

    class Recorder:
        def __init__(self, loader, kind):
            self.loader, self.kind = loader, kind

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for images, labels in self.loader:
                seen.append((self.kind, images.shape[-1]))
                assert images.shape[-2] == images.shape[-1]
                yield images, labels

    def spy(model, loader, *args, desc="", **kwargs):
        if "train" in desc and len(seen) >= 8:  # 4 batches an epoch (2 train, val, val EMA): die in epoch 3
            raise KeyboardInterrupt
        return real(model, Recorder(loader, desc.split(" ", 2)[2].split(" ")[0]), *args, desc=desc, **kwargs)

    monkeypatch.setattr(loop_module, "run_epoch", spy)
    return seen


def test_the_loader_serves_the_scheduled_size_each_epoch_and_after_resume(tiny_data, tmp_path, monkeypatch,
                                                                          one_thread):
    config = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), size_schedule="16:1,32:1,48:1",
                         epochs=3, image_size=48, batch_size=4, workers=0, snapshot_every=0, ema=0.9,
                         threads=one_thread)
    seen = record_sizes(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    # epoch 1: 2 train batches at 16 px, validation (raw, EMA) at 16; epoch 2 the same at 32
    assert seen == [("train", 16)] * 2 + [("val", 16)] * 2 + [("train", 32)] * 2 + [("val", 32)] * 2
    assert load(tmp_path / "run" / "last.pt")["epoch"] == 2
    seen.clear()
    monkeypatch.undo()
    seen = record_sizes(monkeypatch)
    row = train(dataclasses.replace(config, resume=True))
    assert seen == [("train", 48)] * 2 + [("val", 48)] * 2
    assert row["epoch"] == 3 and row["size"] == 48
    last = load(tmp_path / "run" / "last.pt")
    assert last["input_size"] == 48 and [h["size"] for h in last["history"]] == [16, 32, 48]


# --- mixup and CutMix -------------------------------------------------------------------------------------------

def test_mixup_matches_a_hand_computation():
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1])
    images, targets = mix_batch(x, labels, 3, MixSettings(mixup=0.4), np.random.default_rng(7))
    rng = np.random.default_rng(7)  # the same draws, in mix_batch's order: apply?, lam, permutation
    assert rng.random() < 1.0
    lam = rng.beta(0.4, 0.4)
    perm = rng.permutation(4)
    torch.testing.assert_close(images, lam * x + (1 - lam) * x[perm])
    onehot = torch.eye(3)[labels]
    torch.testing.assert_close(targets, lam * onehot + (1 - lam) * onehot[perm])
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_cutmix_targets_are_the_pixel_shares():
    x = torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()  # image i is all i + 1
    labels = torch.arange(4)
    for seed in range(10):
        images, targets = mix_batch(x, labels, 4, MixSettings(cutmix=1.0), np.random.default_rng(seed))
        for i in range(4):
            shares = [(images[i] == j + 1).float().mean().item() for j in range(4)]  # pixels from image j
            assert targets[i].tolist() == pytest.approx(shares, abs=1e-6), (seed, i)


def test_mix_prob_zero_and_off_leave_the_batch_alone():
    x, labels = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    for settings in (MixSettings(), MixSettings(mixup=1.0, prob=0.0)):
        images, targets = mix_batch(x, labels, 2, settings, np.random.default_rng(0))
        assert images is x and torch.equal(targets, torch.eye(2))


def test_soft_cross_entropy_with_label_smoothing_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    onehot = torch.eye(3)[labels]
    torch.testing.assert_close(soft_cross_entropy(logits, onehot, 0.1), F.cross_entropy(logits, labels,
                                                                                         label_smoothing=0.1))
    lam, eps = 0.7, 0.1
    mixed = lam * onehot + (1 - lam) * onehot.flip(0)  # image 0: 0.7 class 0 + 0.3 class 2, image 1 the reverse
    log_p = torch.log_softmax(logits, 1)
    by_hand = -sum(((lam * (1 - eps) + eps / 3) * log_p[0, 0] + ((1 - lam) * (1 - eps) + eps / 3) * log_p[0, 2]
                    + eps / 3 * log_p[0, 1],
                    ((1 - lam) * (1 - eps) + eps / 3) * log_p[1, 0] + (lam * (1 - eps) + eps / 3) * log_p[1, 2]
                    + eps / 3 * log_p[1, 1])) / 2
    torch.testing.assert_close(soft_cross_entropy(logits, mixed, eps), by_hand)


class FixedLogits(nn.Module):
    """Ignores its input: the same (N, 3) logits for every batch, through a parameter so that it can 'train'."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def test_run_epoch_trains_on_the_mixed_targets():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    model = FixedLogits(logits)
    batch = (torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))
    targets = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]])
    mixer = lambda images, labels: (images, targets)
    config = TrainConfig(label_smoothing=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, acc = run_epoch(model, [batch], torch.device("cpu"), config, optimizer, mixer=mixer)
    assert loss == pytest.approx(soft_cross_entropy(logits, targets, 0.1).item(), rel=1e-6)
    assert acc == 1.0  # against the unmixed labels
    loss, _ = run_epoch(model, [batch], torch.device("cpu"), config, optimizer)  # no mixer: plain labels
    assert loss == pytest.approx(F.cross_entropy(logits, batch[1], label_smoothing=0.1).item(), rel=1e-6)


# --- RandAugment ------------------------------------------------------------------------------------------------

def test_randaugment_option():
    assert parse_randaugment("2,9") == (2, 9) and parse_randaugment("") is None
    for bad in ("2", "0,9", "2,31", "a,b"):
        with pytest.raises(ValueError, match="--randaugment"):
            parse_randaugment(bad)
    train_tf, _ = make_transforms(32, True, (2, 9))
    ops = [t for t in train_tf.transforms if isinstance(t, transforms.RandAugment)]
    assert len(ops) == 1 and (ops[0].num_ops, ops[0].magnitude) == (2, 9)
    assert not any(isinstance(t, transforms.RandAugment) for t in make_transforms(32, True)[0].transforms)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    assert train_tf(image).shape == (3, 32, 32)


def test_bad_feature_values_are_usage_errors(tiny_data, tmp_path):
    base = TrainConfig(data=str(tiny_data), out=str(tmp_path / "x"), image_size=32, epochs=1)
    for change in ({"ema": 1.5}, {"mixup": -1.0}, {"mix_prob": 2.0}, {"randaugment": "9"},
                   {"size_schedule": "16:1,48:1", "epochs": 2}):
        with pytest.raises(UsageError):
            train(dataclasses.replace(base, **change))
    assert not (tmp_path / "x").exists()


# --- exact resume with everything on ----------------------------------------------------------------------------

def test_killed_and_resumed_equals_straight_with_every_option(tiny_data, tmp_path, monkeypatch, one_thread):
    """EMA, a size schedule, mixup + CutMix, RandAugment, bfloat16, channels-last and a loader worker: killed at
    the start of epoch 2 and resumed in a fresh process with only ``--out --resume``, the run ends exactly where
    the uninterrupted one does (weights, EMA, optimizer, schedule, metrics)."""
    recipe = dict(data=str(tiny_data), size_schedule="16:1,32:1", image_size=32, epochs=2, batch_size=4, workers=1,
                  snapshot_every=0, batch_norm=True, dropout=0.3, optimizer="adamw", lr=2e-3, schedule="onecycle",
                  label_smoothing=0.1, ema=0.9, mixup=0.4, cutmix=1.0, mix_switch=0.5, randaugment="2,9",
                  amp=True, channels_last=True, threads=one_thread)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(TrainConfig(out=str(straight), **recipe))
    real, calls = loop_module.run_epoch, []

    def dies_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # epoch 1: train, val, val EMA; then epoch 2's training
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(loop_module, "run_epoch", dies_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(out=str(killed), **recipe))
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "model.train", "--out", str(killed), "--resume", "--threads", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = load(straight / "last.pt"), load(killed / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["ema"]["updates"] == b["ema"]["updates"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"]["model"][key], b["ema"]["model"][key]), key
    assert not torch.equal(a["ema"]["model"]["convs.conv1_1.weight"], a["model"]["convs.conv1_1.weight"])
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][index][name]))
    assert a["scheduler"] == b["scheduler"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(a["history"]) == strip(b["history"])
    assert {"ema_val_acc", "ema_val_loss", "size"} <= set(a["history"][-1])
