"""The report in a real headless browser: it loads without console errors, every image has alt
text, and nothing overflows a 1,400 px wide window.

Needs Playwright (``pip install playwright``) and a Chromium: Playwright's own download
(``python -m playwright install chromium``) or a system one (``/usr/bin/chromium``,
``$MEDROBUST_CHROMIUM``). Without either the test is skipped, so ``make test`` stays offline.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_report import SPEC, fill_store

from medrobust.report import build_report
from medrobust.store import Store

pytestmark = pytest.mark.slow

VIEWPORT = 1400
SYSTEM_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser():
    """(sync_playwright, executable or None) or a skip."""
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = os.environ.get("MEDROBUST_CHROMIUM") or next(
        (p for p in map(shutil.which, SYSTEM_BROWSERS) if p), None)
    return sync_api.sync_playwright, exe


def _launch(p, exe):
    args = ["--no-sandbox"]
    try:
        return p.chromium.launch(args=args)  # Playwright's own browser, when installed
    except Exception:
        if exe is None:
            pytest.skip("no Chromium: run 'python -m playwright install chromium' or install "
                        "chromium")
        return p.chromium.launch(executable_path=exe, args=args)


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    with Store(root / "runs.db") as store:
        fill_store(store, SPEC)
        return build_report(store, root / "report")


def test_report_renders_cleanly_at_1400_px(report_page: Path) -> None:
    sync_playwright, exe = _browser()
    with sync_playwright() as p:
        browser = _launch(p, exe)
        try:
            page = browser.new_page(viewport={"width": VIEWPORT, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report_page.as_uri(), wait_until="load")
            assert errors == []
            images = page.evaluate("() => [...document.images].map(i => ["
                                   "(i.getAttribute('alt') || '').trim(), i.complete && "
                                   "i.naturalWidth > 0])")
            assert images, "the report shows no image"
            assert all(alt for alt, _ in images), "an <img> without alt text"
            assert all(ok for _, ok in images), "an image that did not decode"
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= VIEWPORT
            wide = page.evaluate(f"""() => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().width > {VIEWPORT}
                             || e.getBoundingClientRect().right > {VIEWPORT} + 0.5)
                .map(e => e.tagName + '#' + e.id + '.' + e.className)""")
            assert wide == []
            assert page.locator("#overview h2").inner_text() == "At a glance"
        finally:
            browser.close()
