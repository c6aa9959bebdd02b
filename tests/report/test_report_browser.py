"""`strata report` pages in a real browser (headless Chromium, tests/conftest.py's `browser_page`):
opened as a local file, they log no console error, request nothing beyond the file itself and its
inlined data: images, decode every image, and show their sections' headings.

STRATA_SCREENSHOT=1 writes docs/report.png: the report of the repository's MNIST run (runs/mnist-cnn
once it has finished, else runs/mnist-lenet5, else the small digits run), for the README."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strata.report.html import write_report

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "report.png"
CLASSIFIER = ["Test metrics", "Learning curves", "Confusion matrix", "Per-class precision and recall", "Top losses",
              "Feature hierarchy", "Config"]


def open_report(browser_page, path: Path) -> list[str]:
    """Opens the page; returns every URL it requested other than itself and data: URLs."""
    page = browser_page.page
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url) if not r.url.startswith("data:") else None)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    browser_page.wait_decoded("img")
    return [u for u in requested if u != path.as_uri()]


def check(browser_page, path: Path, headings: list[str]) -> None:
    assert open_report(browser_page, path) == []  # nothing fetched: the file holds everything
    page = browser_page.page
    shown = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
    assert all(h in shown for h in headings), shown
    sizes = page.eval_on_selector_all("img", "is => is.map(i => [i.naturalWidth, i.naturalHeight, i.width])")
    assert sizes and all(w > 0 and h > 0 and shown_w > 0 for w, h, shown_w in sizes)
    ids = page.eval_on_selector_all("[id]", "es => es.map(e => e.id)")
    assert len(ids) == len(set(ids))  # the navigation's anchors are unambiguous
    browser_page.assert_no_errors()


def test_a_classifier_report_renders(browser_page, digits_run):
    check(browser_page, digits_run / "report.html", CLASSIFIER)
    page = browser_page.page
    cells = page.eval_on_selector_all("#confusion tbody td", "cs => cs.map(c => +c.textContent)")
    assert len(cells) == 100 and sum(cells) > 0
    assert page.locator("#top-loss-examples figure").count() == 8
    # every section is reachable from the navigation bar
    links = page.eval_on_selector_all("nav a", "as => as.map(a => a.getAttribute('href'))")
    assert all(page.locator(link).count() == 1 for link in links) and len(links) >= len(CLASSIFIER)


@pytest.mark.parametrize("run, headings", [("lm_run", ["Samples", "Learning curves", "Config"]),
                                           ("gan_run", ["Samples", "Judged figures", "Learning curves"])])
def test_generative_reports_render(browser_page, request, run, headings):
    check(browser_page, request.getfixturevalue(run) / "report.html", headings)


def screenshot_run(digits_run) -> Path:
    for name in ("mnist-cnn", "mnist-lenet5"):
        if (REPO / "runs" / name / "summary.json").is_file():
            return REPO / "runs" / name
    return digits_run


@pytest.mark.skipif(not os.environ.get("STRATA_SCREENSHOT"), reason="STRATA_SCREENSHOT=1 writes docs/report.png")
def test_screenshot_for_the_readme(browser_page, digits_run, mirror, tmp_path):
    out = tmp_path / "report.html"
    write_report(screenshot_run(digits_run), out=out, device="cpu")
    check(browser_page, out, CLASSIFIER)
    page = browser_page.page
    bottom = page.evaluate("Math.ceil(document.querySelector('#top-losses').getBoundingClientRect().bottom)")
    page.set_viewport_size({"width": 1100, "height": bottom + 16})  # the shot is taken of the viewport
    browser_page.save_screenshot(SCREENSHOT, down_to="#top-losses", colors=128)
    assert SCREENSHOT.stat().st_size < 200_000
