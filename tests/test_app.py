"""The Gradio app: demo/app unit tests (no Gradio), and the served app through its HTTP API (gradio_client).

The app runs in-process on a free localhost port, on the tiny random-weight model of conftest.py (32 x 32 inputs),
with the cache off (every request recomputes) and two requests computed at once, so that the concurrency test
really runs the pipeline in parallel.
"""

from __future__ import annotations

import contextlib
import io
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY_SIZE, encoded, make_image, png_header
from PIL import Image, ImageOps

from base.display import GREY, map_image, reconstruction_image
from base.images import Limits
from base.spec import CONV_LAYERS, MEAN, STD, conv_channels, field_box, receptive_field
from demo import display
from demo.app import paper, views
from demo.app.inputs import InputError, decode, open_upload
from demo.app.pipeline import Pipeline, PipelineConfig, top_predictions
from demo.app.text import Timings
from demo.backward.deconvnet import Deconvnet, top_channels
from demo.display import GridLayout, feature_grid
from demo.preprocess import deprocess, preprocess, to_rgb

# --- inputs, good and bad ---------------------------------------------------------------------------------------


def jpeg_with_orientation(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(make_image("RGB", (48, 40), 7), "JPEG", exif=exif, quality=95)


def animated_gif() -> bytes:
    frames = [make_image("RGB", (40, 40), seed).convert("P") for seed in range(3)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


# name -> (file bytes, words the error message must contain)
BAD_INPUTS: dict[str, tuple[bytes, str]] = {
    "empty.png": (b"", "empty"),
    "noise.jpg": (np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes(), "not a picture"),
    "text.png": (b"This is a text file, not a picture.\n" * 20, "not a picture"),
    "truncated.jpg": (encoded(make_image("RGB", (64, 64)), "JPEG", quality=95)[:700], "truncated"),
    "bomb_48mp.png": (png_header(8000, 6000), "megapixels"),  # our 40 MP limit, from the header
    "bomb_100mp.png": (png_header(10_000, 10_000), "megapixels"),  # Pillow's DecompressionBombWarning
    "bomb_400mp.png": (png_header(20_000, 20_000), "megapixels"),  # Pillow's DecompressionBombError
    "strip.png": (encoded(Image.new("RGB", (30_000, 1)), "PNG"), "thin"),  # huge side, 6.7 gigapixels once resized
}

# name -> file bytes; all must work (a warning at most)
GOOD_INPUTS: dict[str, bytes] = {
    "palette.png": encoded(make_image("P"), "PNG"),
    "rgba.png": encoded(make_image("RGBA"), "PNG"),
    "grey.png": encoded(make_image("L"), "PNG"),
    "cmyk.jpg": encoded(make_image("CMYK"), "JPEG"),
    "grey16.png": encoded(make_image("I;16"), "PNG"),
    "one_pixel.png": encoded(Image.new("RGB", (1, 1), (200, 120, 40)), "PNG"),
    "rotated.jpg": jpeg_with_orientation(6),
    "animated.gif": animated_gif(),
}


@pytest.fixture(scope="module")
def pipeline(onnx_model) -> Pipeline:
    p = Pipeline(onnx_model, PipelineConfig(cache_size=2))
    yield p
    p.close()


@pytest.fixture
def cat_png(tmp_path) -> Path:
    path = tmp_path / "cat.png"
    make_image("RGB", (48, 40), 3).save(path)
    return path


# --- demo/app without Gradio ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_decode_refuses_bad_input_with_a_reason(name):
    data, words = BAD_INPUTS[name]
    with pytest.raises(InputError, match=words):
        decode(data)


def test_pillow_bomb_paths_are_caught_even_above_our_own_limit():
    generous = Limits(max_pixels=10**12, max_aspect=10**6)
    assert Image.MAX_IMAGE_PIXELS and 10_000 * 10_000 > Image.MAX_IMAGE_PIXELS  # Pillow warns at this size
    for width, height in [(10_000, 10_000), (20_000, 20_000)]:  # warning, error
        with pytest.raises(InputError, match="megapixels"):
            decode(png_header(width, height), generous)


def test_open_upload_sources(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(GOOD_INPUTS["palette.png"])
    import base64

    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    uploads = [open_upload(path), open_upload(str(path)), open_upload(path.read_bytes()),
               open_upload({"path": str(path)}), open_upload({"path": None, "url": url})]
    for u in uploads:
        assert u.image.mode == "RGB" and u.digest == uploads[0].digest
        assert np.array_equal(np.asarray(u.image), np.asarray(uploads[0].image))
    for missing in (None, {"path": None, "url": None}):
        with pytest.raises(InputError, match="No image"):
            open_upload(missing)
    with pytest.raises(InputError, match="could not be found"):
        open_upload(tmp_path / "gone.png")
    with pytest.raises(InputError, match="MB"):
        open_upload(path, Limits(max_bytes=10))


@pytest.mark.parametrize("name", sorted(GOOD_INPUTS))
def test_decode_accepts_every_kind_of_picture(name):
    upload = decode(GOOD_INPUTS[name])
    assert upload.image.mode == "RGB"
    assert np.array_equal(np.asarray(upload.image), np.asarray(to_rgb(Image.open(io.BytesIO(GOOD_INPUTS[name])))))


def test_exif_rotation_and_animation_are_applied_and_told():
    rotated = decode(GOOD_INPUTS["rotated.jpg"])
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(GOOD_INPUTS["rotated.jpg"]))).convert("RGB")
    assert rotated.size == (48, 40) and rotated.image.size == (40, 48)  # orientation 6: turned a quarter
    assert np.array_equal(np.asarray(rotated.image), np.asarray(upright))
    assert any("EXIF" in note for note in rotated.notes)

    gif = decode(GOOD_INPUTS["animated.gif"])
    first = Image.open(io.BytesIO(GOOD_INPUTS["animated.gif"])).convert("RGB")  # Pillow opens on frame 0
    assert np.array_equal(np.asarray(gif.image), np.asarray(first))
    assert any("first frame (of 3)" in note for note in gif.notes)
    assert decode(GOOD_INPUTS["grey.png"]).notes == []


def test_tiny_images_are_enlarged_with_a_warning(pipeline):
    fwd, _ = pipeline.forward(GOOD_INPUTS["one_pixel.png"])
    assert fwd.x.shape == (1, 3, TINY_SIZE, TINY_SIZE) and any("1 x 1 pixels" in note for note in fwd.notes)
    assert np.allclose(fwd.x, fwd.x[:, :, :1, :1])  # one colour everywhere
    fwd, _ = pipeline.forward(encoded(make_image("RGB", (20, 24)), "PNG"))  # 20 px: not "far smaller" than 32
    assert fwd.notes == []


def test_grid_layout_channel_at_by_hand():
    layout = GridLayout(channels=5, columns=3, tile_h=4, tile_w=4, gap=1)  # 2 rows: 0 1 2 / 3 4 .
    assert layout.rows == 2 and layout.size == (9, 14)
    assert layout.channel_at(0, 0) == 0 and layout.channel_at(3.9, 3.9) == 0
    assert layout.channel_at(5, 0) == 1 and layout.channel_at(13, 3) == 2
    assert layout.channel_at(4, 0) is None and layout.channel_at(0, 4) is None  # the gaps
    assert layout.channel_at(0, 5) == 3 and layout.channel_at(6, 8) == 4
    assert layout.channel_at(10, 5) is None  # no sixth channel
    assert layout.channel_at(-1, 0) is None and layout.channel_at(14, 0) is None and layout.channel_at(0, 9) is None


def test_feature_grid_tiles_each_channel_where_the_layout_says():
    rng = np.random.default_rng(1)
    for C, side in [(7, 3), (64, 224), (10, 40)]:  # enlarged, shrunk, as is
        act = np.maximum(rng.standard_normal((C, side, side), dtype=np.float32), 0)
        act[2] = 0  # a silent channel
        picture, flags, layout = feature_grid(act, "minmax")
        assert picture.shape == (*layout.size, 3) and picture.dtype == np.uint8
        assert flags.tolist() == [c == 2 for c in range(C)]
        assert layout.size[1] <= 1100 and min(layout.tile_h, layout.tile_w) >= min(side, 32)
        for c in range(C):
            row, col = divmod(c, layout.columns)
            y, x = row * (layout.tile_h + layout.gap), col * (layout.tile_w + layout.gap)
            assert layout.channel_at(x + layout.tile_w // 2, y + layout.tile_h // 2) == c
            tile = picture[y : y + layout.tile_h, x : x + layout.tile_w]
            alone, _ = map_image(act[c], "minmax")
            if layout.tile_h >= side:
                expected = display.upscale(alone, layout.tile_h // side)
                assert np.array_equal(tile, expected)
            else:  # shrunk by box averaging: close to the block means of the picture
                f = side // layout.tile_h
                means = alone[: layout.tile_h * f, : layout.tile_w * f].reshape(
                    layout.tile_h, f, layout.tile_w, f, 3).mean(axis=(1, 3))
                assert np.abs(tile.astype(np.float64) - means).max() <= 1.0
        assert np.all(picture[: layout.tile_h, layout.tile_w] == 255)  # the gap is white


def test_top_predictions():
    probs = np.array([0.1, 0.5, 0.05, 0.2, 0.15], np.float32)
    top = top_predictions(probs, list("abcde"), 3)
    assert list(top) == ["b", "d", "e"] and top["b"] == pytest.approx(0.5)


def test_timings_markdown_names_every_stage():
    t = Timings(0.004, 0.25, 1.5, 0.03)
    text = t.markdown("CPUExecutionProvider")
    for word in ("preprocess 4 ms", "forward 250 ms", "deconvnet 1.50 s", "encoding 30 ms", "total 1.78 s", "CPU"):
        assert word in text
    assert t.as_dict()["total"] == pytest.approx(1784.0)
    again = Timings(encoding=0.01, cached=True, first=t)
    assert "from the cache" in again.markdown() and "1.78 s" in again.markdown()


def test_analyse_streams_13_layers_that_match_the_deconvnet(pipeline, onnx_model, cat_png):
    steps = list(views.analyse(pipeline, cat_png, "signed"))
    assert [len(s.layers) for s in steps] == list(range(13)) + [13]
    assert [s.done for s in steps] == [False] * 13 + [True]
    final = steps[-1]
    assert [caption.split()[0] for _, caption in final.layers] == list(CONV_LAYERS)
    x = preprocess(Image.open(cat_png), TINY_SIZE, MEAN, STD)
    probs, acts, switches = onnx_model.run(x)
    assert final.prediction == top_predictions(probs[0], onnx_model.class_names)
    data = np.load(final.npz)
    assert sorted(data.files) == sorted(["input", "probs", *(f"{name}/layer/deconvnet" for name in CONV_LAYERS)])
    np.testing.assert_array_equal(data["input"], x)
    deconvnet = Deconvnet(onnx_model.weights)
    for (path, _), name in zip(final.layers, CONV_LAYERS, strict=True):
        expected = deconvnet.project(acts, switches, name, "layer").images[0]
        np.testing.assert_allclose(data[f"{name}/layer/deconvnet"], expected, rtol=1e-5, atol=1e-6)
        picture, _ = reconstruction_image(data[f"{name}/layer/deconvnet"], "signed")
        assert np.array_equal(np.asarray(Image.open(path)), picture)  # the PNG holds exactly the display picture
    assert final.timings.forward > 0 and final.timings.deconvnet > 0 and final.timings.encoding > 0


def test_cache_serves_identical_results_and_says_so(pipeline, cat_png, tmp_path):
    first = views.analyse_all(pipeline, cat_png)
    copy = tmp_path / "copy.png"
    copy.write_bytes(cat_png.read_bytes())  # same bytes, other name: same entry
    second = views.analyse_all(pipeline, copy)
    assert second.timings.cached and second.timings.deconvnet == 0 and second.timings.first is not None
    for (a, _), (b, _) in zip(first.layers, second.layers, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    uncached = Pipeline(pipeline.model, PipelineConfig(cache_size=0))
    try:
        assert not views.analyse_all(uncached, cat_png).timings.cached
        assert not views.analyse_all(uncached, cat_png).timings.cached
    finally:
        uncached.close()


def test_explore_shows_the_k_strongest_channels_each_projected_alone(pipeline, onnx_model, cat_png):
    layer, k = "conv3_1", 4
    result = views.explore(pipeline, cat_png, layer, k, "minmax")
    x = preprocess(Image.open(cat_png), TINY_SIZE, MEAN, STD)
    _, acts, switches = onnx_model.run(x)
    channels, values = top_channels(acts[layer], k)
    assert result.channels == channels[0].tolist()
    np.testing.assert_allclose(result.values, values[0], rtol=1e-6)
    assert [cap for _, cap in result.topk] == [f"ch {c} · {v:.3g}" for c, v in zip(channels[0], values[0], strict=True)]
    assert result.selected.channel == channels[0, 0] and result.layout == views.grid_layout(pipeline, layer)
    assert Image.open(result.grid).size == result.layout.size[::-1]
    assert Image.open(result.merged).size == (224, 224)  # 32 px enlarged 7 times for the page

    c = int(channels[0, 2])
    view = views.channel(pipeline, cat_png, layer, c, "minmax")
    expected = Deconvnet(onnx_model.weights).project(acts, switches, layer, "channel", channel=c).images[0]
    picture, _ = reconstruction_image(expected, "minmax")
    assert np.array_equal(np.asarray(Image.open(view.projection)), display.upscale(picture, 7))
    assert view.value == pytest.approx(float(acts[layer][0, c].max()))
    assert f"channel {c}" in view.caption
    # The crop and the patch are the unit's receptive field (the atlas's window), not the projection's support.
    row, col = divmod(int(acts[layer][0, c].argmax()), acts[layer].shape[3])
    top, left, side = field_box(layer, row, col)
    assert side == receptive_field(layer) == 24
    tile = pipeline.config.min_tile
    crop = display.enlarge(display.projection_tile(expected, top, left, side, "minmax"), tile)
    patch = display.enlarge(display.field_tile(deprocess(x, MEAN, STD), top, left, side), tile)
    assert np.array_equal(np.asarray(Image.open(view.crop)), crop)
    assert np.array_equal(np.asarray(Image.open(view.patch)), patch)


def test_pipeline_refuses_bad_requests(pipeline, cat_png):
    with pytest.raises(InputError, match="layer"):
        views.explore(pipeline, cat_png, "conv6_1")
    with pytest.raises(InputError, match="between 1 and 64"):
        views.explore(pipeline, cat_png, "conv1_1", k=65)
    with pytest.raises(InputError, match="channels 0 to 63"):
        views.channel(pipeline, cat_png, "conv1_2", 64)
    with pytest.raises(InputError, match="whole number"):
        views.channel(pipeline, cat_png, "conv1_2", "three")
    with pytest.raises(InputError, match="normalisation"):
        views.analyse_all(pipeline, cat_png, "log")
    with pytest.raises(InputError, match="resize"):
        views.analyse_all(pipeline, cat_png, "minmax", "zoom")


def test_channel_at_follows_the_layer_grid(pipeline):
    for layer in ("conv1_1", "conv5_3"):
        layout = views.grid_layout(pipeline, layer)
        assert layout.channels == conv_channels(layer)
        last = layout.channels - 1
        row, col = divmod(last, layout.columns)
        x, y = col * (layout.tile_w + 1) + 1, row * (layout.tile_h + 1) + 1
        assert views.channel_at(pipeline, layer, x, y) == last


# --- the served app ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(model: Path, printed: io.StringIO | None = None, **overrides):
    """``python app.py --model MODEL`` in-process on a free port; yields (url, demo, pipeline).

    What the app prints goes to ``printed`` when given.
    """
    from app import AppConfig, serve

    config = AppConfig(model=str(model), host="127.0.0.1", port=free_port(), threads=1,
                       **{"cache": 0, "concurrency": 2, **overrides})
    with contextlib.redirect_stdout(printed) if printed is not None else contextlib.nullcontext():
        demo, pipeline, url = serve(config, block=False)
    try:
        yield url, demo, pipeline
    finally:
        demo.close()
        pipeline.close()


@pytest.fixture(scope="module")
def printed() -> io.StringIO:
    return io.StringIO()


@pytest.fixture(scope="module")
def app(tiny_onnx, printed):
    with running_app(tiny_onnx, printed, fv_steps=2, fv_size=32) as served:
        yield served


def new_client(url: str):
    """A gradio_client that leaves the result files on the server (``fetch`` gets them; its own downloads are slow)."""
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def client(app):
    return new_client(app[0])


def fetch(file: dict) -> bytes:
    """The bytes of a result file (a gradio_client FileData dict) over HTTP."""
    import httpx

    response = httpx.get(file["url"], timeout=60, follow_redirects=True)
    assert response.status_code == 200, file
    return response.content


def picture(file: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(fetch(file))))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def analyse(client, path: Path, norm: str = "minmax"):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), norm, "crop", api_name="/analyse")


def pixels(result) -> dict:
    """An /analyse result reduced to what a user sees: label, captions and the pixels of every picture."""
    label, gallery, network_input, npz, _ = result
    return {"label": [(c["label"], c["confidence"]) for c in label["confidences"]],
            "captions": [item["caption"] for item in gallery],
            "layers": [picture(item["image"]) for item in gallery],
            "input": picture(network_input),
            "npz": dict(np.load(io.BytesIO(fetch(npz))).items())}


def assert_same(a: dict, b: dict) -> None:
    assert a["label"] == b["label"] and a["captions"] == b["captions"]
    assert all(np.array_equal(x, y) for x, y in zip(a["layers"], b["layers"], strict=True))
    assert np.array_equal(a["input"], b["input"])
    assert a["npz"].keys() == b["npz"].keys() and all(np.array_equal(a["npz"][k], b["npz"][k]) for k in a["npz"])


def test_app_prints_url_and_provider(app, printed):
    url, _, pipeline = app
    out = printed.getvalue()
    assert url in out and "onnxruntime provider: CPUExecutionProvider" in out
    assert pipeline.provider == "CPUExecutionProvider"


def test_good_path_returns_prediction_13_layers_and_timings(client, onnx_model, cat_png):
    label, gallery, network_input, npz, timings = analyse(client, cat_png)
    x = preprocess(Image.open(cat_png), TINY_SIZE, MEAN, STD)
    probs, acts, switches = onnx_model.run(x)
    top = top_predictions(probs[0], onnx_model.class_names)
    assert [(c["label"], pytest.approx(c["confidence"], rel=1e-6)) for c in label["confidences"]] == list(top.items())
    assert label["label"] == next(iter(top)) and len(label["confidences"]) == 5
    assert [item["caption"] for item in gallery] == list(CONV_LAYERS)
    deconvnet = Deconvnet(onnx_model.weights)
    for item, layer in zip(gallery, CONV_LAYERS, strict=True):
        expected, _ = reconstruction_image(deconvnet.project(acts, switches, layer, "layer").images[0])
        assert np.array_equal(picture(item["image"]), expected)
    assert picture(network_input).shape == (224, 224, 3)  # enlarged for the page
    data = np.load(io.BytesIO(fetch(npz)))
    assert sorted(data.files) == sorted(["input", "probs", *(f"{n}/layer/deconvnet" for n in CONV_LAYERS)])
    np.testing.assert_array_equal(data["input"], x)
    for stage in ("preprocess", "forward", "deconvnet", "encoding", "total", "CPU"):
        assert stage in timings


def test_explore_and_channel_endpoints(client, cat_png):
    from gradio_client import handle_file

    out = client.predict(handle_file(str(cat_png)), "conv4_2", 5, "percentile", "crop", api_name="/explore")
    grid, merged, topk, visualized, number, fmap, projection, crop, patch, caption, summary, timings = out
    assert len(topk) == 5 and all(item["caption"].startswith("ch ") for item in topk)
    assert [item["caption"] for item in visualized] == [f"conv4_2/{item['caption'].split()[1]}" for item in topk]
    assert int(topk[0]["caption"].split()[1]) == number and f"channel {number}" in caption
    assert "conv4_2" in summary and "512 channels" in summary and "deconvnet" in timings
    view = client.predict(handle_file(str(cat_png)), "conv4_2", 17, "minmax", "crop", api_name="/channel")
    assert view[0] == 17 and "channel 17" in view[-1]
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="channels 0 to 511"):
        client.predict(handle_file(str(cat_png)), "conv4_2", 512, "minmax", "crop", api_name="/channel")


