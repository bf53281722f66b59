"""``python docs/screenshots.py``: the README's screenshots of the app, on the embedded model, in headless Chromium.

    python docs/screenshots.py                     # docs/app.png, docs/app_explorer.png, docs/app_sanity.png
    python docs/screenshots.py --model other.onnx --out /tmp/shots
    python docs/screenshots.py --compare random.onnx         # docs/app_compare.png: two models side by side
    python docs/screenshots.py --units                       # docs/app_units.png: the Units tab

Serves the app in-process (as ``python app.py``), opens it in Debian's Chromium with Playwright, clicks the CC0
cat example, and saves full-page screenshots of "All layers", the layer explorer and the sanity checks.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
LOADED = """([selector, n]) => {
    const images = [...document.querySelectorAll(selector + ' img')];
    return images.length >= n && images.every(im => im.complete && im.naturalWidth > 0);
}"""


def open_cat(page, url: str, gallery: str) -> None:
    """Load the page, click the cat example and wait until ``gallery`` holds the 13 layers, all computed."""
    page.set_default_timeout(300_000)
    page.goto(url)
    page.locator("#examples button:has(img[src*='chelsea'])").click()
    page.wait_for_function(LOADED, arg=[gallery, 13])
    page.wait_for_function("() => !/projecting/.test(document.querySelector('#timings').innerText)")


def shoot(page, url: str, out: Path) -> None:
    """Click the cat example and save the three screenshots."""
    open_cat(page, url, "#layers-gallery")
    page.screenshot(path=str(out / "app.png"), full_page=True)
    page.get_by_role("tab", name="Layer explorer").click()
    page.wait_for_function(LOADED, arg=["#topk-gallery", 9])
    page.screenshot(path=str(out / "app_explorer.png"), full_page=True)
    page.get_by_role("tab", name="Sanity checks").click()
    page.locator("#sanity-run").click()
    page.wait_for_function(LOADED, arg=["#sanity-curves", 1])
    page.wait_for_timeout(1000)  # the tab bar settles after the page grew
    page.screenshot(path=str(out / "app_sanity.png"), full_page=True)


def shoot_compare(page, url: str, out: Path) -> None:
    """Click the cat example and save "All layers" with the compared model's galleries."""
    open_cat(page, url, "#compare-gallery")
    page.screenshot(path=str(out / "app_compare.png"), full_page=True)


def shoot_units(page, url: str, out: Path) -> None:
    """Click the cat example, open the Units tab on conv5_3 channel 2 and save it."""
    open_cat(page, url, "#layers-gallery")
    page.get_by_role("tab", name="Units").click()
    page.locator("#unit-channel input").fill("2")
    page.locator("#unit-show").click()
    page.wait_for_function(LOADED, arg=["#unit-projection", 1])
    page.wait_for_function(LOADED, arg=["#unit-out", 6])
    page.wait_for_timeout(1000)
    page.screenshot(path=str(out / "app_units.png"), full_page=True)


def main() -> int:
    p = argparse.ArgumentParser(prog="python docs/screenshots.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="FILE.onnx", help="exported model (default: models/vgg16_cat12.onnx)")
    p.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNGs (default: docs/)")
    p.add_argument("--compare", metavar="OTHER.onnx",
                   help="instead, app_compare.png: All layers of the default model beside OTHER.onnx")
    p.add_argument("--units", action="store_true", help="instead, app_units.png: the Units tab on conv5_3 channel 2")
    args = p.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from playwright.sync_api import sync_playwright

    from app import AppConfig, serve

    out = Path(args.out)
    demo, pipeline, url = serve(AppConfig(model=args.model, port=None, compare=args.compare), block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            if args.compare:
                shoot_compare(page, url, out)
            elif args.units:
                shoot_units(page, url, out)
            else:
                shoot(page, url, out)
            browser.close()
    finally:
        demo.close()
        pipeline.close()
    shot = "app_compare.png" if args.compare else "app_units.png" if args.units else \
        "app.png, app_explorer.png and app_sanity.png"
    print(f"wrote {shot} to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
