"""Explore for a person (issue 26) in a real browser at 1400×1000: the first screen shows a run's result
without scrolling, in few words and no Plotly chart; a model switch keeps the pinned attack (B runs PGD
like A), the old result is marked stale until Run, and B's verdict names the model as the one difference.
(The Benchmark thumbnail that opens Explore in a new tab: tests/test_e2e_browser.py, slices.)"""
from __future__ import annotations

from tests.test_e2e_browser import (ARTIFACTS, choose, launch, no_exceptions, screenshot, streamlit_server,
                                    wait_heatmaps, wait_idle)

VIEWPORT = {"width": 1400, "height": 1000}
MAX_WORDS, MAX_CHARTS = 300, 4

# Words in the main area, charts drawn there, and where the result's pictures sit in the viewport.
_FIRST_VIEW = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const imgs = [...document.querySelectorAll('.st-key-explore-result img')].filter(i => i.complete && i.naturalWidth);
  return {words: (main.innerText.match(/\\S+/g) || []).length,
          charts: main.querySelectorAll('.js-plotly-plot, [data-testid="stVegaLiteChart"]').length,
          bottoms: imgs.map(i => i.getBoundingClientRect().bottom)};
}"""


def test_first_view_and_a_model_switch_that_keeps_the_attack_in_chromium() -> None:
    from playwright.sync_api import sync_playwright

    from nip_core.models import MODELS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(ARTIFACTS / "streamlit_explore.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            # 1. a first visit: the default run's result, in the first viewport, without a press
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url + "/")
            wait_heatmaps(page, 2, timeout_ms=600_000)
            wait_idle(page)
            no_exceptions(page)
            page.wait_for_timeout(500)
            got = page.evaluate(_FIRST_VIEW)
            assert len(got["bottoms"]) >= 10 and max(got["bottoms"]) <= VIEWPORT["height"], got   # all in sight
            assert got["words"] <= MAX_WORDS and got["charts"] <= MAX_CHARTS, got
            assert page.get_by_role("button", name="Start the tour").is_visible()
            assert "model=lenet-mnist" in page.url and "attack=fgsm" in page.url      # the view is a share link
            page.screenshot(path=str(ARTIFACTS / "explore_first_view.png"))

            # 2. PGD pinned on lenet-fashion; switch to lenet-fashion-at; Run: B runs PGD too
            page.goto(f"{url}/?model=lenet-fashion&image=sneaker-02565&attack=pgd&defense=none&seed=0")
            page.wait_for_url("**ap=**", timeout=600_000)
            wait_heatmaps(page, 2, timeout_ms=600_000)
            wait_idle(page)
            page.get_by_role("button", name="Pin this run").click()
            page.get_by_text("Run A is pinned").wait_for(timeout=60_000)
            choose(page, "Model", f"lenet-fashion-at — {MODELS['lenet-fashion-at'].summary}")
            page.get_by_text("Switched to lenet-fashion-at: kept").wait_for(timeout=120_000)
            page.get_by_text("Stale:").wait_for(timeout=60_000)                 # the old result, marked
            wait_idle(page)
            assert page.get_by_role("combobox", name="Attack").input_value().startswith("pgd")
            page.get_by_role("button", name="Run", exact=True).click()
            page.wait_for_url("**model=lenet-fashion-at**", timeout=600_000)
            page.get_by_text("B changes: model lenet-fashion → lenet-fashion-at.").wait_for(timeout=600_000)
            wait_idle(page)
            no_exceptions(page)
            assert "attack=pgd" in page.url and "pin_attack=pgd" in page.url and "pin_model=lenet-fashion&" in page.url
            assert page.get_by_text("Stale:").count() == 0
            verdict = page.get_by_text("B changes:").first.inner_text()
            assert "attack" not in verdict.split(".")[0]                        # the attack did not change
            screenshot(page, ARTIFACTS / "explore_model_switch.png")
        finally:
            browser.close()


def _expected_claim(q: dict[str, str]) -> str:
    """The tour card's computed line for a step's query, as the page should show it (markdown removed)."""
    import re

    from app.tour import step_claim
    from nip_core import api
    from nip_core.params import parse_kv

    run = api.make_run(q["model"], q["image"], attack=q["attack"], attack_params=parse_kv(q.get("ap", "")) or {},
                       defense=q["defense"], seed=int(q["seed"]))
    return " ".join(re.sub(r"[*`]", "", step_claim(api.explore(run))).split())


def test_tour_steps_state_what_their_runs_computed_in_chromium() -> None:
    """Each tour step's computed line on the page is the engine's for that run; the ε = 0 step's two
    difference maps are drawn all zero (float noise is not stretched into colour)."""
    from playwright.sync_api import sync_playwright

    from app import tour as T

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(ARTIFACTS / "streamlit_tour.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            for step in T.STEPS[:3]:                       # ε = 0, the attack, the oracle
                q = T.step_query(step, "lenet-mnist")
                page.goto(url + "/?" + "&".join(f"{k}={v}" for k, v in q.items()))
                page.get_by_text("In this run:").first.wait_for(timeout=600_000)
                wait_idle(page)
                no_exceptions(page)
                shown = page.get_by_text("In this run:").first.evaluate(
                    "e => (e.closest('[data-testid=\"stMarkdownContainer\"]') || e).innerText")
                assert " ".join(shown.split()) == _expected_claim(q), step.key
                if step.key == "neurons":
                    assert page.get_by_text("(all zero)").count() == 2       # both changes, drawn as zero
            page.screenshot(path=str(ARTIFACTS / "tour_step.png"))
        finally:
            browser.close()
