"""The page in a real browser: headless Chromium driven by Playwright, on the tiny model (conftest.py).

A user's path: load the page, click the cat example and "Visualise", wait until the 13 reconstructions have loaded,
read their captions and the predicted breed; then open the layer explorer and pick channels by clicking a
projection and a feature-map tile. A full-page screenshot goes to the test's tmp_path and, when the environment
variable SCREENSHOT_DIR is set, there too. Skipped (with the reason) without /usr/bin/chromium or Playwright.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_app import running_app

from base.spec import CONV_LAYERS
from demo.app import views
from demo.app.pipeline import top_predictions

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 180_000  # generous: the test machines are small and shared

# JavaScript: are all of the gallery's pictures there and decoded?
LOADED = """([selector, n]) => {
    const images = [...document.querySelectorAll(selector + ' img')];
    return images.length === n && images.every(im => im.complete && im.naturalWidth > 0);
}"""

CAPTION_SAYS = "text => document.querySelector('#channel-caption').innerText.includes(text + ':')"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        chromium.close()


def click_natural(page, selector: str, x: float, y: float) -> None:
    """Click the pixel (x, y) of the picture shown by ``selector``'s <img> (object-fit: contain)."""
    page.locator(f"{selector} img").scroll_into_view_if_needed()
    box = page.locator(f"{selector} img").bounding_box()  # in the viewport's coordinates
    nw, nh = page.eval_on_selector(f"{selector} img", "im => [im.naturalWidth, im.naturalHeight]")
    scale = min(box["width"] / nw, box["height"] / nh)
    left = box["x"] + (box["width"] - nw * scale) / 2
    top = box["y"] + (box["height"] - nh * scale) / 2
    page.mouse.click(left + (x + 0.5) * scale, top + (y + 0.5) * scale)


def test_cat_example_in_a_real_browser(browser, tiny_onnx, tmp_path):
    with running_app(tiny_onnx, cache=4) as (url, _, pipeline):
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#run")
        assert "Deconvnet" in page.title()

        page.locator("#examples button:has(img[src*='chelsea'])").click()
        page.locator("#input-image img").wait_for()
        page.locator("#run").click()
        page.wait_for_function(LOADED, arg=["#layers-gallery", len(CONV_LAYERS)])
        page.wait_for_function("() => /Timings.*total/.test(document.querySelector('#timings').innerText) && "
                               "!/projecting/.test(document.querySelector('#timings').innerText)")
        captions = page.locator("#layers-gallery .caption-label").all_inner_texts()
        assert [c.strip() for c in captions] == list(CONV_LAYERS)

        chelsea = Path(__file__).resolve().parent.parent / "examples" / "chelsea.png"
        fwd, _ = pipeline.forward(chelsea)
        expected = top_predictions(fwd.probs, pipeline.model.class_names)
        shown = page.locator("#prediction").inner_text()
        assert all(breed in shown for breed in expected)
        assert shown.split("\n")[1].strip() == next(iter(expected))  # the heading is the top breed
        timings = page.locator("#timings").inner_text()
        assert all(stage in timings for stage in ("preprocess", "forward", "deconvnet", "encoding"))
        assert page.locator("#npz a").count() >= 1  # the .npz is offered

        page.get_by_text("Example images: sources and licences").click()
        assert "Chelsea the cat" in page.locator("#attribution").inner_text()

        # Every tab keeps its own name whichever is open (a non-tab child of the Tabs block once duplicated them).
        names = page.locator("#tabs button[role='tab']").all_inner_texts()
        assert len(names) == len(set(names)) >= 8
        for name in ("Occlusion", "Model health", "Classes"):
            page.get_by_role("tab", name=name).click()
            page.wait_for_timeout(300)
            assert page.locator("#tabs button[role='tab']").all_inner_texts() == names, name

        # The layer explorer: the k strongest channels of conv5_3; clicking one (and a grid tile) selects it.
        page.get_by_role("tab", name="Layer explorer").click()
        page.wait_for_function(LOADED, arg=["#topk-gallery", 9])
        number = page.locator("#channel-number input")
        topk_captions = page.locator("#topk-gallery .caption-label").all_inner_texts()
        strongest = int(topk_captions[0].split()[1])
        assert int(number.input_value()) == strongest
        third = int(topk_captions[2].split()[1])
        page.locator("#topk-gallery button.thumbnail-item").nth(2).click()
        page.wait_for_function(CAPTION_SAYS, arg=f"channel {third}")
        assert int(number.input_value()) == third

        layout = views.grid_layout(pipeline, "conv5_3")
        target = layout.columns + 3  # second row, fourth tile
        row, col = divmod(target, layout.columns)
        click_natural(page, "#feature-grid", col * (layout.tile_w + layout.gap) + layout.tile_w / 2,
                      row * (layout.tile_h + layout.gap) + layout.tile_h / 2)
        page.wait_for_function(CAPTION_SAYS, arg=f"channel {target}")
        assert int(number.input_value()) == target
        page.wait_for_function(LOADED, arg=["#topk-gallery", 9])
        screenshot(page, tmp_path / "app_explorer.png")

        page.get_by_role("tab", name="All layers").click()
        page.wait_for_function(LOADED, arg=["#layers-gallery", len(CONV_LAYERS)])
        screenshot(page, tmp_path / "app.png")
        page.close()


def screenshot(page, path: Path) -> None:
    """A full-page screenshot to ``path``, copied to $SCREENSHOT_DIR when that is set."""
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("SCREENSHOT_DIR"):
        folder = Path(os.environ["SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
