"""Class projections: a class's logit back to pixels, for the global-max-pool head and torchvision's head.

- "gradient" equals torch autograd's d logit_c / d input through the model's own forward (batch norm folded);
  "guided" and "deconvnet" equal autograd with those ReLU backwards at every ReLU, the head's included.
- The PyTorch reference within 1e-5 of autograd, the NumPy stage within 1e-4 of the reference (relative L2),
  both fed onnxruntime's activations and switches.
- The head read from the ONNX graph: its Linear layers, its logits against onnxruntime's probabilities, the
  adaptive average pool, pool5 and the backward of the gmp head by hand.

torchvision's head keeps its layout here (pool5, adaptive 7x7 average pool, Linear-ReLU-Dropout x2, Linear) but
with 64 and 48 hidden units instead of 4096, so that its export stays small and fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from autograd_rules import RELU, conv_forward, rel_err
from conftest import TINY_SIZE, check_images, random_bn_vgg
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from base.spec import CONV_LAYERS, RELUS, RULES
from demo.backward.deconvnet import Deconvnet
from demo.backward.head import Head, HeadPass, adaptive_pool_matrix, head_backward, head_forward, max_pool_2x2
from demo.onnx_forward import OnnxModel, head_weights
from model.deconvnet import Deconvnet as TorchDeconvnet
from model.vgg import adaptive_pool_matrix as torch_adaptive_pool_matrix
from model.vgg import fold_batch_norm

REF_TOL, NUMPY_TOL = 1e-5, 1e-4
CLASSES = [3, 7]  # one class per image


def autograd_logits(model, x: torch.Tensor, rules: dict[str, str]) -> torch.Tensor:
    """The network written out by hand, each ReLU backward by its rule (the head's "fc6", "fc7" too): logits.

    The global max-pool is a max over each flattened plane, whose backward goes to the first maximum only.
    """
    y = conv_forward(model, x, rules)[CONV_LAYERS[-1]]
    if model.head == "gmp":
        return model.classifier[1](y.flatten(2).max(dim=2).values)
    y = F.adaptive_avg_pool2d(F.max_pool2d(y, 2, 2), (7, 7)).flatten(1)
    fc = model.classifier
    y = RELU[rules["fc6"]](fc[0](y))
    y = RELU[rules["fc7"]](fc[3](y))
    return fc[6](y)


def torchvision_head_vgg(seed: int = 4):
    """A random VGG16-BN with torchvision's head (hidden layers narrowed to 64 and 48 units), random biases."""
    model = random_bn_vgg(seed)
    torch.manual_seed(seed)
    model.head = "torchvision"
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(0.5),
                                     nn.Linear(64, 48), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(48, 12))
    with torch.no_grad():
        model.classifier[0].weight.mul_(20)  # conv5_3 is small after random convs: keep fc6 half active
    return model.eval()


@pytest.fixture(scope="module")
def tv_model():
    return torchvision_head_vgg()


@pytest.fixture(scope="module")
def tv_onnx(tv_model, tmp_path_factory) -> OnnxModel:
    from export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx_tv") / "tiny_tv.onnx"
    export_onnx(tv_model, path, input_size=TINY_SIZE, check_images=check_images())
    return OnnxModel(path, device="cpu")


@pytest.fixture(scope="module", params=["gmp", "torchvision"])
def case(request, tiny_vgg, onnx_model, tv_model, tv_onnx):
    """(head name, the torch model (BN), its folded copy, its OnnxModel)."""
    model, ort = (tiny_vgg, onnx_model) if request.param == "gmp" else (tv_model, tv_onnx)
    return request.param, model, fold_batch_norm(model).eval().requires_grad_(False), ort


SIZES = {"gmp": [(32, 32), (48, 32)], "torchvision": [(32, 32), (64, 48), (48, 80)]}  # (H, W)


def inputs(H: int, W: int) -> torch.Tensor:
    return torch.randn(len(CLASSES), 3, H, W, generator=torch.Generator().manual_seed(H * 100 + W))


