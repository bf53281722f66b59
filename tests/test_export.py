"""The ONNX export: outputs, dynamic shapes, folded batch norm, metadata, the self-check, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, TINY_SIZE, check_images

from base import spec
from export.onnx_export import (
    POOL_INPUT,
    ExportableVGG,
    ExportCheckError,
    adaptive_avg_pool,
    compare,
    export_onnx,
)


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_report_passes_its_own_check(tiny_export):
    assert tiny_export["failures"] == []
    assert set(tiny_export["max_abs_diff"]) == {spec.PROBS_NAME, *spec.CONV_LAYERS}
    assert max(tiny_export["max_abs_diff"].values()) <= 1e-4
    assert all(tiny_export["switch_in_window"].values())
    assert tiny_export["inputs"] == [[1, 3, 32, 32], [2, 3, 32, 32], [1, 3, 48, 32]]


def test_graph_outputs_names_types_and_dynamic_axes(tiny_onnx):
    model = onnx.load(str(tiny_onnx), load_external_data=False)
    assert [i.name for i in model.graph.input] == [spec.INPUT_NAME]
    assert [o.name for o in model.graph.output] == list(spec.OUTPUT_NAMES)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3]))  # batch, height, width are symbolic
    types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert all(types[n] == onnx.TensorProto.FLOAT for n in (spec.PROBS_NAME, *spec.ACTIVATION_OUTPUTS))
    assert all(types[n] == onnx.TensorProto.INT64 for n in spec.SWITCH_OUTPUTS)
    # one self-contained file: no initializer lives in external data, no BatchNormalization survives the fold
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}


def test_metadata(tiny_onnx):
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tiny_onnx)).metadata_props}
    assert meta[spec.META_CLASS_NAMES] == list(spec.CAT12_BREEDS)
    assert meta[spec.META_MEAN] == pytest.approx(spec.MEAN)
    assert meta[spec.META_STD] == pytest.approx(spec.STD)
    assert meta[spec.META_INPUT_SIZE] == TINY_SIZE
    assert [n for n in meta[spec.META_LAYERS] if n.startswith("conv")] == list(spec.CONV_LAYERS)
    assert [n for n in meta[spec.META_LAYERS] if n.startswith("pool")] == list(spec.POOL_LAYERS)
    assert meta[spec.META_LAYERS].index("pool2") == meta[spec.META_LAYERS].index("conv2_2") + 1
    assert meta[spec.META_SWITCHES] == spec.SWITCH_CONVENTION
    card = meta[spec.META_MODEL_CARD]
    assert card["batch_norm_folded"] is True and card["head"] == "gmp" and card["num_classes"] == 12
    assert card["val_acc"] == 0.5 and "data" in card


def test_onnx_matches_unfolded_pytorch_at_other_shapes(tiny_vgg, tiny_onnx):
    """Dynamic batch/height/width, and batch norm folded exactly: onnxruntime vs the model *with* BN layers."""
    x = np.random.default_rng(5).standard_normal((3, 3, 64, 48), dtype=np.float32)
    out = dict(zip(spec.OUTPUT_NAMES, _session(tiny_onnx).run(None, {spec.INPUT_NAME: x}), strict=True))
    with torch.no_grad():
        ref = tiny_vgg.forward_all(torch.from_numpy(x))
    np.testing.assert_allclose(out[spec.PROBS_NAME], torch.softmax(ref.logits, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(out[spec.PROBS_NAME].sum(axis=1), 1.0, rtol=1e-5)
    for name in spec.CONV_LAYERS:
        a, r = out[name], ref.activations[name].numpy()
        assert a.shape == r.shape
        assert np.abs(a - r).max() <= 1e-4 * max(1.0, np.abs(r).max()), name


def test_switches_follow_the_convention(onnx_model):
    """Independent of PyTorch: each switch indexes its (H, W) plane and points at the max of its own 2x2 window."""
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 48), dtype=np.float32)
    _, acts, switches = onnx_model.run(x)
    for pool, conv in POOL_INPUT.items():
        a, s = acts[conv], switches[pool]
        N, C, H, W = a.shape
        assert s.shape == (N, C, H // 2, W // 2) and s.dtype == np.int64
        rows, cols = np.divmod(s, W)
        assert (rows // 2 == np.arange(H // 2)[:, None]).all() and (cols // 2 == np.arange(W // 2)).all()
        window_max = a.reshape(N, C, H // 2, 2, W // 2, 2).max(axis=(3, 5))
        pointed = np.take_along_axis(a.reshape(N, C, H * W), s.reshape(N, C, -1), axis=2).reshape(s.shape)
        np.testing.assert_array_equal(pointed, window_max)


def test_conv_weights_from_initializers_are_the_folded_weights(tiny_vgg, onnx_model):
    folded = tiny_vgg.conv_weights()
    assert list(onnx_model.weights) == list(spec.CONV_LAYERS)
    for name, (w, _) in folded.items():
        assert onnx_model.weights[name].dtype == np.float32
        np.testing.assert_allclose(onnx_model.weights[name], w.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(14, 14), (28, 20), (2, 2), (4, 6), (9, 30), (1, 1)])
def test_adaptive_avg_pool_equals_pytorch(size):
    x = torch.randn(2, 5, *size)
    torch.testing.assert_close(adaptive_avg_pool(x, (7, 7)), F.adaptive_avg_pool2d(x, (7, 7)), rtol=0, atol=1e-5)


def test_adaptive_avg_pool_exports_with_dynamic_size(tmp_path):
    """adaptive_avg_pool2d itself bakes the example's kernel into the graph; the matmul form stays dynamic."""

    class Head(torch.nn.Module):
        def forward(self, x):
            return adaptive_avg_pool(x, (7, 7))

    path = tmp_path / "head.onnx"
    dims = {2: torch.export.Dim("h"), 3: torch.export.Dim("w")}
    torch.onnx.export(Head().eval(), (torch.randn(1, 4, 14, 14),), str(path), dynamo=True, external_data=False,
                      input_names=["x"], dynamic_shapes={"x": dims}, verbose=False)
    session = _session(path)
    for size in [(14, 14), (28, 12), (3, 5)]:
        x = torch.randn(1, 4, *size)
        got = session.run(None, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, F.adaptive_avg_pool2d(x, (7, 7)).numpy(), atol=1e-5)


