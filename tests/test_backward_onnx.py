"""The GPU path, tested on onnxruntime's CPU provider: the descent as ONNX graphs (demo/backward/onnx_graph.py) against
the NumPy stage and the PyTorch reference, the CUDA provider options (TF32 off unless asked for), the sessions
that share the forward model's providers, and the app's choice of backward stage.

- Every rule, every layer, the modes "layer", "channel" and "topk", a rule per layer, rows from interleaved
  images, and class targets (the global-max-pool head and torchvision's): relative error <= 1e-4 against
  ``demo.backward.deconvnet`` and ``model.deconvnet``, all on onnxruntime's activations and switches.
- The graph: ConvTranspose with the model's own weights, unpooling by ScatterElements (no MaxUnpool).
"""

from __future__ import annotations

import types

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_SIZE, check_images
from onnx import numpy_helper

from base.spec import CONV_LAYERS, POOL_LAYERS, RULES
from demo.backward.deconvnet import MODES, Deconvnet
from demo.backward.onnx_graph import OnnxDeconvnet, descent_graph
from demo.onnx_forward import CPU, CUDA, OnnxModel, provider_label, providers_for
from model.deconvnet import Deconvnet as TorchDeconvnet

RTOL = 1e-4  # max |ours - theirs| / max |theirs|


def rel_err(got: np.ndarray, want) -> float:
    want = want.numpy() if isinstance(want, torch.Tensor) else want
    scale = float(np.abs(want).max())
    assert scale > 0, "a trivial (all-zero) comparison"
    return float(np.abs(got - want).max() / scale)