def test_unit_page_endpoints(client, cat_png):
    from gradio_client import handle_file

    out = client.predict(handle_file(str(cat_png)), "conv5_2", 9, "minmax", "crop", "deconvnet", api_name="/unit")
    picture, caption, projection, into, outs, top9, top9_caption, classes = out
    assert "conv5_2 channel 9" in caption and "made now (2 steps at 32 px)" in caption
    assert picture is not None and projection is not None and top9 is None
    assert [item["caption"].split()[0].split("/")[0] for item in into] == ["conv5_1"] * 6
    assert [item["caption"].split()[0].split("/")[0] for item in outs] == ["conv5_3"] * 6
    assert len(classes) == 12
    again = client.predict(None, "conv5_2", 9, "minmax", "crop", "deconvnet", api_name="/unit")
    assert "made earlier in this session" in again[1] and again[2] is None
    sanity = client.predict("conv5_2", 9, api_name="/unit_sanity")
    assert [item["caption"] for item in sanity] == ["trained", "conv5_3 random", "conv4 and conv5 random",
                                                    "all random"]
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="channels 0 to 511"):
        client.predict(None, "conv5_2", 512, "minmax", "crop", "deconvnet", api_name="/unit")


def test_no_image_gets_a_message(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="No image"):
        client.predict(None, "minmax", "crop", api_name="/analyse")
    with pytest.raises(AppError, match="Upload an image first"):
        client.predict(None, "conv1_1", 3, "minmax", "crop", api_name="/channel")


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gets_a_message_and_the_server_keeps_answering(client, cat_png, tmp_path, name):
    from gradio_client.exceptions import AppError

    data, words = BAD_INPUTS[name]
    with pytest.raises(AppError, match=words) as caught:
        analyse(client, write(tmp_path, name, data))
    assert "Traceback" not in str(caught.value)
    assert [item["caption"] for item in analyse(client, cat_png)[1]] == list(CONV_LAYERS)


