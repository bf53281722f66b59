"""The top-9 atlas (demo/analyses/atlas) on the tiny random-weight model and generated images.

Checked against direct computations: the streamed top-k equals a brute-force sort over every position of every
image; an interrupted run, resumed, gives the same atlas as an uninterrupted one; the patch windows are the
units' receptive fields (pixels outside them do not change the unit) and the tiles are those windows cut from
the input and from the unit's own deconvnet projection.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY_SIZE, make_image
from PIL import Image

from base import spec
from demo import display
from demo.analyses import dataset
from demo.analyses.atlas import STATE_FILE, TILES_DIR, read, render
from demo.analyses.atlas import cli as atlas_cli
from demo.analyses.atlas import mine as atlas_mine
from demo.backward.deconvnet import Deconvnet
from demo.preprocess import deprocess, load_image, preprocess

K = 9
BATCH = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """14 generated images of assorted sizes and modes plus one unreadable file, listed in a cat-12 label file."""
    root = tmp_path_factory.mktemp("mine_data")
    rng = np.random.default_rng(7)
    lines = []
    for i in range(14):
        if i % 3 == 0:
            picture = make_image(("RGB", "L", "P")[i % 9 // 3], (40 + 2 * i, 32 + i), seed=i)
        else:
            side = (32, 48, 36)[i % 3]
            picture = Image.fromarray(rng.integers(0, 256, (side, side + 4, 3), dtype=np.uint8))
        picture.save(root / f"img{i:02d}.png")
        lines.append(f"img{i:02d}.png\t{i % 12}")
        if i == 6:
            (root / "broken.jpg").write_bytes(b"not an image at all")
            lines.append("broken.jpg\t3")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root / "labels.txt"


def config(data, out, layers: str, **kw) -> atlas_cli.MineConfig:
    settings = {"k": K, "batch_size": BATCH, "workers": 1, "save_every": 1, "render": "all", **kw}
    return atlas_cli.MineConfig(data=str(data), out=str(out), layers=layers, **settings)


def mine_quietly(cfg: atlas_cli.MineConfig, **kw):
    """Run the miner; the unreadable image is reported as one "skipped" line on stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        result = atlas_cli.run(cfg, bar=False, **kw)
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("skipped ") and "broken.jpg" in lines[0], lines
    return result


