"""base/spec.py: the project's vocabulary, torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from base import spec

ROOT = Path(__file__).resolve().parents[1]

CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
         "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")  # fmt: skip
RECEPTIVE_FIELDS = (3, 5, 10, 14, 24, 32, 40, 60, 76, 92, 132, 164, 196)


def test_layer_names():
    assert spec.CONV_LAYERS == CONVS
    assert spec.POOL_LAYERS == ("pool1", "pool2", "pool3", "pool4")
    assert spec.ACTIVATION_OUTPUTS == CONVS
    assert spec.SWITCH_OUTPUTS == ("pool1_switches", "pool2_switches", "pool3_switches", "pool4_switches")
    assert spec.OUTPUT_NAMES == ("probs", *CONVS, *spec.SWITCH_OUTPUTS)
    assert len(set(spec.OUTPUT_NAMES)) == len(spec.OUTPUT_NAMES)


def test_pool_below():
    below = {conv: spec.pool_below(conv) for conv in CONVS}
    assert below == {
        "conv1_1": None, "conv1_2": None,
        "conv2_1": "pool1", "conv2_2": None,
        "conv3_1": "pool2", "conv3_2": None, "conv3_3": None,
        "conv4_1": "pool3", "conv4_2": None, "conv4_3": None,
        "conv5_1": "pool4", "conv5_2": None, "conv5_3": None,
    }  # fmt: skip


def test_blocks_channels_strides():
    assert [spec.block_of(c) for c in CONVS] == [1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert [spec.block_of(p) for p in spec.POOL_LAYERS] == [1, 2, 3, 4]
    assert [spec.conv_channels(c) for c in CONVS] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert [spec.stride_of(c) for c in CONVS] == [1, 1, 2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16]
    assert spec.FEATURE_CHANNELS == spec.conv_channels("conv5_3")
    assert spec.SIZE_MULTIPLE == 2 ** len(spec.POOL_LAYERS)
    assert spec.INPUT_SIZE % spec.SIZE_MULTIPLE == 0


def test_receptive_field_values():
    assert tuple(spec.receptive_field(c) for c in CONVS) == RECEPTIVE_FIELDS


def _support_side(layer: str, size: int = 288) -> int:
    """Receptive field measured by autograd on a 1-channel copy of the architecture.

    All weights are 1 and the max-pools are replaced by average pools (positive weights everywhere), so the input
    pixels with a nonzero gradient of one central output position are exactly its receptive field.
    """
    x = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    y = x
    for conv in spec.CONV_LAYERS[: spec.CONV_LAYERS.index(layer) + 1]:
        if spec.pool_below(conv):
            y = F.avg_pool2d(y, 2, 2)
        y = F.conv2d(y, torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=1)
    _, _, h, w = y.shape
    (grad,) = torch.autograd.grad(y[0, 0, h // 2, w // 2], x)
    rows = grad[0, 0].abs().sum(dim=1).nonzero()
    cols = grad[0, 0].abs().sum(dim=0).nonzero()
    assert rows.min() > 0 and rows.max() < size - 1, "the window touches the border; use a larger input"
    assert rows.max() - rows.min() == cols.max() - cols.min()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("layer", ["conv1_1", "conv2_1", "conv3_3", "conv4_2", "conv5_3"])
def test_receptive_field_matches_autograd(layer):
    assert spec.receptive_field(layer) == _support_side(layer)


def test_switch_convention_and_names():
    assert "h * W_in + w" in spec.SWITCH_CONVENTION and "per-plane" in spec.SWITCH_CONVENTION
    assert spec.switch_output("pool3") == "pool3_switches"
    assert spec.INPUT_NAME == "image" and spec.PROBS_NAME == "probs"


def test_preprocessing_is_rgb_imagenet():
    # RGB order (the original notebook fed BGR): the red channel's mean comes first.
    assert spec.MEAN == (0.485, 0.456, 0.406)
    assert spec.STD == (0.229, 0.224, 0.225)
    assert len(spec.CAT12_BREEDS) == spec.NUM_CLASSES == 12
    assert len(set(spec.CAT12_BREEDS)) == 12


def test_spec_imports_no_torch():
    code = "import sys, base.spec; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "torch" not in out.stdout, out.stdout


def test_the_steps_describe_the_network_once():
    from base.spec import STEPS, steps_down

    assert [s.name for s in STEPS] == list(spec.CONV_LAYERS)
    assert all(s.pool == spec.pool_below(s.name) and s.c_out == spec.conv_channels(s.name) for s in STEPS)
    assert STEPS[0].c_in == 3
    assert all(below.c_out == above.c_in for below, above in zip(STEPS[:-1], STEPS[1:], strict=True))
    assert [s.name for s in steps_down("conv2_1")] == ["conv2_1", "conv1_2", "conv1_1"]


def test_the_numpy_descent_refuses_a_geometry_its_kernels_do_not_run():
    import dataclasses

    import pytest

    from base.spec import STEPS
    from demo.backward.descent import _check_geometry

    _check_geometry(STEPS)
    with pytest.raises(ValueError, match="conv1_1: .*kernel 5"):
        _check_geometry([dataclasses.replace(STEPS[0], kernel=5, padding=2)])
