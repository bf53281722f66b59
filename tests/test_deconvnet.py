"""model/deconvnet.py: hand-computed cases, the autograd definition, the original notebook's bugs, modes and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from autograd_rules import AFTER_POOL, conv_forward, one_hot_strongest, rel_err

from base.spec import CONV_LAYERS
from model.deconvnet import MODES, Deconvnet, Projection, deconv, project_down, strongest, top_channels, unpool
from model.vgg import VGG, Features


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- (a) unpooling, hand-computed --------------------------------------------------------------------------------

def test_unpool_4x4_one_plane():
    x = t([[1, 2, 0, 5],
           [3, 4, 6, 1],
           [0, 9, 2, 2],
           [8, 1, 3, 7]])[None, None]  # fmt: skip
    pooled, switches = F.max_pool2d(x, 2, 2, return_indices=True)
    # Windows: max 4 at (1, 1) -> 1*4+1 = 5; 6 at (1, 2) -> 6; 9 at (2, 1) -> 9; 7 at (3, 3) -> 15.
    assert torch.equal(pooled[0, 0], t([[4, 6], [9, 7]]))
    assert torch.equal(switches[0, 0], torch.tensor([[5, 6], [9, 15]]))
    assert torch.equal(unpool(pooled, switches)[0, 0], t([[0, 0, 0, 0],
                                                          [0, 4, 6, 0],
                                                          [0, 9, 0, 0],
                                                          [0, 0, 0, 7]]))  # fmt: skip
    # The deconvnet unpools its own signal, not the forward's values: each value goes to its switch.
    signal = t([[10, -20], [30, 40]])[None, None]
    assert torch.equal(unpool(signal, switches)[0, 0], t([[0, 0, 0, 0],
                                                          [0, 10, -20, 0],
                                                          [0, 30, 0, 0],
                                                          [0, 0, 0, 40]]))  # fmt: skip


def test_unpool_indices_are_per_plane():
    # (N=2, C=2) planes of 2x2 pooled values; every switch is in 0..15, the index inside its own 4x4 plane.
    switches = torch.tensor([
        [[[0, 3], [12, 15]],   # n0 c0: the four corners
         [[5, 6], [9, 10]]],   # n0 c1: the four centre cells
        [[[1, 7], [8, 14]],    # n1 c0: (0,1) (1,3) (2,0) (3,2)
         [[0, 3], [12, 15]]],  # n1 c1: the same indices as n0 c0, in another plane
    ])  # fmt: skip
    values = t([[[[1, 2], [3, 4]], [[5, 6], [7, 8]]],
                [[[-1, 2], [3, -4]], [[9, 9], [9, 9]]]])  # fmt: skip
    expected = t([
        [[[1, 0, 0, 2],
          [0, 0, 0, 0],
          [0, 0, 0, 0],
          [3, 0, 0, 4]],
         [[0, 0, 0, 0],
          [0, 5, 6, 0],
          [0, 7, 8, 0],
          [0, 0, 0, 0]]],
        [[[0, -1, 0, 0],
          [0, 0, 0, 2],
          [3, 0, 0, 0],
          [0, 0, -4, 0]],
         [[9, 0, 0, 9],
          [0, 0, 0, 0],
          [0, 0, 0, 0],
          [9, 0, 0, 9]]],
    ])  # fmt: skip
    assert torch.equal(unpool(values, switches), expected)
    # And max_pool2d produces exactly these per-plane switches from the unpooled planes (positive values only).
    positive = expected.abs() + (expected == 0) * -1.0
    _, again = F.max_pool2d(positive, 2, 2, return_indices=True)
    assert torch.equal(again, switches)


def test_switch_index_uses_input_width():
    # Non-square planes: switch = h * W_in + w, not h * H_in + w.
    wide = t([[1, 0, 0, 0],
              [0, 0, 0, 5]])[None, None]  # (1, 1, 2, 4)
    pooled, sw = F.max_pool2d(wide, 2, 2, return_indices=True)
    assert torch.equal(sw[0, 0], torch.tensor([[0, 7]]))  # (1, 3) -> 1*4+3
    assert torch.equal(unpool(pooled, sw), wide)
    tall = t([[0, 0],
              [0, 3],
              [2, 0],
              [0, 0]])[None, None]  # (1, 1, 4, 2)
    pooled, sw = F.max_pool2d(tall, 2, 2, return_indices=True)
    assert torch.equal(sw[0, 0], torch.tensor([[3], [4]]))  # (1, 1) -> 1*2+1, (2, 0) -> 2*2+0
    assert torch.equal(unpool(pooled, sw), tall)


# --- (b) transposed convolution, hand-computed -------------------------------------------------------------------

K = t([[1, 2, 3],
       [4, 5, 6],
       [7, 8, 9]])  # fmt: skip  (asymmetric: K != K.T, K != K flipped)


def test_deconv_of_a_delta_is_the_kernel_itself():
    # conv_transpose2d with padding 1: out[i - 1 + a, j - 1 + b] += x[i, j] * K[a, b], so a delta at (i, j) yields
    # K unflipped and not transposed, centred at (i, j).
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 2, 1] = 1
    assert torch.equal(deconv(x, K[None, None])[0, 0], t([[0, 0, 0, 0],
                                                          [1, 2, 3, 0],
                                                          [4, 5, 6, 0],
                                                          [7, 8, 9, 0]]))  # fmt: skip
    # Two deltas: K at (1, 1) minus K at (2, 2), overlapping.
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1], x[0, 0, 2, 2] = 1, -1
    assert torch.equal(deconv(x, K[None, None])[0, 0], t([[1, 2, 3, 0],
                                                          [4, 4, 4, -3],
                                                          [7, 4, 4, -6],
                                                          [0, -7, -8, -9]]))  # fmt: skip
    # At a corner of a non-square (4, 5) map the kernel is clipped by the padding.
    x = torch.zeros(1, 1, 4, 5)
    x[0, 0, 0, 4] = 1
    assert torch.equal(deconv(x, K[None, None])[0, 0], t([[0, 0, 0, 4, 5],
                                                          [0, 0, 0, 7, 8],
                                                          [0, 0, 0, 0, 0],
                                                          [0, 0, 0, 0, 0]]))  # fmt: skip


def test_deconv_sums_over_the_forward_output_channels():
    # Forward conv weight (C_out=2, C_in=1, 3, 3): the deconv maps 2 channels back to 1 and sums them.
    weight = torch.stack([K, t([[0, 0, 0], [0, 0, 0], [0, 0, -1]])])[:, None]
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0, 1, 1] = 1  # K centred at (1, 1)
    x[0, 1, 0, 0] = 3  # 3 * (-1) lands at (0 - 1 + 2, 0 - 1 + 2) = (1, 1)
    out = deconv(x, weight)
    assert out.shape == (1, 1, 3, 3)
    assert torch.equal(out[0, 0], t([[1, 2, 3], [4, 2, 6], [7, 8, 9]]))


def test_deconv_is_the_adjoint_of_the_conv():
    # <conv(x), y> == <x, deconv(y)> for the forward conv (3x3, padding 1): the definition of the transpose.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    y = torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64)
    lhs = (F.conv2d(x, w, padding=1) * y).sum()
    rhs = (x * deconv(y, w)).sum()
    torch.testing.assert_close(lhs, rhs)


# --- (c) the independent definition: autograd with a "deconvnet ReLU" --------------------------------------------

def autograd_forward(model: VGG, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The network written out by hand, each ReLU's backward a ReLU of the incoming gradient; conv activations."""
    return conv_forward(model, x, dict.fromkeys(CONV_LAYERS, "deconvnet"))


