"""Preprocessing: any image mode -> normalised (1, 3, S, S) float32, EXIF, resize modes, the way back."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from base.images import ImageError
from base.spec import MEAN, STD
from demo.preprocess import deprocess, fit, load_image, preprocess, to_rgb

S = 32
WHITE = (1.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)  # a white pixel, normalised


def _pixel(x: np.ndarray, row: int, col: int) -> np.ndarray:
    return x[0, :, row, col]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "1", "I;16", "I", "F", "CMYK", "YCbCr"])
def test_every_mode_gives_a_normalised_rgb_tensor(mode):
    image = make_image(mode if mode not in ("LA", "I", "F") else "L", (40, 30))
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "I":
        image = Image.fromarray(np.asarray(image, np.int32) * 257)  # 16-bit data in a 32-bit image
    elif mode == "F":
        image = Image.fromarray(np.asarray(image, np.float32) / 255.0)  # floats in [0, 1]
    assert image.mode == mode
    x = preprocess(image, S, MEAN, STD)
    assert x.shape == (1, 3, S, S) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.isfinite(x).all()
    pixels = deprocess(x, MEAN, STD)
    assert pixels.min() < 60 and pixels.max() > 150  # the gradient survived: not black, white or saturated


def test_high_bit_depth_grey_is_scaled_not_clipped():
    for image in (Image.fromarray(np.full((S, S), 65535, np.uint16)),  # I;16 white
                  Image.fromarray(np.full((S, S), 32896, np.int32)),  # I holding 16-bit data: mid-grey
                  Image.fromarray(np.full((S, S), 0.5, np.float32))):  # F in [0, 1]: mid-grey
        grey = deprocess(preprocess(image, S, MEAN, STD), MEAN, STD)
        expected = 255 if image.mode == "I;16" else 128
        assert abs(int(grey[5, 5, 0]) - expected) <= 1, image.mode


@pytest.mark.parametrize("background,value", [("white", 255), ("grey", 128), ((0, 0, 0), 0)])
def test_transparency_is_composited_on_the_background(background, value):
    image = make_image("RGBA", (S, S))  # right half fully transparent
    out = deprocess(preprocess(image, S, MEAN, STD, background=background), MEAN, STD)
    assert (np.abs(out[:, S // 2 + 1 :].astype(int) - value) <= 1).all()
    assert not (np.abs(out[:, : S // 2 - 1].astype(int) - value) <= 1).all()


def test_palette_transparency_is_honoured():
    image = Image.new("P", (S, S), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, S // 2, S))  # left half red, right half palette 0 (black) declared transparent
    image.info["transparency"] = 0
    rgb = np.asarray(to_rgb(image))
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(rgb[0, -1], [255, 255, 255])


def test_exif_orientation_is_applied(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = (255, 0, 0)  # left half red
    wide[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(wide).save(path, exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (20, 40)  # now tall
    top, bottom = np.asarray(image)[2, 10], np.asarray(image)[-3, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200  # rotated clockwise: the left (red) is on top
    x = preprocess(Image.open(path), S, MEAN, STD)  # PIL input is EXIF-transposed too
    np.testing.assert_allclose(x, preprocess(image, S, MEAN, STD), atol=1e-6)


def test_crop_keeps_the_centre_and_stretch_keeps_everything():
    stripes = np.zeros((32, 96, 3), np.uint8)
    stripes[:, :32] = (255, 0, 0)
    stripes[:, 32:64] = (0, 255, 0)
    stripes[:, 64:] = (0, 0, 255)
    image = Image.fromarray(stripes)
    crop, stretch = np.asarray(fit(image, 32, "crop")), np.asarray(fit(image, 32, "stretch"))
    assert crop.shape == stretch.shape == (32, 32, 3)
    assert (crop[:, 2:30, 1] > 250).all()  # only the green middle
    assert stretch[16, 0, 0] > 250 and stretch[16, 16, 1] > 250 and stretch[16, 31, 2] > 250
    with pytest.raises(ValueError):
        fit(image, 32, "pad")


def test_crop_equals_the_training_evaluation_transform():
    """Independent definition: torchvision's Resize(S) + CenterCrop(S) + ToTensor + Normalize."""
    from torchvision import transforms

    evaluate = transforms.Compose([transforms.Resize(S), transforms.CenterCrop(S), transforms.ToTensor(),
                                   transforms.Normalize(MEAN, STD)])
    for size in [(57, 41), (41, 57), (32, 32), (20, 75)]:
        image = make_image("RGB", size, seed=size[0])
        np.testing.assert_allclose(preprocess(image, S, MEAN, STD)[0], evaluate(image).numpy(), atol=1e-5)


def test_deprocess_inverts_preprocess():
    image = make_image("RGB", (S, S))
    x = preprocess(image, S, MEAN, STD)
    np.testing.assert_allclose(_pixel(x, 0, 0), (np.asarray(image)[0, 0] / 255.0 - MEAN) / STD, atol=1e-6)
    back = deprocess(x, MEAN, STD)
    assert back.dtype == np.uint8 and back.shape == (S, S, 3)
    np.testing.assert_array_equal(back, np.asarray(image))
    np.testing.assert_array_equal(deprocess(x[0], MEAN, STD), back)


def test_preprocess_reads_files_and_rejects_non_images(tmp_path):
    path = tmp_path / "a.png"
    make_image("RGB", (50, 40)).save(path)
    np.testing.assert_allclose(preprocess(path, S, MEAN, STD), preprocess(Image.open(path), S, MEAN, STD))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="b.jpg: the file is not a picture"):
        load_image(bad)