def autograd_grads(folded, x: torch.Tensor, rules: dict[str, str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """d logit_{CLASSES[n]} / d x_n and the logits (N,): the model's own forward (rules None) or the hand-written
    one with the rules' ReLU backwards."""
    x = x.clone().requires_grad_(True)
    logits = folded(x) if rules is None else autograd_logits(folded, x, rules)
    chosen = logits[torch.arange(len(CLASSES)), torch.tensor(CLASSES)]
    (grad,) = torch.autograd.grad(chosen.sum(), x)
    return grad, chosen.detach()


def check(case, rule, rules_for_autograd: dict[str, str] | None) -> None:
    head, model, folded, ort = case
    ours, ref = Deconvnet.from_model(ort), TorchDeconvnet(model)
    for H, W in SIZES[head]:
        x = inputs(H, W)
        with torch.no_grad():
            out = folded.forward_all(x)
        want, want_logits = autograd_grads(folded, x, rules_for_autograd)
        assert want.abs().max() > 0, f"{head} {H}x{W}: all-zero autograd gradient"
        got, logits = ref.project_class(out.activations, out.switches, CLASSES, rule)
        assert got.shape == (len(CLASSES), 3, H, W)
        for n in range(len(CLASSES)):
            assert rel_err(got[n], want[n]) <= REF_TOL, (head, H, W, n)
        torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
        # NumPy against the reference, both on onnxruntime's activations and switches
        probs, acts, switches = ort.run(x.numpy())
        images, np_logits = ours.project_class(acts, switches, CLASSES, rule, head=ort.head)
        t_images, t_logits = ref.project_class({k: torch.from_numpy(v) for k, v in acts.items()},
                                               {k: torch.from_numpy(v) for k, v in switches.items()}, CLASSES, rule)
        assert images.shape == (len(CLASSES), 3, H, W) and images.dtype == np.float32
        for n in range(len(CLASSES)):
            assert rel_err(images[n], t_images[n]) <= NUMPY_TOL, (head, H, W, n)
        np.testing.assert_allclose(np_logits, t_logits.numpy(), rtol=1e-4, atol=1e-5)


def test_gradient_is_autograd_of_the_logit(case):
    check(case, "gradient", None)  # the model's own forward and plain autograd


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_equals_autograd_with_its_relu_backward(case, rule):
    check(case, rule, dict.fromkeys(RELUS, rule))


def test_a_rule_per_relu(case):
    head = case[0]
    rules = {name: RULES[(i + 1) % 3] for i, name in enumerate(RELUS)}  # conv1_1 guided, conv1_2 gradient, ...
    rules["conv5_3"] = "deconvnet"
    if head == "torchvision":
        rules.update(fc6="gradient", fc7="guided")
        check(case, list(rules.values()), rules)  # a list of 15
    else:
        check(case, [rules[n] for n in CONV_LAYERS], rules)  # a list of 13
    check(case, rules, rules)  # a dict


def test_rules_differ_at_the_heads_relus(case):
    """The rule at conv5_3 (and torchvision's fc6, fc7) changes the signal: the three rules give three pictures."""
    head, _, _, ort = case
    _, acts, switches = ort.run(inputs(64, 64).numpy())
    net = Deconvnet.from_model(ort)
    images = {r: net.project_class(acts, switches, CLASSES, r)[0] for r in RULES}  # from_model: the model's head
    for a, b in [("deconvnet", "guided"), ("deconvnet", "gradient"), ("guided", "gradient")]:
        assert rel_err(images[a], images[b]) > 0.05, (head, a, b)
    with pytest.raises(ValueError, match="needs 15 rules" if head == "torchvision" else "needs 13 rules"):
        net.project_class(acts, switches, 0, ["gradient"] * 12, head=ort.head)
    with pytest.raises(ValueError, match=r"class_index must lie in 0\.\.11, got 12"):
        net.project_class(acts, switches, 12, head=ort.head)
    with pytest.raises(ValueError, match="needs the model's head"):
        Deconvnet(ort.weights).project_class(acts, switches, 0)


# --- the head read from the graph --------------------------------------------------------------------------------

def test_head_weights_are_the_models(case):
    head, model, folded, ort = case
    got = ort.head
    assert got.kind == head and got.num_classes == 12
    indices = (1,) if head == "gmp" else (0, 3, 6)
    assert len(got.linears) == len(indices)
    for (w, b), i in zip(got.linears, indices, strict=True):
        np.testing.assert_array_equal(w, folded.classifier[i].weight.numpy())
        np.testing.assert_array_equal(b, folded.classifier[i].bias.numpy())
    x = inputs(64, 48).numpy()
    probs, acts, _ = ort.run(x)
    logits = head_forward(got, acts["conv5_3"]).logits
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), probs, rtol=1e-4, atol=1e-6)