def random_bn(model: VGG) -> VGG:
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for bn in model.bns.values():
            C = bn.num_features
            bn.running_mean.copy_(torch.rand(C, generator=g) - 0.5)
            bn.running_var.copy_(torch.rand(C, generator=g) * 2 + 0.3)
            bn.weight.copy_(torch.rand(C, generator=g) + 0.5)
            bn.bias.copy_((torch.rand(C, generator=g) - 0.5) * 0.6)
    return model


N, K_TOP, ROWS = 1, 2, 4  # images; top-k channels; signals per image (layer, channel, k x topk)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "bn"])
def traced(request):
    """A network, its forward_all on N images, and the DeconvReLU autograd graph of ROWS copies of them.

    float32, the dtype the project runs in: the two computations differ by ~1e-7 relative (summation order, and
    batch norm folded into the weights on one side, applied as a separate scale on the other).
    """
    torch.manual_seed(3)
    model = VGG(batch_norm=request.param)
    if request.param:
        random_bn(model)
    model = model.eval().requires_grad_(False)
    x = torch.randn(N, 3, 16, 32, generator=torch.Generator().manual_seed(5))
    xs = x.repeat(ROWS, 1, 1, 1)  # row r * N + n is image n; one backward for all the signals of a layer
    with torch.no_grad():
        out = model.forward_all(xs)  # the same batch as the traced forward: the same kernels, the same switches
    for pool, sw in out.switches.items():
        assert all(torch.equal(sw[r * N : (r + 1) * N], sw[:N]) for r in range(ROWS)), f"{pool}: copies differ"
    first = Features(out.logits[:N], {k: v[:N] for k, v in out.activations.items()},
                     {k: v[:N] for k, v in out.switches.items()})
    xs.requires_grad_(True)
    acts = autograd_forward(model, xs)
    for name, a in acts.items():
        torch.testing.assert_close(a.detach(), out.activations[name], msg=name)
    return Deconvnet(model), first, xs, acts