@pytest.fixture(scope="module")
def atlas(data, tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas") / "atlas"
    return mine_quietly(config(data, out, "conv1_2,conv2_2", model=str(tiny_onnx)))


def readable(data):
    """(ids, images (M, 3, 32, 32)) of the readable samples, loaded independently of the miner."""
    samples = dataset.read_samples(data)
    ids, images = [], []
    for i, s in enumerate(samples):
        try:
            images.append(preprocess(load_image(s.path), TINY_SIZE, spec.MEAN, spec.STD)[0])
            ids.append(i)
        except ValueError:  # base.images.ImageError
            continue
    return np.array(ids), np.stack(images)


def brute_force_topk(acts: np.ndarray, ids: np.ndarray, k: int):
    """Per channel, sort every (image, position) pair by (value desc, image, position) and keep the first pair of
    each image until k images: the definition of the atlas, computed the slow way."""
    N, C, h, w = acts.shape
    values, images = np.zeros((C, k), np.float32), np.full((C, k), -1)
    positions = np.zeros((C, k), np.int64)
    img, pos = np.repeat(ids, h * w), np.tile(np.arange(h * w), N)
    for c in range(C):
        v = acts[:, c].reshape(-1)
        seen, r = set(), 0
        for o in np.lexsort((pos, img, -v)):
            if img[o] in seen:
                continue
            seen.add(img[o])
            values[c, r], images[c, r], positions[c, r] = v[o], img[o], pos[o]
            r += 1
            if r == k:
                break
    return values, images, positions


def test_atlas_equals_brute_force_sort(atlas, data, onnx_model):
    ids, x = readable(data)
    _, acts, _ = onnx_model.run(x)
    info = json.loads((atlas / "atlas.json").read_text())
    assert info["images"] == len(ids) == 14 and len(info["skipped"]) == 1
    with np.load(atlas / "index.npz") as index:
        for layer in ("conv1_2", "conv2_2"):
            values, images, positions = brute_force_topk(acts[layer], ids, K)
            w = acts[layer].shape[3]
            np.testing.assert_array_equal(index[f"{layer}/images"], images)
            np.testing.assert_allclose(index[f"{layer}/values"], values, rtol=1e-5, atol=1e-6)
            got = index[f"{layer}/positions"]
            np.testing.assert_array_equal(got[..., 0] * w + got[..., 1], positions)
            assert not np.isin(index[f"{layer}/images"], [7]).any()  # broken.jpg is sample 7: never an entry


def test_stream_of_deep_layer_equals_brute_force(data, onnx_model):
    """conv5_3 (2x2 maps here, many zeros: ties) streamed in batches of 4, against the brute-force sort."""
    samples = dataset.read_samples(data)
    load = dataset.Loader(samples, TINY_SIZE, onnx_model.mean, onnx_model.std)
    maxima = dataset.ChannelMaxima(onnx_model, ["conv5_3", "conv3_3"], threads=1)
    state = atlas_mine.TopK.empty({"conv5_3": 512, "conv3_3": 256}, K)
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        state = atlas_mine.stream(maxima, load, len(samples), state, batch_size=BATCH, workers=0, bar=False)
    assert "skipped" in stderr.getvalue() and "broken.jpg" in stderr.getvalue()
    assert state.done and state.next == len(samples) and state.skipped == (7,)
    ids, x = readable(data)
    _, acts, _ = onnx_model.run(x)
    for layer in ("conv5_3", "conv3_3"):
        values, images, positions = brute_force_topk(acts[layer], ids, K)
        np.testing.assert_array_equal(state.images[layer], images)
        np.testing.assert_array_equal(state.positions[layer], positions)
        np.testing.assert_allclose(state.values[layer], values, rtol=1e-5, atol=1e-6)


def test_merge_keeps_earlier_image_on_ties():
    state = atlas_mine.TopK.empty({"L": 2}, 3)
    # batch 1: images 0, 1; batch 2: images 2, 3. Channel 0 ties everything at 1.0, channel 1 has a clear order.
    state = state.merged(np.array([0, 1]), {"L": (np.array([[1.0, 5.0], [1.0, 2.0]]), np.array([[0, 1], [2, 3]]))}, 2)
    state = state.merged(np.array([2, 3]), {"L": (np.array([[1.0, 9.0], [1.0, 1.0]]), np.array([[4, 5], [6, 7]]))}, 4)
    np.testing.assert_array_equal(state.images["L"], [[0, 1, 2], [2, 0, 1]])
    np.testing.assert_array_equal(state.values["L"], [[1, 1, 1], [9, 5, 2]])
    np.testing.assert_array_equal(state.positions["L"], [[0, 2, 4], [5, 1, 3]])


def _same_atlas(a, b) -> None:
    assert json.loads((a / "atlas.json").read_text()) == json.loads((b / "atlas.json").read_text())
    with np.load(a / "index.npz") as ia, np.load(b / "index.npz") as ib:
        assert sorted(ia.files) == sorted(ib.files)
        for key in ia.files:
            np.testing.assert_array_equal(ia[key], ib[key], err_msg=key)
    pngs = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert pngs == sorted(p.relative_to(b) for p in b.rglob("*.png")) and len(pngs) == 64
    for rel in pngs:
        np.testing.assert_array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel)), str(rel))
    assert not (b / STATE_FILE).exists() and not (b / TILES_DIR).exists()


@pytest.fixture(scope="module")
def reference(data, tiny_onnx, tmp_path_factory):
    """An uninterrupted run on conv1_1, k = 4 (the resume tests' reference)."""
    return mine_quietly(config(data, tmp_path_factory.mktemp("ref") / "atlas", "conv1_1", model=str(tiny_onnx), k=4))


class Stop(Exception):
    pass


