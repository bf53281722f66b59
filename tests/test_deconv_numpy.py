"""The NumPy deconvnet: hand-computed unpooling, an independent transposed convolution, parity with PyTorch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, onnx_outputs

from base import spec
from demo.backward.deconvnet import (
    MODES,
    Deconvnet,
    _unpool_rows,
    deconv,
    prepare_weight,
    strongest,
    top_channels,
    unpool,
)
from model.deconvnet import Deconvnet as TorchDeconvnet

RTOL = 1e-4  # the parity bound: max |numpy - torch| / max |torch|


def test_unpool_hand_computed_4x4():
    """SWITCH_CONVENTION: switch = h * W_in + w inside the (4, 4) plane; each value goes back to its switch."""
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32)  # (1, 1, 2, 2) pooled values
    switches = np.array([[[[5, 2], [8, 15]]]])  # (1,1) (0,2) (2,0) (3,3) of the 4x4 input
    expected = np.array([[0, 0, 2, 0],
                         [0, 1, 0, 0],
                         [3, 0, 0, 0],
                         [0, 0, 0, 4]], dtype=np.float32)  # fmt: skip
    np.testing.assert_array_equal(unpool(x, switches)[0, 0], expected)
    # the batched, windowed form: rows (C, B, h, w) from two images, windows anywhere in the pooled map
    np.testing.assert_array_equal(_unpool_rows(x[0][:, None], switches, np.array([0]), np.zeros((1, 2), int))[0, 0],
                                  expected)
    two = np.concatenate([switches, np.array([[[[0, 6], [9, 11]]]])])  # image 1: (0,0) (1,2) (2,1) (2,3)
    rows = _unpool_rows(np.array([[[[7.0]], [[8.0]], [[9.0]]]]), two, np.array([0, 1, 0]),
                        np.array([[1, 1], [1, 1], [0, 1]]))  # (1, 3, 1, 1): the windows (1, 1), (1, 1), (0, 1)
    np.testing.assert_array_equal(rows[0, :, :, :], [[[0, 0], [0, 7]], [[0, 8], [0, 0]], [[9, 0], [0, 0]]])


def test_unpool_indexes_each_plane_on_its_own():
    """The same switches in two images and two channels land in each one's own plane (not a global index)."""
    switches = np.array([[0, 3], [9, 14]])  # (0,0) (0,3) (2,1) (3,2)
    s = np.broadcast_to(switches, (2, 2, 2, 2)).copy()
    x = np.arange(1, 17, dtype=np.float32).reshape(2, 2, 2, 2)
    out = unpool(x, s)
    for n in range(2):
        for c in range(2):
            plane = np.zeros(16, np.float32)
            plane[switches.ravel()] = x[n, c].ravel()
            np.testing.assert_array_equal(out[n, c], plane.reshape(4, 4))
    torch.testing.assert_close(torch.from_numpy(out), F.max_unpool2d(torch.from_numpy(x), torch.from_numpy(s), 2, 2))