@pytest.mark.parametrize("layer", CONV_LAYERS)
def test_deconvnet_equals_autograd_with_deconv_relu(traced, layer):
    deconvnet, out, xs, acts = traced
    a = out.activations[layer]  # (N, C, h, w)

    # The signals, built here independently of model/deconvnet.py.
    c = int(a[0].amax(dim=(1, 2)).argmax())  # image 0's strongest channel, for "channel" mode (all images)
    top = a.amax(dim=(2, 3)).sort(dim=1, descending=True).indices[:, :K_TOP]  # (N, k)
    signals = [a, one_hot_strongest(a, [c] * N)]
    signals += [one_hot_strongest(a, top[:, j].tolist()) for j in range(K_TOP)]
    (grads,) = torch.autograd.grad(acts[layer], xs, grad_outputs=torch.cat(signals), retain_graph=True)
    grads = grads.view(ROWS, N, 3, 16, 32)
    assert (grads.abs().amax(dim=(2, 3, 4)) > 0).all()

    got = deconvnet.project(out.activations, out.switches, layer, "layer").images
    assert got.shape == (N, 3, 16, 32)
    assert rel_err(got, grads[0]) <= 1e-5

    got = deconvnet.project(out.activations, out.switches, layer, "channel", channel=c)
    assert got.channels.tolist() == [c] * N
    assert rel_err(got.images, grads[1]) <= 1e-5

    got = deconvnet.project(out.activations, out.switches, layer, "topk", k=K_TOP)
    assert got.images.shape == (N * K_TOP, 3, 16, 32)
    assert got.channels.view(N, K_TOP).tolist() == top.tolist()
    for n in range(N):
        for j in range(K_TOP):
            assert rel_err(got.images[n * K_TOP + j], grads[2 + j, n]) <= 1e-5, (n, j)


# --- (d) the original notebook's bugs, pinned as absent ---------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> VGG:
    torch.manual_seed(0)
    return VGG().eval()


@pytest.fixture(scope="module")
def forward(model) -> tuple[torch.Tensor, Features]:
    x = torch.randn(2, 3, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model.forward_all(x)


def test_filters_not_swapped(model, forward):
    # Our deconv is conv_transpose2d with the forward weight, i.e. a conv with the kernel flipped in both axes and
    # the channel axes swapped; the original notebook transposed H and W instead, which differs for any
    # non-symmetric kernel.
    g = torch.Generator().manual_seed(2)
    w = torch.randn(5, 4, 3, 3, generator=g)
    x = torch.randn(1, 5, 6, 7, generator=g)
    ours = deconv(x, w)
    torch.testing.assert_close(ours, F.conv_transpose2d(x, w, padding=1), rtol=0, atol=0)
    torch.testing.assert_close(ours, F.conv2d(x, w.transpose(0, 1).flip(2, 3), padding=1))
    seed = F.conv2d(x, w.transpose(0, 1).transpose(2, 3), padding=1)
    assert rel_err(seed, ours) > 0.1
    assert rel_err(F.conv_transpose2d(x, w.transpose(2, 3), padding=1), ours) > 0.1
    # Through the whole network: swapping H and W of every filter gives another picture.
    _, out = forward
    net = Deconvnet(model)
    swapped = {name: w.transpose(2, 3) for name, w in net.weights.items()}
    good = net.project(out.activations, out.switches, "conv3_1").images
    bad = project_down(out.activations["conv3_1"], "conv3_1", swapped, out.switches)
    assert rel_err(bad, good) > 0.1


def test_no_relu_after_each_deconv(model, forward):
    _, out = forward
    net = Deconvnet(model)
    for layer in ("conv2_1", "conv5_3"):
        ours = net.project(out.activations, out.switches, layer).images
        assert ours.min() < 0 < ours.max(), layer  # a signed image in input space
        # The original notebook: ReLU after each transposed conv, so every map (pixels included) is >= 0.
        x = out.activations[layer]
        for name in reversed(CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]):
            x = F.relu(deconv(x, net.weights[name]))
            if name in AFTER_POOL:
                x = unpool(x, out.switches[f"pool{int(name[4]) - 1}"])
        assert x.min() >= 0
        assert rel_err(x, ours) > 0.1, layer


@pytest.mark.parametrize("size", [(16, 48), (48, 32)])
def test_projection_at_the_input_size(model, size):
    H, W = size
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model.forward_all(x)
    net = Deconvnet(model)
    for layer in ("conv2_1", "conv5_3"):
        for mode in MODES:
            proj = net.project(out.activations, out.switches, layer, mode, channel=0, k=2)
            assert proj.images.shape[1:] == (3, H, W), (layer, mode)