def test_file_over_max_file_size_is_refused(app, client, cat_png, tmp_path):
    import httpx

    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # a valid PNG start, then 26 MB of padding
        f.write(GOOD_INPUTS["grey.png"])
        f.truncate(26 * 2**20)
    with open(big, "rb") as f:  # the server refuses the upload itself
        response = httpx.post(f"{app[0]}gradio_api/upload", files={"files": ("big.png", f, "image/png")},
                                 timeout=60)
    assert response.status_code == 413
    with pytest.raises(ValueError, match="maximum file size"):  # and gradio_client knows the limit
        analyse(client, big)
    assert len(analyse(client, cat_png)[1]) == 13


@pytest.mark.parametrize("name", sorted(GOOD_INPUTS))
def test_unusual_pictures_all_work(client, tmp_path, name):
    result = analyse(client, write(tmp_path, name, GOOD_INPUTS[name]))
    assert [item["caption"] for item in result[1]] == list(CONV_LAYERS)
    if name in ("rotated.jpg", "animated.gif"):  # the same as the upright picture / the first frame, as a PNG
        rgb = to_rgb(Image.open(io.BytesIO(GOOD_INPUTS[name])))
        reference = pixels(analyse(client, write(tmp_path, "reference.png", encoded(rgb, "PNG"))))
        assert_same(pixels(result), reference)


