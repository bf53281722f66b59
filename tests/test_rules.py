"""Backward rules (deconvnet, guided, gradient) of every projection, against independent autograd definitions.

- PyTorch reference (model/deconvnet.py) vs torch autograd through the network written out here, each ReLU's
  backward replaced by the rule's: "gradient" is plain autograd (F.relu), "guided" passes grad where grad > 0
  and input > 0, "deconvnet" passes relu(grad). Every conv layer, every mode, every rule, and rules per layer.
- NumPy stage (demo/backward/deconvnet.py) vs the reference, both fed onnxruntime's activations and switches (so a
  near-tie in a max-pool cannot flip an argmax between the two).
- A hand-computed 4x4 case at one ReLU where the three rules differ.

The tiny model of conftest.py (VGG16-BN with random BN statistics) with batch norm folded, 32x32 inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from autograd_rules import AFTER_POOL, conv_forward, one_hot_strongest, rel_err
from conftest import onnx_outputs

from base.spec import CONV_LAYERS, RULES, layer_rules
from demo.backward.deconvnet import Deconvnet, deconv, project_down, relu_backward, unpool
from model.deconvnet import Deconvnet as TorchDeconvnet
from model.deconvnet import project_down as torch_project_down
from model.vgg import Features, fold_batch_norm

# Written out here (not taken from base/spec.py) for the independent definitions below.
N, K_TOP = 2, 2  # images; top-k channels
ROWS = 2 + K_TOP  # signal sets per image: layer, channel, k x topk
REF_TOL, NUMPY_TOL = 1e-5, 1e-4  # relative L2 errors: reference vs autograd, NumPy vs reference
MIXED = [RULES[i % 3] for i in range(len(CONV_LAYERS))]  # deconvnet, guided, gradient, deconvnet, ... from conv1_1


@pytest.fixture(scope="module")
def folded(tiny_vgg):
    return fold_batch_norm(tiny_vgg).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def traced(folded):
    """forward_all of N images (the reference's input), and ROWS copies of them for one backward per layer."""
    x = torch.randn(N, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    xs = x.repeat(ROWS, 1, 1, 1)  # row r * N + n is image n
    with torch.no_grad():
        out = folded.forward_all(xs)  # the same batch as the traced forwards: the same kernels, the same switches
    first = Features(out.logits[:N], {k: v[:N] for k, v in out.activations.items()},
                     {k: v[:N] for k, v in out.switches.items()})
    return TorchDeconvnet(folded), first, xs


def autograd_projections(folded, xs, out: Features, layer: str,
                         rules: dict[str, str]) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Autograd's projections (ROWS, N, 3, H, W) of the modes' signals (layer, channel, topk x K_TOP), the
    channel of "channel" mode and the (N, K_TOP) channels of "topk"."""
    xs = xs.detach().clone().requires_grad_(True)
    acts = conv_forward(folded, xs, rules)
    for name, a in acts.items():
        torch.testing.assert_close(a.detach()[:N], out.activations[name], msg=name)
    a = out.activations[layer]
    c = int(a[0].amax(dim=(1, 2)).argmax())  # image 0's strongest channel, for "channel" mode (all images)
    top = a.amax(dim=(2, 3)).sort(dim=1, descending=True).indices[:, :K_TOP]  # (N, k)
    signals = [a, one_hot_strongest(a, [c] * N), *(one_hot_strongest(a, top[:, j].tolist()) for j in range(K_TOP))]
    (grads,) = torch.autograd.grad(acts[layer], xs, grad_outputs=torch.cat(signals))
    return grads.view(ROWS, N, *xs.shape[1:]), c, top


def check_reference(deconvnet, out, grads, c, top, layer, rule) -> None:
    """The reference's three modes against autograd's gradients ``grads`` (ROWS, N, 3, H, W)."""
    assert (grads.flatten(2).abs().amax(dim=2) > 0).any(), f"{layer} {rule}: all-zero autograd projections"
    got = deconvnet.project(out.activations, out.switches, layer, "layer", rule=rule).images
    assert rel_err(got, grads[0]) <= REF_TOL, f"{layer} {rule} layer"
    got = deconvnet.project(out.activations, out.switches, layer, "channel", channel=c, rule=rule).images
    assert rel_err(got, grads[1]) <= REF_TOL, f"{layer} {rule} channel"
    got = deconvnet.project(out.activations, out.switches, layer, "topk", k=K_TOP, rule=rule)
    assert got.channels.view(N, K_TOP).tolist() == top.tolist()
    for n in range(N):
        for j in range(K_TOP):
            want = grads[2 + j, n]
            if want.abs().max() == 0:  # a rule may cut a whole projection (guided, on a dead path)
                assert got.images[n * K_TOP + j].abs().max() == 0
            else:
                assert rel_err(got.images[n * K_TOP + j], want) <= REF_TOL, (layer, rule, n, j)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layer", CONV_LAYERS)
def test_reference_equals_autograd(folded, traced, layer, rule):
    deconvnet, out, xs = traced
    grads, c, top = autograd_projections(folded, xs, out, layer, dict.fromkeys(CONV_LAYERS, rule))
    check_reference(deconvnet, out, grads, c, top, layer, rule)


@pytest.mark.parametrize("layer", ["conv1_2", "conv2_1", "conv3_3", "conv4_1", "conv5_3"])
def test_reference_with_a_rule_per_layer_equals_autograd(folded, traced, layer):
    deconvnet, out, xs = traced
    rules = dict(zip(CONV_LAYERS, MIXED, strict=True))
    grads, c, top = autograd_projections(folded, xs, out, layer, rules)
    check_reference(deconvnet, out, grads, c, top, layer, MIXED)  # a list, one rule per conv layer
    check_reference(deconvnet, out, grads, c, top, layer, rules)  # the same as a dict


def test_rules_differ_and_default_is_deconvnet(traced):
    deconvnet, out, _ = traced
    images = {rule: deconvnet.project(out.activations, out.switches, "conv3_2", rule=rule).images for rule in RULES}
    assert torch.equal(deconvnet.project(out.activations, out.switches, "conv3_2").images, images["deconvnet"])
    for a, b in [("deconvnet", "guided"), ("deconvnet", "gradient"), ("guided", "gradient")]:
        assert rel_err(images[a], images[b]) > 0.05, (a, b)


# --- NumPy vs the reference, on onnxruntime's forward pass ----------------------------------------------------

@pytest.fixture(scope="module")
def ort_forward(onnx_model):
    """onnxruntime's activations and switches for two 32x32 images, as NumPy arrays and torch tensors."""
    return onnx_outputs(onnx_model, 32, seed=21, tensors=True)


def check_parity(ours, ref, acts, switches, tacts, tswitches, layer, mode, rule) -> None:
    kwargs = {"channel": {"channel": int(acts[layer][0].max(axis=(1, 2)).argmax())}, "topk": {"k": 3}}.get(mode, {})
    got = ours.project(acts, switches, layer, mode, rule=rule, **kwargs)
    want = ref.project(tacts, tswitches, layer, mode, rule=rule, **kwargs)
    assert got.images.shape == tuple(want.images.shape) and got.images.dtype == np.float32
    for b in range(got.images.shape[0]):  # row by row: a zero row must stay zero
        w = want.images[b]
        if w.abs().max() == 0:
            assert not got.images[b].any(), f"{layer} {mode} {rule} row {b}"
        else:
            assert rel_err(got.images[b], w) <= NUMPY_TOL, f"{layer} {mode} {rule} row {b}"
    assert np.abs(want.images.numpy()).max() > 0, f"{layer} {mode} {rule}: a trivial comparison"


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", ["layer", "channel", "topk"])
def test_numpy_equals_reference(onnx_model, tiny_vgg, ort_forward, mode, rule):
    ours, ref = Deconvnet(onnx_model.weights), TorchDeconvnet(tiny_vgg)
    for layer in CONV_LAYERS:
        check_parity(ours, ref, *ort_forward, layer, mode, rule)


@pytest.mark.parametrize("mode", ["layer", "channel", "topk"])
def test_numpy_equals_reference_with_a_rule_per_layer(onnx_model, tiny_vgg, ort_forward, mode):
    ours, ref = Deconvnet(onnx_model.weights), TorchDeconvnet(tiny_vgg)
    as_dict = dict(zip(CONV_LAYERS, MIXED[::-1], strict=True))
    for layer in ("conv1_1", "conv2_2", "conv4_1", "conv5_3"):
        check_parity(ours, ref, *ort_forward, layer, mode, MIXED)
        check_parity(ours, ref, *ort_forward, layer, mode, as_dict)


@pytest.fixture(scope="module")
def ort_forward64(onnx_model):
    """onnxruntime's outputs for two 64x64 images: room for receptive-field windows smaller than the image."""
    return onnx_outputs(onnx_model, 64, seed=8, tensors=True)


@pytest.mark.parametrize("rule", ["guided", "gradient"])
@pytest.mark.parametrize("layer", ["conv2_2", "conv3_3", "conv4_2"])
def test_windows_crop_the_masks(onnx_model, tiny_vgg, ort_forward64, layer, rule):
    """Single activations go down in receptive-field windows, the masks cropped to them: same as the dense
    reference, as each row alone, and each row stays inside its receptive field."""
    acts, switches, tacts, tswitches = ort_forward64
    net = Deconvnet(onnx_model.weights)
    check_parity(net, TorchDeconvnet(tiny_vgg), acts, switches, tacts, tswitches, layer, "topk", rule)
    together = net.project(acts, switches, layer, "topk", k=5, rule=rule).images
    alone = net.project(acts, switches, layer, "topk", k=5, rule=rule, rows_per_pass=1).images
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5 * np.abs(alone).max())
    # project_points with rows of both images interleaved, against project_down of the same dense signals
    image, channel = np.array([1, 0, 1]), np.array([3, 5, 0])
    h, w = acts[layer].shape[2:]
    row, col = np.array([0, h // 2, h - 1]), np.array([w - 1, w // 3, 0])
    points = net.project_points(acts[layer], layer, switches, image, channel, row, col, rule=rule, activations=acts)
    signal = np.zeros((3, *acts[layer].shape[1:]), dtype=np.float32)
    signal[np.arange(3), channel, row, col] = acts[layer][image, channel, row, col]
    dense = project_down(signal, layer, onnx_model.weights, switches, image_of=image, rule=rule, activations=acts)
    np.testing.assert_allclose(points, dense, rtol=0, atol=1e-5 * max(np.abs(dense).max(), 1e-30))


def test_deconvnet_rule_equals_the_plain_descent(onnx_model, ort_forward):
    """rule="deconvnet" (and the default) is today's recipe: relu, transposed conv, unpool, layer by layer."""
    acts, switches, _, _ = ort_forward
    net = Deconvnet(onnx_model.weights)
    for layer in ("conv1_2", "conv3_1", "conv5_3"):
        dense = acts[layer]
        for name in reversed(CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]):
            dense = deconv(np.maximum(dense, 0), onnx_model.weights[name])
            if name in AFTER_POOL:
                dense = unpool(dense, switches[f"pool{int(name[4]) - 1}"])
        for kwargs in ({}, {"rule": "deconvnet"}):
            got = net.project(acts, switches, layer, **kwargs).images
            np.testing.assert_allclose(got, dense, rtol=0, atol=1e-5 * np.abs(dense).max())


# --- hand-computed: one ReLU, a 4x4 map -------------------------------------------------------------------------

SIGNAL = [[2, -1, 0, 3],
          [-2, 4, -3, 1],
          [5, -4, 1, -1],
          [0, 2, -5, 6]]  # fmt: skip
ACTIVATION = [[1, 0, 2, 0],
              [3, 0, 0, 1],
              [0, 2, 0, 4],
              [1, 1, 0, 0]]  # fmt: skip  (the ReLU's forward output: where it was active)
PASSED = {
    "deconvnet": [[2, 0, 0, 3],
                  [0, 4, 0, 1],
                  [5, 0, 1, 0],
                  [0, 2, 0, 6]],  # relu(signal): the activation plays no part
    "guided": [[2, 0, 0, 0],
               [0, 0, 0, 1],
               [0, 0, 0, 0],
               [0, 2, 0, 0]],  # signal > 0 and activation > 0
    "gradient": [[2, 0, 0, 0],
                 [-2, 0, 0, 1],
                 [0, -4, 0, -1],
                 [0, 2, 0, 0]],  # activation > 0, whatever the sign of the signal
}  # fmt: skip


@pytest.mark.parametrize("rule", RULES)
def test_hand_computed_4x4(rule):
    """conv1_1 as a single ReLU then a 1 -> 3 channel transposed conv whose only tap is the centre, (1, 2, -1):
    each pixel channel is that factor times what the ReLU passed."""
    weight = np.zeros((1, 3, 3, 3), dtype=np.float32)
    weight[0, :, 1, 1] = [1, 2, -1]
    signal = np.array(SIGNAL, dtype=np.float32)[None, None]
    activation = {"conv1_1": np.array(ACTIVATION, dtype=np.float32)[None, None]}
    passed = np.array(PASSED[rule], dtype=np.float32)
    want = np.stack([passed, 2 * passed, -passed])[None]
    got = project_down(signal, "conv1_1", {"conv1_1": weight}, {}, rule=rule, activations=activation)
    np.testing.assert_array_equal(got, want)
    got = torch_project_down(torch.from_numpy(signal), "conv1_1", {"conv1_1": torch.from_numpy(weight)}, {},
                             rule=rule, activations={k: torch.from_numpy(v) for k, v in activation.items()})
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(relu_backward(signal[0, 0], activation["conv1_1"][0, 0], rule), passed)


# --- arguments ---------------------------------------------------------------------------------------------------

def test_layer_rules_resolution():
    assert layer_rules("guided", ["conv1_1", "conv1_2"]) == {"conv1_1": "guided", "conv1_2": "guided"}
    assert layer_rules(["gradient", "guided", "deconvnet"], ["conv1_1", "conv1_2"]) == {
        "conv1_1": "gradient", "conv1_2": "guided"}  # entries past the last layer are unused
    assert layer_rules({"conv1_1": "gradient", "conv5_3": "guided"}, ["conv1_1"]) == {"conv1_1": "gradient"}
    with pytest.raises(ValueError, match=r"rule must be one of \('deconvnet', 'guided', 'gradient'\), got 'grad'"):
        layer_rules("grad", ["conv1_1"])
    with pytest.raises(ValueError, match=r"needs 3 rules \(conv1_1 \.\.\. conv2_1\), got 2"):
        layer_rules(["guided", "guided"], ["conv1_1", "conv2_1"])
    with pytest.raises(ValueError, match="no rule for conv1_2"):
        layer_rules({"conv1_1": "guided"}, ["conv1_1", "conv1_2"])
    with pytest.raises(ValueError, match=r"conv1_2: 'relu'"):
        layer_rules({"conv1_1": "guided", "conv1_2": "relu"}, ["conv1_1", "conv1_2"])


def test_masking_rules_need_the_activations(onnx_model, ort_forward, traced):
    acts, switches, _, _ = ort_forward
    net = Deconvnet(onnx_model.weights)
    signal = acts["conv2_1"]
    with pytest.raises(ValueError, match=r"need the forward activations of conv1_1, conv1_2, conv2_1"):
        net.project_down(signal, "conv2_1", switches, rule="gradient")
    with pytest.raises(ValueError, match=r"activations of conv1_1 \(pass activations="):
        net.project_down(signal, "conv2_1", switches, rule=["guided", "deconvnet", "deconvnet"],
                         activations={"conv1_2": acts["conv1_2"]})
    np.testing.assert_array_equal(net.project_down(signal, "conv2_1", switches),  # deconvnet needs none
                                  net.project(acts, switches, "conv2_1").images)
    with pytest.raises(ValueError, match="rule must be one of"):
        net.project(acts, switches, "conv2_1", rule="saliency")
    deconvnet, out, _ = traced
    with pytest.raises(ValueError, match="need the forward activations of conv1_1"):
        torch_project_down(out.activations["conv1_2"], "conv1_2", deconvnet.weights, out.switches, rule="guided")
    with pytest.raises(ValueError, match="activations of shape"):
        small = {k: v[:1] for k, v in out.activations.items()}
        torch_project_down(out.activations["conv1_2"], "conv1_2", deconvnet.weights, out.switches, rule="guided",
                           activations=small)
