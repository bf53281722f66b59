"""The evidence methods against Captum on the same weights, the stopped descent, and the faithfulness scores."""

from __future__ import annotations

import numpy as np
import pytest

from base.spec import CONV_LAYERS
from demo.analyses.evidence import methods as M

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

SIZE = 32


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


class Tapped(torch.nn.Module):
    """The tiny VGG with an identity module after each conv's ReLU, for Captum's layer methods."""

    def __init__(self, vgg) -> None:
        super().__init__()
        self.vgg = vgg
        self.taps = torch.nn.ModuleDict({name: torch.nn.Identity() for name in CONV_LAYERS})

    def forward(self, x):
        v = self.vgg
        for name, conv in v.convs.items():
            x = self.taps[name](torch.relu(v.bns[name](conv(x))))
            if name in v.pool_after:
                x = torch.nn.functional.max_pool2d(x, 2, 2)
        return v.forward_head(x)


@pytest.fixture(scope="module")
def setting(tiny_vgg, onnx_model):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    network = M.Network.from_model(onnx_model)
    classes = network.probs(x).argmax(axis=1)
    return Tapped(tiny_vgg).eval(), network, x, classes


@pytest.mark.parametrize("layer", ["conv5_3", "conv4_1", "conv3_3"])
def test_gradcam_matches_captum(setting, layer):
    tapped, network, x, classes = setting
    ours = M.gradcam_layer(network, x, classes, layer)
    cam = captum_attr.LayerGradCam(tapped, tapped.taps[layer])
    theirs = cam.attribute(torch.from_numpy(x), target=torch.from_numpy(classes), relu_attributions=True)
    assert ours.shape == theirs.shape[:1] + theirs.shape[2:]
    assert rel_err(ours, theirs.detach().numpy()[:, 0]) <= 1e-4
    up = torch.nn.functional.interpolate(theirs, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    assert rel_err(M.attribute("gradcam", network, x, classes, layer=layer), up.detach().numpy()[:, 0]) <= 1e-4


def test_layer_gradient_is_autograd(setting):
    tapped, network, x, classes = setting
    grad, _ = M.layer_gradient(network, x, classes, "conv2_2")
    store = {}
    hook = tapped.taps["conv2_2"].register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        logits = tapped(torch.from_numpy(x))
    finally:
        hook.remove()
    expected = torch.autograd.grad(logits[np.arange(2), classes].sum(), store["a"])[0].numpy()
    assert rel_err(grad, expected) <= 1e-4


def test_input_x_gradient_matches_captum(setting):
    tapped, network, x, classes = setting
    theirs = captum_attr.InputXGradient(tapped).attribute(torch.from_numpy(x), target=torch.from_numpy(classes))
    assert rel_err(M.gradient_x_input(network, x, classes), theirs.detach().numpy()) <= 1e-4


def test_smoothgrad_matches_captum_with_the_same_noise(setting):
    tapped, network, x, classes = setting
    n, sd = 4, 0.3
    torch.manual_seed(3)
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(tapped))
    theirs = nt.attribute(torch.from_numpy(x), nt_type="smoothgrad", nt_samples=n, stdevs=sd,
                          target=torch.from_numpy(classes), abs=False).detach().numpy()
    torch.manual_seed(3)  # the same draws, in NoiseTunnel's order: image-major, sample-minor
    noise = torch.normal(0, torch.tensor(sd).repeat((2 * n, 3, SIZE, SIZE))).numpy().reshape(2, n, 3, SIZE, SIZE)
    ours = M.smoothgrad(network, x, classes, samples=n, noise=noise, batch_size=3)
    assert rel_err(ours, theirs) <= 1e-4


@pytest.mark.parametrize("baseline", ["black", "blurred"])
def test_integrated_gradients_match_captum(setting, baseline):
    tapped, network, x, classes = setting
    base = M.baseline_image(network, x, baseline)
    ig = captum_attr.IntegratedGradients(tapped)
    theirs, delta = ig.attribute(torch.from_numpy(x), baselines=torch.from_numpy(base),
                                 target=torch.from_numpy(classes), n_steps=8, method="riemann_trapezoid",
                                 return_convergence_delta=True)
    ours, completeness = M.integrated_gradients(network, x, classes, steps=8, baseline=baseline, batch_size=5)
    # Captum's trapezoid puts its 8 points 1/7 apart but weighs them by 1/8 (inner) and 1/16 (ends): its weights
    # sum to 7/8. The trapezoid rule's weights are 1/7 and 1/14, i.e. Captum's times 8/7.
    theirs = theirs.detach().numpy() * 8 / 7
    assert rel_err(ours, theirs) <= 1e-4
    with torch.no_grad():
        z = tapped(torch.from_numpy(np.concatenate([x, base]))).numpy()
    gap = z[np.arange(2), classes] - z[2 + np.arange(2), classes]
    np.testing.assert_allclose(completeness, theirs.reshape(2, -1).sum(axis=1) - gap, rtol=1e-3, atol=1e-5)
    assert delta.shape == (2,)