def test_eight_clients_five_requests_each_get_a_single_users_results(app, cat_png, tmp_path):
    images = [cat_png, write(tmp_path, "other.png", encoded(make_image("RGB", (40, 56), 9), "PNG"))]
    url = app[0]
    solo = new_client(url)
    expected = [pixels(analyse(solo, path)) for path in images]

    def user(i: int) -> list[dict]:
        c = new_client(url)
        return [pixels(analyse(c, images[(i + j) % 2])) for j in range(5)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(user, range(8)))
    assert len(results) == 8 and all(len(r) == 5 for r in results)
    for i, runs in enumerate(results):
        for j, got in enumerate(runs):
            assert_same(got, expected[(i + j) % 2])


def test_no_file_of_the_machine_is_reachable(app, client, cat_png):
    import httpx

    url, _, pipeline = app
    analyse(client, cat_png)
    ours = pipeline.store.root  # pictures the pipeline wrote before Gradio copied them into its cache
    targets = ["/etc/passwd", str(ROOT / "app.py"), "app.py", "../../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd",
               "/tmp/gradio/../../etc/passwd", "/proc/self/environ", str(next(ours.rglob("*.png")))]
    for target in targets:
        for route in ("gradio_api/file=", "file="):
            response = httpx.get(f"{url}{route}{target}", timeout=30, follow_redirects=True)
            assert response.status_code in (403, 404), (route, target, response.status_code)
            assert "root:" not in response.text and "def serve" not in response.text
    served = httpx.get(f"{url}gradio_api/info", timeout=30)
    assert served.status_code == 200  # the routes themselves work
    for target in ["/etc/passwd", str(ROOT / "app.py"), str(ROOT / "examples" / "chelsea.png")]:
        # a request naming a server file instead of uploading one: refused before the pipeline reads anything
        payload = {"data": [{"path": target, "meta": {"_type": "gradio.FileData"}}, "minmax", "crop"]}
        event = httpx.post(f"{url}gradio_api/call/analyse", json=payload, timeout=30).json()["event_id"]
        stream = httpx.get(f"{url}gradio_api/call/analyse/{event}", timeout=120).text
        assert stream.startswith("event: error") and "root:" not in stream and "conv1_1" not in stream


