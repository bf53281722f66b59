"""model/data.py: label files, ImageFolder trees, robust image loading and the duplicate-safe split.

Every image here is generated in a temporary folder; only the test marked ``slow`` reads the real cat-12 list
(and skips when ../shared is absent).
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from base.images import to_rgb
from base.labels import Sample, find_samples, parse_label_file, scan_image_folder
from model.data import ImageDataset, check_images, file_digest, load_image, split_samples

ROOT = Path(__file__).resolve().parents[1]
CAT12 = ROOT.parent / "shared" / "data" / "cat12"


def noise_image(path: Path, seed: int, size: tuple[int, int] = (32, 32)) -> Path:
    """A distinct RGB image (random pixels from ``seed``), saved in the format the suffix says; (W, H) = size."""
    W, H = size
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# --- label files ------------------------------------------------------------------------------------------------

def test_label_file_tolerates_tabs_spaces_crlf_bom_and_blank_lines(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    text = (
        "\ufeffimgs/a.jpg\t0\r\n"          # BOM + tab + CRLF
        "\r\n"                             # blank line
        "imgs/b.jpg 1\r\n"                 # one space
        "   \t  \n"                        # whitespace-only line
        "imgs/c.jpg   \t  2  \n"           # mixed padding
        "imgs/my cat.jpg\t11\n"            # a path with a space, tab separated
        "imgs/other cat.jpg 3\n"           # a path with a space, space separated: the label is the last field
        "\n"
    )
    (folder / "labels.txt").write_bytes(text.encode("utf-8"))
    samples = parse_label_file(folder / "labels.txt")
    assert samples == [
        Sample(folder / "imgs" / "a.jpg", 0),
        Sample(folder / "imgs" / "b.jpg", 1),
        Sample(folder / "imgs" / "c.jpg", 2),
        Sample(folder / "imgs" / "my cat.jpg", 11),
        Sample(folder / "imgs" / "other cat.jpg", 3),
    ]


def test_label_paths_resolve_against_the_label_files_folder_not_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    absolute = tmp_path / "absolute.png"
    (tmp_path / "data" / "sub" / "list.txt").write_text(f"x/1.png\t4\n{absolute}\t5\n")
    monkeypatch.chdir(elsewhere)
    samples = parse_label_file(Path("..") / "data" / "sub" / "list.txt")  # a relative label-file path
    assert [s.path.resolve() for s in samples] == [(tmp_path / "data" / "sub" / "x" / "1.png").resolve(), absolute]
    assert [s.label for s in samples] == [4, 5]


@pytest.mark.parametrize("bad", [
    "cat_12_train/c.jpg",            # no label
    "cat_12_train/c.jpg\tBengal",    # a name, not an integer
    "cat_12_train/c.jpg\t1.5",       # not an integer
    "cat_12_train/c.jpg\t-1",        # negative
    "cat_12_train/c.jpg\t1\t2",      # a third column
    "\t3",                           # no path
])
def test_malformed_line_names_the_file_and_the_line(tmp_path, bad):
    path = tmp_path / "train_list.txt"
    # The bad line is line 4 of the file: blank lines and CRLF count as lines, the BOM does not shift them.
    path.write_bytes(("\ufeffa.jpg\t0\r\n\r\nb.jpg\t1\r\n" + bad + "\r\nd.jpg\t2\r\n").encode("utf-8"))
    with pytest.raises(ValueError) as error:
        parse_label_file(path)
    assert f"{path}:4" in str(error.value)


def test_labels_outside_the_class_range_name_the_file_and_the_line(tmp_path):
    path = tmp_path / "train_list.txt"
    path.write_text("a.jpg\t0\nb.jpg\t2\n\nc.jpg\t3\n")
    assert [(s.label, s.line) for s in parse_label_file(path, num_classes=4)] == [(0, 1), (2, 2), (3, 4)]
    with pytest.raises(ValueError, match=rf"{path}:4: label 3 is outside the 3 classes 0-2"):
        parse_label_file(path, num_classes=3)
    with pytest.raises(ValueError, match=rf"{path}:4: label 3"):
        find_samples(tmp_path, num_classes=3)


def test_image_folder_with_another_class_count_is_an_error(tmp_path):
    for name in ("a", "b"):
        noise_image(tmp_path / name / "x.png", 1)
    assert len(find_samples(tmp_path, num_classes=2)[0]) == 2
    with pytest.raises(ValueError, match="2 class folders, but 3 classes"):
        find_samples(tmp_path, num_classes=3)


def test_empty_label_file_is_an_error(tmp_path):
    path = tmp_path / "train_list.txt"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no labelled images"):
        parse_label_file(path)


# --- layouts ----------------------------------------------------------------------------------------------------

def test_image_folder_layout(tmp_path):
    root = tmp_path / "tree"
    noise_image(root / "siamese" / "1.png", 1)
    noise_image(root / "abyssinian" / "2.JPG", 2)  # upper-case suffix
    noise_image(root / "abyssinian" / "nested" / "3.jpg", 3)
    noise_image(root / "bengal" / "4.bmp", 4)
    (root / "bengal" / "notes.txt").write_text("not an image")
    noise_image(root / ".hidden" / "5.png", 5)  # hidden folders are not classes
    (root / "README.md").write_text("a file next to the class folders")

    samples, classes = scan_image_folder(root)
    assert classes == ["abyssinian", "bengal", "siamese"]
    assert sorted((s.path.relative_to(root).as_posix(), s.label) for s in samples) == [
        ("abyssinian/2.JPG", 0), ("abyssinian/nested/3.jpg", 0), ("bengal/4.bmp", 1), ("siamese/1.png", 2)]
    assert find_samples(root) == (samples, classes)


def test_image_folder_without_classes_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no class folders"):
        scan_image_folder(tmp_path)


def test_find_samples_prefers_train_list_in_a_folder(tmp_path):
    # cat-12's layout: train_list.txt next to cat_12_train/ (and cat_12_test/, which is not a class)
    noise_image(tmp_path / "cat_12_train" / "a.jpg", 1)
    noise_image(tmp_path / "cat_12_test" / "b.jpg", 2)
    (tmp_path / "train_list.txt").write_text("cat_12_train/a.jpg\t7\n")
    expected = [Sample(tmp_path / "cat_12_train" / "a.jpg", 7)]
    assert find_samples(tmp_path) == (expected, None)
    assert find_samples(tmp_path / "train_list.txt") == (expected, None)  # the label file itself
    with pytest.raises(FileNotFoundError):
        find_samples(tmp_path / "missing")


# --- image modes ------------------------------------------------------------------------------------------------

RED, GREEN, WHITE = (255, 0, 0), (0, 255, 0), (255, 255, 255)


def _palette(transparent: bool, suffix: str, folder: Path) -> Path:
    image = Image.new("P", (4, 2), 0)
    image.putpalette([*RED, *GREEN] + [0] * 762)
    image.putpixel((1, 0), 1)
    path = folder / f"palette{suffix}"
    image.save(path, transparency=1) if transparent else image.save(path)
    return path


def _rgba(folder: Path) -> Path:
    a = np.zeros((2, 4, 4), np.uint8)
    a[..., 0] = 255  # red everywhere
    a[0, 0, 3] = 255  # opaque
    a[0, 1, 3] = 0  # fully transparent
    a[0, 2, 3] = 128  # half
    path = folder / "rgba.png"
    Image.fromarray(a, "RGBA").save(path)
    return path


def _la(folder: Path) -> Path:
    a = np.zeros((2, 4, 2), np.uint8)
    a[..., 0] = 100
    a[0, 0, 1] = 255
    path = folder / "la.png"
    Image.fromarray(a, "LA").save(path)
    return path


def _grey(folder: Path) -> Path:
    a = np.full((2, 4), 77, np.uint8)
    a[0, 1] = 200
    path = folder / "grey.png"
    Image.fromarray(a, "L").save(path)
    return path


def _grey_transparent_colour(folder: Path) -> Path:
    a = np.full((2, 4), 77, np.uint8)
    a[0, 1] = 200
    path = folder / "grey_trns.png"
    Image.fromarray(a, "L").save(path, transparency=200)  # PNG tRNS: grey level 200 is transparent
    return path


def _one_bit(folder: Path) -> Path:
    image = Image.new("1", (4, 2), 0)
    image.putpixel((1, 0), 1)
    path = folder / "bits.png"
    image.save(path)
    return path


def _sixteen_bit(folder: Path) -> Path:
    a = np.zeros((2, 4), np.uint16)
    a[0, 0], a[0, 1], a[0, 2] = 65535, 0, 32896  # 32896 = 128.5 / 255 * 65535 -> 128 after rounding
    path = folder / "deep.png"
    Image.fromarray(a).save(path)
    return path


def _float_tiff(folder: Path) -> Path:
    a = np.zeros((2, 4), np.float32)
    a[0, 0], a[0, 1], a[0, 2] = 1.0, 0.0, 0.5
    path = folder / "float.tif"
    Image.fromarray(a, "F").save(path)
    return path


def _cmyk_jpeg(folder: Path) -> Path:
    path = folder / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    return path


# (file maker, the mode the file opens in, {(x, y): expected RGB}, tolerance)
MODE_CASES = {
    "palette": (lambda f: _palette(False, ".png", f), "P", {(0, 0): RED, (1, 0): GREEN}, 0),
    "palette_transparent_png": (lambda f: _palette(True, ".png", f), "P", {(0, 0): RED, (1, 0): WHITE}, 0),
    "palette_transparent_gif": (lambda f: _palette(True, ".gif", f), "P", {(0, 0): RED, (1, 0): WHITE}, 0),
    "rgba": (_rgba, "RGBA", {(0, 0): RED, (1, 0): WHITE, (2, 0): (255, 127, 127)}, 1),
    "la": (_la, "LA", {(0, 0): (100, 100, 100), (1, 0): WHITE}, 0),
    "grey": (_grey, "L", {(0, 0): (77, 77, 77), (1, 0): (200, 200, 200)}, 0),
    "grey_transparent_colour": (_grey_transparent_colour, "L", {(0, 0): (77, 77, 77), (1, 0): WHITE}, 0),
    "one_bit": (_one_bit, "1", {(0, 0): (0, 0, 0), (1, 0): WHITE}, 0),
    "sixteen_bit": (_sixteen_bit, "I;16", {(0, 0): WHITE, (1, 0): (0, 0, 0), (2, 0): (128, 128, 128)}, 0),
    "float_tiff": (_float_tiff, "F", {(0, 0): WHITE, (1, 0): (0, 0, 0), (2, 0): (128, 128, 128)}, 0),
    "cmyk_jpeg": (_cmyk_jpeg, "CMYK", {(0, 0): RED, (4, 4): RED}, 6),
}


@pytest.mark.parametrize("case", MODE_CASES)
def test_load_image_converts_every_mode_to_rgb(tmp_path, case):
    make, mode, expected, tolerance = MODE_CASES[case]
    path = make(tmp_path)
    with Image.open(path) as raw:
        assert raw.mode == mode  # the case really exercises that mode
        size = raw.size
    image = load_image(path)
    assert image.mode == "RGB" and image.size == size
    for (x, y), rgb in expected.items():
        got = image.getpixel((x, y))
        assert all(abs(g - e) <= tolerance for g, e in zip(got, rgb, strict=True)), (case, (x, y), got, rgb)


def test_to_rgb_composites_over_the_given_background():
    image = Image.new("RGBA", (2, 1), (0, 0, 255, 0))
    image.putpixel((1, 0), (0, 0, 255, 255))
    rgb = to_rgb(image, background=(10, 20, 30))
    assert rgb.getpixel((0, 0)) == (10, 20, 30)
    assert rgb.getpixel((1, 0)) == (0, 0, 255)


def _exif_jpeg(path: Path, orientation: int) -> np.ndarray:
    """A 40 x 20 (W x H) JPEG whose stored top-left 8 x 8 corner is red, the rest blue; returns the stored pixels."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[..., 2] = 255
    a[:8, :8] = (255, 0, 0)
    image = Image.fromarray(a)
    exif = image.getexif()
    exif[0x0112] = orientation  # Orientation
    image.save(path, exif=exif, quality=95)
    with Image.open(path) as raw:  # the decoded pixels as stored, before any transposition
        return np.asarray(raw.convert("RGB"))


