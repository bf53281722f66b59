"""The Ray engine (demo/analyses/ray_engine.py) gives exactly the local engine's results.

On generated images (one unreadable) and the tiny random-weight model, with one local Ray runtime of 2 workers
shared by the tests (``ray_runtime`` in conftest.py): the same atlas index, the same health.csv and health.json
byte for byte, the same predictions CSV, the same ``skipped`` lines; and the same again when a worker process
dies once mid-run (Ray restarts it and runs its block again). Without Ray (an optional extra), ``--engine ray`` is
one line saying how to install it; bad engine options are one line too. The block merge itself (``TopK.union``)
is checked against one streaming pass without Ray.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from base import spec
from demo.analyses import dataset, ray_engine
from demo.analyses.atlas import cli as atlas_cli
from demo.analyses.atlas.config import MineConfig
from demo.analyses.atlas.mine import TopK, stream
from demo.analyses.health import cli as health_cli
from demo.analyses.health.config import HealthConfig
from demo.analyses.predict import cli as predict_cli
from demo.analyses.predict.config import PredictConfig

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is optional: pip install -r requirements-ray.txt")
BATCH = 2
LAYERS = "conv1_2,conv3_3,conv5_3"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """11 small generated images (two of them identical, so values tie across images) and one unreadable file."""
    root = tmp_path_factory.mktemp("ray_data")
    rng = np.random.default_rng(5)
    lines = []
    for i in range(11):
        if i == 9:
            picture = Image.open(root / "im03.png")  # a copy of image 3: every channel ties between the two
        elif i % 2:
            picture = Image.fromarray(rng.integers(0, 256, (34, 38, 3), dtype=np.uint8))
        else:
            picture = make_image("RGB", (36 + i, 32 + i), seed=i)
        picture.save(root / f"im{i:02d}.png")
        lines.append(f"im{i:02d}.png\t{i % 12}")
        if i == 4:
            (root / "broken.png").write_bytes(b"not a png")
            lines.append("broken.png\t1")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root / "labels.txt"


def quietly(fn, *args, **kwargs):
    """(fn's result, the lines it wrote on stderr that are not Ray's own)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        result = fn(*args, **kwargs)
    return result, [line for line in stderr.getvalue().splitlines() if line.startswith(("skipped", "error"))]


def test_blocks_are_whole_batches_of_the_local_engine():
    for first, end, batch, workers in [(0, 12, 2, 2), (3, 40, 4, 1), (0, 1000, 16, 3), (5, 6, 8, 4)]:
        blocks = ray_engine.blocks_of(first, end, batch, workers)
        assert blocks[0][0] == first and blocks[-1][1] == end
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
        assert all((s - first) % batch == 0 for s, _ in blocks)


def test_union_of_blocks_in_any_order_is_the_streaming_pass(data, onnx_model):
    """Blocks mined apart and merged in a shuffled order equal one pass over everything (ties included)."""
    samples = dataset.read_samples(data)
    layers = ["conv1_2", "conv5_3"]
    maxima = dataset.ChannelMaxima(onnx_model, layers)
    load = dataset.Loader(samples, 32, onnx_model.mean, onnx_model.std)
    empty = TopK.empty({layer: spec.conv_channels(layer) for layer in layers}, 4)
    with contextlib.redirect_stderr(io.StringIO()):
        whole = stream(maxima, load, len(samples), empty, BATCH, workers=0, bar=False)
        parts = []
        for s, e in ray_engine.blocks_of(0, len(samples), BATCH, 3):
            part = dataset.Loader(samples[s:e], 32, onnx_model.mean, onnx_model.std)
            parts.append(stream(maxima, part, e - s, empty, BATCH, workers=0, bar=False).shifted(s))
    merged = empty
    for i in np.random.default_rng(0).permutation(len(parts)):
        merged = merged.union(parts[i])
    ties = [(list(r).index(3), list(r).index(10)) for layer in layers for r in whole.images[layer]
            if 3 in r and 10 in r]  # samples 3 and 10 are the same picture
    assert ties and all(a < b for a, b in ties)  # the earlier image first
    assert merged.skipped == whole.skipped == (5,) and merged.next == whole.next
    for layer in layers:
        for name in ("values", "images", "positions"):
            np.testing.assert_array_equal(getattr(merged, name)[layer], getattr(whole, name)[layer])