def test_queue_and_limits_are_set(app):
    _, demo, _ = app
    assert demo._queue.max_size == 64 and demo.max_file_size == 25 * 2**20
    named = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert {"analyse", "explore", "channel"} <= set(named)
    assert all(named[name].concurrency_id == "model" for name in ("analyse", "explore", "channel"))  # one limit
    assert demo._queue.event_queue_per_concurrency_id["model"].concurrency_limit == 2
    assert demo.allowed_paths == []


def test_app_cli_reports_a_missing_model_and_has_help(tmp_path):
    import subprocess
    import sys

    missing = subprocess.run([sys.executable, "app.py", "--model", str(tmp_path / "none.onnx")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no ONNX model" in missing.stderr and "Traceback" not in missing.stderr
    from app import parse_args

    config = parse_args(["--port", "8000", "--share", "--atlas", "atlas/"])
    assert config.port == 8000 and config.share and config.atlas == "atlas/" and config.model is None
    with pytest.raises(SystemExit):
        parse_args(["--concurrency", "0"])


# --- the paper's analyses: "Occlusion", "Invariance", "Atlas" ----------------------------------------------------


def network_input(path: Path) -> np.ndarray:
    return preprocess(Image.open(path), TINY_SIZE, MEAN, STD)


def test_occlusion_for_matches_a_direct_call(pipeline, onnx_model, cat_png, monkeypatch):
    from demo.analyses.occlusion import occlusion_view

    figure, summary = paper.occlusion_for(pipeline, cat_png, size=12, stride=16)
    expected, text, result = occlusion_view(onnx_model, network_input(cat_png), 12, 16)
    assert result.probability.shape == (2, 2)
    shown = np.asarray(Image.open(figure))
    assert shown.dtype == np.uint8 and shown.shape == expected.shape
    np.testing.assert_array_equal(shown, expected)
    assert summary == text and "conv5_3 channel" in summary
    assert paper.default_stride(pipeline) == 32  # the CPU default
    for size, stride, words in [(0, 16, "size"), (12, 0, "stride"), (12, 33, "stride"), ("x", 16, "whole")]:
        with pytest.raises(InputError, match=words):
            paper.occlusion_for(pipeline, cat_png, size, stride)
    monkeypatch.setattr("demo.app.paper.MAX_OCCLUSION_PASSES", 3)  # 2 x 2 positions at stride 16 are too many now
    with pytest.raises(InputError, match="needs 4 forward passes.*at least 32 px"):
        paper.occlusion_for(pipeline, cat_png, 12, 16)
    with pytest.raises(InputError, match="No image"):
        paper.occlusion_for(pipeline, None, 12, 32)


def test_invariance_for_matches_a_direct_call(pipeline, onnx_model, cat_png):
    from demo.analyses.invariance import invariance_view

    figure = paper.invariance_for(pipeline, cat_png)
    expected, result = invariance_view(onnx_model, network_input(cat_png), quick=True)
    assert set(result.params) == {"translation", "scale", "rotation"}
    shown = np.asarray(Image.open(figure))
    assert shown.dtype == np.uint8 and shown.shape == expected.shape and shown.ndim == 3
    np.testing.assert_array_equal(shown, expected)


def test_occlusion_and_invariance_endpoints(client, onnx_model, cat_png):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from demo.analyses.occlusion import occlusion_view

    figure, summary = client.predict(handle_file(str(cat_png)), 16, 16, "crop", api_name="/occlusion")
    expected, text, _ = occlusion_view(onnx_model, network_input(cat_png), 16, 16)
    np.testing.assert_array_equal(picture(figure), expected)
    assert summary == text
    with pytest.raises(AppError, match="Upload an image first"):
        client.predict(None, "crop", api_name="/invariance")
    assert picture(client.predict(handle_file(str(cat_png)), "crop", api_name="/invariance")).ndim == 3


def tabs(demo) -> list[str]:
    import gradio as gr

    return [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]


def test_no_atlas_tab_without_atlas(app):
    _, demo, _ = app
    assert tabs(demo) == ["All layers", "Layer explorer", "Units", "Classes", "Rules", "Occlusion", "Invariance",
                          "Model health", "Sanity checks", "Evidence"]
    assert "atlas" not in {fn.api_name for fn in demo.fns.values()}


@pytest.fixture(scope="module")
def atlas_dir(tiny_onnx, tmp_path_factory) -> Path:
    """An atlas of conv1_2 over five generated 32 x 32 images; no picture drawn yet (the app draws on request)."""
    from demo.analyses.atlas import cli

    data = tmp_path_factory.mktemp("atlas_data")
    for i in range(5):
        make_image("RGB", (TINY_SIZE, TINY_SIZE), seed=10 + i).save(data / f"img{i}.png")
    out = tmp_path_factory.mktemp("atlas") / "atlas"
    with contextlib.redirect_stdout(io.StringIO()):
        cli.run(cli.MineConfig(data=str(data), out=str(out), model=str(tiny_onnx), layers="conv1_2", k=3,
                               batch_size=5, workers=1, render="none"), bar=False)
    return out


def test_atlas_tab_shows_the_atlas(tiny_onnx, onnx_model, atlas_dir):
    from gradio_client.exceptions import AppError

    from demo.analyses.atlas import read, render

    atlas = read.Atlas(atlas_dir)
    ranked = atlas.ranked_channels("conv1_2").tolist()
    with running_app(tiny_onnx, atlas=str(atlas_dir)) as (url, demo, pipeline):
        assert tabs(demo)[2] == "Units" and tabs(demo)[-4:] == ["Atlas", "Model health", "Sanity checks", "Evidence"]
        dropdowns = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None) in
                     ("atlas-layer", "atlas-channel")}
        assert dropdowns["atlas-layer"].choices == [("conv1_2", "conv1_2")]
        assert [value for _, value in dropdowns["atlas-channel"].choices] == ranked
        assert paper.atlas_channels(atlas_dir, "conv1_2") == ranked
        client = new_client(url)
        channel = ranked[1]
        shown, caption = client.predict("conv1_2", channel, api_name="/atlas")
        direct, direct_caption = paper.atlas_view(pipeline, atlas_dir, "conv1_2", channel)
        np.testing.assert_array_equal(picture(shown), np.asarray(Image.open(direct)))
        assert caption == direct_caption == atlas.caption("conv1_2", channel)
        np.testing.assert_array_equal(picture(shown), render.atlas_view(atlas_dir, "conv1_2", channel, onnx_model))
        assert f"conv1_2 channel {channel}" in caption and picture(shown).ndim == 3
        with pytest.raises(AppError, match="not in the list of choices"):
            client.predict("conv5_3", 0, api_name="/atlas")
        with pytest.raises(InputError, match="not 'conv5_3'"):
            paper.atlas_view(pipeline, atlas_dir, "conv5_3", 0)
        with pytest.raises(InputError, match="channels 0 to 63"):
            paper.atlas_view(pipeline, atlas_dir, "conv1_2", 64)