def test_exif_orientation_6_is_applied(tmp_path):
    stored = _exif_jpeg(tmp_path / "rotated.jpg", 6)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.size == (20, 40)  # width and height swap
    a = np.asarray(image)
    # Orientation 6: the stored rows become the displayed columns, right to left, i.e. a 90 degree clockwise turn.
    np.testing.assert_array_equal(a, np.rot90(stored, k=-1))
    inner = (slice(1, 6), slice(-7, -2))  # away from the block edge, where JPEG blurs red into blue
    assert a[inner][..., 0].min() > 200 and a[inner][..., 2].max() < 60  # the red corner is now top-right
    assert a[1:6, 1:6, 2].min() > 200 and a[1:6, 1:6, 0].max() < 60  # and top-left is blue


def test_exif_orientation_1_is_left_alone(tmp_path):
    stored = _exif_jpeg(tmp_path / "upright.jpg", 1)
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "upright.jpg")), stored)


# --- unreadable files -------------------------------------------------------------------------------------------

def test_check_images_skips_unreadable_files_with_named_warnings_and_a_count(tmp_path):
    good = [Sample(noise_image(tmp_path / f"good{i}.jpg", i), i % 2) for i in range(3)]
    text = tmp_path / "text.png"
    text.write_text("this is not a PNG")
    truncated = tmp_path / "truncated.jpg"
    whole = noise_image(tmp_path / "whole.jpg", 99, (64, 64)).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    bad = [Sample(text, 0), Sample(truncated, 1), Sample(empty, 0), Sample(missing, 1)]
    samples = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3]]

    messages: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported through ``warn``, never Python's warnings
        kept, digests = check_images(samples, progress=False, warn=messages.append)

    assert kept == good
    assert digests == [sha1(s.path) for s in good]
    for sample in bad:
        assert sum(str(sample.path) in m for m in messages) == 1, (sample.path, messages)
    assert messages[-1] == "skipped 4 unreadable image(s) of 7"
    assert len(messages) == 5 and all("\n" not in m for m in messages)