def test_upsample_is_bilinear_with_half_pixel_centres():
    maps = np.random.default_rng(0).random((2, 3, 5), dtype=np.float32)
    theirs = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=(12, 11), mode="bilinear",
                                             align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(M.upsample(maps, (12, 11)), theirs, atol=1e-6)


def test_every_method_gives_one_map_per_image(onnx_model):
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    info: dict = {}
    for method in M.METHODS:
        out = M.attribute(method, onnx_model, x, 1, samples=2, steps=3, info=info)
        assert out.shape == (2, SIZE, SIZE) and out.dtype == np.float32 and np.isfinite(out).all(), method
    assert info["completeness"].shape == (2,)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "lrp"}, "unknown method"), ({"class_index": 99}, "class must lie"),
    ({"layer": "conv9_9"}, "unknown layer"), ({"method": "smoothgrad", "samples": 0}, "positive"),
    ({"method": "smoothgrad", "sd": 0.0}, r"\(0, 1\]"), ({"method": "smoothgrad", "sd": 1.5}, r"\(0, 1\]"),
    ({"method": "ig", "steps": 0}, "IG steps"),
])
def test_bad_options_are_value_errors(onnx_model, kwargs, match):
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    args = {"method": "gradient", "class_index": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        M.attribute(args.pop("method"), onnx_model, x, args.pop("class_index"), **args)


# ----------------------------------------------------------------------------------------------------------------
# Faithfulness

from demo.analyses.evidence import faithfulness as F  # noqa: E402


def test_auc_is_the_trapezoid_over_the_unit_interval():
    assert F.auc(np.full(9, 0.3)) == pytest.approx(0.3)
    assert F.auc(np.linspace(0, 1, 33)) == pytest.approx(0.5)
    assert F.auc([1.0, 0.0, 0.0]) == pytest.approx(0.25)


def test_deletion_and_insertion_series_follow_the_map():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 8, 8), dtype=np.float32)
    saliency = np.arange(64, dtype=np.float32).reshape(8, 8)  # the last pixel is the most relevant
    deletion, insertion = F.perturbation_series(x, saliency, steps=4)
    assert deletion.shape == insertion.shape == (5, 3, 8, 8)
    np.testing.assert_array_equal(deletion[0], x[0])
    assert not deletion[-1].any()
    np.testing.assert_array_equal(insertion[-1], x[0])
    np.testing.assert_allclose(insertion[0], F.gaussian_blur(x)[0])
    assert not deletion[1, :, 6:].any() and (deletion[1, :, :6] == x[0, :, :6]).all()  # rows 6-7: 16 pixels
    np.testing.assert_array_equal(insertion[1, :, 6:], x[0, :, 6:])


def test_ties_are_broken_at_random_not_from_the_top_left():
    order = F.ranking(np.zeros((16, 16)), seed=1)
    assert sorted(order.tolist()) == list(range(256)) and order[:64].mean() > 40


def test_linear_imputation_reproduces_a_linear_ramp():
    yy, xx = np.mgrid[0:12, 0:10].astype(np.float32)
    image = np.stack([xx, yy, 2 * xx - yy])
    removed = np.zeros((12, 10), bool)
    removed[3:9, 2:7] = True
    out = F.impute(image, removed, noise=0.0)
    np.testing.assert_allclose(out, image, atol=1e-4)
    noisy = F.impute(image, removed, noise=0.01, rng=np.random.default_rng(0))
    assert 0.005 < np.abs(noisy - image)[:, removed].std() < 0.02 and (noisy[:, ~removed] == image[:, ~removed]).all()