@pytest.fixture(scope="module")
def forward(onnx_model):
    """onnxruntime's outputs for two 32x32 images, as NumPy and as torch tensors."""
    x = np.random.default_rng(11).standard_normal((2, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    _, acts, switches = onnx_model.run(x)
    return acts, switches, {k: torch.from_numpy(v) for k, v in acts.items()}, \
        {k: torch.from_numpy(v) for k, v in switches.items()}


@pytest.fixture(scope="module")
def nets(onnx_model, tiny_vgg):
    return OnnxDeconvnet(onnx_model), Deconvnet.from_model(onnx_model), TorchDeconvnet(tiny_vgg)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_every_layer_equals_numpy_and_the_reference(nets, forward, mode, rule):
    ours, numpy_net, ref = nets
    acts, switches, tacts, tswitches = forward
    for layer in CONV_LAYERS:
        strongest_channel = int(acts[layer][0].max(axis=(1, 2)).argmax())  # never a dead one
        kwargs = {"channel": {"channel": strongest_channel}, "topk": {"k": 3}}.get(mode, {})
        got = ours.project(acts, switches, layer, mode, rule=rule, **kwargs)
        want = numpy_net.project(acts, switches, layer, mode, rule=rule, **kwargs)
        torch_want = ref.project(tacts, tswitches, layer, mode, rule=rule, **kwargs)
        assert got.images.shape == want.images.shape and got.images.dtype == np.float32
        assert rel_err(got.images, want.images) <= RTOL, f"{layer} {mode} {rule}: NumPy"
        assert rel_err(got.images, torch_want.images) <= RTOL, f"{layer} {mode} {rule}: torch"
        if mode == "layer":
            assert got.channels is None and got.values is None
        else:
            np.testing.assert_array_equal(got.channels, want.channels)
            np.testing.assert_array_equal(got.values, want.values)


def test_a_rule_per_layer_and_rows_of_interleaved_images(nets, forward):
    ours, numpy_net, _ = nets
    acts, switches, _, _ = forward
    rules = {name: RULES[i % 3] for i, name in enumerate(CONV_LAYERS)}
    got = ours.project(acts, switches, "conv4_2", "topk", k=4, rule=rules, rows_per_pass=3)
    want = numpy_net.project(acts, switches, "conv4_2", "topk", k=4, rule=rules)
    assert got.images.shape == (8, 3, TINY_SIZE, TINY_SIZE) and rel_err(got.images, want.images) <= RTOL
    act = acts["conv3_1"]
    image_of = np.array([1, 0, 1, 0])
    signal = np.stack([act[1], act[0] * (act[0] > act[0].mean()), np.zeros_like(act[1]), act[0][::-1]])
    got = ours.project_down(signal, "conv3_1", switches, image_of, "guided", acts)
    want = numpy_net.project_down(signal, "conv3_1", switches, image_of, "guided", acts)
    assert not got[2].any() and rel_err(got, want) <= RTOL
    for b in (0, 1, 3):
        assert rel_err(got[b], want[b]) <= RTOL


@pytest.mark.parametrize("rule", RULES)
def test_class_targets_equal_numpy_and_the_reference(nets, forward, onnx_model, rule):
    ours, numpy_net, ref = nets
    acts, switches, tacts, tswitches = forward
    images, logits = ours.project_class(acts, switches, [3, 7], rule)
    want, want_logits = numpy_net.project_class(acts, switches, [3, 7], rule)
    t_images, t_logits = ref.project_class(tacts, tswitches, [3, 7], rule)
    assert images.shape == (2, 3, TINY_SIZE, TINY_SIZE)
    for n in range(2):
        assert rel_err(images[n], want[n]) <= RTOL and rel_err(images[n], t_images[n]) <= RTOL
    np.testing.assert_array_equal(logits, want_logits)
    np.testing.assert_allclose(logits, t_logits.numpy(), rtol=1e-4, atol=1e-5)


def test_class_targets_of_torchvisions_head(tmp_path):
    from test_class_projection import torchvision_head_vgg

    from export.onnx_export import export_onnx

    model = torchvision_head_vgg()
    path = tmp_path / "tv.onnx"
    export_onnx(model, path, input_size=TINY_SIZE, check_images=check_images())
    ort_model = OnnxModel(path, device="cpu", threads=1)
    _, acts, switches = ort_model.run(np.random.default_rng(2).standard_normal((1, 3, 64, 48), dtype=np.float32))
    ours, ref = OnnxDeconvnet(ort_model), TorchDeconvnet(model)
    for rule in RULES:
        images, logits = ours.project_class(acts, switches, 5, rule)
        want, want_logits = ref.project_class({k: torch.from_numpy(v) for k, v in acts.items()},
                                              {k: torch.from_numpy(v) for k, v in switches.items()}, 5, rule)
        assert rel_err(images[0], want[0]) <= RTOL, rule
        np.testing.assert_allclose(logits, want_logits.numpy(), rtol=1e-4, atol=1e-5)


def test_the_graph_is_convtranspose_and_scatter_with_the_models_weights(onnx_model):
    graph = descent_graph(onnx_model.weights, "conv5_3")
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("ConvTranspose") == 13 and ops.count("ScatterElements") == 4 and "MaxUnpool" not in ops
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    for name in CONV_LAYERS:
        np.testing.assert_array_equal(inits[f"{name}_weight"], onnx_model.weights[name])
    for node in graph.graph.node:
        if node.op_type == "ConvTranspose":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["pads"] == [1, 1, 1, 1] and len(node.input) == 2  # padding 1, no bias
    names = {i.name for i in graph.graph.input}
    assert {f"{p}_switches" for p in POOL_LAYERS} <= names
    small = descent_graph(onnx_model.weights, "conv1_2")
    assert [n.op_type for n in small.graph.node].count("ConvTranspose") == 2
    assert not any(n.op_type == "ScatterElements" for n in small.graph.node)


def test_bad_arguments(nets, forward):
    ours, _, _ = nets
    acts, switches, _, _ = forward
    with pytest.raises(ValueError, match="need the forward activations of conv1_1, conv1_2, conv2_1, conv2_2"):
        ours.project_down(acts["conv2_2"], "conv2_2", switches, rule="gradient")
    with pytest.raises(ValueError, match="unknown layer"):
        ours.project(acts, switches, "conv6_1")
    with pytest.raises(ValueError, match="channels 0..63"):
        ours.project(acts, switches, "conv1_1", "channel", channel=64)
    with pytest.raises(ValueError, match="class_index"):
        ours.project_class(acts, switches, 12)


# ----------------------------------------------------------------------------------------------------------------
# Providers: CUDA without TF32 unless asked for, and every session on the forward model's providers


def test_cuda_is_asked_for_without_tf32():
    assert providers_for("cuda", cuda_usable=True) == [(CUDA, {"use_tf32": "0"}), (CPU, {})]
    assert providers_for("auto", cuda_usable=True) == [(CUDA, {"use_tf32": "0"}), (CPU, {})]
    assert providers_for("cuda", allow_tf32=True, cuda_usable=True) == [(CUDA, {"use_tf32": "1"}), (CPU, {})]
    assert providers_for("cpu", cuda_usable=True) == [(CPU, {})]
    assert providers_for("auto", cuda_usable=False) == [(CPU, {})]
    with pytest.raises(ValueError, match="device"):
        providers_for("tpu")
    assert provider_label(CUDA, {"use_tf32": "0"}) == "CUDAExecutionProvider (TF32 off)"
    assert provider_label(CUDA, {"use_tf32": "1"}) == "CUDAExecutionProvider (TF32 on)"
    assert provider_label(CUDA, {}) == "CUDAExecutionProvider (TF32 on)"  # onnxruntime's own default
    assert provider_label(CPU, {}) == CPU


def test_the_model_requests_what_providers_for_builds(tiny_onnx, monkeypatch):
    """The options OnnxModel hands onnxruntime are those of providers_for (here without a GPU: the CPU's)."""
    import demo.onnx_forward as forward_module

    seen = []
    real = forward_module.ort.InferenceSession

    def spy(source, options, providers):
        seen.append(providers)
        return real(source, options, providers=[p for p in providers if p[0] == CPU])

    monkeypatch.setattr(forward_module.ort, "InferenceSession", spy)
    monkeypatch.setattr(forward_module.ort, "preload_dlls", lambda: None)
    monkeypatch.setattr(forward_module, "providers_for",
                        lambda device, allow_tf32=False: [(CUDA, {"use_tf32": "1" if allow_tf32 else "0"}), (CPU, {})])
    model = OnnxModel(tiny_onnx, device="cpu", threads=1)
    assert seen[-1] == [(CUDA, {"use_tf32": "0"}), (CPU, {})]
    assert model.provider_options[CUDA] == {"use_tf32": "0"}
    OnnxModel(tiny_onnx, device="cpu", threads=1, allow_tf32=True)
    assert seen[-1][0] == (CUDA, {"use_tf32": "1"})


def test_descent_sessions_share_the_forward_providers(onnx_model, nets):
    ours, _, _ = nets
    session = ours.session("conv2_1")
    assert session.get_providers() == onnx_model.providers == ours.providers
    assert session.get_session_options().intra_op_num_threads == onnx_model.threads
    assert ours.session("conv2_1") is session  # built once
    assert onnx_model.provider == "CPUExecutionProvider"


# ----------------------------------------------------------------------------------------------------------------
# The app's choice


def test_the_app_uses_the_onnx_descent_on_cuda_and_numpy_on_the_cpu(onnx_model, forward):
    from demo.app.pipeline import Pipeline, PipelineConfig, make_deconvnet

    assert isinstance(make_deconvnet(onnx_model), Deconvnet)
    assert isinstance(make_deconvnet(onnx_model, "onnx"), OnnxDeconvnet)
    on_cuda = types.SimpleNamespace(device="cuda", weights=onnx_model.weights, providers=[CUDA, CPU])
    assert isinstance(make_deconvnet(on_cuda), OnnxDeconvnet)
    assert isinstance(make_deconvnet(on_cuda, "numpy"), Deconvnet)
    with pytest.raises(ValueError, match="backward"):
        make_deconvnet(onnx_model, "torch")
    numpy_pipe = Pipeline(onnx_model, PipelineConfig(cache_size=0))
    onnx_pipe = Pipeline(onnx_model, PipelineConfig(cache_size=0, backward="onnx"))
    assert (numpy_pipe.backward, onnx_pipe.backward) == ("numpy", "onnx")
    acts, switches, _, _ = forward
    one = {k: v[:1] for k, v in acts.items()}, {k: v[:1] for k, v in switches.items()}
    for pipe in (numpy_pipe, onnx_pipe):
        pipe.warm_up()
    got = onnx_pipe.deconvnet.project(*one, "conv3_3", "topk", k=2, rule="guided").images
    want = numpy_pipe.deconvnet.project(*one, "conv3_3", "topk", k=2, rule="guided").images
    assert rel_err(got, want) <= RTOL


def test_app_options_for_tf32_and_the_backward_stage():
    from app import parse_args

    config = parse_args(["--tf32", "--backward", "onnx", "--device", "cpu"])
    assert config.tf32 and config.backward == "onnx"
    default = parse_args([])
    assert not default.tf32 and default.backward == "auto"
    from demo.analyses.sanity.cli import parse_args as sanity_args

    assert sanity_args(["x.png", "--out", "o", "--tf32"]).tf32 and not sanity_args(["x.png", "--out", "o"]).tf32
