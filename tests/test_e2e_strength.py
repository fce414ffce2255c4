"""The attack-strength panel in a real browser (issue 20, §1): on every built-in model it opens on request,
draws its response chart, and its slider moves the scrubbed view and the link; a link reopens it there.

Debian's Chromium driven by Playwright against `python -m app.serve` (the fixtures of test_e2e_browser).
Screenshots of the panel go to tests/artifacts/ (git-ignored). The helpers here are also used by
scripts/measure_app_speed.py --strength.
"""
from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlparse

from tests.test_e2e_browser import (ARTIFACTS, launch, no_exceptions, open_explore, screenshot, streamlit_server,
                                    wait_heatmaps, wait_idle)

MODELS = ("lenet-mnist", "lenet-fashion", "resnet8-cifar10", "efficientnet-lite0")
TOGGLE_TEXT = "at 13 strengths from 0 to twice its ε"
SLIDER = "ε: drag through the computed strengths (nothing is recomputed)"

# The response chart is drawn and not stale (it is drawn once per sweep, outside the slider's fragment:
# the slider itself marks the ε shown).
_RESPONSE = """
() => [...document.querySelectorAll('.js-plotly-plot')].some(p => {
  if (p.closest('[data-stale="true"]')) return false;
  const t = p.querySelector('.gtitle');
  return !!t && / from ε = 0 to /.test(t.textContent) && !!p.querySelector('.scatterlayer .trace');
})
"""
# The scrubbed view shows ε `text` ("At ε = …") and nothing in the page is stale.
_SCRUBBED = """
(text) => !document.querySelector('[data-stale="true"]') && [...document.querySelectorAll(
    '[data-testid="stMarkdownContainer"]')].some(e => e.textContent.trim() === text)
"""


def wait_response(page, timeout_ms: int = 240_000, polling: int = 50) -> None:
    page.wait_for_function(_RESPONSE, timeout=timeout_ms, polling=polling)


def at_eps(page) -> str:
    """The scrubbed view's heading, e.g. "At ε = 0.2 (51/255)"."""
    return page.locator('[data-testid="stMarkdownContainer"]', has_text="At ε = ").last.inner_text().strip()


def eps_of(heading: str) -> float:
    return float(re.match(r"At ε = ([0-9.e+-]+)", heading).group(1))


def link_eps(url: str) -> str | None:
    return parse_qs(urlparse(url).query).get("strength_eps", [None])[0]


def same_eps(link: str | None, heading: str) -> bool:
    """The link's ε (6 significant digits) is the heading's (4)."""
    return link is not None and abs(float(link) - eps_of(heading)) <= 1e-3 * max(eps_of(heading), 1e-9)


def wait_link(page, heading: str, timeout_ms: int = 30_000) -> None:
    """Until the page's link holds the ε of ``heading`` (the panel rewrites it in place: no navigation)."""
    deadline = time.time() + timeout_ms / 1000
    while not same_eps(link_eps(page.url), heading):
        if time.time() > deadline:
            raise AssertionError(f"the link {page.url} did not take the slider's ε ({heading})")
        page.wait_for_timeout(50)


def slider(page):
    return page.get_by_role("slider", name=SLIDER)


def open_panel(page, timeout_ms: int = 240_000) -> None:
    page.get_by_text(TOGGLE_TEXT).click()
    wait_response(page, timeout_ms=timeout_ms)
    wait_idle(page, timeout_ms=timeout_ms)


def step_slider(page, key: str = "ArrowRight", timeout_ms: int = 60_000, polling: int = 50) -> str:
    """Move the slider one strength with the keyboard; return the new heading once the view shows it."""
    before = at_eps(page)
    slider(page).focus()
    page.keyboard.press(key)
    page.wait_for_function("(b) => [...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"]')]"
                           ".some(e => e.textContent.trim().startsWith('At ε = ') && e.textContent.trim() !== b)",
                           arg=before, timeout=timeout_ms, polling=polling)
    now = at_eps(page)
    page.wait_for_function(_SCRUBBED, arg=now, timeout=timeout_ms, polling=polling)
    return now


def test_strength_panel_on_every_builtin_model() -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(ARTIFACTS / "streamlit_strength.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            for model in MODELS:
                open_explore(page, url, f"?model={model}&attack=fgsm&defense=nip&seed=0")
                wait_heatmaps(page, 2)
                wait_idle(page)
                page.get_by_text(TOGGLE_TEXT).wait_for(timeout=120_000)   # the page's last panels may still stream in
                assert page.get_by_text(TOGGLE_TEXT).count() == 1 and link_eps(page.url) is None   # closed
                open_panel(page)
                no_exceptions(page)
                start = at_eps(page)
                wait_link(page, start)                                            # the run's ε
                assert slider(page).count() == 1
                moved = step_slider(page)
                assert eps_of(moved) > eps_of(start)
                wait_link(page, moved)
                back = step_slider(page, "ArrowLeft")
                assert back == start
                moved = step_slider(page)
                no_exceptions(page)
                if model in ("lenet-mnist", "efficientnet-lite0"):
                    screenshot(page, ARTIFACTS / f"strength_{model}.png")
            # the last model's link, opened in a tab of its own: the panel at the same ε
            link = page.url
            student = browser.new_page(viewport={"width": 1400, "height": 1000})
            student.goto(link)
            wait_response(student, timeout_ms=240_000)
            wait_idle(student)
            no_exceptions(student)
            assert at_eps(student) == moved and link_eps(student.url) == link_eps(link) and same_eps(link_eps(link), moved)
        finally:
            browser.close()