def test_check_images_prints_one_warning_line_each_on_stderr(tmp_path, capsys):
    samples = [Sample(noise_image(tmp_path / "good.png", 0), 0), Sample(tmp_path / "gone.png", 0)]
    check_images(samples, progress=False)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"warning: skipping unreadable image {tmp_path / 'gone.png'}: no such file",
                     "warning: skipped 1 unreadable image(s) of 2"]


def test_check_images_without_any_usable_image_is_an_error(tmp_path):
    (tmp_path / "a.png").write_text("not a picture")
    samples = [Sample(tmp_path / "a.png", 0), Sample(tmp_path / "missing.png", 1)]
    with pytest.raises(ValueError, match="none of the 2 images can be read"):
        check_images(samples, progress=False, warn=lambda message: None)


def test_check_images_is_silent_when_all_images_read(tmp_path):
    samples = [Sample(noise_image(tmp_path / f"{i}.png", i), 0) for i in range(2)]
    messages: list[str] = []
    kept, digests = check_images(samples, progress=False, warn=messages.append)
    assert kept == samples and len(set(digests)) == 2 and messages == []


# --- the split --------------------------------------------------------------------------------------------------

def _class_set(folder: Path, counts: dict[int, int]) -> list[Sample]:
    return [Sample(noise_image(folder / f"c{label}_{i}.png", 1000 * label + i, (8, 8)), label)
            for label, n in counts.items() for i in range(n)]