class _Perturbed:
    """An onnxruntime session whose outputs are altered, to see that ``compare`` notices."""

    def __init__(self, session, change):
        self.session, self.change = session, change

    def run(self, names, feed):
        out = dict(zip(names, self.session.run(names, feed), strict=True))
        self.change(out)
        return [out[n] for n in names]


def test_compare_flags_wrong_values_and_wrong_switches(tiny_vgg, tiny_onnx):
    module, session, images = ExportableVGG(tiny_vgg), _session(tiny_onnx), check_images()[:1]

    def bump(out):
        out["conv3_1"] = out["conv3_1"] + 1e-3

    report = compare(_Perturbed(session, bump), module, images)
    assert any(f.startswith("conv3_1") for f in report["failures"]) and len(report["failures"]) == 1

    def global_index(out):  # ONNX's raw MaxPool indices run over the whole tensor, not per plane
        s = out["pool2_switches"]
        N, C, h, w = s.shape
        out["pool2_switches"] = s + (np.arange(N * C).reshape(N, C, 1, 1) * 4 * h * w)

    report = compare(_Perturbed(session, global_index), module, images)
    assert any(f.startswith("pool2_switches") for f in report["failures"])

    def other_window(out):  # a value-preserving but out-of-window index must still fail
        s = out["pool1_switches"].copy()
        s[0, 0, 0, 0], s[0, 0, 0, 1] = s[0, 0, 0, 1], s[0, 0, 0, 0]
        out["pool1_switches"] = s

    assert not compare(_Perturbed(session, other_window), module, images)["switch_in_window"]["pool1_switches"]


