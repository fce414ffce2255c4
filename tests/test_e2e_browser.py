"""End to end in a real browser: Debian's Chromium driven by Playwright against `streamlit run`.

Never runs `playwright install`; if /usr/bin/chromium is missing the test fails with a message.
Screenshots go to tests/artifacts/ (git-ignored). The helpers here are also used by
scripts/measure_app_speed.py.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HEATMAP_TITLES = ["Neuron influence toward", "Neuron activation", "Change in neuron"]


# ----------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_server(log_path: Path | None = None, poll_s: float = 0.3,
               root: Path = ROOT) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``python -m app.serve`` (what make run starts) of the checkout at ``root`` on a free
    loopback port; yield (base URL, process) once /_stcore/health answers. Also used by
    scripts/measure_app_speed.py and scripts/measure_page_weight.py."""
    port = free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.serve", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless=true", "--server.fileWatcherType=none", "--browser.gatherUsageStats=false"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with status {proc.returncode}; log: {log_path}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("streamlit did not answer /_stcore/health within 120 s")
            time.sleep(poll_s)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path:
            log.close()


@contextmanager
def streamlit_server(log_path: Path | None = None) -> Iterator[str]:
    """:func:`app_server`, yielding its base URL."""
    with app_server(log_path) as (url, _proc):
        yield url


def launch(p):
    """Debian's Chromium (CI installs it); a missing browser is a failure, not a skip."""
    if not os.path.exists(CHROMIUM):
        raise AssertionError(f"{CHROMIUM} is missing: install Debian's Chromium with "
                             "`apt-get install -y chromium chromium-driver` (never `playwright install`).")
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


# Number of drawn, non-stale heatmap figures (influence and difference heatmaps): Plotly figures with
# these titles, and Explore's first view, which draws both rows as images (issue 26): it counts as 2 once
# its pictures (3 inputs, 3 neuron maps, 2 changes, 2 colour bars) have loaded.
_FRESH_HEATMAPS = """
(titles) => {
  let n = 0;
  for (const box of document.querySelectorAll('.st-key-explore-result')) {
    if (box.closest('[data-stale="true"]')) continue;
    const imgs = [...box.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0);
    if (imgs.length >= 10) n += 2;
  }
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    if (plot.closest('[data-stale="true"]')) continue;
    const title = plot.querySelector('.gtitle');
    if (title && titles.some(t => title.textContent.startsWith(t)) && plot.querySelector('.heatmaplayer .hm'))
      n += 1;
  }
  return n;
}
"""


def fresh_heatmaps(page) -> int:
    return page.evaluate(_FRESH_HEATMAPS, HEATMAP_TITLES)


def wait_heatmaps(page, n: int = 2, timeout_ms: int = 240_000) -> None:
    page.wait_for_function(f"(titles) => ({_FRESH_HEATMAPS})(titles) >= {n}", arg=HEATMAP_TITLES,
                           timeout=timeout_ms, polling=50)


def wait_idle(page, timeout_ms: int = 240_000) -> None:
    """Until the script run has finished (Streamlit's running indicator is gone)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=timeout_ms, polling=100)


def click_run(page) -> None:
    page.get_by_role("button", name="Run", exact=True).click()


def set_seed_and_run_time(page, seed: int, timeout_ms: int = 900_000) -> float:
    """Type a new seed, click Run, and return seconds until the new heatmaps are drawn."""
    box = page.get_by_label("seed", exact=True)
    if not box.is_visible():          # the influence settings sit in a closed expander of the sidebar
        page.get_by_text("Influence: layer, method, k, seed").click()
    box.fill(str(seed))
    box.press("Tab")
    page.wait_for_timeout(300)
    t0 = time.perf_counter()
    click_run(page)
    page.wait_for_url(f"**seed={seed}**", timeout=timeout_ms)   # set when the explanation is ready
    wait_heatmaps(page, 2, timeout_ms=timeout_ms)
    return time.perf_counter() - t0


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the select box labelled ``label`` (Streamlit's combobox opens on ArrowDown)."""
    page.get_by_role("combobox", name=label, exact=True).click()
    page.keyboard.press("ArrowDown")
    page.get_by_role("option", name=option, exact=True).click()