def test_split_is_stratified_complete_and_disjoint(tmp_path):
    samples = _class_set(tmp_path, {0: 10, 1: 20, 2: 30})
    digests = [file_digest(s.path) for s in samples]
    train, val = split_samples(samples, digests, val_fraction=0.2, seed=0)
    assert Counter(s.label for s in val) == {0: 2, 1: 4, 2: 6}  # 20 % of each class
    assert Counter(s.label for s in train) == {0: 8, 1: 16, 2: 24}
    assert sorted(map(str, train + val)) == sorted(map(str, samples))
    assert not set(train) & set(val)


def test_split_is_deterministic_per_seed(tmp_path):
    samples = _class_set(tmp_path, {0: 10, 1: 10, 2: 10})
    digests = [file_digest(s.path) for s in samples]
    first = split_samples(samples, digests, 0.3, seed=5)
    assert split_samples(samples, digests, 0.3, seed=5) == first
    others = {tuple(sorted(str(s.path) for s in split_samples(samples, digests, 0.3, seed=k)[1])) for k in range(6)}
    assert len(others) > 1  # the seed matters


def test_split_never_puts_identical_files_on_both_sides(tmp_path):
    samples = _class_set(tmp_path, {0: 12, 1: 12, 2: 12})
    # Byte-identical copies: five of one class-0 file, pairs of class-1 files, one copy across classes.
    copies = []
    for k in range(5):
        copies.append(Sample(Path(shutil.copy(samples[0].path, tmp_path / f"dup0_{k}.png")), 0))
    for i in (12, 13, 14):
        copies.append(Sample(Path(shutil.copy(samples[i].path, tmp_path / f"dup1_{i}.png")), 1))
    copies.append(Sample(Path(shutil.copy(samples[30].path, tmp_path / "dup_cross.png")), 0))
    everything = samples + copies
    digests = [sha1(s.path) for s in everything]
    assert len(set(digests)) == 36  # the copies really are byte-identical
    digest_of = dict(zip(everything, digests, strict=True))
    for seed in range(20):
        train, val = split_samples(everything, digests, 0.25, seed=seed)
        assert not {digest_of[s] for s in train} & {digest_of[s] for s in val}, seed
        assert len(train) + len(val) == len(everything)
        assert {s.label for s in val} == {0, 1, 2}