def test_input_size_not_a_multiple_of_16(model):
    x = torch.randn(1, 3, 40, 24, generator=torch.Generator().manual_seed(4))  # multiples of 8 only
    with torch.no_grad():
        out = model.forward_all(x)
    net = Deconvnet(model)
    # Layers up to block 4 see whole 2x2 windows and project fine ...
    assert net.project(out.activations, out.switches, "conv4_1").images.shape == (1, 3, 40, 24)
    # ... block 5 does not: a clear error instead of a misplaced picture.
    with pytest.raises(ValueError, match="multiples of 16"):
        net.project(out.activations, out.switches, "conv5_1")
    # Without conv1_1 to tell the input size, the switch shapes give it away.
    with pytest.raises(ValueError, match="multiples of 16"):
        net.project({"conv5_1": out.activations["conv5_1"]}, out.switches, "conv5_1")


# --- (e) single activations and top-k ----------------------------------------------------------------------------

def test_strongest_hand_case():
    a = torch.zeros(2, 3, 2, 3)
    a[0, 1] = t([[0, 2, 1], [7, 3, 0]])
    a[0, 2] = t([[9, 9, 9], [9, 9, 9]])  # stronger, but another channel
    a[1, 1] = t([[4, 0, 0], [0, 0, 5]])
    signal, values = strongest(a, 1)
    expected = torch.zeros_like(a)
    expected[0, 1, 1, 0] = 7
    expected[1, 1, 1, 2] = 5
    assert torch.equal(signal, expected)
    assert values.tolist() == [7, 5]


def test_top_channels_hand_case():
    a = torch.zeros(2, 4, 2, 2)
    for c, v in enumerate([3.0, 8.0, 1.0, 5.0]):
        a[0, c, c % 2, 1] = v
    for c, v in enumerate([2.0, 0.5, 6.0, 4.0]):
        a[1, c, 1, c % 2] = v
    channels, values = top_channels(a, 3)
    assert channels.tolist() == [[1, 3, 0], [2, 3, 0]]
    assert values.tolist() == [[8, 5, 3], [6, 4, 2]]
    assert top_channels(a, 10)[0].shape == (2, 4)  # k is clipped to the channels there are


@pytest.mark.parametrize("layer", ["conv2_2", "conv4_1"])
def test_topk_rows_are_channel_projections(model, forward, layer):
    _, out = forward
    net = Deconvnet(model)
    k = 3
    top = net.project(out.activations, out.switches, layer, "topk", k=k)
    assert isinstance(top, Projection)
    assert top.images.shape == (2 * k, 3, 16, 32)
    assert top.channels.shape == top.values.shape == (2 * k,)
    a = out.activations[layer]
    maxima = a.amax(dim=(2, 3))  # (N, C)
    for n in range(2):
        rows = slice(n * k, (n + 1) * k)  # image-major
        values = top.values[rows]
        assert (values[:-1] >= values[1:]).all()  # descending
        assert torch.equal(values, maxima[n, top.channels[rows]])
        assert maxima[n].sort(descending=True).values[k - 1] == values[-1]  # no stronger channel left out
        assert len(set(top.channels[rows].tolist())) == k
        sub_act = {name: v[n : n + 1] for name, v in out.activations.items()}
        sub_sw = {name: v[n : n + 1] for name, v in out.switches.items()}
        for j, c in enumerate(top.channels[rows].tolist()):
            single = net.project(sub_act, sub_sw, layer, "channel", channel=c)
            torch.testing.assert_close(top.images[n * k + j], single.images[0])
            assert single.values.item() == values[j]


def test_layer_mode_has_no_channels(model, forward):
    _, out = forward
    proj = Deconvnet(model).project(out.activations, out.switches, "conv1_2")
    assert proj.channels is None and proj.values is None and proj.images.shape == (2, 3, 16, 32)


# --- (f) errors ---------------------------------------------------------------------------------------------------

def test_errors(model, forward):
    _, out = forward
    net = Deconvnet(model)
    with pytest.raises(ValueError, match=r"unknown layer 'pool2'.*conv1_1.*conv5_3"):
        net.project(out.activations, out.switches, "pool2")
    with pytest.raises(ValueError, match=r"conv2_1 has channels 0\.\.127.*got 128"):
        net.project(out.activations, out.switches, "conv2_1", "channel", channel=128)
    with pytest.raises(ValueError, match=r"channels 0\.\.127.*got -1"):
        net.project(out.activations, out.switches, "conv2_1", "channel", channel=-1)
    with pytest.raises(ValueError, match=r"'channel' needs one of them, got None"):
        net.project(out.activations, out.switches, "conv2_1", "channel")
    with pytest.raises(ValueError, match=r"mode must be one of \('layer', 'channel', 'topk'\), got 'pixels'"):
        net.project(out.activations, out.switches, "conv2_1", "pixels")
    with pytest.raises(ValueError, match=r"k >= 1, got 0"):
        net.project(out.activations, out.switches, "conv2_1", "topk", k=0)
