"""Explore's drawing canvas in a real browser (issue 28 §4): draw a digit with the mouse, see the model's
prediction follow the strokes with no attack, Run it, and reopen it from its share link with the same
result.

Debian's Chromium driven by Playwright against ``python -m app.serve`` (the fixtures of test_e2e_browser).
A screenshot goes to tests/artifacts/canvas.png (git-ignored).
"""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

from tests.test_e2e_browser import (ARTIFACTS, click_run, launch, no_exceptions, open_explore, screenshot,
                                    streamlit_server, wait_heatmaps, wait_idle)

# The preview's line: "predicts 7 (99.1%)", drawn and not stale.
_PREVIEW = """
() => { const e = [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
    .find(e => !e.closest('[data-stale="true"]') && /^predicts \\S+ \\(/.test(e.textContent.trim()));
  return e ? e.textContent.trim() : null; }
"""
# The sources of every image drawn (the preview's 28×28 image and grid change with the drawing).
_IMAGES = "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')].map(i => i.src).join(' ')"


def _canvas_box(page, timeout_ms: int = 120_000) -> dict:
    """The drawing surface: Fabric's top canvas, 280×280 CSS pixels (inside the component's shadow root,
    which Playwright's locators pierce and ``document.querySelectorAll`` does not)."""
    canvases = page.locator("canvas")
    for _ in range(timeout_ms // 250):
        for c in canvases.all()[::-1]:
            box = c.bounding_box()
            if box and round(box["width"]) == 280:
                return box
        page.wait_for_timeout(250)
    raise AssertionError("no 280×280 canvas on the page")


def _stroke(page, box: dict, points: list[tuple[float, float]]) -> None:
    """One pen stroke through ``points`` (canvas pixels), as mouse moves with the button down."""
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0], y0 + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x, y0 + y, steps=8)
    page.mouse.up()


def _preview(page, timeout_ms: int = 60_000, other_than: str | None = None) -> str:
    page.wait_for_function(f"(b) => {{ const t = ({_PREVIEW})(); return t !== null && t !== b; }}", arg=other_than,
                           timeout=timeout_ms, polling=50)
    return page.evaluate(_PREVIEW)


def _metrics(page) -> list[str]:
    return page.locator('[data-testid="stMetricValue"]').all_inner_texts()


def test_draw_a_digit_run_it_and_reopen_it_from_the_link() -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(ARTIFACTS / "streamlit_canvas.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            open_explore(page, url, "?model=lenet-mnist&attack=fgsm&defense=nip&seed=0")
            wait_idle(page)
            page.get_by_text("Draw", exact=True).click()
            box = _canvas_box(page)
            page.get_by_text("Draw a digit on the canvas.").wait_for(timeout=60_000)
            # a "7": the bar on top, then down to the bottom left, in one stroke
            _stroke(page, box, [(70, 60), (140, 60), (210, 60), (185, 120), (160, 180), (135, 235)])
            first = _preview(page)
            assert re.match(r"predicts \d \(\d+\.\d%\)", first), first
            # no run of the drawing yet: the URL has no drawing (the link's own run may still be on the page)
            assert "draw=" not in page.url
            # a second stroke: the preview follows it (the images change), still no attack
            before = page.evaluate(_IMAGES)
            _stroke(page, box, [(110, 140), (150, 140), (190, 140)])
            page.wait_for_function(f"(b) => ({_IMAGES})() !== b && ({_PREVIEW})() !== null", arg=before,
                                   timeout=60_000, polling=50)
            preview = page.evaluate(_PREVIEW)
            assert "draw=" not in page.url
            # Run: the drawing is attacked and defended like any image
            click_run(page)
            page.wait_for_url("**draw=**", timeout=240_000)
            wait_heatmaps(page, 2)
            wait_idle(page)
            no_exceptions(page)
            shown = _metrics(page)
            assert len(shown) >= 3 and shown[0] == preview.split()[1]       # the run's benign = the preview's
            link = page.url
            query = parse_qs(urlparse(link).query)
            assert "image" not in query and len(query["draw"][0]) < 600
            screenshot(page, ARTIFACTS / "canvas.png")
            # the link in a tab of its own: the drawing and the same result
            student = browser.new_page(viewport={"width": 1400, "height": 1100})
            student.goto(link)
            wait_heatmaps(student, 2, timeout_ms=240_000)
            wait_idle(student)
            no_exceptions(student)
            assert _metrics(student) == shown
            assert _preview(student) == preview
            assert parse_qs(urlparse(student.url).query)["draw"] == query["draw"]
            assert student.get_by_text("The drawing from the link (draw on the canvas to replace it).").count() == 1
        finally:
            browser.close()
