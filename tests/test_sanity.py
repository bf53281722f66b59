"""Sanity checks for saliency maps (demo/analyses/sanity/) on the tiny random-weight model and generated images.

- The initializer overrides really reach onnxruntime: conv1_1 re-drawn alone equals a NumPy convolution of the
  input with the drawn weights (+ ReLU); every layer re-drawn equals an .onnx file re-written with
  ``onnx.numpy_helper`` (an independent path); the graph lookups (Identity, Gemm's transB/alpha, MatMul + Add)
  on a hand-built graph run in onnxruntime.
- The draws: training's distribution (std, zero bias), seeded per layer.
- The steps: cascading from the head down to conv1_1, independent one layer at a time, each randomizing exactly
  the named layers (weights, initializers, and the forward pass: the layers below stay bit for bit trained).
- The similarities: step 0 exactly 1; Spearman and SSIM as scipy and skimage compute them; the exact shortcut for
  layers above a conv target; class sensitivity 1 for a head whose rows are equal.
- The per-layer guard: one randomized layer whose new weights are lost (the others honoured) is caught and named.
- The command line in a subprocess, and bad arguments.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT, TINY_SIZE, make_image
from onnx import TensorProto, helper, numpy_helper

from base import spec
from base.spec import CONV_LAYERS, RULES
from demo.analyses.sanity import cli, measure, randomize, view
from demo.backward.deconvnet import Deconvnet
from demo.backward.head import Head
from demo.preprocess import preprocess


@pytest.fixture(scope="module")
def image():
    return preprocess(make_image("RGB", (40, 36), seed=5), TINY_SIZE, spec.MEAN, spec.STD)


@pytest.fixture(scope="module")
def randomizer(onnx_model):
    return randomize.Randomizer(onnx_model, seed=0)


@pytest.fixture(scope="module")
def baseline(randomizer, image):
    """The trained model's forward pass in a session of the checks' settings (no override)."""
    return randomize.run_session(randomizer.session(()), image)


@pytest.fixture(scope="module")
def result(onnx_model, image):
    return measure.sanity_checks(onnx_model, image, "class", mode="both", bar=False)


def numpy_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 convolution, padding 1, of x (1, C_in, H, W) by weight (C_out, C_in, 3, 3), written out tap by tap."""
    _, C, H, W = x.shape
    padded = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((weight.shape[0], H, W))
    for i in range(3):
        for j in range(3):
            out += np.einsum("oc,chw->ohw", weight[:, :, i, j], padded[:, i : i + H, j : j + W])
    return out + bias[:, None, None]


# ----------------------------------------------------------------------------------------------------------------
# Overrides reach onnxruntime


