"""The app's unit pages (demo.app.units): pictures shipped, made on request and cached, connections, the sanity
view, and the packed set's round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from demo.analyses.featurevis.optimize import Settings
from demo.analyses.featurevis.shipped import ShippedSet, pack
from demo.app import units as unit_views
from demo.app.inputs import InputError
from demo.app.pipeline import Pipeline
from demo.onnx_forward import OnnxModel

FAST = Settings(steps=2, size=32)


@pytest.fixture
def cat_image(tmp_path) -> str:
    path = tmp_path / "cat.png"
    make_image("RGB", (48, 40), 3).save(path)
    return str(path)


@pytest.fixture(scope="module")
def pipeline(tiny_onnx) -> Pipeline:
    return Pipeline(OnnxModel(tiny_onnx, device="cpu", threads=1))


def test_picture_made_on_request_then_cached(pipeline, tmp_path):
    pictures = unit_views.UnitPictures(pipeline, tmp_path / "none", FAST, FAST)
    seen = []
    pic, source = pictures.picture("conv4_1", 3, progress=lambda done, total: seen.append((done, total)))
    assert source == "made now" and pic.shape == (32, 32, 3) and pic.dtype == np.uint8
    assert seen[-1] == (2, 2)
    again, source = pictures.picture("conv4_1", 3)
    assert source == "cached" and np.array_equal(pic, again)
    with pytest.raises(InputError):
        pictures.picture("conv4_1", 512)
    with pytest.raises(InputError):
        pictures.picture("class", 12)


def test_connections_are_the_strongest_summed_weights(pipeline):
    into, out = unit_views.connections(pipeline, "conv3_2", 5, k=4)
    w = pipeline.model.weights["conv3_2"][5].sum(axis=(1, 2))
    assert [c.channel for c in into] == list(np.argsort(-np.abs(w), kind="stable")[:4])
    assert all(c.layer == "conv3_1" for c in into) and all(c.layer == "conv3_3" for c in out)
    assert into[0].weight == pytest.approx(float(w[into[0].channel]))
    into, out = unit_views.connections(pipeline, "conv5_3", 0, k=3)
    assert [c.layer for c in out] == ["class"] * 3
    into, _ = unit_views.connections(pipeline, "conv1_1", 0, k=3)
    assert [c.layer for c in into] == ["RGB"] * 3


def test_unit_page_and_sanity(pipeline, tmp_path, cat_image):
    pictures = unit_views.UnitPictures(pipeline, tmp_path / "none", FAST, FAST)
    page = unit_views.unit_page(pictures, "conv5_3", 2, cat_image)
    assert "conv5_3 channel 2" in page.caption and page.projection is not None
    made = pictures.picture("conv5_3", 2)[0]  # the cached picture, shown enlarged: the same picture, larger
    assert page.picture.shape == (unit_views.SHOWN, unit_views.SHOWN, 3) and made.shape[0] < unit_views.SHOWN
    from PIL import Image
    back = np.asarray(Image.fromarray(page.picture).resize(made.shape[:2], Image.BILINEAR), np.float32)
    assert np.abs(back - made).mean() < 12
    assert len(page.into) == 6 and len(page.out) == 6 and page.atlas is None
    klass = unit_views.unit_page(pictures, "class", 1)
    assert klass.projection is None and "class 1" in klass.caption
    assert len(unit_views.class_gallery(pictures)) == 12
    shown = unit_views.sanity_gallery(pictures, "conv5_3", 2)
    assert [label for _, label in shown] == [label for label, _ in unit_views.CASCADE]
    assert not np.array_equal(shown[0][0], shown[-1][0])  # the randomized model's picture differs


def test_pack_and_read_a_shipped_set(pipeline, tmp_path):
    src = tmp_path / "run"
    (src / "conv5_3").mkdir(parents=True)
    ramp = np.linspace(0, 255, 32)
    picture = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128 + 0 * ramp[None, :]), -1).astype(np.uint8)
    Image.fromarray(picture).save(src / "conv5_3" / "0007.png")
    (src / "conv5_3" / "0007.json").write_text(json.dumps({"target": "conv5_3/7", "channel": 7, "flat": False,
                                                            "settings": {"steps": 2}}))
    index = pack(src, tmp_path / "set", pipeline.model.path)
    assert index["units"]["conv5_3"]["0007"]["target"] == "conv5_3/7"
    shipped = ShippedSet(tmp_path / "set")
    assert shipped.matches(pipeline.model.path) and shipped.get("conv5_3", 7).shape == (32, 32, 3)
    assert shipped.get("conv5_3", 8) is None
    pictures = unit_views.UnitPictures(pipeline, tmp_path / "set", FAST, FAST)
    pic, source = pictures.picture("conv5_3", 7)
    assert source == "shipped" and np.abs(pic.astype(int) - picture).mean() < 4  # WebP, lossy


def _run(src: Path, layer: str, channels: list[int], steps: int = 2) -> Path:
    """A fake python -m demo.featurevis folder: one flat-colour PNG and JSON per channel of ``layer``."""
    (src / layer).mkdir(parents=True, exist_ok=True)
    for c in channels:
        Image.fromarray(np.full((16, 16, 3), 10 * c % 256, np.uint8)).save(src / layer / f"{c:04d}.png")
        (src / layer / f"{c:04d}.json").write_text(json.dumps({"target": f"{layer}/{c}", "channel": c, "flat": False,
                                                               "settings": {"steps": steps}}))
    return src


def test_a_set_grows_across_runs_of_the_same_settings_and_is_replaced_otherwise(pipeline, tmp_path):
    model, dst = pipeline.model.path, tmp_path / "set"
    pack(_run(tmp_path / "a", "conv5_3", [0, 1]), dst, model)
    index = pack(_run(tmp_path / "b", "conv4_3", [3]), dst, model)  # a later run of another layer: added
    assert ShippedSet(dst).count() == {"conv5_3": 2, "conv4_3": 1} and index["settings"] == {"steps": 2}
    pack(_run(tmp_path / "c", "conv5_3", [1]), dst, model)  # a target in both: the newer picture
    assert ShippedSet(dst).count() == {"conv5_3": 2, "conv4_3": 1}
    other = pack(_run(tmp_path / "d", "conv3_3", [5], steps=8), dst, model)  # other settings: a new set
    assert ShippedSet(dst).count() == {"conv3_3": 1} and other["settings"] == {"steps": 8}
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.webp")) == ["conv3_3/0005.webp"]
    pack(_run(tmp_path / "e", "conv4_3", [2], steps=8), dst, model, replace=True)
    assert ShippedSet(dst).count() == {"conv4_3": 1} and not (dst / "conv3_3" / "0005.webp").exists()