def test_app_refuses_a_folder_that_is_not_an_atlas(tiny_onnx, tmp_path):
    with pytest.raises(FileNotFoundError, match="not an atlas"), running_app(tiny_onnx, atlas=str(tmp_path)):
        pass


# --- two models side by side, and the API's one-result endpoints ------------------------------------------------


@pytest.fixture(scope="module")
def other_onnx(tmp_path_factory) -> Path:
    """A second tiny model with other random weights (the "early checkpoint" of a comparison)."""
    from conftest import check_images, random_bn_vgg

    from export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("other") / "other.onnx"
    export_onnx(random_bn_vgg(seed=1), path, input_size=TINY_SIZE, check_images=check_images()[:1])
    return path


def test_two_models_side_by_side(tiny_onnx, other_onnx, cat_png):
    from gradio_client import handle_file

    from demo.onnx_forward import OnnxModel

    other = OnnxModel(other_onnx, device="cpu")
    x = preprocess(Image.open(cat_png), TINY_SIZE, MEAN, STD)
    probs, acts, switches = other.run(x)
    with running_app(tiny_onnx, compare=str(other_onnx)) as (url, demo, pipeline):
        assert "compare-gallery" in {getattr(b, "elem_id", None) for b in demo.blocks.values()}
        client = new_client(url)
        out = client.predict(handle_file(str(cat_png)), "minmax", "crop", api_name="/analyse")
        assert len(out) == 7
        ours, theirs = out[1], out[6]
        assert [item["caption"] for item in theirs] == list(CONV_LAYERS)
        assert any(not np.array_equal(picture(a["image"]), picture(b["image"]))  # other weights, other pictures
                   for a, b in zip(ours, theirs, strict=True))
        assert out[5]["label"] == next(iter(top_predictions(probs[0], other.class_names)))
        expected = Deconvnet(other.weights).project(acts, switches, "conv3_2", "layer").images[0]
        shown = picture(theirs[CONV_LAYERS.index("conv3_2")]["image"])
        np.testing.assert_array_equal(shown, reconstruction_image(expected, "minmax")[0])
        view = client.predict(handle_file(str(cat_png)), "conv4_2", 17, "minmax", "crop", api_name="/channel")
        assert view[0] == 17 and "channel 17" in view[5] and "other.onnx" in view[-1] and "channel 17" in view[-1]
        twin = Deconvnet(other.weights).project(acts, switches, "conv4_2", "channel", channel=17).images[0]
        np.testing.assert_array_equal(picture(view[7]),
                                      display.upscale(reconstruction_image(twin, "minmax")[0], 7))