def test_conv1_1_override_equals_a_numpy_convolution(onnx_model, randomizer, baseline, image):
    rand = randomizer.model_for(("conv1_1",))
    probs, acts, _ = rand.run(image)
    weight, bias = randomizer.draws("conv1_1")[0]
    expected = np.maximum(numpy_conv(image, weight, bias), 0)
    np.testing.assert_allclose(acts["conv1_1"][0], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(acts["conv1_1"], baseline[1]["conv1_1"], atol=1e-3)
    assert not np.allclose(probs, baseline[0])
    # the trained model's session is untouched
    np.testing.assert_allclose(onnx_model.run(image)[1]["conv1_1"], baseline[1]["conv1_1"], rtol=1e-5, atol=1e-5)


def test_full_override_equals_a_rewritten_onnx_file(tiny_onnx, randomizer, image, tmp_path):
    proto = onnx.load(str(tiny_onnx))
    inits = {init.name: init for init in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    for name, node in zip(CONV_LAYERS, convs, strict=True):  # the exporter names initializers directly
        weight, bias = randomizer.draws(name)[0]
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(bias, node.input[2]))
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    weight, bias = randomizer.draws(randomize.HEAD)[0]
    inits[gemm.input[1]].CopyFrom(numpy_helper.from_array(weight if trans_b else weight.T.copy(), gemm.input[1]))
    if len(gemm.input) > 2:  # the exporter drops an all-zero bias
        inits[gemm.input[2]].CopyFrom(numpy_helper.from_array(bias, gemm.input[2]))
    path = tmp_path / "rewritten.onnx"
    onnx.save(proto, str(path))
    names = [spec.PROBS_NAME, *CONV_LAYERS]
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(names, {"image": image})
    got = randomize.run_session(randomizer.session(randomize.ORDER), image)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-6)
    for name, want in zip(CONV_LAYERS, expected[1:], strict=True):
        np.testing.assert_allclose(got[1][name], want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def _toy_graph(constant_head: bool = False) -> onnx.ModelProto:
    """13 one-channel 3x3 convs, flatten, then Identity -> Gemm(transB=0, alpha=2, beta=0.5) -> MatMul + Add."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "image"
    for i, name in enumerate(CONV_LAYERS):
        inits += [numpy_helper.from_array(rng.standard_normal((1, 1, 3, 3)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(1, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [name], pads=[1, 1, 1, 1]))
        x = name
    nodes.append(helper.make_node("Flatten", [x], ["flat"]))
    inits += [numpy_helper.from_array(rng.standard_normal((16, 5)).astype(np.float32), "gemm_b"),
              numpy_helper.from_array(np.ones(5, np.float32), "gemm_c"),
              numpy_helper.from_array(rng.standard_normal((5, 3)).astype(np.float32), "mm_b"),
              numpy_helper.from_array(np.ones(3, np.float32), "add_c")]
    if constant_head:
        inits.pop(-2)
        nodes.append(helper.make_node("Constant", [], ["mm_b"], value=numpy_helper.from_array(
            np.zeros((5, 3), np.float32))))
    nodes += [helper.make_node("Identity", ["gemm_b"], ["gemm_b_id"]),
              helper.make_node("Gemm", ["flat", "gemm_b_id", "gemm_c"], ["h"], transB=0, alpha=2.0, beta=0.5),
              helper.make_node("MatMul", ["h", "mm_b"], ["m"]),
              helper.make_node("Add", ["m", "add_c"], ["logits"])]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_graph_slots_follow_identity_gemm_and_matmul_in_onnxruntime(tmp_path):
    proto = _toy_graph()
    slots = randomize.graph_slots(proto)
    assert [slots[n][0].weight.name for n in CONV_LAYERS] == [f"w{i}" for i in range(13)]
    (gemm, matmul) = slots[randomize.HEAD]
    assert (gemm.weight.name, gemm.weight.transpose, gemm.weight.scale, gemm.bias.name, gemm.bias.scale) == \
        ("gemm_b", True, 2.0, "gemm_c", 0.5)
    assert (matmul.weight.name, matmul.weight.transpose, matmul.bias.name) == ("mm_b", True, "add_c")
    # override every parameter: identity convs, and Linear layers (out, in) as the project stores them
    rng = np.random.default_rng(1)
    w1, b1 = rng.standard_normal((5, 16)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    w2, b2 = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    eye = np.zeros((1, 1, 3, 3), np.float32)
    eye[0, 0, 1, 1] = 1.0
    values = {s.weight.name: s.weight.value(eye) for n in CONV_LAYERS for s in slots[n]}
    values.update({gemm.weight.name: gemm.weight.value(w1), gemm.bias.name: gemm.bias.value(b1),
                   matmul.weight.name: matmul.weight.value(w2), matmul.bias.name: matmul.bias.value(b2)})
    session = ort.InferenceSession(randomize.randomized_proto(proto, values).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    expected = (x.reshape(1, 16) @ w1.T + b1) @ w2.T + b2
    np.testing.assert_allclose(session.run(["logits"], {"image": x})[0], expected, rtol=1e-5, atol=1e-5)


def test_a_constant_node_parameter_is_refused():
    with pytest.raises(ValueError, match="Constant node"):
        randomize.graph_slots(_toy_graph(constant_head=True))


# ----------------------------------------------------------------------------------------------------------------
# Draws and steps


def test_draws_follow_training_initialisation_and_are_seeded(onnx_model):
    w, b = randomize.draw_layer(onnx_model, "conv5_3", seed=0)[0]
    assert w.shape == (512, 512, 3, 3) and w.dtype == np.float32 and not b.any()
    assert abs(w.std() / np.sqrt(2 / (9 * 512)) - 1) < 0.01 and abs(w.mean()) < 1e-4
    w1, _ = randomize.draw_layer(onnx_model, "conv1_1", seed=0)[0]
    assert abs(w1.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.1
    (hw, hb), = randomize.draw_layer(onnx_model, randomize.HEAD, seed=0)
    assert hw.shape == onnx_model.head.linears[0][0].shape and not hb.any()
    assert abs(hw.std() / 0.01 - 1) < 0.1
    np.testing.assert_array_equal(randomize.draw_layer(onnx_model, "conv5_3", seed=0)[0][0], w)
    assert not np.array_equal(randomize.draw_layer(onnx_model, "conv5_3", seed=1)[0][0], w)
    assert not np.array_equal(randomize.draw_layer(onnx_model, "conv5_2", seed=0)[0][0], w)
    with pytest.raises(ValueError, match="seed"):
        randomize.draw_layer(onnx_model, "conv5_3", seed=-1)


def test_step_orders():
    cascade = measure.cascading_steps()
    assert cascade[0] == () and cascade[1] == ("head",) and cascade[2] == ("head", "conv5_3")
    assert cascade[-1] == ("head", *reversed(CONV_LAYERS)) and len(cascade) == 15
    assert all(a == b[:-1] for a, b in zip(cascade[:-1], cascade[1:], strict=True))
    independent = measure.independent_steps()
    assert independent == [(), ("head",), *((n,) for n in reversed(CONV_LAYERS))]


def _check_exact_layers(onnx_model, randomizer, baseline, image, key, forward: bool) -> None:
    slots = randomizer.slots
    named = {s.name for layer in key for ls in slots[layer] for s in (ls.weight, ls.bias) if s is not None}
    assert set(randomizer.overrides(key)) == named
    weights = randomizer.weights(key)
    for name in CONV_LAYERS:
        want = randomizer.draws(name)[0][0] if name in key else onnx_model.weights[name]
        assert weights[name] is want
    head = randomizer.head(key)
    assert (head.linears[0][0] is randomizer.draws("head")[0][0]) == ("head" in key)
    if not forward:
        return
    probs, acts, switches = randomize.run_session(randomizer.session(key), image)
    convs = [n for n in key if n != "head"]
    lowest = min((CONV_LAYERS.index(n) for n in convs), default=len(CONV_LAYERS))
    for i, name in enumerate(CONV_LAYERS):
        if i < lowest:  # below every re-drawn layer: bit for bit the trained forward pass
            np.testing.assert_array_equal(acts[name], baseline[1][name])
        elif i == lowest:
            assert not np.allclose(acts[name], baseline[1][name], atol=1e-4)
    assert not np.allclose(probs, baseline[0])


@pytest.mark.parametrize("k", range(1, 15))
def test_cascading_step_randomizes_exactly_its_layers(onnx_model, randomizer, baseline, image, k):
    key = measure.cascading_steps()[k]
    assert key == randomize.ORDER[:k]
    _check_exact_layers(onnx_model, randomizer, baseline, image, key, forward=True)


@pytest.mark.parametrize("layer", randomize.ORDER)
def test_independent_step_randomizes_exactly_its_layer(onnx_model, randomizer, baseline, image, layer):
    _check_exact_layers(onnx_model, randomizer, baseline, image, (layer,),
                        forward=layer in ("head", "conv4_1", "conv1_1"))


def test_result_steps_name_their_layers(result):
    assert [s.label for s in result.cascading][:3] == ["none", "head", "head+conv5_3"]
    assert result.cascading[-1].label == "+".join(randomize.ORDER)
    assert [s.label for s in result.independent] == ["none", *randomize.ORDER]
    assert [s.step for s in result.cascading] == list(range(15))


def test_cached_deconvnet_equals_the_constructor(randomizer, baseline):
    key = randomize.ORDER[:6]
    cached = randomizer.deconvnet(key)
    fresh = Deconvnet(randomizer.weights(key))
    _, acts, switches = baseline
    for rule in RULES:
        a = cached.project(acts, switches, "conv4_3", rule=rule).images
        np.testing.assert_array_equal(a, fresh.project(acts, switches, "conv4_3", rule=rule).images)


# ----------------------------------------------------------------------------------------------------------------
# Similarities


def test_step_zero_is_exactly_one(result, onnx_model, image):
    for steps in (result.cascading, result.independent):
        assert steps[0].randomized == ()
        for rule in RULES:
            assert steps[0].scores[rule] == (1.0, 1.0, 1.0)
    unit = measure.sanity_checks(onnx_model, image, "conv4_3/5", rules=["guided"], classes=False, bar=False)
    assert unit.cascading[0].scores["guided"] == (1.0, 1.0, 1.0)


def test_randomized_maps_move_away(result):
    for rule in RULES:
        last = result.cascading[-1].scores[rule]
        assert not np.array_equal(result.cascading[-1].maps[rule], result.cascading[0].maps[rule])
        assert last[0] < 1.0 and last[2] < 1.0


def test_similarity_comes_from_scipy_and_skimage():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    p = rng.standard_normal((3, 24, 24)).astype(np.float32)
    q = (p + rng.standard_normal((3, 24, 24))).astype(np.float32)
    got = measure.similarity(p, q)
    assert got[0] == pytest.approx(spearmanr(np.abs(p).ravel(), np.abs(q).ravel()).statistic, abs=1e-12)
    assert got[1] == pytest.approx(spearmanr(p.ravel(), q.ravel()).statistic, abs=1e-12)
    mp, mq = np.abs(p.astype(np.float64)).sum(0), np.abs(q.astype(np.float64)).sum(0)
    want = structural_similarity(mp / mp.max(), mq / mq.max(), data_range=1.0)
    assert got[2] == pytest.approx(want, abs=1e-12)
    assert measure.similarity(p, p.copy()) == (1.0, 1.0, 1.0)
    flat = measure.similarity(p, np.zeros_like(p))
    assert np.isnan(flat[0]) and np.isnan(flat[1]) and np.isfinite(flat[2])
    with pytest.raises(ValueError):
        measure.similarity(p, p[:2])


def test_layers_above_a_conv_target_change_nothing(onnx_model, randomizer, baseline, image):
    """The shortcut is exact: re-drawing the head and conv5_3 ... conv4_1 leaves conv3_3's projections unchanged."""
    key = randomize.ORDER[:7]  # head, conv5_3 ... conv4_1
    target = measure.Target("layer", "conv3_3")
    assert not any(target.depends_on(n) for n in key) and target.depends_on("conv3_3")
    forward = randomize.run_session(randomizer.session(key), image)
    for rule in RULES:
        got = measure.project_target(randomizer.deconvnet(key), randomizer.head(key), forward, target, 0, rule)
        want = measure.project_target(randomizer.deconvnet(()), onnx_model.head, baseline, target, 0, rule)
        np.testing.assert_array_equal(got, want)
    res = measure.sanity_checks(onnx_model, image, "conv3_3", rules=["gradient"], mode="both", classes=False,
                               bar=False)
    assert [s.reused for s in res.cascading[1:9]] == [True] * 7 + [False]
    assert all(s.scores["gradient"] == (1.0, 1.0, 1.0) for s in res.cascading[1:8])
    assert res.cascading[8].scores["gradient"] != (1.0, 1.0, 1.0)


def test_class_projections_equal_project_class(randomizer, onnx_model, baseline):
    net = randomizer.deconvnet(())
    _, acts, switches = baseline
    for rule in RULES:
        batch = measure.class_projections(net, onnx_model.head, acts, switches, [0, 4, 11], rule)
        for row, c in enumerate([0, 4, 11]):
            want = net.project_class(acts, switches, c, rule=rule, head=onnx_model.head)[0][0]
            np.testing.assert_allclose(batch[row], want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_class_independent_head_scores_one(onnx_model, image):
    (w, b), = onnx_model.head.linears
    equal = type(onnx_model).__new__(type(onnx_model))
    equal.__dict__.update(onnx_model.__dict__)
    equal._head = Head("gmp", ((np.repeat(w[:1], w.shape[0], axis=0), b),))
    res = measure.sanity_checks(equal, image, "conv5_3", mode="cascading", classes=True, bar=False)
    for rule in RULES:
        np.testing.assert_allclose(res.classes.scores[rule], 1.0, atol=1e-6)
        assert res.classes.mean(rule) == pytest.approx(1.0, abs=1e-6)
    # the trained head's rows differ: its class maps do too
    assert min(measure.sanity_checks(onnx_model, image, "conv5_3", rules=["gradient"], bar=False)
               .classes.scores["gradient"][:, 0]) < 0.999


# ----------------------------------------------------------------------------------------------------------------
# Targets, app function, command line


def test_parse_target():
    names = list(spec.CAT12_BREEDS)
    assert measure.parse_target("conv5_3", names) == measure.Target("layer", "conv5_3")
    assert measure.parse_target("conv4_2/7", names) == measure.Target("unit", "conv4_2", channel=7)
    assert measure.parse_target("class", names) == measure.Target("class", "conv5_3")
    assert measure.parse_target("class/Bengal", names).class_index == 1
    assert measure.parse_target("class/3", names).class_index == 3
    for bad in ("conv6_1", "conv1_1/64", "conv1_1/x", "class/12", "class/Lion", "pool1", ""):
        with pytest.raises(ValueError):
            measure.parse_target(bad, names)


def test_sanity_view_for_the_app(onnx_model, image):
    calls = []
    strip, plot, text = view.sanity_view(onnx_model, image, "conv5_3", rules=("deconvnet", "guided"),
                                           progress=lambda d, t: calls.append((d, t)))
    assert strip.dtype == np.uint8 and strip.ndim == 3 and strip.shape[2] == 3
    assert plot.dtype == np.uint8 and plot.ndim == 3 and plot.shape[2] == 3
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == list(range(1, calls[-1][1] + 1))
    assert "deconvnet" in text and "guided" in text and "gradient" not in text


def test_cli_writes_csvs_and_pictures(tiny_onnx, tmp_path):
    path = tmp_path / "cat.png"
    make_image("RGB", (48, 40), seed=2).save(path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "demo.sanity", str(path), "--model", str(tiny_onnx), "--target",
                           "conv5_3", "--rules", "guided,gradient", "--mode", "both", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name in ("sanity.csv", "sanity_classes.csv", "sanity_filmstrip.png", "sanity_filmstrip_independent.png",
                 "sanity_curves.png", "sanity.png", "sanity.npz"):
        assert (out / name).is_file(), name
    import csv

    rows = list(csv.DictReader(open(out / "sanity.csv")))
    assert list(rows[0]) == list(cli.CSV_COLUMNS)
    assert len(rows) == 2 * 15 * 2
    assert rows[0]["randomized"] == "none" and float(rows[0]["spearman_abs"]) == 1.0
    assert {r["randomized"] for r in rows if r["mode"] == "cascading" and r["step"] == "2"} == {"head+conv5_3"}
    classes = list(csv.DictReader(open(out / "sanity_classes.csv")))
    assert list(classes[0]) == list(cli.CLASS_COLUMNS) and len(classes) == 2 * 12
    assert "Sanity checks" in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--target", "conv9_9"], "unknown target"),
    (["--target", "conv5_3/512"], "channels 0..511"),
    (["--rules", "lrp"], "unknown rule"),
    (["--seed", "-1"], "seed"),
    (["--samples", "0"], "--samples"),
    (["--ig-steps", "1"], "--ig-steps"),
])
def test_cli_bad_arguments(tiny_onnx, tmp_path, args, message):
    path = tmp_path / "cat.png"
    make_image("RGB", (40, 40), seed=1).save(path)
    bad = subprocess.run([sys.executable, "-m", "demo.sanity", str(path), "--model", str(tiny_onnx), *args, "--out",
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stderr
    assert message in bad.stderr and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1


def test_an_ignored_override_raises(onnx_model, image, monkeypatch):
    """A randomized forward pass identical to the trained one means onnxruntime ignored the new weights: an error."""
    monkeypatch.setattr(randomize.Randomizer, "overrides", lambda self, randomized: {})
    with pytest.raises(RuntimeError, match="ignored the randomized weights of head"):
        measure.sanity_checks(onnx_model, image, "conv5_3", rules=["gradient"], classes=False, bar=False)


def _skipping(layer: str):
    """``Randomizer.overrides`` that leaves ``layer``'s initializers trained (an override lost on the way)."""
    overrides = randomize.Randomizer.overrides

    def replaced(self, randomized):
        return overrides(self, [n for n in randomized if n != layer])

    return replaced


@pytest.mark.parametrize("layer", ["head", "conv5_2", "conv3_1"])
def test_each_randomized_layer_is_checked(randomizer, baseline, image, layer, monkeypatch):
    """One ignored layer among randomized ones below it (its own activation then differs from the trained pass's
    all the same, its input having changed) is caught and named; the same step with it honoured passes."""
    key = randomize.ORDER[: randomize.ORDER.index(layer) + 3]  # layer, and two randomized layers under it
    honoured = randomize.run_session(randomizer.session(key), image)
    randomize.check_randomized(randomizer, key, image, honoured, baseline)
    monkeypatch.setattr(randomize.Randomizer, "overrides", _skipping(layer))
    forward = randomize.run_session(randomizer.session(key), image)
    if layer != "head":
        assert not np.array_equal(forward[1][layer], baseline[1][layer])  # a whole-pass comparison would pass
    with pytest.raises(RuntimeError, match=f"ignored the randomized weights of {layer} "):
        randomize.check_randomized(randomizer, key, image, forward, baseline)


def test_a_cascade_with_one_ignored_layer_raises(onnx_model, image, monkeypatch):
    monkeypatch.setattr(randomize.Randomizer, "overrides", _skipping("conv5_2"))
    with pytest.raises(RuntimeError, match="ignored the randomized weights of conv5_2 "):
        measure.sanity_checks(onnx_model, image, "conv4_3", rules=["deconvnet"], classes=False, bar=False)


def test_the_randomized_session_runs_on_the_models_providers(onnx_model, randomizer):
    session = randomizer.session(("conv1_1",))
    assert session.get_providers() == onnx_model.providers
    assert session.get_session_options().intra_op_num_threads == onnx_model.threads
    proto = randomizer.proto
    before = proto.SerializeToString()
    clone = randomize.randomized_proto(proto, randomizer.overrides(("conv1_1",)))
    slots = randomizer.slots["conv1_1"][0]
    changed = {i.name for i, j in zip(proto.graph.initializer, clone.graph.initializer, strict=True) if i != j}
    assert changed == {slots.weight.name, slots.bias.name}  # only conv1_1's weight and bias replaced
    assert proto.SerializeToString() == before  # in a copy: the trained graph is left as it is
    joined = onnx.ModelProto()
    joined.ParseFromString(randomizer.serialised.bytes_with(randomizer.overrides(("head", "conv1_1"))))
    assert joined == randomize.randomized_proto(proto, randomizer.overrides(("head", "conv1_1")))
    assert randomizer.serialised.bytes_with({}) and onnx.load_from_string(
        randomizer.serialised.bytes_with({})) == proto
