"""The atlas's static site (demo/analyses/atlas/site.py) on an atlas of the tiny model and generated images.

The pages exist under stable names, every link and picture resolves to a file of the site (and nothing points
outside it: no server, no CDN, no script), strings from the atlas's files are escaped, channels not drawn yet show
the command that draws them (and that command works), and a real browser (headless Chromium driven by Playwright,
skipped without /usr/bin/chromium) opens index.html from the file system and clicks down to a channel's picture.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_image
from PIL import Image

from demo.analyses.atlas import cli as atlas_cli
from demo.analyses.atlas import read, site

LAYERS = {"conv1_1": 64, "conv2_1": 128}
K = 4
DRAWN = 5  # pictures drawn per layer when mining
ODD_NAME = 'odd <b>&"name\'.png'  # a file name that must be escaped
EVIL_CLASS = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def atlas_dir(tiny_onnx, tmp_path_factory):
    """An atlas of conv1_1 and conv2_1 (k = 4) over 8 images, 5 pictures per layer drawn, with its site."""
    root = tmp_path_factory.mktemp("site_data")
    rng = np.random.default_rng(3)
    lines = []
    for i in range(8):
        name = ODD_NAME if i == 5 else f"pic{i}.png"
        picture = make_image("RGB", (36 + i, 32), seed=i) if i % 2 else Image.fromarray(
            rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
        picture.save(root / name, format="PNG")
        lines.append(f"{name}\t{i % 3}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("site") / "atlas"
    cfg = atlas_cli.MineConfig(data=str(root / "labels.txt"), out=str(out), model=str(tiny_onnx),
                               layers=",".join(LAYERS), k=K, batch_size=4, workers=1, render=str(DRAWN), html=True)
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        atlas_cli.run(cfg, bar=False)
    assert "site: open" in stdout.getvalue() and "index.html" in stdout.getvalue()
    return out


class Links(HTMLParser):
    """Collects every href and src of a page, and the tags used."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.targets += [value for name, value in attrs if name in ("href", "src") and value is not None]


