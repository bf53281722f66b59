"""Sessions of the graph pruned to some outputs (``prune_graph``, ``OnnxModel.session_for``): the same values as
the full graph, only what the outputs need, and pools without indices where nobody reads them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import TINY_SIZE

from base import spec
from demo.analyses.evidence.methods import Network, logits
from demo.onnx_forward import prune_graph


def _image(seed: int = 0, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)


def _full(onnx_model, names, x):
    values = onnx_model.session.run(list(spec.OUTPUT_NAMES), {spec.INPUT_NAME: x})
    out = dict(zip(spec.OUTPUT_NAMES, values, strict=True))
    return [out[n] for n in names]


def _kernel(node: onnx.NodeProto) -> list[int]:
    return next(list(a.ints) for a in node.attribute if a.name == "kernel_shape")


def test_probs_only_graph_drops_the_switches_and_their_indices(tiny_onnx):
    proto = prune_graph(onnx.load(str(tiny_onnx)), [spec.PROBS_NAME])
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == [spec.PROBS_NAME]
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    assert pools and all(len(n.output) == 1 for n in pools)  # no pool computes indices any more
    full = onnx.load(str(tiny_onnx))
    assert len(proto.graph.node) < len(full.graph.node)  # the switches' index arithmetic is gone
    produced = {o for n in proto.graph.node for o in n.output} | {i.name for i in proto.graph.initializer}
    assert all(i in produced or i == spec.INPUT_NAME for n in proto.graph.node for i in n.input if i)


def test_a_pool_whose_switches_are_asked_for_keeps_its_indices(tiny_onnx):
    switch = spec.switch_output("pool2")
    proto = prune_graph(onnx.load(str(tiny_onnx)), [switch])
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool" and _kernel(n) == [2, 2]]
    assert [len(n.output) for n in pools] == [1, 2]  # pool1 feeds conv2_1 only; pool2's indices are the output
    assert not [n for n in proto.graph.node if n.op_type == "Conv" and n.output[0].startswith("conv3")]


@pytest.mark.parametrize("names", [[spec.PROBS_NAME], ["conv3_3", spec.PROBS_NAME], ["conv2_1"],
                                   [spec.switch_output("pool3"), "conv1_2"]])
def test_pruned_session_gives_the_full_graphs_values(onnx_model, names):
    x = _image()
    got = onnx_model.session_for(names).run(None, {spec.INPUT_NAME: x})
    assert len(got) == len(names)
    for name, a, b in zip(names, got, _full(onnx_model, names, x), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_session_for_is_made_once_and_the_full_set_is_the_session(onnx_model):
    assert onnx_model.session_for(spec.OUTPUT_NAMES) is onnx_model.session
    assert onnx_model.session_for([spec.PROBS_NAME]) is onnx_model.session_for((spec.PROBS_NAME,))
    with pytest.raises(ValueError, match="no outputs"):
        onnx_model.session_for(["conv9_9"])


def test_predict_and_the_networks_probs_and_logits_use_the_pruned_graph(onnx_model):
    x = _image(seed=1, n=5)
    (probs,) = _full(onnx_model, [spec.PROBS_NAME], x)
    np.testing.assert_allclose(onnx_model.predict(x), probs, rtol=1e-5, atol=1e-7)
    network = Network.from_model(onnx_model)
    np.testing.assert_allclose(network.probs(x, batch_size=2), probs, rtol=1e-5, atol=1e-7)
    z = logits(network, x, batch_size=2)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), probs, rtol=1e-4, atol=1e-6)
    assert (spec.PROBS_NAME,) in onnx_model._pruned and ("conv5_3",) in onnx_model._pruned


def test_a_randomized_copy_prunes_its_own_graph(onnx_model):
    from demo.analyses.sanity.randomize import Randomizer, run_session

    randomizer = Randomizer(onnx_model, seed=0)
    clone = randomizer.model_for(("head", "conv5_3"))
    x = _image(seed=2)
    expected = run_session(randomizer.session(("head", "conv5_3")), x)[0]
    np.testing.assert_allclose(clone.predict(x), expected, rtol=1e-5, atol=1e-7)  # the randomized weights
    assert not np.allclose(clone.predict(x), onnx_model.predict(x), atol=1e-4)
    assert clone.session_for([spec.PROBS_NAME]) is not onnx_model.session_for([spec.PROBS_NAME])
    acts = clone.session_for(["conv5_3"]).run(None, {spec.INPUT_NAME: x})[0]
    np.testing.assert_allclose(acts, clone.run(x)[1]["conv5_3"], rtol=1e-5, atol=1e-6)
