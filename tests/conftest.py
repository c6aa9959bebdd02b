"""Shared fixtures. `mirror`: the real data sets, through the same download path users take.
`browser_page`: a fresh page of headless Chromium (Debian's package, driven by Playwright) that
records console errors and uncaught page errors."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MIRROR = REPO.parent / "shared" / "datasets"
NO_MIRROR = "no data mirror"  # marks skips caused by a missing mirror, counted in the summary
NO_BROWSER = "no browser"  # marks skips caused by a missing chromium, counted in the summary
INSTALL_BROWSER = "install Debian's chromium: apt-get install chromium, or set STRATA_CHROMIUM to its path"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]


def mirror_location() -> str | None:
    """STRATA_DATA_MIRROR when set, else <repo>/../shared/datasets when it exists, else None."""
    env = os.environ.get("STRATA_DATA_MIRROR")
    if env:
        return env
    return str(SHARED_MIRROR) if SHARED_MIRROR.is_dir() else None


@pytest.fixture(scope="session")
def strata_home(tmp_path_factory) -> Path:
    """One cache folder for the whole session, so each data set is copied from the mirror once."""
    return tmp_path_factory.mktemp("strata_home")


@pytest.fixture
def mirror(monkeypatch, strata_home) -> str:
    """Sets STRATA_DATA_MIRROR (kept if already set) and STRATA_HOME (the session cache); returns
    the mirror. Skips the test when there is no mirror."""
    where = mirror_location()
    if where is None:
        pytest.skip(f"{NO_MIRROR}: set STRATA_DATA_MIRROR to a folder or URL laid out like shared/datasets "
                    f"(looked for {SHARED_MIRROR})")
    monkeypatch.setenv("STRATA_DATA_MIRROR", where)
    monkeypatch.setenv("STRATA_HOME", str(strata_home))
    return where


def chromium_location() -> str | None:
    """STRATA_CHROMIUM when set, else chromium (or chromium-browser) on PATH, else None. Playwright's own
    browser downloads are never used: the tests run the system's Chromium."""
    return (os.environ.get("STRATA_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser"))


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the session. Skips (counted in the summary) when it is not installed."""
    where = chromium_location()
    if where is None:
        pytest.skip(f"{NO_BROWSER}: {INSTALL_BROWSER}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"{NO_BROWSER}: Playwright is not installed: pip install -c constraints.txt -e '.[test]'")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=where, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class BrowserPage:
    """A Playwright page (`.page`; a local file opens with `.page.goto(path.as_uri())`) plus what went
    wrong on it: `errors` collects console messages of type "error" and uncaught exceptions (unhandled
    promise rejections included)."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def assert_no_errors(self, *expected: str) -> None:
        """No errors, except those containing one of `expected` (e.g. "status of 400": Chromium logs a
        4xx answer to fetch() itself, even when the page handles it)."""
        unexpected = [e for e in self.errors if not any(x in e for x in expected)]
        assert not unexpected, "the page reported errors:\n" + "\n".join(unexpected)

    def wait_decoded(self, selector: str) -> None:
        """Waits until there are <img> elements at `selector` and all have decoded (naturalWidth > 0)."""
        self.page.wait_for_function("s => { const a = [...document.querySelectorAll(s)];"
                                    " return a.length > 0 && a.every(i => i.complete && i.naturalWidth > 0) }",
                                    arg=selector)

    def save_screenshot(self, out, down_to: str = "body", colors: int = 256) -> None:
        """The page's top, down to the bottom of `down_to`, as a PNG of at most `colors` colours:
        pages of flat colours stay sharp in a few tens of KB (for docs/)."""
        from PIL import Image

        bottom = self.page.evaluate("s => Math.ceil(document.querySelector(s).getBoundingClientRect().bottom)", down_to)
        width = self.page.viewport_size["width"]
        shot = self.page.screenshot(clip={"x": 0, "y": 0, "width": width, "height": bottom + 16})
        image = Image.open(io.BytesIO(shot)).convert("RGB")
        image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


@pytest.fixture
def browser_page(chromium):
    """A new page (its own context: no shared cookies or cache) at 1100x800, closed after the test."""
    context = chromium.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(15_000)
    try:
        yield BrowserPage(context.new_page())
    finally:
        context.close()


def pytest_report_header(config):
    where = mirror_location()
    return [f"strata data mirror: {where or f'none (tests that need real data sets will be skipped; looked for {SHARED_MIRROR})'}",
            f"browser: {chromium_location() or f'none (browser tests will be skipped; {INSTALL_BROWSER})'}"]


def _skipped_for(terminalreporter, mark: str) -> int:
    return sum(mark in str(getattr(r, "longrepr", "")) for r in terminalreporter.stats.get("skipped", []))


def pytest_terminal_summary(terminalreporter):
    if n := _skipped_for(terminalreporter, NO_MIRROR):
        terminalreporter.write_line(f"{n} tests skipped for lack of a data mirror "
                                    f"(set STRATA_DATA_MIRROR or provide {SHARED_MIRROR})")
    if n := _skipped_for(terminalreporter, NO_BROWSER):
        terminalreporter.write_line(f"{n} browser tests skipped for lack of Chromium ({INSTALL_BROWSER})")