def pages(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.html"))


def test_pages_have_stable_names(atlas_dir):
    expected = {"index.html"} | {f"{layer}/index.html" for layer in LAYERS} | {
        f"{layer}/{c:04d}.html" for layer, channels in LAYERS.items() for c in range(channels)}
    assert {str(p.relative_to(atlas_dir)) for p in pages(atlas_dir)} == expected
    atlas = read.Atlas(atlas_dir)
    for layer in LAYERS:
        drawn = set(np.flatnonzero(atlas.rendered(layer)).tolist())
        thumbs = {int(p.stem) for p in (atlas_dir / layer / site.THUMBS_DIR).glob("*.png")}
        assert thumbs == drawn and len(drawn) == DRAWN


def test_links_resolve_inside_the_site(atlas_dir):
    checked = 0
    for path in pages(atlas_dir):
        parser = Links()
        parser.feed(path.read_text(encoding="utf-8"))
        assert not parser.tags & {"script", "link", "iframe", "object"}, path
        for target in parser.targets:
            assert "://" not in target and not target.startswith(("/", "//", "data:", "javascript:")), (path, target)
            resolved = (path.parent / target).resolve()
            assert resolved.is_file(), (path, target)
            assert resolved.is_relative_to(atlas_dir.resolve()), (path, target)
            checked += 1
    assert checked > 500


def test_layer_page_lists_every_channel_strongest_first(atlas_dir):
    atlas = read.Atlas(atlas_dir)
    text = (atlas_dir / "conv2_1" / "index.html").read_text(encoding="utf-8")
    order = [int(c) for c in re.findall(r'class="card[^"]*" href="(\d{4})\.html"', text)]
    assert order == atlas.ranked_channels("conv2_1").tolist()
    top = atlas.index["conv2_1/values"][:, 0]
    strongest = order[0]
    assert f'src="thumbs/{strongest:04d}.png"' in text and f"{top[strongest]:.4g}" in text
    if (top <= 0).any():
        assert "dead" in text


def test_channel_page_shows_entries_and_navigation(atlas_dir):
    atlas = read.Atlas(atlas_dir)
    names = atlas.info["class_names"]
    c = int(atlas.ranked_channels("conv1_1")[0])
    text = (atlas_dir / "conv1_1" / f"{c:04d}.html").read_text(encoding="utf-8")
    assert f'src="{c:04d}.png"' in text and 'href="index.html"' in text and 'href="../index.html"' in text
    for neighbour in (c - 1, c + 1):
        if 0 <= neighbour < 64:
            assert f'href="{neighbour:04d}.html"' in text
    entries = atlas.entries("conv1_1", c)
    assert len(entries) == K
    for e in entries:
        assert f"{e.value:.4g}" in text and site.esc(Path(e.path).name) in text and site.esc(names[e.label]) in text


def test_undrawn_channels_show_the_command_that_draws_them(atlas_dir, tmp_path):
    copy = tmp_path / "atlas"
    shutil.copytree(atlas_dir, copy)
    site.build_site(copy, bar=False)  # the command names this copy
    atlas = read.Atlas(copy)
    undrawn = int(np.flatnonzero(~atlas.rendered("conv2_1") & (atlas.index["conv2_1/values"][:, 0] > 0))[0])
    text = (copy / "conv2_1" / f"{undrawn:04d}.html").read_text(encoding="utf-8")
    assert "not drawn yet" in text and f'src="{undrawn:04d}.png"' not in text
    command = html.unescape(re.search(r"<pre>(.*?)\n", text).group(1))
    assert command.startswith("python -m demo.mine --data ") and command.endswith("--resume --render all")
    assert "--layers conv1_1,conv2_1" in command and "--k 4" in command and f"--out {copy}" in command
    proc = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert atlas.rendered("conv2_1").all() and atlas.rendered("conv1_1").all()
    site.build_site(copy, bar=False)
    text = (copy / "conv2_1" / f"{undrawn:04d}.html").read_text(encoding="utf-8")
    assert "not drawn yet" not in text and f'src="{undrawn:04d}.png"' in text
    assert "not drawn" not in (copy / "conv2_1" / "index.html").read_text(encoding="utf-8")


def test_strings_from_files_are_escaped(atlas_dir, tmp_path):
    copy = tmp_path / "atlas"
    shutil.copytree(atlas_dir, copy)
    meta = json.loads((copy / "atlas.json").read_text())
    meta["class_names"] = [EVIL_CLASS] * len(meta["class_names"])
    meta["data"] = "<i>data</i>"
    (copy / "atlas.json").write_text(json.dumps(meta))
    site.build_site(copy, bar=False)
    texts = [p.read_text(encoding="utf-8") for p in pages(copy)]
    assert not any("<script" in t or '<b>&"name' in t or "<i>data" in t for t in texts)
    assert any("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in t for t in texts)
    assert any("odd &lt;b&gt;&amp;&quot;name&#x27;.png" in t for t in texts)  # the odd file name, escaped
    assert "&lt;i&gt;data&lt;/i&gt;" in (copy / "index.html").read_text(encoding="utf-8")


def test_unknown_layer_names_are_refused(atlas_dir, tmp_path):
    copy = tmp_path / "atlas"
    shutil.copytree(atlas_dir, copy)
    meta = json.loads((copy / "atlas.json").read_text())
    meta["layers"]["../../escape"] = meta["layers"]["conv1_1"]
    (copy / "atlas.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown layer"):
        site.build_site(copy, bar=False)
    assert not (tmp_path / "escape").exists()


def test_atlas_site_command(atlas_dir, tmp_path):
    copy = tmp_path / "atlas"
    shutil.copytree(atlas_dir, copy)
    (copy / "index.html").unlink()
    proc = subprocess.run([sys.executable, "-m", "demo.atlas_site", str(copy)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (copy / "index.html").is_file() and "index.html" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "demo.atlas_site", str(tmp_path / "nothing")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
LOADED = "sel => [...document.querySelectorAll(sel)].every(im => im.complete && im.naturalWidth > 0)"


@pytest.mark.browser
def test_site_in_a_real_browser(atlas_dir):
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    atlas = read.Atlas(atlas_dir)
    strongest = int(atlas.ranked_channels("conv2_1")[0])
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.goto((atlas_dir / "index.html").resolve().as_uri())
            assert "atlas" in page.title()
            page.get_by_role("link", name="conv2_1", exact=True).click()
            page.wait_for_url("**/conv2_1/index.html")
            page.wait_for_function(LOADED, arg=".card img")
            assert page.locator(".card img").count() == DRAWN
            page.locator(".card").first.click()
            page.wait_for_url(f"**/conv2_1/{strongest:04d}.html")
            assert page.locator("h1").inner_text() == f"conv2_1 channel {strongest}"
            page.wait_for_function(LOADED, arg="img.picture")
            width = page.eval_on_selector("img.picture", "im => im.naturalWidth")
            assert width == Image.open(atlas_dir / "conv2_1" / f"{strongest:04d}.png").size[0] > 0
            page.get_by_role("link", name="weaker").click()
            second = int(atlas.ranked_channels("conv2_1")[1])
            page.wait_for_url(f"**/conv2_1/{second:04d}.html")
            page.get_by_role("link", name="all layers").click()
            page.wait_for_url("**/atlas/index.html")
        finally:
            browser.close()


def test_featurevis_pictures_on_the_channel_pages(atlas_dir, tmp_path):
    copy = tmp_path / "atlas"
    shutil.copytree(atlas_dir, copy)
    pictures = tmp_path / "fv" / "conv1_1"
    pictures.mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(pictures / "0003.png")
    site.build_site(copy, bar=False, featurevis=tmp_path / "fv")
    text = (copy / "conv1_1" / "0003.html").read_text(encoding="utf-8")
    assert 'src="featurevis/0003.png"' in text and "Feature visualization" in text
    assert (copy / "conv1_1" / "featurevis" / "0003.png").read_bytes() == (pictures / "0003.png").read_bytes()
    assert "featurevis/" not in (copy / "conv1_1" / "0004.html").read_text(encoding="utf-8")


def test_featurevis_option_of_the_site_and_mine_commands(atlas_dir, tmp_path, capsys):
    copy = tmp_path / "atlas"
    shutil.copytree(atlas_dir, copy)
    assert atlas_cli.site_main([str(copy), "--featurevis", str(tmp_path / "missing")]) == 2
    assert "error: --featurevis" in capsys.readouterr().err
    pictures = tmp_path / "fv" / "conv1_1"
    pictures.mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(pictures / "0002.png")
    assert atlas_cli.site_main([str(copy), "--featurevis", str(tmp_path / "fv")]) == 0
    assert 'src="featurevis/0002.png"' in (copy / "conv1_1" / "0002.html").read_text(encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        atlas_cli.parse_args(["--data", "d", "--out", "o", "--featurevis", str(tmp_path / "fv")])
    assert exit_info.value.code == 2 and "--featurevis needs --html" in capsys.readouterr().err
    config = atlas_cli.parse_args(["--data", "d", "--out", "o", "--html", "--featurevis", str(tmp_path / "fv")])
    assert config.featurevis == str(tmp_path / "fv")
