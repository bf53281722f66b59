"""The sanity checks against independent definitions, on the tiny random-weight model and generated images.

- At two cascade steps every rule's class map equals autograd (with the rule's ReLU backward) through a torch
  network built from the randomized state dict: torch's batch-norm folding of the trained layers, the seeded draws
  for the re-drawn ones.
- The gradient rule on a randomized model matches central finite differences of the logit.
- Each re-drawn layer changes the forward pass at its own output; a layer whose override is ignored stops the run.
- A method registered as a function of (model under test, image, target) joins the checks: one that reads only
  the model reproduces the rule's numbers; one that ignores the model scores 1 at every step.
- Over many images and seeds: the image list, mean +- sd, the command, and the comparison with another model.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from autograd_rules import conv_forward, rel_err
from conftest import ROOT, TINY_SIZE, make_image

from base import spec
from base.spec import CONV_LAYERS, RULES
from demo.analyses import dataset
from demo.analyses.evidence import attribute
from demo.analyses.sanity import measure, randomize, verdicts
from demo.analyses.sanity.measure import METHODS, SanityMethod, Subject, Target
from demo.backward.deconvnet import Deconvnet
from demo.backward.head import head_forward
from demo.preprocess import preprocess
from model.vgg import fold_batch_norm

STEPS = (2, 9)  # head + conv5_3; and down to conv3_2


@pytest.fixture(scope="module")
def image():
    return preprocess(make_image("RGB", (40, 36), seed=7), TINY_SIZE, spec.MEAN, spec.STD)


@pytest.fixture(scope="module")
def cascade(onnx_model, image):
    return measure.sanity_checks(onnx_model, image, "class", rules=RULES, seed=3, classes=False, bar=False)


def torch_randomized(tiny_vgg, onnx_model, layers, seed):
    """The tiny VGG with batch norm folded by torch and ``layers`` replaced by their seeded draws (zero bias)."""
    net = fold_batch_norm(tiny_vgg).eval()
    with torch.no_grad():
        for layer in layers:
            drawn = randomize.draw_layer(onnx_model, layer, seed)
            if layer == randomize.HEAD:
                (weight, bias), = drawn  # the gmp head: one Linear
                net.classifier[1].weight.copy_(torch.from_numpy(weight))
                net.classifier[1].bias.copy_(torch.from_numpy(bias))
            else:
                net.convs[layer].weight.copy_(torch.from_numpy(drawn[0][0]))
                net.convs[layer].bias.zero_()
    return net


def autograd_class_map(net, image, class_index, rule):
    """d logit / d input with ``rule``'s ReLU backward at every ReLU, the global max-pool to its first maximum."""
    x = torch.from_numpy(image).clone().requires_grad_(True)
    acts = conv_forward(net, x, dict.fromkeys(CONV_LAYERS, rule))
    logits = net.classifier[1](acts[CONV_LAYERS[-1]].flatten(2).max(dim=2).values)
    (grad,) = torch.autograd.grad(logits[0, class_index], x)
    return grad[0].numpy()


@pytest.mark.parametrize("k", STEPS)
def test_cascade_maps_equal_autograd_on_the_randomized_state_dict(tiny_vgg, onnx_model, image, cascade, k):
    step = cascade.cascading[k]
    assert step.randomized == randomize.ORDER[:k] and not step.reused
    net = torch_randomized(tiny_vgg, onnx_model, step.randomized, seed=3)
    for rule in RULES:
        want = autograd_class_map(net, image, cascade.class_index, rule)
        assert np.abs(want).max() > 0
        assert rel_err(step.maps[rule], want) < 1e-4, (k, rule)
    trained = autograd_class_map(torch_randomized(tiny_vgg, onnx_model, (), 3), image, cascade.class_index,
                                 "gradient")
    assert rel_err(step.maps["gradient"], trained) > 0.1  # the check compares different maps


