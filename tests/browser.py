"""A real headless browser for the tests of pages (the explorer, the evaluation pages, the
Snakemake report): Debian's Chromium with its ChromeDriver, driven by selenium (the test
extra); `.ci/run` installs both packages. Without them the browser tests are skipped and
say why. Pages are shown at a fixed screen of SCREEN pixels, so that a screenshot is what a
reader's first screen shows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SCREEN = (1400, 1000)  # width, height in CSS pixels, at one device pixel each
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Headless, and nothing that would reach for the network (a closed network refuses it loudly).
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def start(profile: Path):
    """A Chromium with a fresh profile in ``profile``, its viewport SCREEN; skips the test
    where Chromium, its driver or selenium is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (it is in the test extra: make setup)")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium and its ChromeDriver are not installed (Debian: apt install chromium chromium-driver; .ci/run installs them)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={SCREEN[0]},{SCREEN[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # The window's size includes no browser frame in headless mode, but be exact: the page's viewport.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": SCREEN[0], "height": SCREEN[1], "deviceScaleFactor": 1, "mobile": False})
    return driver


def console_errors(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def first_screen(browser, path: Path):
    """A screenshot of what the viewport shows, saved to ``path``, as an RGB array; it must be
    the whole screen and not blank (many colours, and not one of them nearly everywhere)."""
    import matplotlib.image
    import numpy as np

    browser.save_screenshot(str(path))
    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape[:2] == (SCREEN[1], SCREEN[0]), f"{path.name}: {image.shape[1]}x{image.shape[0]}, not {SCREEN[0]}x{SCREEN[1]}"
    pixels = (image.reshape(-1, 3) * 255).round().astype(int)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    assert float(image.std()) > 0.05, f"{path.name}: nearly uniform (pixel standard deviation {image.std():.3f})"
    assert len(colours) > 50 and counts.max() < 0.9 * len(pixels), f"{path.name}: {len(colours)} colours, the commonest on {counts.max() / len(pixels):.0%}"
    return image


# Elements whose content is wider than they are and are cut or scroll sideways: what a reader
# of the screen cannot see whole. The page itself must not scroll sideways either.
OVERFLOWING = """
const found = [];
const page = document.scrollingElement;
if (page.scrollWidth > window.innerWidth + 1) found.push(`the page: ${page.scrollWidth}px wide`);
for (const el of document.querySelectorAll("body *")) {
  const style = getComputedStyle(el);
  if (style.display === "none" || !el.getClientRects().length) continue;
  if (el.scrollWidth > el.clientWidth + 1 && style.overflowX !== "visible" && el.clientWidth > 0)
    found.push(`${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}.${el.className}: ${el.scrollWidth}px in ${el.clientWidth}px`);
  const box = el.getBoundingClientRect();
  if (box.right > window.innerWidth + 1 && style.position !== "fixed")
    found.push(`${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}: right edge at ${Math.round(box.right)}px`);
}
return found;
"""


def overflowing(browser) -> list[str]:
    return browser.execute_script(OVERFLOWING)


def on_first_screen(browser, element) -> bool:
    """Whether all of ``element`` is inside the viewport, not scrolled or cut away."""
    return browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.width > 0 && r.top >= 0 && r.left >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth;",
        element)