def test_head_of_matmul_and_add():
    """A Linear written as MatMul by a constant (in, out) plus Add of a constant, after the last Conv."""
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((512, 12), dtype=np.float32), rng.standard_normal(12, dtype=np.float32)
    conv = rng.standard_normal((512, 3, 3, 3), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv_w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("ReduceMax", ["c"], ["m"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["m", "fc_w"], ["y"]),
         helper.make_node("Add", ["fc_b", "y"], ["logits"])],
        "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 12])],
        [numpy_helper.from_array(conv, "conv_w"), numpy_helper.from_array(w, "fc_w"),
         numpy_helper.from_array(b, "fc_b")])
    head = head_weights(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert head.kind == "gmp" and len(head.linears) == 1  # no model card: one Linear layer
    np.testing.assert_array_equal(head.linears[0][0], w.T)
    np.testing.assert_array_equal(head.linears[0][1], b)


@pytest.mark.parametrize("size", range(1, 21))
def test_adaptive_pool_matrix_is_pytorchs(size):
    x = torch.randn(1, 2, size, size + 3, generator=torch.Generator().manual_seed(size))
    want = F.adaptive_avg_pool2d(x, (7, 7))
    for matrix in (lambda n: torch.from_numpy(adaptive_pool_matrix(n)), torch_adaptive_pool_matrix):
        torch.testing.assert_close(matrix(size) @ x @ matrix(size + 3).T, want, rtol=1e-6, atol=1e-6)


def test_pool5_first_maximum_in_row_major_order():
    x = np.array([[[[1, 5, 2, 2, 9],
                    [5, 0, 2, 2, 9],
                    [0, 0, 3, 1, 9],
                    [0, 0, 0, 3, 9],
                    [7, 7, 7, 7, 7]]]], dtype=np.float32)  # fmt: skip  (odd sides: the last row/column unused)
    values, switches = max_pool_2x2(x)
    np.testing.assert_array_equal(values[0, 0], [[5, 2], [0, 3]])
    np.testing.assert_array_equal(switches[0, 0], [[1, 2], [10, 12]])  # ties: (0,1) not (1,0); (0,2); (2,0); (2,2)
    _, torch_switches = F.max_pool2d(torch.from_numpy(x), 2, 2, return_indices=True)
    np.testing.assert_array_equal(switches, torch_switches.numpy())


def test_gmp_head_backward_by_hand():
    """logit_c = W[c] . max over each plane + b: the signal is W[c, ch] at each plane's first maximum."""
    feature = np.zeros((1, 2, 2, 3), dtype=np.float32)
    feature[0, 0] = [[1, 4, 4], [0, 2, 3]]  # maximum 4, first at (0, 1)
    feature[0, 1] = [[0, 0, 0], [0, 0, 0]]  # a dead channel: its maximum 0 first at (0, 0)
    weight = np.array([[2.0, -3.0], [0.5, 1.0]], dtype=np.float32)  # (K = 2, C = 2)
    head = Head("gmp", ((weight, np.array([0.25, -1.0], dtype=np.float32)),))
    forward = head_forward(head, feature)
    assert isinstance(forward, HeadPass)
    np.testing.assert_allclose(forward.logits, [[2 * 4 - 3 * 0 + 0.25, 0.5 * 4 + 0 - 1.0]])
    signal = head_backward(head, forward, np.array([0]), {})
    want = np.zeros((1, 2, 2, 3), dtype=np.float32)
    want[0, 0, 0, 1], want[0, 1, 0, 0] = 2.0, -3.0
    np.testing.assert_array_equal(signal, want)