def test_failed_check_raises_and_writes_nothing(tiny_vgg, tiny_onnx, tmp_path, monkeypatch):
    """A graph that disagrees with PyTorch is never left at the output path."""
    proto = onnx.load(str(tiny_onnx))
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: SimpleNamespace(model_proto=proto))
    other = type(tiny_vgg)(batch_norm=True).eval()  # different random weights: the graph no longer matches
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportCheckError) as err:
        export_onnx(other, out, input_size=TINY_SIZE, check_images=check_images()[:1])
    assert err.value.report["failures"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_exports_our_checkpoint(tiny_vgg, tmp_path):
    names = [f"breed {i}" for i in range(12)]
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": tiny_vgg.state_dict(), "model_config": tiny_vgg.config(), "class_names": names,
                "input_size": 48, "config": {"epochs": 3, "lr": 0.01}, "val_acc": 0.75, "epoch": 3}, ckpt)
    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(ckpt), "--out", str(out),
                           "--check-size", "32"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "check passed" in proc.stdout
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta[spec.META_CLASS_NAMES] == names
    assert meta[spec.META_INPUT_SIZE] == 48
    card = meta[spec.META_MODEL_CARD]
    assert card["val_acc"] == 0.75 and card["training_config"] == {"epochs": 3, "lr": 0.01}
    assert card["source"] == "ckpt.pt" and card["batch_norm_folded"] is True


def test_cli_help_and_missing_source():
    proc = subprocess.run([sys.executable, "-m", "export", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "--checkpoint" in proc.stdout and "--random" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "export", "--out", "x.onnx"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr


def test_onnx_model_reads_the_metadata_and_runs(onnx_model, tiny_onnx):
    from demo.onnx_forward import OnnxModel

    assert onnx_model.class_names == list(spec.CAT12_BREEDS) and onnx_model.input_size == TINY_SIZE
    np.testing.assert_allclose(onnx_model.mean, spec.MEAN)
    np.testing.assert_allclose(onnx_model.std, spec.STD)
    assert onnx_model.conv_layers == list(spec.CONV_LAYERS) and onnx_model.pool_layers == list(spec.POOL_LAYERS)
    assert onnx_model.model_card["val_acc"] == 0.5
    assert onnx_model.providers == onnx_model.session.get_providers() == ["CPUExecutionProvider"]
    x = np.random.default_rng(8).standard_normal((2, 3, 32, 48), dtype=np.float32)
    probs, acts, switches = onnx_model.run(x)
    assert probs.shape == (2, 12) and list(acts) == list(spec.CONV_LAYERS) and list(switches) == list(spec.POOL_LAYERS)
    assert acts["conv5_3"].shape == (2, 512, 2, 3) and switches["pool4"].shape == (2, 512, 2, 3)
    np.testing.assert_allclose(onnx_model.predict(x), probs, rtol=1e-6)
    with pytest.raises(ValueError, match="multiples of 16"):
        onnx_model.run(np.zeros((1, 3, 30, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        onnx_model.run(np.zeros((3, 32, 32), np.float32))
    auto = OnnxModel(tiny_onnx, device="auto", threads=1)  # CUDA only where a GPU answers; else the CPU
    assert auto.providers == auto.session.get_providers() and auto.providers[-1] == "CPUExecutionProvider"


def test_conv_weights_are_found_behind_constants_and_identities(tiny_onnx):
    from demo.onnx_forward import conv_weights

    proto = onnx.load(str(tiny_onnx))
    expected = conv_weights(proto)
    graph = proto.graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    inits = {i.name: i for i in graph.initializer}
    for k, node in enumerate(convs[:4]):  # two as Constant nodes, two behind an Identity
        init = inits[node.input[1]]
        graph.initializer.remove(init)
        if k % 2:
            const = onnx.helper.make_node("Constant", [], [init.name + "_c"], value=init)
            graph.node.insert(0, onnx.helper.make_node("Identity", [init.name + "_c"], [init.name]))
            graph.node.insert(0, const)
        else:
            graph.node.insert(0, onnx.helper.make_node("Constant", [], [init.name], value=init))
    got = conv_weights(proto)
    for name in spec.CONV_LAYERS:
        np.testing.assert_array_equal(got[name], expected[name])
    graph.node.remove(convs[-1])
    with pytest.raises(ValueError, match="13 Conv nodes"):
        conv_weights(proto)


def test_missing_metadata_is_reported(tiny_onnx, tmp_path):
    from demo.onnx_forward import OnnxModel

    proto = onnx.load(str(tiny_onnx))
    del proto.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match="python -m export"):
        OnnxModel(path, device="cpu")
    with pytest.raises(FileNotFoundError):
        OnnxModel(tmp_path / "missing.onnx")
