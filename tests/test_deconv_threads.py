"""The NumPy deconvnet's threads: the count set at run time, its work split into enough pieces, OpenBLAS kept on
one thread inside the kernels, and the same projections on 1 and on several threads.

The thread counts here are larger than the test machine's cores on purpose: what is checked is how the work is
split and that the results do not depend on it, never the speed.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from base.spec import CONV_LAYERS
from demo.backward import threads as dt
from demo.backward.deconvnet import Deconvnet
from demo.backward.kernels import deconv
from model.deconvnet import Deconvnet as TorchDeconvnet


@pytest.fixture
def restore_threads():
    """Whatever a test sets, the count (and OpenBLAS's) comes back after it."""
    before = dt.get_threads()
    yield
    dt.set_threads(before)


def test_count_set_at_run_time_and_restored(restore_threads):
    assert dt.set_threads(3) == 3 and dt.get_threads() == 3
    with dt.using_threads(1) as n:
        assert n == 1 and dt.get_threads() == 1
        with dt.using_threads(None) as kept:
            assert kept == 1
    assert dt.get_threads() == 3
    with pytest.raises(ValueError, match="at least 1"):
        dt.set_threads(0)
    assert dt.get_threads() == 3
    assert dt.set_threads(None) == dt.default_threads()


@pytest.mark.skipif(dt.blas_control() is None, reason="no control over this NumPy's BLAS threads")
def test_openblas_follows_the_count_and_runs_on_one_thread_inside(restore_threads):
    _, get, _ = dt._BLAS
    dt.set_threads(2)
    assert get() == 2
    with dt.our_threads():
        assert get() == 1 and dt.threads_now() == 2
        dt.set_threads(3)  # while inside: applied to OpenBLAS on the way out
        assert get() == 1 and dt.threads_now() == 3
    assert get() == 3 and dt.threads_now() == 1


@pytest.mark.skipif(dt.blas_control() is None, reason="no control over this NumPy's BLAS threads")
def test_each_runs_every_item_once_on_several_threads_and_raises_errors(restore_threads):
    dt.set_threads(4)
    seen, lock = [], threading.Lock()

    def item(i: int) -> None:
        with lock:
            seen.append(i)

    with dt.observe() as log, dt.our_threads():
        dt.each(item, 50)
        dt.each(lambda i: None, 1)
    assert sorted(seen) == list(range(50))
    assert log == [(50, 4), (1, 1)]

    def failing(i: int) -> None:
        if i == 7:
            raise RuntimeError("item 7")

    with dt.our_threads(), pytest.raises(RuntimeError, match="item 7"):
        dt.each(failing, 20)
    with dt.observe() as log:  # outside ``our_threads``: one after another
        dt.each(lambda i: None, 5)
    assert log == [(5, 1)]


@pytest.mark.skipif(dt.blas_control() is None, reason="no control over this NumPy's BLAS threads")
def test_pieces_grow_with_the_count_and_the_output_does_not_change(restore_threads):
    """One transposed convolution (64 -> 64 channels, 64 x 64): its copy and its Winograd blocks (4 blocks: on 8
    threads their GEMMs go in groups) are split into at least as many pieces as threads, and every count gives
    the same output, to the bit."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 64, 64), dtype=np.float32)
    w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    outputs, pieces = {}, {}
    for threads in (1, 2, 8):
        dt.set_threads(threads)
        with dt.observe() as log:
            outputs[threads] = deconv(x, w, "winograd4")
        pieces[threads] = log
    assert all(used == 1 for _, used in pieces[1])
    for threads in (2, 8):
        assert max(used for _, used in pieces[threads]) == threads
        assert max(items for items, _ in pieces[threads]) >= threads  # every thread has work
        np.testing.assert_array_equal(outputs[threads], outputs[1])
    assert sum(items for items, _ in pieces[8]) > sum(items for items, _ in pieces[2])


@pytest.mark.parametrize("rule", ["deconvnet", "gradient"])
def test_projections_equal_on_1_and_2_threads(tiny_vgg, restore_threads, rule):
    """The 13 whole-layer projections and a top-k at 64 px: 2 (and 5) threads give 1 thread's images (1e-6)."""
    torch.manual_seed(1)
    with torch.no_grad():
        f = tiny_vgg.forward_all(torch.randn(1, 3, 64, 64))
    acts = {k: v.numpy() for k, v in f.activations.items()}
    sws = {k: v.numpy() for k, v in f.switches.items()}
    net = Deconvnet({k: v.numpy() for k, v in TorchDeconvnet(tiny_vgg).weights.items()})  # batch norm folded
    results = {}
    for threads in (1, 2, 5):
        dt.set_threads(threads)
        with dt.observe() as log:
            images = [net.project(acts, sws, layer, rule=rule).images for layer in CONV_LAYERS]
            images.append(net.project(acts, sws, "conv4_3", "topk", k=4, rule=rule).images)
        assert max(used for _, used in log) == threads
        results[threads] = images
    for threads in (2, 5):
        for got, want in zip(results[threads], results[1], strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(float(np.abs(want).max()), 1e-30))