# True when a drawn, non-stale surgery bar chart's title contains the text (e.g. "random:10").
_SURGERY_BARS = """
(want) => [...document.querySelectorAll('.js-plotly-plot')].some(p => !p.closest('[data-stale="true"]')
    && p.querySelector('.gtitle') && p.querySelector('.gtitle').textContent.startsWith('Surgery at')
    && p.querySelector('.gtitle').textContent.includes(want) && p.querySelector('.barlayer .point'))
"""


def wait_surgery_bars(page, want: str, timeout_ms: int = 240_000, polling: int = 50) -> None:
    """Until the surgery panel's bars show the selection ``want`` (their title names it)."""
    page.wait_for_function(_SURGERY_BARS, arg=want, timeout=timeout_ms, polling=polling)


def open_explore(page, url: str, query: str = "") -> None:
    page.goto(f"{url}/{query}")  # Explore is the default page, served at /
    page.get_by_role("button", name="Run", exact=True).wait_for(timeout=180_000)


def no_exceptions(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.first.inner_text()


def screenshot(page, path: Path) -> Path:
    """The whole app, not just the viewport (Streamlit scrolls inside its own container)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = page.evaluate("() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], "
                      "[data-testid=\"stAppViewContainer\"]')].map(e => e.scrollHeight))")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(max(int(h) + 40, size["height"]), 12000)})
    page.wait_for_timeout(800)  # plotly relayouts on resize
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    return path


# ----------------------------------------------------------------------------- the test

def test_explore_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from nip_core.data import gallery
    from nip_core.images import tensor_to_png_bytes

    digit = tmp_path / "digit.png"
    item = gallery("mnist")[5]
    digit.write_bytes(tensor_to_png_bytes(item.image))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(ARTIFACTS / "streamlit.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            open_explore(page, url)
            # 1. the default example: LeNet, FGSM, nip
            click_run(page)
            wait_heatmaps(page, 2)
            wait_idle(page)
            no_exceptions(page)
            assert page.locator(".st-key-explore-result img").count() >= 10     # the first view, as images
            assert "attack=fgsm" in page.url and "defense=nip" in page.url
            screenshot(page, ARTIFACTS / "explore_default.png")

            # 1b. neuron surgery: open the panel, change the selection, pick a neuron on the grid
            page.get_by_text("Neuron surgery: set chosen neurons by hand").click()
            wait_surgery_bars(page, "front:0.2")
            choose(page, "Neurons to set", "N random neurons (the control)")
            wait_surgery_bars(page, "random:10")
            page.wait_for_url("**surgery=random%3A10**", timeout=30_000)      # the fragment updates the link
            grid = page.locator(".js-plotly-plot").filter(has=page.locator(".gtitle", has_text="Pick neurons"))
            point = grid.locator(".scatterlayer .point").nth(5)
            point.scroll_into_view_if_needed()
            box = point.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x - 20, y - 20)
            page.mouse.move(x, y, steps=4)                                    # plotly picks what is hovered
            page.mouse.click(x, y)
            wait_surgery_bars(page, ": 5 (1 neuron)")
            wait_idle(page)
            no_exceptions(page)
            assert page.get_by_role("textbox", name="Neuron indices").input_value() == "5"
            screenshot(page, ARTIFACTS / "explore_surgery.png")

            # 2. upload a digit and run again
            page.get_by_text("Upload an image", exact=True).click()
            image_input(page).set_input_files(str(digit))
            page.get_by_text("digit.png as the model sees it").wait_for(timeout=60_000)
            click_run(page)
            page.wait_for_url("**image=upload**", timeout=120_000)
            wait_heatmaps(page, 2)
            wait_idle(page)
            no_exceptions(page)
            assert page.get_by_text("no true label (reference = benign prediction)", exact=False).count() >= 1
            shot = screenshot(page, ARTIFACTS / "explore_upload.png")
            assert shot.stat().st_size > 10_000

            # 3. a garbage upload is refused in the page, not with a traceback
            junk = tmp_path / "junk.png"
            junk.write_bytes(b"definitely not an image")
            image_input(page).set_input_files(str(junk))
            page.locator('[data-testid="stAlertContentError"]').first.wait_for(timeout=60_000)
            assert "Cannot use junk.png" in page.locator('[data-testid="stAlertContentError"]').first.inner_text()
            assert page.locator('[data-testid="stException"]').count() == 0
        finally:
            browser.close()


def image_input(page):
    """The Explore image uploader's file input (the sidebar has other uploaders)."""
    return (page.locator('[data-testid="stFileUploader"]').filter(has_text="PNG, JPEG, WebP")
            .locator('input[type="file"]'))


# ----------------------------------------------------------------------------- the classroom (issue 15)

_FRESH_TITLED = """
(prefix) => [...document.querySelectorAll('.js-plotly-plot')].some(p => !p.closest('[data-stale="true"]')
    && p.querySelector('.gtitle') && p.querySelector('.gtitle').textContent.startsWith(prefix)
    && p.querySelector('.heatmaplayer .hm'))
"""


def test_tour_from_a_fresh_server_and_benchmark_on_arrival_in_chromium() -> None:
    """A teacher opens the tour on a server that just started, walks two steps, shares a step's link
    (a student opens it in a new tab), and the Benchmark page shows the shipped table on arrival."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(ARTIFACTS / "streamlit_tour.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{url}/tour")
            page.get_by_role("button", name="Open step 2").click(timeout=180_000)
            page.wait_for_url("**tour=attack**", timeout=180_000)
            wait_heatmaps(page, 2)
            wait_idle(page)
            no_exceptions(page)
            page.get_by_text("Guided tour · step 2 of 9").wait_for()
            page.get_by_role("button", name="Next step").click()
            page.wait_for_url("**tour=oracle**", timeout=180_000)
            page.get_by_text("Guided tour · step 3 of 9").wait_for(timeout=60_000)
            wait_heatmaps(page, 2)
            wait_idle(page)
            no_exceptions(page)
            assert "defense=nip-oracle" in page.url
            screenshot(page, ARTIFACTS / "tour_step3.png")

            # The link the Tour page shows for step 4, opened by a student in a tab of their own.
            page.goto(f"{url}/tour")
            link = page.locator('[data-testid="stCode"]').nth(3).inner_text(timeout=180_000).strip()
            assert link.startswith(url + "/?") and "tour=label-free" in link
            student = browser.new_page(viewport={"width": 1400, "height": 1000})
            student.goto(link)
            wait_heatmaps(student, 2)
            wait_idle(student)
            no_exceptions(student)
            student.get_by_text("Guided tour · step 4 of 9").wait_for()
            assert "defense=nip" in student.url

            # Benchmark: the shipped MNIST table is drawn without pressing anything.
            page.goto(f"{url}/benchmark")
            page.wait_for_function(_FRESH_TITLED, arg="Accuracy after defense — lenet-mnist", timeout=120_000,
                                   polling=100)
            wait_idle(page)
            no_exceptions(page)
            assert page.get_by_role("button", name="Run benchmark").count() == 0   # nothing was run
            assert page.get_by_text("Accuracy after each defense, with Wilson intervals").count() == 1
            screenshot(page, ARTIFACTS / "benchmark_arrival.png")
        finally:
            browser.close()


# ----------------------------------------------------------------------------- pin and compare (issue 21)

_COMPARE = "both runs on one colour scale"


def wait_comparison(page, timeout_ms: int = 240_000) -> None:
    """Until the pin-and-compare heatmaps (both runs, one colour scale) are drawn and not stale."""
    page.wait_for_function(
        """(want) => [...document.querySelectorAll('.js-plotly-plot')].some(p => !p.closest('[data-stale="true"]')
            && p.querySelector('.gtitle') && p.querySelector('.gtitle').textContent.includes(want)
            && p.querySelectorAll('.heatmaplayer .hm').length >= 6)""",
        arg=_COMPARE, timeout=timeout_ms, polling=100)


def test_pin_and_compare_in_chromium() -> None:
    """Pin an FGSM run on a garment, run PGD on it, see both side by side; the link reopens both."""
    from playwright.sync_api import sync_playwright

    from nip_core.attacks import ATTACKS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(ARTIFACTS / "streamlit_pin.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{url}/?model=lenet-fashion&image=sneaker-02565&attack=fgsm&defense=none&seed=0")
            wait_heatmaps(page, 2)
            wait_idle(page)
            page.get_by_role("button", name="Pin this run").click()
            page.get_by_text("Run A is pinned").wait_for(timeout=60_000)
            page.wait_for_url("**pin_attack=fgsm**", timeout=30_000)
            choose(page, "Attack", f"pgd — {ATTACKS['pgd'].spec.summary}")
            page.wait_for_timeout(500)
            click_run(page)
            page.wait_for_url("**attack=pgd**", timeout=240_000)
            wait_comparison(page)
            wait_idle(page)
            no_exceptions(page)
            assert page.get_by_text("B changes: attack fgsm → pgd").count() >= 1
            assert page.get_by_text("Jaccard overlap").count() >= 1
            assert "pin_model=lenet-fashion" in page.url and "pin_image=sneaker-02565" in page.url
            screenshot(page, ARTIFACTS / "explore_pin_compare.png")

            # the link, opened in a fresh tab, shows both runs again
            other = browser.new_page(viewport={"width": 1500, "height": 1000})
            other.goto(page.url)
            wait_comparison(other)
            wait_idle(other)
            no_exceptions(other)
            assert other.get_by_text("B changes: attack fgsm → pgd").count() >= 1

            # unpin: the comparison goes, the run stays
            page.get_by_role("button", name="Unpin").click()
            page.get_by_role("button", name="Pin this run").wait_for(timeout=60_000)
            wait_idle(page)
            no_exceptions(page)
            assert "pin_" not in page.url and "attack=pgd" in page.url
        finally:
            browser.close()


# ----------------------------------------------------------------------------- every layer at once (issue 20 §3)

STRIP_TITLE = "Every layer at once"
LAYER_LINKS = {
    "lenet-mnist": "?model=lenet-mnist&image=mnist-test-21&attack=fgsm&defense=nip&seed=0",
    "lenet-fashion": "?model=lenet-fashion&image=t-shirt-top-00770&attack=fgsm&defense=nip&seed=0",
    "resnet8-cifar10": "?model=resnet8-cifar10&image=cifar10-cifar10_00_3&attack=fgsm&defense=nip&seed=0",
    "efficientnet-lite0": "?model=efficientnet-lite0&image=chelsea&attack=fgsm&defense=nip&seed=0",
}
STRIP_SWITCH = "Every layer at once: the attack's pathway"

# True when a drawn, non-stale all-layers strip shows its neuron markers.
_STRIP_DRAWN = """
(title) => [...document.querySelectorAll('.js-plotly-plot')].some(p => !p.closest('[data-stale="true"]')
    && p.querySelector('.gtitle') && p.querySelector('.gtitle').textContent.startsWith(title)
    && p.querySelector('.scatterlayer .point') && p.querySelector('.barlayer .point'))
"""


def wait_strip(page, timeout_ms: int = 240_000, polling: int = 50) -> None:
    """Until the all-layers strip is drawn (also used by scripts/measure_app_speed.py --layers)."""
    page.wait_for_function(_STRIP_DRAWN, arg=STRIP_TITLE, timeout=timeout_ms, polling=polling)


def open_strip(page) -> None:
    """Click the strip's switch (it is off until asked for)."""
    switch = page.get_by_text(STRIP_SWITCH)
    switch.scroll_into_view_if_needed()
    switch.click()


def strip_chart(page):
    return page.locator(".js-plotly-plot").filter(has=page.locator(".gtitle", has_text=STRIP_TITLE))


def click_strip_neuron(page, column: int, rank: int, n_columns: int, top: int = 3) -> None:
    """Click a neuron marker of the strip: the neuron trace is the last scatter trace with points, one
    marker per (column, rank) in that order."""
    points = strip_chart(page).locator(".scatterlayer .point")
    point = points.nth(points.count() - n_columns * top + column * top + rank)
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 20, y - 20)
    page.mouse.move(x, y, steps=4)                   # plotly picks what is hovered
    page.mouse.click(x, y)