def test_road_removes_the_percentiles_of_the_map():
    x = np.zeros((1, 3, 10, 10), np.float32)
    saliency = np.arange(100, dtype=np.float32).reshape(10, 10)
    morf, lerf = F.road_images(x + 1, saliency, percentiles=(80,), noise=0.0)
    assert morf.shape == lerf.shape == (1, 3, 10, 10)
    changed = lambda a: (a[0, 0] != 1).sum()  # noqa: E731  # imputed from all-ones neighbours: still 1
    assert changed(morf) == 0  # a constant image imputes to itself
    x[0, :, :, :] = saliency  # now the imputed region shows: MoRF touches the top 20 values, LeRF the bottom 20
    morf, lerf = F.road_images(x, saliency, percentiles=(80,), noise=0.0)
    assert np.array_equal(morf[0, 0, :8], saliency[:8]) and not np.array_equal(morf[0, 0, 8:], saliency[8:])
    assert np.array_equal(lerf[0, 0, 2:], saliency[2:]) and not np.array_equal(lerf[0, 0, :2], saliency[:2])


class LooksTopLeft:
    """A stand-in network whose class-0 probability rises with the mean of the top-left quadrant."""

    def probs(self, image, batch_size=16):
        p = 1 / (1 + np.exp(-4 * image[:, :, :8, :8].mean(axis=(1, 2, 3))))
        return np.stack([p, 1 - p], axis=1)


def test_the_right_map_scores_better():
    x = np.ones((1, 3, 16, 16), np.float32)
    right = np.zeros((16, 16), np.float32)
    right[:8, :8] = 1
    good = F.faithfulness(LooksTopLeft(), x, right, 0, steps=8)
    bad = F.faithfulness(LooksTopLeft(), x, 1 - right, 0, steps=8)
    assert good.deletion.shape == (9,) and good.deletion[0] == pytest.approx(good.insertion[-1])
    assert good.deletion_auc < bad.deletion_auc and good.insertion_auc > bad.insertion_auc
    assert good.road_morf < bad.road_morf and good.road_lerf > bad.road_lerf