@pytest.mark.parametrize("error", [Stop, KeyboardInterrupt])
def test_resume_after_interruption_while_mining(error, data, tiny_onnx, reference, tmp_path):
    out = tmp_path / "atlas"
    seen = []

    def crash(done: int, total: int) -> None:  # the third batch never reaches a save when it raises Stop
        seen.append(done)
        if len(seen) == 3:
            raise error("interrupted")

    cfg = config(data, out, "conv1_1", model=str(tiny_onnx), save_every=2, k=4)
    with pytest.raises(error), contextlib.redirect_stderr(io.StringIO()):
        atlas_cli.run(cfg, progress=crash, bar=False)
    saved = np.load(out / STATE_FILE)
    assert int(saved["next"]) == (3 * BATCH if error is KeyboardInterrupt else 2 * BATCH)  # Ctrl-C saves at once
    assert not (out / "atlas.json").exists()
    with pytest.raises(ValueError, match="not empty"):
        atlas_cli.run(cfg, bar=False)
    cfg.resume = True
    atlas_cli.run(cfg, bar=False)  # continues after the broken image: no warning this time
    _same_atlas(reference, out)


def test_resume_after_interruption_while_rendering(data, tiny_onnx, reference, tmp_path, monkeypatch):
    out = tmp_path / "atlas"
    cfg = config(data, out, "conv1_1", model=str(tiny_onnx), k=4)
    real, count = render.save_png, [0]

    def flaky(path, picture):
        count[0] += 1
        if count[0] == 100:
            raise KeyboardInterrupt
        real(path, picture)

    monkeypatch.setattr(render, "save_png", flaky)
    with pytest.raises(KeyboardInterrupt), contextlib.redirect_stderr(io.StringIO()):
        atlas_cli.run(cfg, bar=False)
    assert len(list((out / TILES_DIR / "conv1_1").glob("*.png"))) == 99
    monkeypatch.setattr(render, "save_png", real)
    cfg.resume = True
    atlas_cli.run(cfg, bar=False)  # mining is done: no image is read again except those still to render
    _same_atlas(reference, out)


def test_render_some_now_and_the_rest_on_request(data, tiny_onnx, onnx_model, reference, tmp_path):
    out = tmp_path / "atlas"
    cfg = config(data, out, "conv1_1", model=str(tiny_onnx), render="5", k=4)
    mine_quietly(cfg)
    atlas = read.Atlas(out)
    drawn = atlas.rendered("conv1_1")
    assert set(np.flatnonzero(drawn)) == set(atlas.ranked_channels("conv1_1")[:5].tolist())
    missing = int(np.flatnonzero(~drawn)[0])
    with pytest.raises(FileNotFoundError, match="no picture yet"):
        atlas.view("conv1_1", missing)
    picture = render.atlas_view(atlas, "conv1_1", missing, onnx_model)  # drawn on request, and kept
    np.testing.assert_array_equal(picture, read.Atlas(reference).view("conv1_1", missing))
    assert atlas.rendered("conv1_1").sum() == 6
    cfg.resume, cfg.render = True, "all"
    atlas_cli.run(cfg, bar=False)
    _same_atlas(reference, out)


def test_another_rule_is_drawn_on_request_beside_the_atlas_own(atlas, data, onnx_model):
    view = read.Atlas(atlas)
    layer, channel = "conv2_2", int(view.ranked_channels("conv2_2")[0])
    own = view.view(layer, channel)
    guided = render.atlas_view(view, layer, channel, onnx_model, "guided")  # drawn now, kept beside the own one
    assert (atlas / layer / f"{channel:04d}.guided.png").is_file() and (atlas / layer / f"{channel:04d}.png").is_file()
    np.testing.assert_array_equal(view.view(layer, channel, "deconvnet"), own)
    side = view.info["layers"][layer]["tile"]
    deconvnet = Deconvnet(onnx_model.weights)
    e = view.entries(layer, channel)[0]
    x = preprocess(load_image(e.path), TINY_SIZE, spec.MEAN, spec.STD)
    _, acts, switches = onnx_model.run(x)
    signal = np.zeros_like(acts[layer])
    signal[0, channel, e.row, e.col] = e.value
    top, left, _ = spec.field_box(layer, e.row, e.col)
    for picture, rule in ((own, "deconvnet"), (guided, "guided")):
        projection = deconvnet.project_down(signal, layer, switches, rule=rule, activations=acts)[0]
        np.testing.assert_array_equal(picture[:side, :side], display.projection_tile(projection, top, left, side))
    assert not np.array_equal(own, guided)


