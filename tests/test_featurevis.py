"""Feature visualization without torch: each transformation's adjoint (dot-product test), and one full step's
gradient (parametrization -> transformation -> forward -> objective) against torch autograd on the same weights."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from demo.analyses.featurevis import figure, transforms
from demo.analyses.featurevis.config import FigureConfig
from demo.analyses.featurevis.objective import CLASS, Target, parse_targets
from demo.analyses.featurevis.optimize import Adam, Settings, load, row_streams, step, visualize
from demo.analyses.featurevis.param import COLOR_MATRIX, MAGIC, FourierImage, init_spectrum

CLASSES = [f"breed{i}" for i in range(12)]


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.astype(np.float64).ravel(), b.astype(np.float64).ravel()))


def _params(batch: int, seed: int = 0) -> transforms.Params:
    return transforms.draw(np.random.default_rng(seed), batch)


def test_pad_and_crop_adjoints():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 10, 10)).astype(np.float32)
    y = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    linear = transforms.pad(x, 3, fill=0.0)  # the linear part of pad
    assert _dot(linear, y) == pytest.approx(_dot(x, transforms.pad_adjoint(y, 3)), rel=1e-6)
    offsets = np.array([[0, 4], [3, 1]])
    z = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    assert _dot(transforms.crop(y, offsets, 4), z) == pytest.approx(_dot(y, transforms.crop_adjoint(z, offsets, 4)),
                                                                    rel=1e-6)


@pytest.mark.parametrize("scale,angle", [(1.0, 0.0), (0.9, -10.0), (1.1, 7.0), (0.96, 3.0)])
def test_resample_adjoint(scale, angle):
    rng = np.random.default_rng(1)
    taps = transforms.resample_taps(24, 20, np.array([scale, 1.0]), np.array([angle, -4.0]))
    x = rng.standard_normal((2, 3, 24, 24)).astype(np.float32)
    y = rng.standard_normal((2, 3, 20, 20)).astype(np.float32)
    linear = transforms.resample(x, taps, 20, fill=0.0)
    assert _dot(linear, y) == pytest.approx(_dot(x, transforms.resample_adjoint(y, taps, 24)), rel=1e-5)
    # the grey fill makes it affine: a constant grey image stays grey
    grey = transforms.resample(np.full((2, 3, 24, 24), 0.5, np.float32), taps, 20)
    np.testing.assert_allclose(grey, 0.5, atol=1e-6)


def test_transform_adjoint_and_identity():
    rng = np.random.default_rng(2)
    params = _params(3, seed=5)
    t = transforms.Transform(params, 32)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    y = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    linear = t(x + 0.5) - t(np.full_like(x, 0.5))  # T(x) = A x + c: A x
    assert _dot(linear, y) == pytest.approx(_dot(x, t.adjoint(y)), rel=1e-5)
    # no scale, no rotation, centred jitters: the identity
    still = transforms.Params(np.full((1, 2), 4), np.ones(1), np.zeros(1), np.full((1, 2), 2))
    np.testing.assert_allclose(transforms.Transform(still, 32)(x[:1]), x[:1], atol=1e-5)


def test_parse_targets():
    assert parse_targets("conv5_3/7", CLASSES) == [Target("conv5_3", 7)]
    assert parse_targets("-conv4_2/3/1/2", CLASSES) == [Target("conv4_2", 3, (1, 2), -1)]
    assert parse_targets("class/breed3", CLASSES) == [Target(CLASS, 3)]
    assert parse_targets("class/4", CLASSES) == [Target(CLASS, 4)]
    assert len(parse_targets("class/all", CLASSES)) == 12
    assert [t.channel for t in parse_targets("conv1_1/2-4", CLASSES)] == [2, 3, 4]
    for bad in ("conv9_1/3", "conv5_3/512", "conv5_3", "class/nobody", "conv5_3/1/2", "conv5_3/x", "class/12"):
        with pytest.raises(ValueError):
            parse_targets(bad, CLASSES)


# ------------------------------------------------------------------------------------------------------------------
# One full step against torch autograd


def _torch_objective(model, spectrum, params, rows, size, mean, std, groups=(), weight=0.0):
    """The same objective in torch: parametrization, transformation (grid_sample), VGG16 with pre-ReLU values."""
    import torch
    import torch.nn.functional as F

    from demo.analyses.featurevis.param import spectrum_scale

    s = torch.from_numpy(spectrum).requires_grad_(True)
    scale = torch.from_numpy(spectrum_scale(size, size))
    coeffs = torch.complex(s[:, 0], s[:, 1]) * scale
    t = torch.fft.irfft2(coeffs, s=(size, size), norm="ortho") / MAGIC
    rgb = torch.sigmoid(torch.einsum("ij,bjhw->bihw", torch.from_numpy(COLOR_MATRIX), t))
    x = F.pad(rgb, (transforms.PAD,) * 4, value=transforms.FILL)
    n_in, n_out = size + transforms.MARGIN, size + transforms.MARGIN_OUT
    crops = [x[b, :, r : r + n_in, c : c + n_in] for b, (r, c) in enumerate(params.jitter1.tolist())]
    x = torch.stack(crops)
    grids = []
    for sc, an in zip(params.scale.tolist(), params.angle.tolist(), strict=True):
        r, c = transforms.source_coords(n_in, n_out, sc, an)
        grids.append(np.stack([2 * c / (n_in - 1) - 1, 2 * r / (n_in - 1) - 1], axis=-1))
    grid = torch.from_numpy(np.stack(grids).astype(np.float32))
    x = F.grid_sample(x - transforms.FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    x = x + transforms.FILL
    x = torch.stack([x[b, :, r : r + size, c : c + size] for b, (r, c) in enumerate(params.jitter2.tolist())])
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    pre, post = {}, {}
    h = x
    for name, conv in model.convs.items():
        h = model.bns[name](conv(h))
        pre[name] = h
        h = F.relu(h)
        post[name] = h
        if model.pool_after.get(name):
            h = F.max_pool2d(h, 2, 2)
    logits = model.forward_head(h)
    total = 0
    for b, t in enumerate(rows):
        if t.layer == CLASS:
            total = total + t.sign * logits[b, t.channel]
        elif t.position is None:
            total = total + t.sign * pre[t.layer][b, t.channel].mean()
        else:
            total = total + t.sign * pre[t.layer][b, t.channel, t.position[0], t.position[1]]
    if weight:
        feats = post[rows[0].start]
        B, C = feats.shape[:2]
        for g in groups:
            f = feats[g].reshape(len(g), C, -1)
            gram = f @ f.transpose(1, 2)
            gram = gram / (gram.flatten(1).norm(dim=1).view(-1, 1, 1) + 1e-10)
            div = sum((gram[i] * gram[j]).sum() for i in range(len(g)) for j in range(len(g)) if i != j) / len(g)
            total = total - weight * div
    (grad,) = torch.autograd.grad(total, s)
    return grad.numpy()


@pytest.mark.parametrize("texts,copies", [(["conv5_3/5", "class/3"], 1), (["conv4_2/7/1/2"], 1),
                                          (["-conv3_1/9"], 1), (["conv1_1/2"], 1), (["conv5_2/11"], 2)])
def test_step_gradient_matches_autograd(tiny_vgg, tiny_onnx, texts, copies):
    vis = load(str(tiny_onnx), device="cpu", threads=1)
    size = 32
    targets = [t for text in texts for t in parse_targets(text, vis.model.class_names)]
    rows, seeds = row_streams(targets, 0, copies)
    spectrum = np.concatenate([init_spectrum(np.random.default_rng(s), 1, size, sd=0.5) for s in seeds])
    params = _params(len(rows), seed=3)
    groups = [list(range(i * copies, (i + 1) * copies)) for i in range(len(targets))]
    weight = 10.0 if copies > 1 else 0.0
    _, _, grad = step(vis, rows, spectrum, params, FourierImage(size), groups, weight)
    expected = _torch_objective(tiny_vgg, spectrum, params, rows, size, vis.model.mean.tolist(),
                                vis.model.std.tolist(), groups, weight)
    rel = np.linalg.norm(grad - expected) / np.linalg.norm(expected)
    assert np.linalg.norm(expected) > 0
    assert rel <= 1e-4, rel


def test_adam_matches_torch():
    import torch

    rng = np.random.default_rng(0)
    p = rng.standard_normal((4, 5)).astype(np.float32)
    tp = torch.tensor(p.copy(), requires_grad=True)
    opt = torch.optim.Adam([tp], lr=0.05, betas=(0.9, 0.999), eps=1e-8)
    adam = Adam(p.shape)
    for _ in range(3):
        g = rng.standard_normal((4, 5)).astype(np.float32)
        adam.ascend(p, g)
        tp.grad = torch.from_numpy(-g)  # torch descends: the gradient of -objective
        opt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_visualize_raises_objective_and_batches_alike(tiny_onnx):
    vis = load(str(tiny_onnx), device="cpu", threads=1)
    settings = Settings(steps=12, size=32)
    a, b = Target("conv5_3", 5), Target(CLASS, 2)
    together = visualize(vis, [a, b], settings)
    alone = visualize(vis, [a], settings)
    assert together[0].last > together[0].first and together[1].final > together[1].first
    np.testing.assert_allclose(together[0].images, alone[0].images, atol=2e-2)  # own random streams; rounding differs


def test_randomized_visualizer_differs(tiny_onnx):
    trained = load(str(tiny_onnx), device="cpu", threads=1)
    random = load(str(tiny_onnx), device="cpu", threads=1, randomize="conv5_3,head")
    assert not np.array_equal(trained.model.weights["conv5_3"], random.model.weights["conv5_3"])
    assert np.array_equal(trained.model.weights["conv5_2"], random.model.weights["conv5_2"])
    assert not random.biases["conv5_3"].any() and trained.biases["conv5_3"].any()


def test_cli_writes_and_resumes(tiny_onnx, tmp_path):
    cmd = [sys.executable, "-m", "demo.featurevis", "conv5_3/1", "class/0", "--model", str(tiny_onnx), "--steps",
           "3", "--size", "32", "--device", "cpu", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "conv5_3" / "0001.json").read_text())
    assert info["target"] == "conv5_3/1" and info["settings"]["steps"] == 3
    assert (tmp_path / "class" / "00.png").is_file()
    again = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "2 of 2 targets already done" in again.stderr


@pytest.mark.parametrize("args", [["conv9_9/1"], ["conv5_3/1", "--steps", "0"], ["conv5_3/1", "--size", "40"],
                                  ["conv5_3/1/9/9", "--size", "32"], ["class/nobody"],
                                  ["conv5_3/1", "--randomize", "conv7"]])
def test_cli_bad_input(tiny_onnx, tmp_path, args):
    cmd = [sys.executable, "-m", "demo.featurevis", *args, "--model", str(tiny_onnx), "--device", "cpu",
           "--steps" if "--steps" not in args else "--seed", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr


def test_unreadable_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    cmd = [sys.executable, "-m", "demo.featurevis", "conv5_3/1", "--model", str(bad), "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ")



def test_figure_measures_every_unit_on_every_model(tiny_onnx, tmp_path):
    make_image(size=(32, 32)).save(tmp_path / "cat.png")
    config = FigureConfig(image=str(tmp_path / "cat.png"), out=str(tmp_path / "fig.png"), units="conv5_3/0,conv5_3/1",
                          score="conv5_3/1-3", model=str(tiny_onnx), steps=3, size=32, device="cpu")
    rows = figure.run(config)
    models = ["trained", *(label for label, _ in figure.CASCADE)]
    units = ["conv5_3/0", "conv5_3/1", "conv5_3/2", "conv5_3/3"]  # conv5_3/1 once although named twice
    assert [(r["unit"], r["model"]) for r in rows] == [(u, m) for m in models for u in units]
    for r in rows:
        if r["model"] == "trained":
            assert r["ssim"] == 1.0 and r["trained_objective"] == r["objective"]
        else:  # another model's picture, judged by the trained unit and against the trained picture
            assert r["ssim"] < 1.0
    shown = Image.open(tmp_path / "fig.png")
    assert shown.width > shown.height  # two rows drawn (the two --units), five columns
    lines = (tmp_path / "fig.csv").read_text().splitlines()
    assert lines[0] == "unit,model,objective,trained_objective,ssim" and len(lines) == 1 + 16
    assert len(figure.summary(rows)) == 4


@pytest.mark.parametrize("units, score, message", [("class/0", "", "channels"), ("conv5_3/0", "conv4_3/1", "one layer"),
                                                   ("", "conv5_3/1", "no channel")])
def test_figure_bad_units(tiny_onnx, tmp_path, units, score, message):
    config = FigureConfig(image="unused.png", out=str(tmp_path / "fig.png"), units=units, score=score,
                          model=str(tiny_onnx), steps=1, size=32, device="cpu")
    with pytest.raises(ValueError, match=message):
        figure.run(config)