def naive_transposed_conv(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The definition, loop by loop: y[n, ci, p, q] = sum W[co, ci, kh, kw] x[n, co, p + 1 - kh, q + 1 - kw]."""
    N, C_out, H, W = x.shape
    C_in = weight.shape[1]
    y = np.zeros((N, C_in, H, W), dtype=np.float64)
    for kh in range(3):
        for kw in range(3):
            for p in range(H):
                for q in range(W):
                    a, b = p + 1 - kh, q + 1 - kw
                    if 0 <= a < H and 0 <= b < W:
                        y[:, :, p, q] += x[:, :, a, b] @ weight[:, :, kh, kw].astype(np.float64)
    return y


@pytest.mark.parametrize("method", ["im2col", "col2im", "winograd"])
@pytest.mark.parametrize("c_out,c_in,h,w", [(5, 3, 5, 7), (4, 4, 6, 4), (3, 6, 1, 2)])  # odd, even, tiny maps
def test_deconv_matches_the_definition_and_pytorch(method, c_out, c_in, h, w):
    rng = np.random.default_rng(c_out * 10 + c_in)
    x = rng.standard_normal((2, c_out, h, w), dtype=np.float32)
    weight = rng.standard_normal((c_out, c_in, 3, 3), dtype=np.float32)
    got = deconv(x, weight, method)
    assert got.shape == (2, c_in, h, w) and got.dtype == np.float32
    np.testing.assert_allclose(got, naive_transposed_conv(x, weight), rtol=1e-5, atol=1e-5)
    ref = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(weight), padding=1).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_method_follows_the_channel_counts_and_the_windows(onnx_model):
    weights = {name: prepare_weight(w) for name, w in onnx_model.weights.items()}
    assert weights["conv1_1"].method == "col2im" and weights["conv1_1"].method_for(1, 224, 224) == "col2im"
    assert all(weights[name].method == "winograd4" for name in spec.CONV_LAYERS[1:])  # C_in = 64 and more
    conv5 = weights["conv5_2"]  # 512 x 512: its 4x larger weight wants enough tiles for F(4x4)
    assert conv5.method_for(1, 3, 3) == "im2col" and conv5.method_for(1, 14, 14) == "winograd"
    assert conv5.method_for(1, 28, 28) == "winograd4" and conv5.method_for(9, 8, 8) == "winograd4"
    assert weights["conv1_2"].method_for(1, 224, 224) == "winograd4"
    assert not weights["conv5_3"].matrices  # layouts are made on first use
    forced = prepare_weight(onnx_model.weights["conv5_3"], "im2col")
    assert forced.method_for(4, 28, 28) == "im2col"


@pytest.fixture(scope="module")
def forward(onnx_model):
    """onnxruntime's outputs for two 32x32 images, as NumPy and as torch tensors."""
    return onnx_outputs(onnx_model, 32, seed=11, tensors=True)


def _rel_err(got: np.ndarray, ref: torch.Tensor) -> float:
    r = ref.numpy()
    return float(np.abs(got - r).max() / max(np.abs(r).max(), 1e-30))


@pytest.mark.parametrize("mode", MODES)
def test_parity_with_pytorch_reference_on_every_layer(mode, onnx_model, tiny_vgg, forward):
    acts, switches, tacts, tswitches = forward
    ours, ref = Deconvnet(onnx_model.weights), TorchDeconvnet(tiny_vgg)
    for layer in spec.CONV_LAYERS:
        strongest_channel = int(acts[layer][0].max(axis=(1, 2)).argmax())  # never a dead one
        kwargs = {"channel": {"channel": strongest_channel}, "topk": {"k": 3}}.get(mode, {})
        n = 2 if layer in ("conv2_1", "conv5_3") else 1  # the batch order on two layers, one image elsewhere
        a, s = {k: v[:n] for k, v in acts.items()}, {k: v[:n] for k, v in switches.items()}
        ta, ts = {k: v[:n] for k, v in tacts.items()}, {k: v[:n] for k, v in tswitches.items()}
        got, want = ours.project(a, s, layer, mode, **kwargs), ref.project(ta, ts, layer, mode, **kwargs)
        assert got.images.shape == tuple(want.images.shape) and got.images.dtype == np.float32
        assert np.abs(want.images.numpy()).max() > 0, f"{layer}: a trivial (all-zero) comparison"
        assert _rel_err(got.images, want.images) <= RTOL, f"{layer} {mode}"
        if mode == "layer":
            assert got.channels is None and got.values is None
        else:
            np.testing.assert_array_equal(got.channels, want.channels.numpy())
            np.testing.assert_allclose(got.values, want.values.numpy(), rtol=1e-6)


def test_single_activation_stays_in_its_receptive_field(onnx_model, forward):
    """The bounding-box shortcut of "channel" mode equals the dense projection of the same signal."""
    acts, switches, _, _ = forward
    net = Deconvnet(onnx_model.weights)
    layer = "conv2_2"  # receptive field 14 px, well inside the 32 px image
    channel = int(acts[layer][0].max(axis=(1, 2)).argmax())
    signal, _ = strongest(acts[layer][:1], channel)
    dense = signal  # layer by layer on whole feature maps, with the public per-step functions
    for name in reversed(spec.CONV_LAYERS[: spec.CONV_LAYERS.index(layer) + 1]):
        dense = deconv(np.maximum(dense, 0), onnx_model.weights[name])
        if spec.pool_below(name):
            dense = unpool(dense, switches[spec.pool_below(name)][:1])
    got = net.project(acts, switches, layer, "channel", channel=channel).images[:1]
    # Winograd's tiles sit elsewhere in the cropped windows than in the whole maps: equal up to rounding
    np.testing.assert_allclose(got, dense, rtol=0, atol=1e-5 * np.abs(dense).max())
    rows, cols = np.nonzero(np.abs(got[0]).sum(axis=0))
    extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    assert 1 < extent <= spec.receptive_field(layer)


@pytest.fixture(scope="module")
def forward64(onnx_model):
    """onnxruntime's outputs for two 64x64 images: room for receptive fields that do not cover the image."""
    return onnx_outputs(onnx_model, 64, seed=5)


def _torch_project_down(tiny_vgg, signal, layer, switches, image_of):
    """The PyTorch reference on rows whose switches are those of image ``image_of[b]``."""
    from model.deconvnet import project_down as torch_project_down

    weights = TorchDeconvnet(tiny_vgg).weights
    sw = {k: torch.from_numpy(v[image_of]) for k, v in switches.items()}
    return torch_project_down(torch.from_numpy(signal), layer, weights, sw)


@pytest.mark.parametrize("layer", ["conv1_2", "conv3_1", "conv4_3"])
def test_batch_of_rows_from_different_images_matches_pytorch(layer, onnx_model, tiny_vgg, forward64):
    """B = 6 rows in one pass, images interleaved (1, 0, 1, 1, 0, 0): single activations at corners and in the
    middle (windows clipped differently), a whole-layer row, and an all-zero row; each row with its own image's
    switches, against the reference and against each row projected alone."""
    acts, switches = forward64
    act = acts[layer]
    N, C, h, w = act.shape
    image_of = np.array([1, 0, 1, 1, 0, 0])
    signal = np.zeros((6, C, h, w), dtype=np.float32)
    for b, (r, c) in enumerate([(0, 0), (h - 1, w - 1), (h // 2, w // 3), (0, w - 1)]):
        channel = int(act[image_of[b], :, r, c].argmax())  # a live activation at that position
        signal[b, channel, r, c] = max(act[image_of[b], channel, r, c], 1.0)
    signal[4] = act[0]  # a whole layer; row 5 stays zero
    net = Deconvnet(onnx_model.weights)
    got = net.project_down(signal, layer, switches, image_of=image_of)
    want = _torch_project_down(tiny_vgg, signal, layer, switches, image_of)
    assert got.shape == tuple(want.shape) and got.dtype == np.float32
    assert not got[5].any()
    for b in range(5):
        assert np.abs(want[b].numpy()).max() > 0, f"row {b}: a trivial comparison"
        assert _rel_err(got[b], want[b]) <= RTOL, f"{layer} row {b}"
        # windows (hence Winograd tiles) sit elsewhere when a row goes alone: equal up to rounding
        alone = net.project_down(signal[b : b + 1], layer, {k: v[image_of[b] : image_of[b] + 1]
                                                             for k, v in switches.items()})
        np.testing.assert_allclose(got[b], alone[0], rtol=0, atol=1e-5 * np.abs(alone).max())


@pytest.mark.parametrize("layer", ["conv2_2", "conv3_3", "conv5_3"])  # windows: small, clipped, whole
def test_topk_of_two_images_in_one_pass_matches_pytorch(layer, onnx_model, tiny_vgg, forward64):
    """topk with N = 2, k = 5 (10 rows in one pass) against the reference, row by row, and against the same
    rows one at a time; each row stays inside its activation's receptive field."""
    acts, switches = forward64
    ta = {k: torch.from_numpy(v) for k, v in acts.items()}
    ts = {k: torch.from_numpy(v) for k, v in switches.items()}
    net = Deconvnet(onnx_model.weights)
    got = net.project(acts, switches, layer, "topk", k=5)
    want = TorchDeconvnet(tiny_vgg).project(ta, ts, layer, "topk", k=5)
    assert got.images.shape == (10, 3, 64, 64) == tuple(want.images.shape)
    np.testing.assert_array_equal(got.channels, want.channels.numpy())
    np.testing.assert_allclose(got.values, want.values.numpy(), rtol=1e-6)
    for b in range(10):
        assert np.abs(want.images[b].numpy()).max() > 0, f"row {b}: a trivial comparison"
        assert _rel_err(got.images[b], want.images[b]) <= RTOL, f"{layer} row {b}"
    one_by_one = net.project(acts, switches, layer, "topk", k=5, rows_per_pass=1).images
    np.testing.assert_allclose(got.images, one_by_one, rtol=0, atol=1e-5 * np.abs(one_by_one).max())
    rf = spec.receptive_field(layer)
    for b in range(10):
        rows, cols = np.nonzero(np.abs(got.images[b]).sum(axis=0))
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= rf


def test_batches_split_into_groups_give_the_same_images(onnx_model, forward64, monkeypatch):
    """Rows together all the way, in groups once windows grow (the default), or split at once: same images."""
    import demo.backward.descent as deconv_descent

    acts, switches = forward64
    net = Deconvnet(onnx_model.weights)
    results = []
    for budget in (1 << 40, deconv_descent.BATCH_BYTES, 1):
        monkeypatch.setattr(deconv_descent, "BATCH_BYTES", budget)
        results.append(net.project(acts, switches, "conv4_1", "topk", k=4).images)
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=0, atol=1e-5 * np.abs(results[0]).max())


def test_project_points_equals_dense_signals(onnx_model, forward64):
    """``project_points`` (rows built from 1x1 windows) equals ``project_down`` of the same dense signals."""
    acts, switches = forward64
    layer = "conv3_2"
    act = acts[layer]
    image, channel, row, col = np.array([0, 1, 1, 0]), np.array([3, 7, 0, 3]), np.array([0, 5, 15, 9]), \
        np.array([15, 2, 15, 0])
    act = act.copy()
    act[image, channel, row, col] = [1.0, 2.0, 0.5, 0.0]  # the last one is zero: an all-zero projection
    net = Deconvnet(onnx_model.weights)
    got = net.project_points(act, layer, switches, image, channel, row, col)
    signal = np.zeros((4, *act.shape[1:]), dtype=np.float32)
    signal[np.arange(4), channel, row, col] = act[image, channel, row, col]
    dense = net.project_down(signal, layer, switches, image_of=image)
    assert got.shape == (4, 3, 64, 64) and np.abs(got[:3]).max(axis=(1, 2, 3)).min() > 0 and not got[3].any()
    np.testing.assert_allclose(got, dense, rtol=0, atol=1e-5 * np.abs(dense).max())


def test_switches_that_do_not_fit_raise(onnx_model, forward, forward64):
    acts, _, _, _ = forward
    _, switches64 = forward64
    with pytest.raises(ValueError, match="pool2 switches"):
        Deconvnet(onnx_model.weights).project(acts, switches64, "conv3_1")


def test_topk_order_values_and_clipping(onnx_model, forward):
    acts, switches, _, _ = forward
    a = acts["conv1_1"]
    channels, values = top_channels(a, 5)
    peaks = a.max(axis=(2, 3))
    for n in range(2):
        assert list(values[n]) == sorted(values[n], reverse=True)
        np.testing.assert_array_equal(values[n], peaks[n, channels[n]])
        assert values[n, -1] >= np.sort(peaks[n])[-5]
    p = Deconvnet(onnx_model.weights).project(acts, switches, "conv1_1", "topk", k=100)  # k > C: all channels
    assert p.images.shape == (2 * 64, 3, 32, 32) and len(p.channels) == 2 * 64
    np.testing.assert_array_equal(p.channels[:64], top_channels(a, 64)[0][0])  # image-major rows


def test_all_zero_signal_projects_to_zero(onnx_model, forward):
    acts, switches, _, _ = forward
    zero = {k: np.zeros_like(v[:1]) for k, v in acts.items()}
    p = Deconvnet(onnx_model.weights).project(zero, {k: v[:1] for k, v in switches.items()}, "conv4_2")
    assert p.images.shape == (1, 3, 32, 32) and not p.images.any()


def test_bad_arguments_raise(onnx_model, forward):
    acts, switches, _, _ = forward
    net = Deconvnet(onnx_model.weights)
    with pytest.raises(ValueError, match="unknown layer"):
        net.project(acts, switches, "pool1")
    with pytest.raises(ValueError, match="mode"):
        net.project(acts, switches, "conv1_1", "everything")
    with pytest.raises(ValueError, match="channels 0..63"):
        net.project(acts, switches, "conv1_2", "channel", channel=64)
    with pytest.raises(ValueError, match="channels"):
        net.project(acts, switches, "conv1_2", "channel")


def test_demo_imports_no_torch():
    modules = ["demo", "demo.preprocess", "demo.onnx_forward", "demo.backward.deconvnet", "demo.display",
               "demo.visualize", "demo.predict"]
    code = ("import importlib, pkgutil, sys, demo\n"
            f"names = {modules!r} + ['demo.' + m.name for m in pkgutil.iter_modules(demo.__path__)]\n"
            "for name in names: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