def test_analyse_api_returns_one_result_while_the_page_streams(app, client, cat_png):
    from gradio_client import handle_file

    job = client.submit(handle_file(str(cat_png)), "minmax", "crop", api_name="/analyse")
    result = job.result(timeout=120)
    assert len(job.outputs()) == 1 and len(result[1]) == len(CONV_LAYERS)
    _, demo, _ = app
    streaming = [fn for fn in demo.fns.values() if fn.api_name is None or fn.api_visibility == "private"]
    assert any(getattr(fn.fn, "__name__", "") == "stream" for fn in streaming)  # the page's own, not in the API
    info = client.view_api(print_info=False, return_format="dict")
    assert "/analyse" in info["named_endpoints"] and len(info["unnamed_endpoints"]) == 0


# --- backward rules and class projections -----------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["guided", "gradient"])
def test_every_view_takes_the_rule(pipeline, onnx_model, cat_png, rule):
    x = preprocess(Image.open(cat_png), TINY_SIZE, MEAN, STD)
    _, acts, switches = onnx_model.run(x)
    deconvnet = Deconvnet.from_model(onnx_model)
    final = views.analyse_all(pipeline, cat_png, "minmax", "crop", rule)
    data = np.load(final.npz)
    expected = deconvnet.project(acts, switches, "conv4_1", "layer", rule=rule).images[0]
    np.testing.assert_allclose(data[f"conv4_1/layer/{rule}"], expected, rtol=1e-5, atol=1e-6)
    other = views.analyse_all(pipeline, cat_png, "minmax", "crop", "deconvnet")
    assert not np.array_equal(np.asarray(Image.open(final.layers[-1][0])), np.asarray(Image.open(other.layers[-1][0])))
    view = views.channel(pipeline, cat_png, "conv3_1", 5, "signed", "crop", rule)
    single = deconvnet.project(acts, switches, "conv3_1", "channel", channel=5, rule=rule).images[0]
    shown = display.upscale(reconstruction_image(single, "signed")[0], 7)
    assert np.array_equal(np.asarray(Image.open(view.projection)), shown)
    with pytest.raises(InputError, match="backward rule"):
        views.analyse_all(pipeline, cat_png, "minmax", "crop", "lrp")


