"""model/vgg.py: shapes, an independent re-implementation, switches, batch-norm folding, torchvision layout, loading."""

from __future__ import annotations

import datetime
import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from base.spec import CONV_LAYERS, POOL_LAYERS
from model.vgg import VGG, Features, fold_batch_norm, from_torchvision_state_dict, load_model, to_torchvision_state_dict

# Written out here rather than taken from base/spec.py, so that the re-implementation below is independent.
PLAIN_CFG = (("conv1_1", 3, 64), ("conv1_2", 64, 64), "M",
             ("conv2_1", 64, 128), ("conv2_2", 128, 128), "M",
             ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), "M",
             ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), "M",
             ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512))  # fmt: skip
STRIDE = {"conv1": 1, "conv2": 2, "conv3": 4, "conv4": 8, "conv5": 16}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm2d non-default running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.3, 3.0),
                                  (m.weight, 0.5, 1.5), (m.bias, -0.3, 0.3)):
                    t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo)
                m.num_batches_tracked.fill_(7)


@pytest.fixture(scope="module")
def model() -> VGG:
    torch.manual_seed(0)
    return VGG().eval()


@pytest.fixture(scope="module")
def bn_model() -> VGG:
    torch.manual_seed(1)
    m = VGG(batch_norm=True)
    randomise_bn(m)
    return m.eval()


