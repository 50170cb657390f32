"""Headless Chromium (system package, driven by Playwright) for the HTML report's tests.

Skipped with a message where Chromium or Playwright is absent; `.ci/run` installs Chromium
(`apt-get install chromium`), so CI runs them. Playwright never downloads a browser here: it
drives /usr/bin/chromium (or $DGMOOD_CHROMIUM).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import LoadedPage

from dgmood.reporting.html import HEADLESS_CHROMIUM_ARGS

CHROMIUM = Path(os.environ.get("DGMOOD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = HEADLESS_CHROMIUM_ARGS

_TABLES_JS = """() => [...document.querySelectorAll('table[data-name]')].map(t => ({
    name: t.dataset.name,
    rows: [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim())),
}))"""
_IMAGES_JS = """() => [...document.images].map(i => ({
    alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
}))"""


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} not found: install it (apt-get install chromium; .ci/run does) "
            "or point $DGMOOD_CHROMIUM at a Chromium binary"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def open_report(browser: Any, tmp_path: Path) -> Callable[[Path], LoadedPage]:
    """Open an HTML file in a fresh page and report what loaded and what did not."""

    def load(html_path: Path) -> LoadedPage:
        seen = LoadedPage()
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on(
            "console",
            lambda m: seen.console_errors.append(m.text) if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: seen.console_errors.append(str(e)))
        page.on("requestfailed", lambda r: seen.failed_requests.append(r.url))
        page.on("request", lambda r: seen.requests.append(r.url))
        try:
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            seen.images = page.evaluate(_IMAGES_JS)
            seen.tables = {t["name"]: t["rows"] for t in page.evaluate(_TABLES_JS)}
            seen.finding = page.inner_text("#finding").strip()
            seen.screenshot = tmp_path / f"{html_path.parent.name}-screenshot.png"
            page.screenshot(path=str(seen.screenshot), full_page=True)
        finally:
            page.close()
        return seen

    return load