def test_flip_tta_averages_the_prediction_with_the_mirror_image(pipeline, onnx_model, cat_png):
    x = preprocess(Image.open(cat_png), TINY_SIZE, MEAN, STD)
    averaged = (onnx_model.predict(x)[0] + onnx_model.predict(np.ascontiguousarray(x[..., ::-1]))[0]) / 2
    with_tta = views.analyse_all(pipeline, cat_png, tta=True)
    assert with_tta.prediction == pytest.approx(top_predictions(averaged, onnx_model.class_names))
    without = views.analyse_all(pipeline, cat_png, tta=False)
    assert without.prediction == pytest.approx(top_predictions(onnx_model.predict(x)[0], onnx_model.class_names))
    assert [a for a, _ in with_tta.layers] != [b for b, _ in without.layers]  # new files, same pictures
    for (a, _), (b, _) in zip(with_tta.layers, without.layers, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_classes_view_projects_the_predicted_and_the_picked_class(pipeline, onnx_model, cat_png):
    x = preprocess(Image.open(cat_png), TINY_SIZE, MEAN, STD)
    probs, acts, switches = onnx_model.run(x)
    order = np.argsort(-probs[0], kind="stable")
    names = onnx_model.class_names
    deconvnet = Deconvnet.from_model(onnx_model)
    for picked, expected in [(None, int(order[1])), (names[7], 7), (3, 3), ("3", 3)]:
        view = views.classes(pipeline, cat_png, picked, "minmax", "crop", "gradient")
        assert view.predicted[1].startswith(names[order[0]]) and view.picked[1].startswith(names[expected])
        images, logits = deconvnet.project_class(acts, switches, expected, "gradient")
        shown = display.upscale(reconstruction_image(images[0], "minmax")[0], 7)
        assert np.array_equal(np.asarray(Image.open(view.picked[0])), shown)
        assert f"logit {logits[0]:.3g}" in view.picked[1]
    for bad in ("Tiger", 12, -1, 2.5):
        with pytest.raises(InputError, match="class"):
            views.classes(pipeline, cat_png, bad)


def test_rule_and_classes_endpoints(client, onnx_model, cat_png):
    from gradio_client import handle_file

    out = client.predict(handle_file(str(cat_png)), "minmax", "crop", "guided", api_name="/analyse")
    assert "conv1_1/layer/guided" in np.load(io.BytesIO(fetch(out[3]))).files
    predicted, picked, summary = client.predict(handle_file(str(cat_png)), onnx_model.class_names[2], "minmax",
                                                "crop", "gradient", api_name="/classes")
    assert "gradient" in summary and picture(picked).shape == (224, 224, 3)


def test_model_health_tab_shows_the_filters_always_and_the_layers_with_a_health_folder(tiny_onnx, onnx_model,
                                                                                        tmp_path):
    import subprocess
    import sys

    from demo.analyses.health.view import health_view

    with running_app(tiny_onnx) as (url, demo, pipeline):
        shown = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
        assert "health-filters" in shown and "health-figure" not in shown
        filters, figure, summary = paper.health_for(pipeline)
        np.testing.assert_array_equal(np.asarray(Image.open(filters)), health_view(onnx_model)[0])
        assert figure is None and "python -m demo.health" in summary
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        make_image("RGB", (TINY_SIZE, TINY_SIZE), seed=20 + i).save(data / f"img{i}.png")
    proc = subprocess.run([sys.executable, "-m", "demo.health", "--data", str(data), "--model", str(tiny_onnx),
                           "--out", str(tmp_path / "health")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with running_app(tiny_onnx, health=str(tmp_path / "health")) as (url, demo, pipeline):
        shown = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
        assert "health-figure" in shown
        _, figure, summary = paper.health_for(pipeline, tmp_path / "health")
        np.testing.assert_array_equal(np.asarray(Image.open(figure)), health_view(onnx_model, tmp_path / "health")[1])
        assert summary == health_view(onnx_model, tmp_path / "health")[2]
    with pytest.raises(FileNotFoundError), running_app(tiny_onnx, health=str(data)):
        pass


def test_rules_compared_shows_both_rules_and_their_difference(pipeline, onnx_model, cat_png):
    from demo.analyses.sanity.measure import similarity

    x = preprocess(Image.open(cat_png), TINY_SIZE, MEAN, STD)
    _, acts, switches = onnx_model.run(x)
    deconvnet = Deconvnet.from_model(onnx_model)
    r = views.rule_difference(pipeline, cat_png, "conv4_2", "deconvnet", "gradient")
    a = deconvnet.project(acts, switches, "conv4_2", "layer", rule="deconvnet").images[0]
    b = deconvnet.project(acts, switches, "conv4_2", "layer", rule="gradient").images[0]
    shown = lambda path: np.asarray(Image.open(path))  # noqa: E731
    assert np.array_equal(shown(r.first), display.upscale(reconstruction_image(a, "minmax")[0], 7))
    assert np.array_equal(shown(r.second), display.upscale(reconstruction_image(b, "minmax")[0], 7))
    diff = a / np.abs(a).max() - b / np.abs(b).max()
    assert np.array_equal(shown(r.difference), display.upscale(reconstruction_image(diff, "signed")[0], 7))
    spearman_abs, spearman, ssim = similarity(a, b)
    assert f"{spearman_abs:.2f} of |map| and {spearman:.2f} signed, SSIM {ssim:.2f}" in r.caption
    same = views.rule_difference(pipeline, cat_png, "class", "guided", "guided")
    assert (shown(same.difference) == GREY).all() and "1.00 of |map|" in same.caption
    with pytest.raises(InputError, match="layer"):
        views.rule_difference(pipeline, cat_png, "fc8")


def test_sanity_checks_tab_shows_the_filmstrip_and_curves(pipeline, onnx_model, cat_png):
    from demo.analyses.sanity.view import sanity_view

    strip, curves, summary = paper.sanity_for(pipeline, cat_png, "conv5_3")
    x = preprocess(Image.open(cat_png), TINY_SIZE, MEAN, STD)
    expected_strip, expected_curves, expected_summary = sanity_view(onnx_model, x, "conv5_3")
    assert np.array_equal(np.asarray(Image.open(strip)), expected_strip)
    assert np.array_equal(np.asarray(Image.open(curves)), expected_curves)
    assert summary == expected_summary
    with pytest.raises(InputError):
        paper.sanity_for(pipeline, cat_png, "conv9_9")