def images(n: int, h: int, w: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module")
def x_32x48() -> torch.Tensor:
    return images(2, 32, 48, seed=3)


@pytest.fixture(scope="module")
def out_32x48(model, x_32x48) -> Features:
    with torch.no_grad():
        return model.forward_all(x_32x48)


# --- forward_all -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(16, 32), (48, 16), (32, 48)])
def test_forward_all_shapes(model, size, out_32x48, x_32x48):
    H, W = size
    x = x_32x48 if size == (32, 48) else images(2, H, W)
    with torch.no_grad():
        out = out_32x48 if size == (32, 48) else model.forward_all(x)
        logits = model(x)
    assert isinstance(out, Features)
    assert out.logits.shape == (2, 12)
    torch.testing.assert_close(out.logits, logits)
    assert tuple(out.activations) == CONV_LAYERS
    for item in PLAIN_CFG:
        if item == "M":
            continue
        name, _, c = item
        s = STRIDE[name[:5]]
        a = out.activations[name]
        assert a.shape == (2, c, H // s, W // s), name
        assert a.dtype == torch.float32
        assert (a >= 0).all(), f"{name} is not after its ReLU"
        assert (a > 0).any(), f"{name} is all zero"
    assert tuple(out.switches) == POOL_LAYERS
    for b, pool in enumerate(POOL_LAYERS, start=1):
        sw = out.switches[pool]
        c = {1: 64, 2: 128, 3: 256, 4: 512}[b]
        assert sw.shape == (2, c, H // 2**b, W // 2**b), pool
        assert sw.dtype == torch.int64


def plain_vgg(model: VGG) -> nn.Sequential:
    """The original notebook's VGG16 feature stack as a plain nn.Sequential, with ``model``'s weights copied by name."""
    state = model.state_dict()
    layers: list[nn.Module] = []
    for item in PLAIN_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        name, cin, cout = item
        conv = nn.Conv2d(cin, cout, 3, padding=1)
        conv.weight.data.copy_(state[f"convs.{name}.weight"])
        conv.bias.data.copy_(state[f"convs.{name}.bias"])
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers).eval()


def test_activations_match_plain_sequential(model, x_32x48, out_32x48):
    plain = plain_vgg(model)
    after_relu = []
    with torch.no_grad():
        y = x_32x48
        for layer in plain:
            y = layer(y)
            if isinstance(layer, nn.ReLU):
                after_relu.append(y)
        logits = model.classifier[1](y.amax(dim=(2, 3)))  # global max-pool + Linear
    out = out_32x48
    assert len(after_relu) == 13
    for name, expected in zip(CONV_LAYERS, after_relu, strict=True):
        torch.testing.assert_close(out.activations[name], expected, msg=name)
    torch.testing.assert_close(out.logits, logits)


def test_switches_follow_per_plane_convention(out_32x48):
    out = out_32x48
    before = {"pool1": "conv1_2", "pool2": "conv2_2", "pool3": "conv3_3", "pool4": "conv4_3"}
    for pool, conv in before.items():
        a, sw = out.activations[conv], out.switches[pool]
        N, C, H, W = a.shape
        _, _, h, w = sw.shape
        # Gathering the pool's input plane at the switches gives the max-pool's output.
        gathered = a.flatten(2).gather(2, sw.flatten(2)).view(N, C, h, w)
        torch.testing.assert_close(gathered, F.max_pool2d(a, 2, 2), rtol=0, atol=0)
        # Per-plane index h * W_in + w, inside the 2x2 window of its output position (not offset by n or c).
        assert sw.min() >= 0 and sw.max() < H * W
        rows, cols = sw // W, sw % W
        assert torch.equal(rows // 2, torch.arange(h).view(1, 1, h, 1).expand(N, C, h, w))
        assert torch.equal(cols // 2, torch.arange(w).view(1, 1, 1, w).expand(N, C, h, w))


# --- batch norm ------------------------------------------------------------------------------------------------

def test_fold_batch_norm_matches_bn_model(bn_model):
    before = {k: v.clone() for k, v in bn_model.state_dict().items()}
    folded = fold_batch_norm(bn_model)
    assert not folded.batch_norm and len(folded.bns) == 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not folded.training
    x = images(1, 32, 48, seed=6)
    with torch.no_grad():
        ref, got = bn_model.forward_all(x), folded.forward_all(x)
    assert rel_err(got.logits, ref.logits) <= 1e-5
    for name in CONV_LAYERS:
        assert rel_err(got.activations[name], ref.activations[name]) <= 1e-5, name
    # The BN model is left as it was.
    for k, v in bn_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # conv_weights() is the folded convs.
    for name, (w, b) in bn_model.conv_weights().items():
        torch.testing.assert_close(w, folded.convs[name].weight.detach(), rtol=0, atol=0)
        torch.testing.assert_close(b, folded.convs[name].bias.detach(), rtol=0, atol=0)


def test_fold_batch_norm_is_not_a_no_op(bn_model):
    # With randomised statistics, ignoring BN would change the output: the test above can fail.
    unfolded = VGG(batch_norm=False).eval()
    unfolded.load_state_dict({k: v for k, v in bn_model.state_dict().items() if not k.startswith("bns.")})
    x = images(1, 32, 32, seed=7)
    with torch.no_grad():
        assert rel_err(unfolded(x), bn_model(x)) > 1e-2


def test_fold_batch_norm_keeps_dtype_mode_and_config():
    torch.manual_seed(3)
    m = VGG(num_classes=5, batch_norm=True, dropout=0.5).double()
    randomise_bn(m, seed=1)
    folded = fold_batch_norm(m)
    assert folded.training  # keeps the flag of the model it came from
    assert folded.convs["conv1_1"].weight.dtype == torch.float64
    assert folded.config() == {**m.config(), "batch_norm": False}
    assert all(w.dtype == torch.float64 for w, _ in m.conv_weights().values())
    m.eval(), folded.eval()
    x = images(1, 16, 16, seed=8, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(folded(x), m(x)) <= 1e-12
    # The device is kept too (the meta device here; the old code returned a CPU model whatever the input's).
    with torch.device("meta"):
        on_meta = VGG(batch_norm=True)
    assert fold_batch_norm(on_meta).convs["conv5_3"].weight.is_meta
    assert all(w.is_meta and b.is_meta for w, b in on_meta.conv_weights().values())
    # Folding a model without batch norm is an exact copy.
    plain = fold_batch_norm(folded)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), folded(x), rtol=0, atol=0)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_options_and_bare_state_dict(batch_norm, saved):
    head = "gmp"
    torch.manual_seed(4)
    m = VGG(num_classes=5, batch_norm=batch_norm, head=head)
    if batch_norm:
        randomise_bn(m, seed=3)
    m.eval()
    keys = m.state_dict().keys()
    assert any(k.startswith("bns.conv5_3.") for k in keys) == batch_norm
    assert ("classifier.6.weight" in keys) == (head == "torchvision")
    x = images(1, 32, 32, seed=9)
    with torch.no_grad():
        out = m.forward_all(x)
        logits = m(x)
    assert out.logits.shape == (1, 5)
    torch.testing.assert_close(out.logits, logits)
    assert tuple(out.activations) == CONV_LAYERS and tuple(out.switches) == POOL_LAYERS
    # config() rebuilds the same structure.
    with torch.device("meta"):
        rebuilt = VGG(**m.config())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    # load_model reads a bare state dict of ours, guessing the options from its keys.
    loaded, meta = load_model(saved(m.state_dict()))
    assert meta == {} and not loaded.training
    assert loaded.config() == m.config()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), logits, rtol=0, atol=0)


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("size", [(32, 48), (64, 32)])
def test_torchvision_head_shapes(batch_norm, size):
    # Shapes only, on the meta device (no data): the torchvision head takes any multiple of 32, any class count.
    H, W = size
    with torch.device("meta"):
        m = VGG(num_classes=5, batch_norm=batch_norm, head="torchvision")
        out = m.forward_all(torch.empty(2, 3, H, W))
        logits = m(torch.empty(2, 3, H, W))
    assert out.logits.shape == logits.shape == (2, 5)
    assert m.classifier[0].in_features == 512 * 7 * 7 and m.classifier[6].out_features == 5
    assert (len(m.bns) == 13) == batch_norm
    assert out.activations["conv5_3"].shape == (2, 512, H // 16, W // 16)
    assert out.switches["pool4"].shape == (2, 512, H // 16, W // 16)


def test_bad_head():
    with pytest.raises(ValueError, match="head must be one of"):
        VGG(head="avg")


# --- torchvision layout ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tv_vgg16():
    # init_weights=False keeps PyTorch's default init: random conv biases too (torchvision's own init zeroes them).
    torch.manual_seed(5)
    return torchvision.models.vgg16(weights=None, init_weights=False).eval()


@pytest.fixture(scope="module")
def tv_vgg16_bn():
    torch.manual_seed(6)
    m = torchvision.models.vgg16_bn(weights=None, init_weights=False)
    randomise_bn(m, seed=2)
    return m.eval()


@pytest.fixture(scope="module")
def tv_loaded(tv_vgg16, tmp_path_factory):
    """torchvision's vgg16 state dict saved to a file and read back by load_model (the file, 528 MB, is removed)."""
    path = tmp_path_factory.mktemp("tv") / "vgg16.pth"
    torch.save(tv_vgg16.state_dict(), path)
    try:
        yield load_model(path)
    finally:
        path.unlink()


@pytest.fixture
def saved(tmp_path):
    """Save an object to a file under tmp_path; the files are removed after the test."""
    paths = []

    def save(obj, name="weights.pth"):
        path = tmp_path / name
        torch.save(obj, path)
        paths.append(path)
        return path

    yield save
    for p in paths:
        p.unlink(missing_ok=True)


def tv_activations(tv: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Outputs of every ReLU of torchvision's ``features``, and the logits."""
    outs, y = [], x
    for layer in tv.features:
        y = layer(y)
        if isinstance(layer, nn.ReLU):
            outs.append(y)
    return outs, tv.classifier(torch.flatten(tv.avgpool(y), 1))


def test_load_torchvision_vgg16_at_224(tv_vgg16, tv_loaded):
    m, meta = tv_loaded
    assert meta == {"source": "torchvision state dict"}
    assert m.config() == {"num_classes": 1000, "batch_norm": False, "head": "torchvision", "dropout": 0.0}
    assert not m.training
    x = images(1, 224, 224, seed=10)
    with torch.no_grad():
        expected = tv_vgg16(x)
        out = m.forward_all(x)
    assert out.logits.shape == (1, 1000) and expected.std() > 0
    assert rel_err(out.logits, expected) <= 1e-5
    assert out.activations["conv5_3"].shape == (1, 512, 14, 14) and out.switches["pool4"].shape == (1, 512, 14, 14)


def test_load_torchvision_vgg16_bn(tv_vgg16_bn):
    m = from_torchvision_state_dict(tv_vgg16_bn.state_dict())
    assert m.config() == {"num_classes": 1000, "batch_norm": True, "head": "torchvision", "dropout": 0.0}
    m.eval()
    x = images(1, 32, 48, seed=11)  # adaptive average pooling makes any multiple of 32 work for this head
    with torch.no_grad():
        tv_acts, expected = tv_activations(tv_vgg16_bn, x)
        torch.testing.assert_close(tv_vgg16_bn(x), expected)
        out = m.forward_all(x)
        folded = fold_batch_norm(m)(x)
    assert rel_err(out.logits, expected) <= 1e-5
    assert rel_err(folded, expected) <= 1e-5
    for name, a in zip(CONV_LAYERS, tv_acts, strict=True):
        assert rel_err(out.activations[name], a) <= 1e-5, name
    # Round trip to torchvision's layout: the same keys in the same order, the same values.
    state, back = tv_vgg16_bn.state_dict(), to_torchvision_state_dict(m)
    assert list(back) == list(state)
    for k, v in state.items():
        assert torch.equal(back[k], v), k


def test_torchvision_round_trip(tv_vgg16, tv_loaded):
    state, back = tv_vgg16.state_dict(), to_torchvision_state_dict(tv_loaded[0])
    assert list(back) == list(state)
    for k, v in state.items():
        assert torch.equal(back[k], v), k
    # A copy: changing the model afterwards does not change the exported dict.
    assert back["features.0.weight"].data_ptr() != tv_loaded[0].convs["conv1_1"].weight.data_ptr()
    # from_torchvision_state_dict does not share memory with the dict it was given either.
    m = from_torchvision_state_dict(back)
    assert m.convs["conv1_1"].weight.data_ptr() != back["features.0.weight"].data_ptr()


def test_bare_state_dict_with_torchvision_head(tv_loaded, saved):
    m = tv_loaded[0]
    loaded, meta = load_model(saved(m.state_dict()))  # our key layout, torchvision's head
    assert meta == {} and loaded.config() == m.config()
    x = images(1, 32, 32, seed=14)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)


def test_to_torchvision_needs_its_head(model):
    with pytest.raises(ValueError, match="head='torchvision'"):
        to_torchvision_state_dict(model)


def test_torchvision_dict_with_a_missing_key(tv_vgg16):
    state = dict(tv_vgg16.state_dict())
    del state["features.28.weight"]  # conv5_3
    with pytest.raises(ValueError, match=r"torchvision vgg16 state dict.*features\.28\.weight"):
        from_torchvision_state_dict(state)
    state = dict(tv_vgg16.state_dict())
    state["features.28.weight"] = state["features.28.weight"][:, :, :2]  # a 3x2 kernel
    with pytest.raises(ValueError, match=r"(?s)torchvision vgg16 state dict.*size mismatch.*conv5_3"):
        from_torchvision_state_dict(state)


# --- load_model ------------------------------------------------------------------------------------------------

def test_load_our_checkpoint(bn_model, saved):
    opt = torch.optim.SGD(bn_model.parameters(), lr=0.01, momentum=0.9)
    ckpt = {"model": bn_model.state_dict(), "model_config": bn_model.config(), "optimizer": opt.state_dict(),
            "epoch": 3, "class_names": ["a", "b"], "input_size": 224, "val_acc": 0.5}
    m, meta = load_model(saved(ckpt))
    assert not m.training and m.config() == bn_model.config()
    assert "model" not in meta and "optimizer" not in meta
    assert meta["epoch"] == 3 and meta["class_names"] == ["a", "b"] and meta["input_size"] == 224
    x = images(1, 32, 32, seed=12)
    with torch.no_grad():
        torch.testing.assert_close(m(x), bn_model(x), rtol=0, atol=0)


@pytest.mark.parametrize("obj", [{"foo": torch.zeros(1)}, {"model": {}}, torch.zeros(3), [1, 2]])
def test_load_garbage(obj, saved):
    path = saved(obj)
    with pytest.raises(ValueError, match="neither a checkpoint of this project nor a torchvision VGG16") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_load_is_weights_only(model, saved):
    # An object outside torch's weights-only allowlist must be refused, not unpickled.
    path = saved({"model": model.state_dict(), "model_config": model.config(), "when": datetime.date(2020, 1, 1)})
    with pytest.raises(pickle.UnpicklingError):
        load_model(path)