def test_layer_strip_on_every_built_in_model_in_chromium() -> None:
    """The strip opens on all four built-in models; on LeNet a clicked neuron opens in the drill-down
    and in neuron surgery."""
    import re

    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(ARTIFACTS / "streamlit_layers.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            for model, link in LAYER_LINKS.items():
                page.goto(f"{url}/{link}")
                wait_heatmaps(page, 2)
                wait_idle(page)
                # the page's last section: everything above it has been sent (elements stream in order)
                page.get_by_text("Every defense on this adversarial").wait_for(timeout=120_000)
                no_exceptions(page)
                assert page.locator(".js-plotly-plot").count() == 0      # the first view is images; the strip is off
                open_strip(page)
                wait_strip(page)
                page.wait_for_url("**layers=1**", timeout=30_000)
                wait_idle(page)
                no_exceptions(page)
                # one marker per top neuron of every layer, joined to the next layer's
                assert strip_chart(page).locator(".xtick").count() >= 4
                if model in ("lenet-mnist", "efficientnet-lite0"):
                    screenshot(page, ARTIFACTS / f"explore_layers_{model}.png")
                if model == "lenet-mnist":
                    click_strip_neuron(page, column=2, rank=0, n_columns=4)     # fc1, the run's layer
                    note = page.get_by_text(re.compile(r"^Neuron \d+ of fc1 is open in the drill-down"))
                    note.wait_for(timeout=60_000)
                    neuron = re.search(r"Neuron (\d+) of fc1", note.inner_text()).group(1)
                    wait_surgery_bars(page, f"Surgery at fc1: {neuron} (1 neuron)")
                    wait_idle(page)
                    no_exceptions(page)
                    drill = page.get_by_role("combobox", name="Neuron (front neurons first)")
                    assert drill.input_value().startswith(f"neuron {neuron} ") or \
                        page.locator('[data-testid="stSelectbox"]').filter(has_text=f"neuron {neuron} ").count() >= 1
                    screenshot(page, ARTIFACTS / "explore_layers_picked.png")
                    page.get_by_text(STRIP_SWITCH).click()                     # closed again: out of the link
                    page.wait_for_url(re.compile(r"^(?!.*layers=1).*$"), timeout=30_000)
        finally:
            browser.close()


# ----------------------------------------------------------------------------- fragility (issue 20 §4)

# True when a drawn, non-stale fragility figure shows its bars (its title starts "Smallest pgd budget").
_FRAGILITY_FIGURE = """
() => [...document.querySelectorAll('.js-plotly-plot')].some(p => !p.closest('[data-stale="true"]')
    && p.querySelector('.gtitle') && p.querySelector('.gtitle').textContent.startsWith('Smallest pgd budget')
    && p.querySelector('.barlayer .point'))
"""
FRAGILITY_TOGGLE = "How fragile is this image?"
FRAGILITY_BUTTON = "Find the smallest attack that flips it"


def wait_fragility(page, timeout_ms: int = 240_000, polling: int = 50, whole: bool = True) -> None:
    """Until the fragility panel's figure is drawn (``whole``: and the rest of the result, down to its
    last element, the downloads; a fragment's run may not show Streamlit's running indicator)."""
    page.wait_for_function(_FRAGILITY_FIGURE, timeout=timeout_ms, polling=polling)
    if whole:
        page.get_by_role("button", name="fragility.html (report)").wait_for(timeout=timeout_ms)


def fragility_table(page) -> dict[str, list[str]]:
    """The panel's flip-ε table (a static st.table): defense → its cells."""
    table = page.locator('[data-testid="stTable"]').filter(has_text="flip ε").first
    table.locator("tbody tr").first.wait_for(timeout=60_000)      # its component may still be loading
    rows = {}
    for tr in table.locator("tbody tr").all():
        cells = [c.inner_text().strip() for c in tr.locator("th, td").all()]
        rows[cells[0]] = cells[1:]
    return rows


def test_fragility_panel_on_every_built_in_model_in_chromium(tmp_path: Path) -> None:
    """On each built-in model's first gallery example (the view run with no defense, for speed): open the
    panel, keep only `none` on all but LeNet (none and JPEG there), press the button, and see the figure and
    the table with a percentile from the shipped distribution; on LeNet also download both files."""
    import json
    from urllib.parse import parse_qs, urlparse

    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(ARTIFACTS / "streamlit_fragility.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            for model in ("lenet-mnist", "lenet-fashion", "resnet8-cifar10", "efficientnet-lite0"):
                page = browser.new_page(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
                page.goto(f"{url}/?model={model}&attack=fgsm&defense=none&seed=0")
                wait_heatmaps(page, 2)
                wait_idle(page)
                page.get_by_text(FRAGILITY_TOGGLE).click()
                button = page.get_by_role("button", name=FRAGILITY_BUTTON)
                button.wait_for(timeout=60_000)
                want = ["none", "jpeg"] if model == "lenet-mnist" else ["none"]
                if model != "lenet-mnist":       # drop jpeg (the last chosen) with Backspace
                    page.get_by_role("combobox", name="Defenses").click()
                    page.keyboard.press("Backspace")
                    page.keyboard.press("Escape")
                    wait_idle(page)
                button.click()
                wait_fragility(page)
                wait_idle(page)
                no_exceptions(page)
                table = fragility_table(page)
                assert list(table) == want, table
                for cells in table.values():
                    flip, _, _, pct = cells
                    assert flip.endswith("/255)") or flip.startswith("none up to"), cells
                    assert pct.isdigit() and 0 <= int(pct) <= 100, cells      # the shipped distribution
                assert parse_qs(urlparse(page.url).query)["fragility"] == [",".join(want)]   # the share link
                if model in ("lenet-mnist", "efficientnet-lite0"):
                    screenshot(page, ARTIFACTS / f"explore_fragility_{model}.png")
                if model == "lenet-mnist":
                    with page.expect_download() as got:
                        page.get_by_role("button", name="fragility.json").click()
                    r = json.loads(Path(got.value.path()).read_text())
                    assert r["status"] == "searched" and list(r["defenses"]) == want and r["model"] == model
                    assert r["distribution"]["file"] == f"docs/results/fragility-{model}.json"
                    with page.expect_download() as got:
                        page.get_by_role("button", name="fragility.html (report)").click()
                    html = Path(got.value.path()).read_text(encoding="utf-8")
                    assert "Plotly.newPlot" in html and "<script src=\"https://cdn.plot.ly" not in html   # inline
                    assert "How fragile is this image? — lenet-mnist" in html and "fragility=none" in html
                page.close()
        finally:
            browser.close()


# ----------------------------------------------------------------------------- slices (issue 21)

def test_benchmark_thumbnails_open_an_image_in_explore_in_chromium() -> None:
    """A results JSON with per-image records opened on the Benchmark page: the slices panel lists a
    row's images as thumbnails, and a thumbnail's link opens that image in Explore, re-run."""
    from urllib.parse import unquote

    from playwright.sync_api import sync_playwright

    from nip_core.evaluation import slices as S
    from nip_core.evaluation.results import RESULTS_DIR, shipped_result

    name = "paper-mnist-report.json"
    assert S.has_per_image(shipped_result(name))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(ARTIFACTS / "streamlit_slices.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{url}/benchmark")
            page.get_by_text("Open a results JSON", exact=True).click(timeout=180_000)
            (page.locator('[data-testid="stFileUploader"]').filter(has_text="Results JSON")
             .locator('input[type="file"]').set_input_files(str(RESULTS_DIR / name)))
            page.get_by_text("Facet by true class and list a row's images").click(timeout=120_000)
            thumbs = page.locator('[data-testid="stImage"] img')
            page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 40",
                                   timeout=120_000, polling=100)
            wait_idle(page)
            no_exceptions(page)
            assert thumbs.count() == 40
            for i in (0, 39):                              # drawn, not broken (they load when scrolled to)
                thumbs.nth(i).scroll_into_view_if_needed()
                page.wait_for_function("(i) => { const im = document.querySelectorAll('[data-testid=\"stImage\"] "
                                       "img')[i]; return im.complete && im.naturalWidth > 0; }", arg=i,
                                       timeout=30_000, polling=100)
            links = page.get_by_role("link", name="open in Explore")
            assert links.count() == 40
            screenshot(page, ARTIFACTS / "benchmark_slices.png")
            bench_url = page.url
            with page.context.expect_page() as opened:        # a new tab: the Benchmark's state stays
                links.nth(3).click()
            bench, page = page, opened.value
            page.set_viewport_size({"width": 1500, "height": 1000})
            page.wait_for_url(lambda u: "image=report:3@0:64" in unquote(u), timeout=120_000)
            wait_heatmaps(page, 2)
            wait_idle(page)
            no_exceptions(page)
            assert "seed=" in page.url and "attack=" in page.url
            # the Benchmark tab still shows the opened file's slices, the same row and its 40 thumbnails
            assert bench.url == bench_url and links.count() == 40
            assert bench.get_by_text("Facet by true class: inputs").count() >= 1
            # the panel's first row (first attack, last defense): image 3's predictions as the file has them
            report = shipped_result(name)
            im = S.row_images(report, S.attacks(report)[0], S.defenses(report)[-1])[3]
            values = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
            assert values[1:3] == [str(im["adv_pred"]), str(im["pred"])], values
            screenshot(page, ARTIFACTS / "explore_from_slice.png")
        finally:
            browser.close()
