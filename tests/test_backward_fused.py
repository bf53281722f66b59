"""The class projection fused into the model's graph (demo/backward/fused.py), on onnxruntime's CPU provider.

- Every rule: the fused run's projections and logits against the NumPy stage (on onnxruntime's activations and
  switches) and, for "gradient", against torch's autograd on the same network (an independent definition):
  relative error <= 1e-4; several images, one class each, a non-square one.
- Ties in the pools (a flat image): the unpooling found again from the activations goes where the switches point.
- The graph: no switches computed (no MaxPool with indices), the backward convs as Conv, the model's weights.
- What it serves: ``Network.from_model`` uses it, a randomized copy with its own weights; a head it cannot fuse
  (torchvision's) goes through the NumPy stage with the same maps; sizes not multiples of 16 are refused.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_SIZE, check_images

from base.spec import RULES
from demo.analyses.evidence import methods as M
from demo.analyses.sanity.randomize import randomized_model
from demo.backward.deconvnet import Deconvnet
from demo.backward.fused import CLASS_INPUT, LOGITS, PROJECTION, FusedClassProjection, fusable, fused_graph
from demo.onnx_forward import OnnxModel, head_weights

RTOL = 1e-4  # max |ours - theirs| / max |theirs|


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    scale = float(np.abs(want).max())
    assert scale > 0, "a trivial (all-zero) comparison"
    return float(np.abs(got - want).max() / scale)


def numpy_projection(model: OnnxModel, image: np.ndarray, classes, rule: str, weights=None, head=None):
    """The NumPy stage's class projections and logits of ``image`` (N, 3, H, W) on ``model``'s forward run."""
    _, acts, switches = model.run(image)
    net = Deconvnet(weights if weights is not None else model.weights)
    return net.project_class(acts, switches, classes, rule, head=head if head is not None else model.head)


@pytest.fixture(scope="module")
def fused(onnx_model):
    projection = FusedClassProjection.for_model(onnx_model)
    assert projection is not None
    return projection


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("shape", [(3, 3, TINY_SIZE, TINY_SIZE), (1, 3, TINY_SIZE + 16, TINY_SIZE)])
def test_every_rule_equals_the_numpy_stage(onnx_model, fused, rule, shape):
    image = np.random.default_rng(5).standard_normal(shape, dtype=np.float32)
    classes = np.array([3, 0, 7][: shape[0]])
    got, logits = fused.project_class(image, classes, rule)
    want, want_logits = numpy_projection(onnx_model, image, classes, rule)
    assert got.shape == shape and got.dtype == np.float32
    for n in range(shape[0]):
        assert rel_err(got[n], want[n]) <= RTOL, (rule, n)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)


def test_the_gradient_is_autograds(fused, tiny_vgg):
    image = np.random.default_rng(6).standard_normal((2, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    classes = np.array([2, 9])
    x = torch.from_numpy(image).requires_grad_(True)
    logits = tiny_vgg(x)
    logits[torch.arange(2), torch.from_numpy(classes)].sum().backward()
    got, got_logits = fused.project_class(image, classes, "gradient")
    for n in range(2):
        assert rel_err(got[n], x.grad[n].numpy()) <= RTOL
    np.testing.assert_allclose(got_logits, logits.detach().numpy()[np.arange(2), classes], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rule", RULES)
def test_ties_in_the_pools_go_where_the_switches_point(onnx_model, fused, rule):
    image = np.zeros((2, 3, TINY_SIZE, TINY_SIZE), np.float32)  # flat: every pool window of the interior tied
    image[1, :, 8:24, 4:20] = 1.5  # a flat square on a flat ground
    _, acts, _ = onnx_model.run(image)
    windows = acts["conv1_2"][:, :, :16, :16].reshape(2, -1, 8, 2, 8, 2)
    tied = (windows == windows.max(axis=(3, 5), keepdims=True)).sum(axis=(3, 5)) > 1
    assert tied.mean() > 0.5  # the check is about ties: most windows have some
    got, _ = fused.project_class(image, [4, 4], rule)
    want, _ = numpy_projection(onnx_model, image, [4, 4], rule)
    for n in range(2):
        assert rel_err(got[n], want[n]) <= RTOL, (rule, n)


def test_the_graph_computes_no_switches_and_projects_with_the_models_weights(tiny_onnx, onnx_model):
    proto = onnx.load(str(tiny_onnx))
    graph = fused_graph(proto, "gradient")
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("Conv") == 13 + 13 and "ConvTranspose" not in ops and "ScatterElements" in ops
    assert all(len(node.output) == 1 for node in graph.graph.node if node.op_type == "MaxPool")
    assert [i.name for i in graph.graph.input] == ["image", CLASS_INPUT]
    assert [o.name for o in graph.graph.output] == [PROJECTION, LOGITS]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
    w = onnx_model.weights["conv3_2"]  # (C_out, C_in, 3, 3): the backward conv's kernel is flipped and swapped
    np.testing.assert_array_equal(inits["fused/conv3_2/weight"], w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    assert len(proto.graph.output) == 18  # the model's graph itself is not changed


def test_the_evidence_methods_use_it(onnx_model, fused, monkeypatch):
    network = M.Network.from_model(onnx_model)
    assert network.fused is fused
    calls = []
    monkeypatch.setattr(FusedClassProjection, "project_class",
                        lambda self, image, classes, rule: calls.append(len(image)) or (
                            np.zeros_like(image), np.zeros(len(image), np.float32)))
    image = np.random.default_rng(7).standard_normal((3, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    M.class_projection(network, image, np.array([1, 2, 3]), "gradient", batch_size=2)
    assert calls == [2, 1]


def test_a_randomized_copy_projects_with_its_own_weights(onnx_model):
    clone = randomized_model(onnx_model, ["conv5_3", "conv2_1", "head"], seed=3)
    fused = FusedClassProjection.for_model(clone)
    image = np.random.default_rng(8).standard_normal((1, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    got, logits = fused.project_class(image, [5], "gradient")
    want, want_logits = numpy_projection(clone, image, [5], "gradient", clone.weights, clone.head)
    original, _ = FusedClassProjection.for_model(onnx_model).project_class(image, [5], "gradient")
    assert rel_err(got[0], want[0]) <= RTOL
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    assert rel_err(original[0], want[0]) > 0.1  # the original's weights give another map


def test_sizes_not_multiples_of_16_are_refused(fused):
    image = np.random.default_rng(9).standard_normal((1, 3, 40, 40), dtype=np.float32)  # pools would floor 5x5
    assert not fused.fits(image.shape) and fused.fits((1, 3, 48, 32))
    with pytest.raises(ValueError, match="multiples of 16"):
        fused.project_class(image, [1], "gradient")


def test_bad_classes_and_rules(fused, tiny_onnx):
    image = np.zeros((1, 3, TINY_SIZE, TINY_SIZE), np.float32)
    with pytest.raises(ValueError, match="class_index must lie in 0..11"):
        fused.project_class(image, [12], "gradient")
    with pytest.raises(ValueError, match="rule must be one of"):
        fused_graph(onnx.load(str(tiny_onnx)), "saliency")


def test_torchvisions_head_is_not_fused_and_goes_through_numpy(tmp_path):
    from test_class_projection import torchvision_head_vgg

    from export.onnx_export import export_onnx

    path = tmp_path / "tv.onnx"
    export_onnx(torchvision_head_vgg(), path, input_size=TINY_SIZE, check_images=check_images())
    model = OnnxModel(path, device="cpu", threads=1)
    proto = onnx.load(str(path))
    assert "not the global max-pool" in fusable(proto, head_weights(proto))
    with pytest.raises(ValueError, match="cannot fuse"):
        fused_graph(proto, "gradient")
    network = M.Network.from_model(model)
    assert network.fused is None
    image = np.random.default_rng(10).standard_normal((1, 3, 64, 48), dtype=np.float32)
    got, _ = M.class_projection(network, image, np.array([5]), "guided")
    want, _ = numpy_projection(model, image, [5], "guided")
    np.testing.assert_array_equal(got, want)