def test_bad_engine_options_are_one_line(data, tiny_onnx, tmp_path, capsys):
    common = ["--data", str(data), "--model", str(tiny_onnx), "--out", str(tmp_path / "out")]
    for extra, words in [(["--engine", "ray", "--ray-workers", "0"], "--ray-workers must be at least 1"),
                         (["--ray-workers", "2"], "need --engine ray")]:
        assert health_cli.main([*common, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


def test_without_ray_the_engine_says_how_to_install_it(data, tiny_onnx, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code = predict_cli.main(["--labels", str(data), "--model", str(tiny_onnx), "--csv", str(tmp_path / "p.csv"),
                             "--engine", "ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and "pip install -r requirements-ray.txt" in err[0]


@needs_ray
def test_an_unreachable_cluster_is_one_line(data, tiny_onnx, tmp_path, capsys):
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray runtime is already up in this process: it would be used instead of --address")
    code = health_cli.main(["--data", str(data), "--model", str(tiny_onnx), "--out", str(tmp_path / "out"),
                            "--engine", "ray", "--address", "127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot reach the Ray cluster at 127.0.0.1:9")


@needs_ray
def test_atlas_on_ray_equals_local_even_when_a_worker_dies(data, tiny_onnx, tmp_path, ray_runtime, monkeypatch):
    def mine(out, **kw):
        cfg = MineConfig(data=str(data), out=str(out), model=str(tiny_onnx), layers=LAYERS, k=4,
                         batch_size=BATCH, workers=1, render="none", **kw)
        return quietly(atlas_cli.run, cfg, bar=False)

    local, local_err = mine(tmp_path / "local")
    marker = tmp_path / "failed_once"
    monkeypatch.setenv(ray_engine.FAIL_ONCE_ENV, str(marker))
    remote, remote_err = mine(tmp_path / "ray", engine="ray")
    assert marker.exists()  # one worker process did die mid-run
    assert remote_err == local_err and len(local_err) == 1 and "broken.png" in local_err[0]
    with np.load(local / "index.npz") as a, np.load(remote / "index.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert json.loads((local / "atlas.json").read_text()) == json.loads((remote / "atlas.json").read_text())


@needs_ray
def test_health_on_ray_is_byte_for_byte_the_local_one(data, tiny_onnx, tmp_path, ray_runtime):
    def health(out, **kw):
        cfg = HealthConfig(data=str(data), out=str(out), model=str(tiny_onnx), batch_size=BATCH,
                           workers=1, rare=0.3, **kw)
        return quietly(health_cli.run, cfg, bar=False)

    (_, local_err), (_, remote_err) = health(tmp_path / "local"), health(tmp_path / "ray", engine="ray",
                                                                          ray_workers=2)
    assert remote_err == local_err and len(local_err) == 1
    for name in ("health.csv", "health.json"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


@needs_ray
def test_predictions_on_ray_are_the_local_csv(data, tiny_onnx, tmp_path, ray_runtime):
    def classify(csv, **kw):
        cfg = PredictConfig(inputs=[str(data.parent)], csv=str(csv), model=str(tiny_onnx),
                            batch_size=BATCH, tta=True, **kw)
        return quietly(predict_cli.run, cfg)

    (local, local_err), (remote, remote_err) = classify(tmp_path / "l.csv"), classify(tmp_path / "r.csv",
                                                                                       engine="ray")
    assert remote_err == local_err and len(local_err) == 1
    assert (tmp_path / "r.csv").read_bytes() == (tmp_path / "l.csv").read_bytes()
    assert [str(p) for p in remote["paths"]] == [str(p) for p in local["paths"]]
    np.testing.assert_array_equal(remote["probs"], local["probs"])
