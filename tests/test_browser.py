"""The app in a real browser: Debian's Chromium driven by Playwright (no browser download).

CI installs both with scripts/ci_browser_deps.sh. Set STAC_SCREENSHOT_DIR to keep the screenshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing (install it with scripts/ci_browser_deps.sh)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

import app  # noqa: E402
from tests.test_app import serve  # noqa: E402
from tests.test_chat import tiny_chat_models  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-extensions", "--no-first-run", "--mute-audio"]


@pytest.fixture(scope="module")
def url():
    settings = app.AppSettings(max_new_tokens=12, context_window=512, queue_size=4)
    with serve(tiny_chat_models(), settings) as served_url:
        yield served_url


@pytest.fixture
def page():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            yield page
        finally:
            browser.close()


def test_a_typed_message_gets_both_replies_metrics_and_an_energy_chart(url, page, tmp_path):
    page.goto(url, wait_until="domcontentloaded")
    box = page.locator("#message textarea")
    expect(box).to_be_visible(timeout=60_000)
    energy_before = page.locator("#energy-plot img").first.get_attribute("src", timeout=60_000)

    box.fill("Hello, spiking world 👋")
    page.locator("#send").click()

    for pane in ("#ann-chat", "#snn-chat"):
        expect(page.locator(pane).get_by_text("Hello, spiking world 👋")).to_be_visible(timeout=60_000)
        expect(page.locator(f"{pane} .bot").first).to_be_visible(timeout=60_000)
    expect(page.locator("#metrics")).to_contain_text("tokens/s", timeout=60_000)
    expect(page.locator("#metrics")).to_contain_text("SNN reply == ANN reply")

    chart = page.locator("#energy-plot img").first
    expect(chart).to_be_visible()
    page.wait_for_function(
        "before => { const img = document.querySelector('#energy-plot img');"
        " return img && img.complete && img.naturalWidth > 100 && img.getAttribute('src') !== before; }",
        arg=energy_before, timeout=60_000)
    expect(page.locator("#raster-plot img").first).to_be_visible()
    expect(box).to_have_value("")

    shot = tmp_path / "stac-space.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("STAC_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