def test_gradient_rule_matches_finite_differences_on_a_randomized_model(onnx_model, image):
    model = randomize.randomized_model(onnx_model, randomize.ORDER[:6], seed=2)
    subject = Subject(model, image)
    c = subject.top
    grad = measure.compute_map(METHODS["gradient"], subject, Target("class", CONV_LAYERS[-1], class_index=c))

    def logit(x):
        acts = model.run(x.astype(np.float32))[1]
        return float(np.asarray(head_forward(model.head, acts[CONV_LAYERS[-1]]).logits, np.float64)[0, c])

    rng = np.random.default_rng(0)
    eps = 1e-2
    for _ in range(3):
        v = rng.standard_normal(image.shape).astype(np.float32)
        v /= np.linalg.norm(v)
        numeric = (logit(image + eps * v) - logit(image - eps * v)) / (2 * eps)
        analytic = float((grad.astype(np.float64) * v[0]).sum())
        assert abs(numeric - analytic) <= 0.03 * abs(analytic) + 1e-5, (numeric, analytic)


@pytest.mark.parametrize("layer", randomize.ORDER)
def test_each_randomized_layer_changes_the_forward_pass(onnx_model, image, layer):
    trained = randomize.randomized_model(onnx_model, ()).run(image)
    changed = randomize.randomized_model(onnx_model, [layer], seed=1).run(image)
    if layer == randomize.HEAD:
        assert not np.array_equal(changed[0], trained[0])
        assert all(np.array_equal(changed[1][n], trained[1][n]) for n in CONV_LAYERS)
        return
    assert not np.array_equal(changed[1][layer], trained[1][layer])
    below = CONV_LAYERS[:CONV_LAYERS.index(layer)]
    assert all(np.array_equal(changed[1][n], trained[1][n]) for n in below)


@pytest.mark.parametrize("ignored", ["conv4_2", "head"])
def test_a_layer_whose_override_is_ignored_stops_the_run(onnx_model, image, monkeypatch, ignored):
    """A session that silently keeps one layer trained (the others re-drawn) must not pass as randomized."""
    real = randomize.Randomizer.model_for

    def ignoring(self, randomized):
        return real(self, [n for n in randomized if n != ignored])

    monkeypatch.setattr(randomize.Randomizer, "model_for", ignoring)
    k = randomize.ORDER.index(ignored) + 1  # the step that adds the ignored layer
    with pytest.raises(RuntimeError, match=f"randomized weights of {ignored}"):
        measure.sanity_results(onnx_model, image, ["class"], ["gradient"], classes=False, bar=False, steps=[k])
    monkeypatch.undo()
    measure.sanity_results(onnx_model, image, ["class"], ["gradient"], classes=False, bar=False, steps=[k])