@pytest.mark.filterwarnings("ignore:skipping unreadable image")  # the loader may reach broken.jpg ahead of time
def test_resume_refuses_other_settings(data, tiny_onnx, tmp_path):
    def stop(done: int, total: int) -> None:
        raise Stop

    cfg = config(data, tmp_path / "atlas", "conv1_1", model=str(tiny_onnx))
    with pytest.raises(Stop):
        atlas_cli.run(cfg, progress=stop, bar=False)
    cfg.resume, cfg.k = True, 5
    with pytest.raises(ValueError, match="another model, data set or settings"):
        atlas_cli.run(cfg, bar=False)


@pytest.mark.parametrize("layer, where", [("conv1_2", "centre"), ("conv2_2", "corner"), ("conv3_1", "centre"),
                                          ("conv3_1", "edge")])
def test_field_box_is_the_receptive_field(layer, where, onnx_model):
    """Noise outside the window leaves the unit unchanged; noise on the window's inner border changes it."""
    size = 64
    h = size // spec.stride_of(layer)
    row, col = {"centre": (h // 2, h // 2 - 1), "corner": (0, h - 1), "edge": (h - 1, h // 3)}[where]
    top, left, side = spec.field_box(layer, row, col)
    assert side == spec.receptive_field(layer)
    r0, r1, c0, c1 = spec.clip_box(top, left, side, size, size)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    noise = 3 * rng.standard_normal(x.shape, dtype=np.float32)
    outside = np.ones((size, size), bool)
    outside[r0:r1, c0:c1] = False
    ring = np.zeros((size, size), bool)
    ring[r0:r1, c0:c1] = True
    ring[r0 + 1 : r1 - 1, c0 + 1 : c1 - 1] = False
    ring &= ~outside
    # only the window's own edges count (an edge clipped by the image border is not the window's)
    for edge, clipped in ((np.s_[r0, :], top < 0), (np.s_[r1 - 1, :], top + side > size),
                          (np.s_[:, c0], left < 0), (np.s_[:, c1 - 1], left + side > size)):
        if clipped:
            ring[edge] = False
    _, base, _ = onnx_model.run(x)
    _, far, _ = onnx_model.run(np.where(outside, x + noise, x).astype(np.float32))
    _, near, _ = onnx_model.run(np.where(ring, x + noise, x).astype(np.float32))
    np.testing.assert_allclose(far[layer][0, :, row, col], base[layer][0, :, row, col], rtol=1e-5, atol=1e-5)
    assert np.abs(near[layer][0, :, row, col] - base[layer][0, :, row, col]).max() > 1e-3


def test_tiles_are_the_field_cut_from_input_and_projection(atlas, data, onnx_model):
    view = read.Atlas(atlas)
    info = view.info["grid"]
    layer = "conv2_2"
    side = view.info["layers"][layer]["tile"]
    assert side == spec.receptive_field(layer) == 14
    gap, cols = info["tile_gap"], info["columns"]
    block = cols * side + (cols - 1) * gap
    deconvnet = Deconvnet(onnx_model.weights)
    checked = 0
    for channel in view.ranked_channels(layer)[:6]:
        picture = view.view(layer, int(channel))
        assert picture.shape == (3 * side + 2 * gap, 2 * block + info["block_gap"], 3)
        for e in view.entries(layer, int(channel)):
            y, x0 = (e.rank // cols) * (side + gap), (e.rank % cols) * (side + gap)
            proj_tile = picture[y : y + side, x0 : x0 + side]
            patch_tile = picture[y : y + side, block + info["block_gap"] + x0 :][:, :side]
            top, left, _ = spec.field_box(layer, e.row, e.col)
            assert e.box == spec.clip_box(top, left, side, TINY_SIZE, TINY_SIZE)
            r0, r1, c0, c1 = e.box
            x = preprocess(load_image(e.path), TINY_SIZE, spec.MEAN, spec.STD)
            np.testing.assert_array_equal(patch_tile[r0 - top : r1 - top, c0 - left : c1 - left],
                                          deprocess(x, spec.MEAN, spec.STD)[r0:r1, c0:c1])
            outside = np.ones((side, side), bool)
            outside[r0 - top : r1 - top, c0 - left : c1 - left] = False
            assert (patch_tile[outside] == display.OUTSIDE).all() and (proj_tile[outside] == display.OUTSIDE).all()
            _, acts, switches = onnx_model.run(x)
            assert acts[layer][0, channel, e.row, e.col] == pytest.approx(e.value, rel=1e-5)
            assert acts[layer][0, channel, e.row, e.col] == pytest.approx(acts[layer][0, channel].max(), rel=1e-6)
            signal = np.zeros_like(acts[layer])
            signal[0, channel, e.row, e.col] = e.value
            projection = deconvnet.project_down(signal, layer, switches)[0]
            ys, xs = np.nonzero(np.abs(projection).sum(axis=0))
            assert r0 <= ys.min() and ys.max() < r1 and c0 <= xs.min() and xs.max() < c1  # inside the window
            np.testing.assert_array_equal(proj_tile, display.projection_tile(projection, top, left, side))
            checked += 1
    assert checked >= 30


def test_atlas_reader(atlas):
    view = read.load_atlas(str(atlas.resolve()))
    assert view.layers == ["conv1_2", "conv2_2"] and view.channels("conv2_2") == 128
    picture = render.atlas_view(atlas, "conv1_2", 3)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    order = view.ranked_channels("conv1_2")
    tops = [view.entries("conv1_2", int(c))[0].value if view.entries("conv1_2", int(c)) else 0.0 for c in order]
    assert tops == sorted(tops, reverse=True)
    entries = view.entries("conv1_2", int(order[0]))
    assert len(entries) == K and [e.rank for e in entries] == list(range(K))
    assert all(a.value >= b.value for a, b in zip(entries, entries[1:], strict=False))
    assert len({e.image for e in entries}) == K  # one activation per image
    caption = view.caption("conv1_2", int(order[0]))
    assert caption.startswith("**conv1_2 channel") and entries[0].path.split("/")[-1] in caption
    with pytest.raises(ValueError, match="channels 0..63"):
        view.view("conv1_2", 64)
    with pytest.raises(ValueError, match="layers"):
        view.view("conv5_3", 0)


def test_unfinished_atlas_says_how_to_resume(tmp_path):
    (tmp_path / STATE_FILE).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="--resume"):
        read.Atlas(tmp_path)


def test_reduction_graph_keeps_only_what_it_needs(tiny_onnx):
    proto = dataset.reduction_graph(tiny_onnx, ["conv2_1"])
    assert [o.name for o in proto.graph.output] == ["conv2_1_max", "conv2_1_argmax"]
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3  # conv1_1, conv1_2, conv2_1: nothing deeper, no head


def test_cli(data, tiny_onnx, tmp_path):
    out = tmp_path / "atlas"
    args = [sys.executable, "-m", "demo.mine", "--data", str(data), "--model", str(tiny_onnx), "--layers",
            "conv1_1", "--k", "3", "--patches-only", "--out", str(out)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "broken.jpg" in proc.stderr and "atlas of conv1_1 over 14 images" in proc.stdout
    # By default only the 16 strongest channels of each layer are drawn; the output says how to draw the rest.
    assert len(list((out / "conv1_1").glob("*.png"))) == 16
    assert "16 of 64 channels drawn" in proc.stdout and "--resume --render all" in proc.stdout
    with np.load(out / "index.npz") as index:
        assert index["conv1_1/values"].shape == (64, 3)
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr
    rest = subprocess.run([*args, "--resume", "--render", "all"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert rest.returncode == 0, rest.stderr
    assert len(list((out / "conv1_1").glob("*.png"))) == 64 and "64 of 64 channels drawn" in rest.stdout