def test_split_gives_small_classes_a_validation_image(tmp_path):
    samples = _class_set(tmp_path, {0: 2, 1: 20, 2: 1})
    digests = [file_digest(s.path) for s in samples]
    train, val = split_samples(samples, digests, 0.2, seed=0)
    assert Counter(s.label for s in val) == {0: 1, 1: 4}  # class 2 has a single image: it trains
    train, val = split_samples(samples, digests, 0.0, seed=0)
    assert val == [] and sorted(map(str, train)) == sorted(map(str, samples))
    with pytest.raises(ValueError):
        split_samples(samples, digests, 1.0)


def test_image_dataset_yields_transformed_rgb_and_label(tmp_path):
    path = _grey(tmp_path)
    dataset = ImageDataset([Sample(path, 3)], transform=lambda image: (image.mode, image.size))
    assert len(dataset) == 1
    assert dataset[0] == (("RGB", (4, 2)), 3)


# --- the real data ----------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not (CAT12 / "train_list.txt").is_file(), reason="needs ../shared/data/cat12")
def test_real_cat12_list_splits_without_leaks():
    samples, classes = find_samples(CAT12)
    assert classes is None and len(samples) == 1920
    assert Counter(s.label for s in samples) == {label: 160 for label in range(12)}
    assert all(s.path.is_file() for s in samples)
    digests = [file_digest(s.path) for s in samples]
    assert len(set(digests)) < len(digests)  # the real data has byte-identical duplicates
    train, val = split_samples(samples, digests, 0.2, seed=0)
    digest_of = {s.path: d for s, d in zip(samples, digests, strict=True)}
    assert not {digest_of[s.path] for s in train} & {digest_of[s.path] for s in val}
    assert {s.label for s in val} == set(range(12))
    assert all(abs(n - 32) <= 4 for n in Counter(s.label for s in val).values())  # ~20 % of 160 per class
    assert len(train) + len(val) == 1920