def test_a_registered_method_joins_the_checks(onnx_model, image, monkeypatch):
    def model_only(subject, x, target):  # reads nothing but the model under test
        _, acts, switches = subject.model.run(x)
        net = Deconvnet(subject.model.weights)
        return net.project_class(acts, switches, target.class_index, rule="gradient", head=subject.model.head)[0][0]

    def blind(subject, x, target):  # ignores the model: must fail the checks
        return np.abs(x[0]).sum(axis=0)

    monkeypatch.setitem(METHODS, "model-only", SanityMethod("model-only", model_only))
    monkeypatch.setitem(METHODS, "blind", SanityMethod("blind", blind))
    steps = (1, 4)
    ours, = measure.sanity_results(onnx_model, image, ["class"], ["gradient", "model-only", "blind"], seed=1,
                                   steps=steps, bar=False)
    for step in ours.cascading:
        np.testing.assert_allclose(step.maps["model-only"], step.maps["gradient"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(step.scores["model-only"], step.scores["gradient"], atol=1e-6)
        assert step.scores["blind"] == (1.0, 1.0, 1.0)
        assert step.maps["blind"].shape == (1, TINY_SIZE, TINY_SIZE)
    assert ours.cascading[-1].scores["gradient"][0] < 0.99
    # the batched class maps of the rule and the one-class-at-a-time ones differ in float rounding only
    np.testing.assert_allclose(ours.classes.scores["model-only"], ours.classes.scores["gradient"], atol=1e-4)
    assert np.all(ours.classes.scores["blind"] == 1.0)
    with pytest.raises(ValueError, match="class targets only"):
        measure.sanity_results(onnx_model, image, ["conv5_3"], ["blind"], bar=False)


def test_compare_maps(onnx_model, image):
    same = measure.compare_maps(onnx_model, onnx_model, image, ["class", "conv5_3"])
    assert all(v == (1.0, 1.0, 1.0) for v in same.values()) and len(same) == 2 * len(RULES)
    other = randomize.randomized_model(onnx_model, randomize.ORDER, seed=0)
    differ = measure.compare_maps(onnx_model, other, image, ["class"], ["gradient"])
    assert list(differ.values())[0][0] < 0.9


def test_gather_images_label_file_root_and_round_robin(tmp_path):
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    lines = []
    for i in range(9):
        make_image("RGB", (24, 24), seed=i).save(data / "imgs" / f"{i}.png")
        lines.append(f"imgs/{i}.png\t{i // 3}")
    listing = tmp_path / "list.txt"  # elsewhere than the images: paths relative to --root
    listing.write_text("\n".join(lines) + "\n")
    picked = dataset.gather_images([str(listing)], root=str(data), limit=4)
    assert [p.path.name for p in picked] == ["0.png", "3.png", "6.png", "1.png"]
    assert all(p.path.is_file() for p in picked)
    with pytest.raises(FileNotFoundError):
        dataset.gather_images([str(tmp_path / "nope.txt")])


def test_summarize_mean_and_sds():
    rows = []
    for image, base in (("a", 0.2), ("b", 0.6)):
        for seed, delta in ((0, 0.0), (1, 0.1)):
            rows.append((image, seed, "class", "cascading", 1, "head", "gradient", base + delta, 0.5, np.nan))
    summary = {r[5]: r for r in verdicts.summarize(rows)}
    mean, sd, sd_images, sd_seeds, n = summary["spearman_abs"][6:]
    assert mean == pytest.approx(0.45) and n == 4
    assert sd == pytest.approx(np.std([0.2, 0.3, 0.6, 0.7], ddof=1))
    assert sd_images == pytest.approx(np.std([0.25, 0.65], ddof=1))
    assert sd_seeds == pytest.approx(np.std([0.4, 0.5], ddof=1))
    assert summary["spearman"][7] == 0.0
    assert np.isnan(summary["ssim"][6]) and summary["ssim"][10] == 0


def test_cli_over_images_and_seeds_with_a_compared_model(tiny_onnx, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        make_image("RGB", (40, 36), seed=10 + i).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "demo.sanity", str(folder), "--model", str(tiny_onnx), "--seeds",
                          "0,1", "--target", "conv5_3,class", "--steps", "1,14", "--compare-model", str(tiny_onnx),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "skipped" in run.stderr
    with open(out / "sanity_rows.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2 * 3 * len(RULES)  # images x seeds x targets x steps (0, 1, 14) x methods
    assert {r["step"] for r in rows} == {"0", "1", "14"}
    with open(out / "sanity_summary.csv") as f:
        summary = list(csv.DictReader(f))
    head = [r for r in summary if r["target"] == "conv5_3" and r["step"] == "1" and r["metric"] == "spearman"]
    assert head and all(float(r["mean"]) == 1.0 and r["n"] == "4" for r in head)  # the exact shortcut
    with open(out / "sanity_compare_rows.csv") as f:
        compared = list(csv.DictReader(f))
    assert len(compared) == 2 * 2 * len(RULES) and all(float(r["spearman_abs"]) == 1.0 for r in compared)
    assert (out / "sanity_summary.png").stat().st_size > 0
    text = (out / "summary.md").read_text()
    assert "Nie, Zhang & Patel 2018" in text and "random-logit" in text and "mean +- sd" in text.lower()
    bad = subprocess.run([sys.executable, "-m", "demo.sanity", str(folder), "--model", str(tiny_onnx), "--seeds",
                          "0,x", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --seeds")


# ----------------------------------------------------------------------------------------------------------------
# The evidence registry's methods as sanity methods (class targets; few noisy copies and IG points)

FEW = {"smoothgrad": {"samples": 2}, "ig": {"steps": 4}}


@pytest.fixture
def few_samples(monkeypatch):
    """The evidence methods with few SmoothGrad copies and IG points."""
    for name, options in FEW.items():
        monkeypatch.setitem(METHODS, name, measure.evidence_method(name, **options))


def test_evidence_methods_read_the_model_under_test(onnx_model, image, few_samples):
    other = randomize.randomized_model(onnx_model, ("head", "conv5_3", "conv5_2"), seed=2)
    for model in (onnx_model, other):
        subject = Subject(model, image)
        for name in measure.EVIDENCE:
            got = measure.compute_map(METHODS[name], subject, Target("class", CONV_LAYERS[-1], class_index=1))
            want = attribute(name, model, image, 1, **FEW.get(name, {}))
            assert got.shape == (1, TINY_SIZE, TINY_SIZE)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_evidence_methods_join_the_checks(onnx_model, image, few_samples):
    names = list(measure.EVIDENCE)
    res, = measure.sanity_results(onnx_model, image, ["class"], names, seed=1, steps=(1, 14), bar=False)
    for step in res.cascading[1:]:
        for name in ("random", "edges"):  # they read no weights: the same map at every step
            assert step.scores[name] == (1.0, 1.0, 1.0)
        for name in ("gradient-x-input", "smoothgrad", "ig", "occlusion"):
            assert not np.array_equal(step.maps[name], res.cascading[0].maps[name]), name
    for name in ("random", "edges"):  # nor the class
        assert np.all(res.classes.scores[name] == 1.0)
    assert res.classes.scores["gradient-x-input"][:, 0].min() < 0.99
    assert set(res.classes.scores) == set(names)
    with pytest.raises(ValueError, match="class targets only"):
        measure.sanity_results(onnx_model, image, ["conv5_3"], ["gradcam"], bar=False)


def test_cli_methods_from_the_evidence_registry(tiny_onnx, tmp_path):
    picture = tmp_path / "cat.png"
    make_image("RGB", (40, 36), seed=5).save(picture)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "demo.sanity", str(picture), "--model", str(tiny_onnx), "--target",
                          "class", "--methods", "gradient,gradcam,edges", "--steps", "14", "--no-classes", "--out",
                          str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with open(out / "sanity.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["rule"] for r in rows} == {"gradient", "gradcam", "edges"} and {r["step"] for r in rows} == {"0", "14"}
    assert all(float(r["spearman_abs"]) == 1.0 for r in rows if r["rule"] == "edges")
    bad = subprocess.run([sys.executable, "-m", "demo.sanity", str(picture), "--model", str(tiny_onnx), "--target",
                          "conv5_3", "--methods", "gradcam", "--out", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: method 'gradcam' maps class targets only")


def test_cli_sample_counts_reach_the_methods_and_are_restored(tiny_onnx, tmp_path):
    from demo.analyses.sanity import cli
    from demo.onnx_forward import OnnxModel

    picture = tmp_path / "cat.png"
    make_image("RGB", (40, 36), seed=5).save(picture)
    before = dict(METHODS)
    out = tmp_path / "out"
    assert cli.main([str(picture), "--model", str(tiny_onnx), "--target", "class/1", "--methods", "smoothgrad,ig",
                     "--samples", "2", "--ig-steps", "3", "--steps", "1", "--no-classes", "--out", str(out)]) == 0
    assert METHODS == before
    model = OnnxModel(tiny_onnx, device="cpu")
    x = preprocess(picture, model.input_size, model.mean, model.std)
    saved = np.load(out / "sanity.npz")
    for name, options in (("smoothgrad", {"samples": 2}), ("ig", {"steps": 3})):
        np.testing.assert_allclose(saved[f"cascading/0/{name}"][0], attribute(name, model, x, 1, **options)[0],
                                   rtol=1e-5, atol=1e-6, err_msg=name)
        assert not np.allclose(saved[f"cascading/0/{name}"][0], attribute(name, model, x, 1)[0]), name