def test_scores_are_the_probabilities_of_each_perturbed_image(onnx_model):
    network = M.Network.from_model(onnx_model)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, SIZE, SIZE), dtype=np.float32)
    saliency = rng.random((SIZE, SIZE)).astype(np.float32)
    got = F.faithfulness(network, x, saliency, 2, steps=5, seed=1)
    deletion, insertion = F.perturbation_series(x, saliency, 5, seed=1)
    p = lambda images: network.probs(images, 1)[:, 2]  # noqa: E731  one image per run: another batching
    np.testing.assert_allclose(got.deletion, p(deletion), atol=1e-5)
    np.testing.assert_allclose(got.insertion, p(insertion), atol=1e-5)
    morf, lerf = F.road_images(x, saliency, seed=1)
    assert got.road_morf == pytest.approx(float(np.mean(p(morf) - p(x))), abs=1e-5)
    assert got.road_lerf == pytest.approx(float(np.mean(p(lerf) - p(x))), abs=1e-5)
    assert got.deletion_auc == pytest.approx(F.auc(p(deletion)), abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The command line

import csv  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from conftest import make_image  # noqa: E402


def test_cli_writes_one_row_per_image_and_method_and_skips_unreadable_images(tiny_onnx, tmp_path, capsys):
    from demo.analyses.evidence import cli

    make_image("RGB", (40, 32), 1).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = cli.main([str(tmp_path / "a.png"), str(tmp_path / "broken.png"), "--model", str(tiny_onnx), "--methods",
                     "gradcam,ig", "--steps", "4", "--ig-steps", "3", "--out", str(out), "--device", "cpu"])
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err and "IG completeness error" in err
    with open(out / "faithfulness.csv") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == cli.CSV_COLUMNS
    assert [r[2] for r in rows[1:]] == ["gradcam", "ig", "random", "edges"]
    assert all(0 <= float(r[3]) <= 1 and 0 <= float(r[4]) <= 1 for r in rows[1:])
    assert "+-" in (out / "summary.md").read_text() and (out / "faithfulness.png").stat().st_size > 0


@pytest.mark.parametrize("option", [["--methods", "lrp"], ["--layer", "conv6_1"], ["--samples", "0"],
                                    ["--sd", "0"], ["--sd", "1.5"], ["--target", "truth"]])
def test_cli_bad_options_are_one_error_line(tiny_onnx, tmp_path, capsys, option):
    from demo.analyses.evidence import cli

    make_image("RGB", (32, 32), 1).save(tmp_path / "a.png")
    code = cli.main([str(tmp_path / "a.png"), "--model", str(tiny_onnx), "--out", str(tmp_path / "o"), *option])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")


def test_cli_undecodable_image_exits_2(tiny_onnx, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    proc = subprocess.run([sys.executable, "-m", "demo.faithfulness", str(tmp_path / "broken.png"), "--model",
                           str(tiny_onnx), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_descent_stops_at_a_layer(setting, onnx_model):
    _, network, x, classes = setting
    _, acts, switches = network.forward(x)
    signal = np.random.default_rng(0).standard_normal(acts["conv4_3"].shape, dtype=np.float32)
    same = network.net.project_down(signal, "conv4_3", switches, rule="gradient", activations=acts,
                                    to_layer="conv4_3")
    np.testing.assert_array_equal(same, signal)
    at_conv1 = network.net.project_down(signal, "conv4_3", switches, rule="gradient", activations=acts,
                                        to_layer="conv1_1")
    assert at_conv1.shape == acts["conv1_1"].shape
    from demo.backward.kernels import deconv, relu_backward

    pixels = network.net.project_down(signal, "conv4_3", switches, rule="gradient", activations=acts)
    finished = deconv(relu_backward(at_conv1, acts["conv1_1"], "gradient"), network.net.weights["conv1_1"])
    assert rel_err(finished, pixels) <= 1e-4
    with pytest.raises(ValueError, match="lies above"):
        network.net.project_down(signal, "conv4_3", switches, to_layer="conv5_1")


def test_cli_scores_the_label_of_a_label_file(tiny_onnx, image_folder, tmp_path, capsys):
    from demo.analyses.evidence import cli
    from demo.onnx_forward import OnnxModel

    names = OnnxModel(tiny_onnx, device="cpu").class_names
    out = tmp_path / "out"
    args = ["--model", str(tiny_onnx), "--methods", "random", "--steps", "2", "--no-road", "--out", str(out)]
    assert cli.main([str(image_folder / "labels.txt"), "--target", "label", "--limit", "2", *args]) == 0
    with open(out / "faithfulness.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["class"], r["method"]) for r in rows] == [(names[0], "random"), (names[0], "edges"),
                                                         (names[1], "random"), (names[1], "edges")]
    capsys.readouterr()
    assert cli.main([str(image_folder / "a.jpg"), "--target", "label", *args]) == 2
    assert "needs labelled images" in capsys.readouterr().err


def test_occlusion_maps_every_class_from_one_pass_as_the_occlusion_analysis(onnx_model):
    from demo.analyses.occlusion import occlusion_maps

    network = M.Network.from_model(onnx_model)
    rng = np.random.default_rng(3)
    for x in (rng.standard_normal((1, 3, SIZE, SIZE), dtype=np.float32),
              rng.standard_normal((1, 3, SIZE, SIZE), dtype=np.float32)):  # a new image: no stale result
        for cls in (0, 2):
            ours = M.attribute("occlusion", network, x, cls)[0]
            r = occlusion_maps(onnx_model, x, SIZE // 4, SIZE // 8, cls, bar=False)
            drop = r.base_probs[cls] - r.probability
            expected = np.repeat(np.repeat(drop, SIZE // 8, axis=0), SIZE // 8, axis=1)
            np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_cli_root_resolves_a_label_file_kept_elsewhere(tiny_onnx, tmp_path):
    from demo.analyses.evidence import cli

    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    for i in range(3):
        make_image("RGB", (32, 32), seed=i).save(data / "imgs" / f"{i}.png")
    listing = tmp_path / "lists" / "val.txt"
    listing.parent.mkdir()
    listing.write_text("".join(f"imgs/{i}.png\t{i}\n" for i in range(3)))
    out = tmp_path / "out"
    args = ["--model", str(tiny_onnx), "--methods", "random", "--steps", "2", "--no-road", "--out", str(out)]
    assert cli.main([str(listing), "--root", str(data), "--limit", "2", *args]) == 0
    with open(out / "faithfulness.csv") as f:
        images = [r["image"] for r in csv.DictReader(f)]
    assert images == ["imgs/0.png", "imgs/0.png", "imgs/1.png", "imgs/1.png"]  # named relative to --root
    assert cli.main([str(listing), *args]) == 2  # without --root the paths point nowhere
