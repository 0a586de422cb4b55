"""A headless Chromium for the page's tests: Debian's (apt-get install chromium), driven by Playwright."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CLIPSEARCH_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
"""Nothing reached outside the test's server (updates, sync, QUIC), and no GPU."""


def playwright_api() -> Any:
    """Playwright's sync API, the calling test skipped without it or without Chromium."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install '.[dev]')")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium); browser tests not run")
    return sync_api


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser, closed after."""
    with playwright_api().sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def expect(locator: Any) -> Any:
    """Playwright's `expect`, which waits for what it asserts."""
    return playwright_api().expect(locator)


def first_card_for(browser: Any, url: str, target: str, text: str) -> tuple[Any, Any]:
    """A new page of the server at `url`, searched for `text` in `target` (the page's radio buttons);
    the page and its first result's card."""
    page = browser.new_page()
    page.goto(url)
    page.check(f"input[name=target][value={target}]")
    page.fill("#query-text", text)
    page.press("#query-text", "Enter")
    return page, page.locator(".card").first
