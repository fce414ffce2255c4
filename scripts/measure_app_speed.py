"""Measure, in a real browser, how fast Explore shows its heatmaps.

For each configuration a **fresh** server is started and:

1. ``first_view_seconds`` – the configuration's share link is opened as soon as the server answers
   its health check: seconds from the request to all influence heatmaps drawn (nothing warmed but
   what the app warms itself in the background). With ``--first-views N`` this is done on N fresh
   servers and the median is compared with the target (one first view varies by ±1.5 s here);
2. ``runs_seconds`` – then, with warm caches (the server idle again), each timed run types a new
   seed and clicks **Run**, so the explanation itself is recomputed: seconds from the click to the
   new heatmaps drawn.

Configurations and targets (issue 15):

* ``lenet-fgsm``        – LeNet + FGSM + nip: warm ≤ 1 s;
* ``efficientnet-pgd``  – EfficientNet-Lite0 + PGD (max_iter 10) + nip: warm ≤ 3 s, first view ≤ 10 s.

With ``--surgery`` it measures the neuron surgery panel instead (issue 19): a fresh server opens a
link with the panel open; once its bars are drawn and the server is idle (warm: the view, the
layer's unpatched passes and profile are cached), each timed run changes the selection (or the
value) in the panel to a setting not computed before, so the panel re-runs and makes one patched
forward pass: seconds from the option's click to the patched bars showing the new setting. One
more change back to a setting already computed is recorded as ``revisit_seconds`` (no engine
call). Targets: LeNet ≤ 0.2 s (issue 28; 0.3 s in issue 19), EfficientNet-Lite0 ≤ 1.5 s. The results go under the key
``surgery`` of the ``--out`` file; its other keys are kept.

With ``--layers`` it measures Explore's all-layers strip (issue 20 §3): on a fresh server a view is
opened by its link and, once the server is idle, the strip's switch is clicked: seconds from the
click to the strip drawn (``first_open_seconds``: the other layers' profiles are read from disk
then). Each timed run then closes the strip, types a new seed and presses Run (the explanation is
recomputed, untimed), waits until idle and opens the strip again, so the strip is computed anew
for the new view with everything else warm. Targets: LeNet ≤ 1.5 s, EfficientNet-Lite0 ≤ 8 s. The
results go under the key ``layers`` of the ``--out`` file; its other keys are kept.

With ``--fragility`` it measures the fragility panel (issue 20 §4): a fresh server opens a view
with no defense (so the panel's default defenses are ``none`` and ``jpeg``); once it is drawn and
the server is idle (warm: model, view and distribution loaded), the panel is opened and its button
pressed: seconds from the click to the fragility figure drawn (the search itself, through the app's
cached wrapper and progress bar). Each further run types a new seed, runs the view, and presses the
button again (a search not computed before). Target: EfficientNet-Lite0 ≤ 30 s. The results go
under the key ``fragility`` of the ``--out`` file; its other keys are kept.

With ``--strength`` it measures the attack-strength panel instead (issue 20 §1). On a fresh server,
each timed run opens a link with a new seed (panel closed), waits until the view is drawn and the
server idle, then switches the panel on: ``sweep_seconds`` is the time from the switch's click to the
response chart drawn, and ``engine_seconds`` the sweep's own time (the panel's "Computed in" caption).
Then ``--moves`` slider moves (keyboard, one strength each): seconds from the key press to the
scrubbed view showing the new ε with nothing stale (the response chart is drawn once per sweep, outside
the slider's fragment, since issue 28). Targets:
warm sweep ≤ 2 s on LeNet (FGSM, the default nip), ≤ 20 s for PGD-10 on EfficientNet-Lite0;
a move ≤ 0.3 s. The results go under the key ``strength`` of the ``--out`` file.

Every mode is an entry of ``ENTRIES`` run by one runner (:func:`run_entry`): its configurations, how one
is measured, its printed line and its key of ``--out`` (the other keys are kept). The machine's load
(``uptime``) is recorded before and after: on a shared machine the numbers are only comparable at
similar load.

Usage:  python scripts/measure_app_speed.py --runs 3 --out docs/results/app_speed.json
        python scripts/measure_app_speed.py --surgery --runs 5 --out docs/results/app_speed.json
        python scripts/measure_app_speed.py --strength --runs 3 --moves 8 --out docs/results/app_speed.json
        python scripts/measure_app_speed.py --layers --runs 5 --out docs/results/app_speed.json
        python scripts/measure_app_speed.py --fragility --runs 3 --out docs/results/app_speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_e2e_browser import (FRAGILITY_BUTTON, FRAGILITY_TOGGLE, STRIP_SWITCH, app_server,  # noqa: E402
                                    launch, open_strip, set_seed_and_run_time, wait_fragility, wait_heatmaps,
                                    wait_idle, wait_strip, wait_surgery_bars)

CONFIGS = {
    "lenet-fgsm": {"query": "?model=lenet-mnist&image=mnist-test-21&attack=fgsm&defense=nip&seed=0",
                   "target_s": 1.0, "first_view_target_s": 10.0},
    "efficientnet-pgd": {"query": "?model=efficientnet-lite0&image=chelsea&attack=pgd&ap=max_iter%3D10"
                                  "&defense=nip&seed=0", "target_s": 3.0, "first_view_target_s": 10.0},
}

SURGERY_LINK = "&surgery=front%3A0.2&surgery_value=benign"
SURGERY_CONFIGS = {
    "lenet-mnist": {"query": "?model=lenet-mnist&image=mnist-test-21&attack=fgsm&defense=nip&seed=0" + SURGERY_LINK,
                    "target_s": 0.2},
    "efficientnet-lite0": {"query": "?model=efficientnet-lite0&image=chelsea&attack=fgsm&defense=nip&seed=0"
                                    + SURGERY_LINK, "target_s": 1.5},
}
# (select box, option, text the new bars' title shows): each a setting not computed before in the run.
SURGERY_CHANGES = [
    ("Neurons to set", "tail neurons (weakest for the class)", ": tail:0.2 ("),
    ("Neurons to set", "front and tail neurons", ": front+tail:0.2 ("),
    ("Neurons to set", "the N neurons the attack changed most", ": changed:10 ("),
    ("Neurons to set", "N random neurons (the control)", ": random:10 ("),
    ("Set them to", "zero", ") set to zero"),
    ("Set them to", "their mean over benign images", ") set to mean"),
    ("Set them to", "their values on the defended input", ") set to defended"),
]
SURGERY_REVISIT = ("Set them to", "their benign values", ": random:10 (10 neurons) set to benign")


LAYERS_CONFIGS = {
    "lenet-mnist": {"query": "?model=lenet-mnist&image=mnist-test-21&attack=fgsm&defense=nip&seed=0",
                    "target_s": 1.5},
    "efficientnet-lite0": {"query": "?model=efficientnet-lite0&image=chelsea&attack=fgsm&defense=nip&seed=0",
                           "target_s": 8.0},
}


STRENGTH_CONFIGS = {
    "lenet-mnist-fgsm": {"query": "?model=lenet-mnist&image=mnist-test-21&attack=fgsm&defense=nip", "target_s": 2.0},
    "efficientnet-lite0-pgd10": {"query": "?model=efficientnet-lite0&image=chelsea&attack=pgd&ap=max_iter%3D10"
                                          "&defense=nip", "target_s": 20.0},
}
STRENGTH_MOVE_TARGET_S = 0.3


FRAGILITY_CONFIGS = {
    "efficientnet-lite0": {"query": "?model=efficientnet-lite0&image=chelsea&attack=fgsm&defense=none&seed=0",
                           "target_s": 30.0},
    "lenet-mnist": {"query": "?model=lenet-mnist&image=mnist-test-21&attack=fgsm&defense=none&seed=0",
                    "target_s": 30.0},
}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


@contextmanager
def fresh_server(log_path: Path) -> Iterator[tuple[str, int]]:
    """``python -m app.serve`` (as make run) on a free port; yields (base URL, pid) once it answers."""
    with app_server(log_path, poll_s=0.1) as (url, proc):
        yield url, proc.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_server_idle(pid: int, timeout_s: float = 300.0) -> float:
    """Until the server used under 0.1 s of CPU in a second (its background warm-up is done)."""
    t0 = time.perf_counter()
    last = cpu_seconds(pid)
    while time.perf_counter() - t0 < timeout_s:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        if now - last < 0.1:
            break
        last = now
    return time.perf_counter() - t0


def engine_seconds(page) -> dict[str, float]:
    """The 'Time: profile … s, attack … s, …' caption (Explanation.seconds) of the last run."""
    text = page.locator('[data-testid="stCaptionContainer"]', has_text="Time: profile").last.inner_text(timeout=180_000)
    return {k: float(v) for k, v in re.findall(r"(\w+) ([0-9.]+) s", text)}


def measure(browser, name: str, runs: int, first_views: int = 1) -> dict:
    """``first_views`` fresh servers, each opened once (the first view); warm runs on the last one."""
    cfg = CONFIGS[name]
    log = Path(tempfile.gettempdir()) / f"nip_measure_{name}.log"
    firsts, first_engines = [], []
    for k in range(first_views):
        with fresh_server(log) as (url, pid):
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            t0 = time.perf_counter()
            page.goto(f"{url}/{cfg['query']}")
            wait_heatmaps(page, 2, timeout_ms=900_000)
            firsts.append(time.perf_counter() - t0)
            wait_idle(page, timeout_ms=900_000)
            first_engines.append(engine_seconds(page))
            if k < first_views - 1:
                page.close()
                continue
            idle_wait = wait_server_idle(pid)
            times, engine = [], []
            for i in range(runs):
                times.append(set_seed_and_run_time(page, 100 + i))
                wait_idle(page, timeout_ms=900_000)
                engine.append(engine_seconds(page))
            page.close()
    med = statistics.median(times)
    first = statistics.median(firsts)
    return {"config": name, "query": cfg["query"],
            "first_view_seconds": first, "first_views_seconds": firsts,
            "first_view_target_seconds": cfg["first_view_target_s"],
            "first_view_meets_target": first <= cfg["first_view_target_s"], "first_view_engine_seconds": first_engines,
            "waited_for_idle_server_seconds": idle_wait,
            "target_seconds": cfg["target_s"], "runs_seconds": times, "median_seconds": med,
            "meets_target": med <= cfg["target_s"], "engine_seconds_per_run": engine}


_FOCUSED_OPTION = ("() => { const e = document.querySelector('[role=option][data-focused=true]'); "
                   "return e ? e.textContent.trim() : null; }")


def timed_change(page, label: str, option: str, want: str) -> float:
    """Open the select box and move the keyboard focus onto the option, then time its choice (the
    Enter key: nothing to wait for, as a click waits for its element) until the bars' title shows
    ``want``."""
    page.get_by_role("combobox", name=label, exact=True).click()
    page.keyboard.press("ArrowDown")
    page.get_by_role("option", name=option, exact=True).wait_for()
    for key in ["ArrowDown"] * 10 + ["ArrowUp"] * 10:
        if page.evaluate(_FOCUSED_OPTION) == option:
            break
        page.keyboard.press(key)
    else:
        raise RuntimeError(f"could not move the focus onto {option!r} in {label!r}")
    t0 = time.perf_counter()
    page.keyboard.press("Enter")
    wait_surgery_bars(page, want, timeout_ms=120_000, polling=20)
    return time.perf_counter() - t0


def measure_surgery(browser, name: str, runs: int) -> dict:
    """On a fresh server: open the panel by its link, wait until warm, then time ``runs`` changes."""
    cfg = SURGERY_CONFIGS[name]
    log = Path(tempfile.gettempdir()) / f"nip_measure_surgery_{name}.log"
    with fresh_server(log) as (url, pid):
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        t0 = time.perf_counter()
        page.goto(f"{url}/{cfg['query']}")
        wait_heatmaps(page, 2, timeout_ms=900_000)
        wait_surgery_bars(page, "front:0.2", timeout_ms=900_000)
        first = time.perf_counter() - t0
        wait_idle(page, timeout_ms=900_000)
        idle_wait = wait_server_idle(pid)
        page.get_by_role("combobox", name="Neurons to set", exact=True).scroll_into_view_if_needed()
        times, changes = [], []
        for label, option, want in SURGERY_CHANGES[:runs]:
            times.append(timed_change(page, label, option, want))
            changes.append(f"{label}: {option}")
            wait_idle(page)
            page.wait_for_timeout(300)
        # back to a setting computed before (random:10 set to benign), once the value has changed
        revisit = timed_change(page, *SURGERY_REVISIT) if runs >= 5 else None
        page.close()
    med = statistics.median(times)
    return {"config": name, "query": cfg["query"], "first_view_with_panel_seconds": first,
            "waited_for_idle_server_seconds": idle_wait, "changes": changes, "runs_seconds": times,
            "median_seconds": med, "target_seconds": cfg["target_s"], "meets_target": med <= cfg["target_s"],
            "revisit_seconds": revisit}


def timed_strip_open(page) -> float:
    """Click the strip's switch; seconds until the strip is drawn."""
    page.get_by_text(STRIP_SWITCH).scroll_into_view_if_needed()
    t0 = time.perf_counter()
    open_strip(page)
    wait_strip(page, timeout_ms=300_000, polling=20)
    return time.perf_counter() - t0


def measure_layers(browser, name: str, runs: int) -> dict:
    """On a fresh server: open the view, wait until idle, time the strip's first opening, then ``runs``
    openings each on a new view (a new seed, its explanation computed first and untimed)."""
    cfg = LAYERS_CONFIGS[name]
    log = Path(tempfile.gettempdir()) / f"nip_measure_layers_{name}.log"
    with fresh_server(log) as (url, pid):
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(f"{url}/{cfg['query']}")
        wait_heatmaps(page, 2, timeout_ms=900_000)
        wait_idle(page, timeout_ms=900_000)
        idle_wait = wait_server_idle(pid)
        first = timed_strip_open(page)
        wait_idle(page)
        times = []
        for i in range(runs):
            page.get_by_text(STRIP_SWITCH).click()                 # closed: the new run does not compute it
            wait_idle(page)
            set_seed_and_run_time(page, 200 + i)
            wait_idle(page, timeout_ms=900_000)
            wait_server_idle(pid)
            times.append(timed_strip_open(page))
            wait_idle(page)
        page.close()
    med = statistics.median(times)
    return {"config": name, "query": cfg["query"], "waited_for_idle_server_seconds": idle_wait,
            "first_open_seconds": first, "runs_seconds": times, "median_seconds": med,
            "target_seconds": cfg["target_s"], "meets_target": med <= cfg["target_s"]}


def measure_fragility(browser, name: str, runs: int) -> dict:
    """On a fresh server: open the view, wait until warm, then time ``runs`` presses of the panel's button
    (each on a view with a new seed, so each is a search not computed before)."""
    cfg = FRAGILITY_CONFIGS[name]
    log = Path(tempfile.gettempdir()) / f"nip_measure_fragility_{name}.log"
    with fresh_server(log) as (url, pid):
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(f"{url}/{cfg['query']}")
        wait_heatmaps(page, 2, timeout_ms=900_000)
        wait_idle(page, timeout_ms=900_000)
        page.get_by_text(FRAGILITY_TOGGLE).click()
        button = page.get_by_role("button", name=FRAGILITY_BUTTON)
        button.wait_for(timeout=120_000)
        wait_idle(page)
        idle_wait = wait_server_idle(pid)
        times, tables = [], []
        for i in range(runs):
            if i:
                set_seed_and_run_time(page, 200 + i)
                wait_idle(page, timeout_ms=900_000)
                wait_server_idle(pid)
            button.scroll_into_view_if_needed()
            t0 = time.perf_counter()
            button.click()
            wait_fragility(page, timeout_ms=900_000, polling=20, whole=False)
            times.append(time.perf_counter() - t0)
            wait_fragility(page, timeout_ms=900_000)
            wait_idle(page)
            tables.append(page.locator('[data-testid="stTable"]').filter(has_text="flip ε").first.inner_text())
        page.close()
    med = statistics.median(times)
    return {"config": name, "query": cfg["query"], "defenses": ["none", "jpeg"],
            "waited_for_idle_server_seconds": idle_wait, "runs_seconds": times, "median_seconds": med,
            "target_seconds": cfg["target_s"], "meets_target": med <= cfg["target_s"], "tables": tables}


def measure_strength(browser, name: str, runs: int, moves: int) -> dict:
    """On a fresh server: ``runs`` sweeps (each on a new seed, the server warm), then ``moves`` slider moves."""
    from tests.test_e2e_strength import at_eps, eps_of, open_panel, step_slider

    cfg = STRENGTH_CONFIGS[name]
    log = Path(tempfile.gettempdir()) / f"nip_measure_strength_{name}.log"
    with fresh_server(log) as (url, pid):
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        sweeps, engine, idle = [], [], []
        for i in range(runs):
            page.goto(f"{url}/{cfg['query']}&seed={300 + i}")
            wait_heatmaps(page, 2, timeout_ms=900_000)
            wait_idle(page, timeout_ms=900_000)
            idle.append(wait_server_idle(pid))
            t0 = time.perf_counter()
            open_panel(page, timeout_ms=900_000)
            sweeps.append(time.perf_counter() - t0)
            text = page.locator('[data-testid="stCaptionContainer"]', has_text="Computed in").last.inner_text()
            engine.append(float(re.search(r"Computed in ([0-9.]+) s", text).group(1)))
        idle.append(wait_server_idle(pid))
        times, seen = [], []
        start = eps_of(at_eps(page))
        for j in range(moves):
            key = "ArrowRight" if (j // 3) % 2 == 0 else "ArrowLeft"     # three up, three down, …
            page.wait_for_timeout(300)
            t0 = time.perf_counter()
            now = step_slider(page, key, polling=10)
            times.append(time.perf_counter() - t0)
            seen.append(now)
        page.close()
    med, move_med = statistics.median(sweeps), statistics.median(times) if times else None
    return {"config": name, "query": cfg["query"], "waited_for_idle_server_seconds": idle,
            "sweep_seconds": sweeps, "median_sweep_seconds": med, "engine_seconds": engine,
            "median_engine_seconds": statistics.median(engine), "target_seconds": cfg["target_s"],
            "meets_target": med <= cfg["target_s"], "start_eps": start, "moves": seen, "move_seconds": times,
            "median_move_seconds": move_med, "move_target_seconds": STRENGTH_MOVE_TARGET_S,
            "move_meets_target": move_med is not None and move_med <= STRENGTH_MOVE_TARGET_S}


# ----------------------------------------------------------------------------- one runner, one entry per panel

@dataclass(frozen=True)
class Entry:
    """One thing this script measures: its configurations, how one is measured, its printed line and where
    its results go (``key`` of ``--out``; None: the file's top level, as the views have always been)."""

    flag: str | None                                  # the command-line switch (None: the default, the views)
    key: str | None
    configs: dict
    measure: Callable[..., dict]                      # (browser, config name, args) → result
    line: Callable[[dict], str]
    what: str
    default: tuple[str, ...] | None = None            # configurations measured without --configs (None: all)
    settings: Callable[[argparse.Namespace], dict] = lambda args: {}


ENTRIES = {
    "views": Entry(
        None, None, CONFIGS, lambda b, n, a: measure(b, n, a.runs, a.first_views),
        lambda r: (f"{r['config']}: first view {r['first_view_seconds']:.2f} s "
                   f"({', '.join(f'{t:.2f}' for t in r['first_views_seconds'])}; target "
                   f"{r['first_view_target_seconds']} s); warm median {r['median_seconds']:.2f} s (runs "
                   f"{', '.join(f'{t:.2f}' for t in r['runs_seconds'])}; target {r['target_seconds']} s)"),
        "first view: seconds from opening a share link on a fresh server to its heatmaps drawn; warm: seconds "
        "from Run (a new seed) to the new heatmaps drawn",
        settings=lambda a: {"first_views": a.first_views}),
    "surgery": Entry(
        "--surgery", "surgery", SURGERY_CONFIGS, lambda b, n, a: measure_surgery(b, n, a.runs),
        lambda r: (f"surgery {r['config']}: warm median {r['median_seconds']:.3f} s (runs "
                   f"{', '.join(f'{t:.3f}' for t in r['runs_seconds'])}; target {r['target_seconds']} s; revisit "
                   f"{r['revisit_seconds'] if r['revisit_seconds'] is None else round(r['revisit_seconds'], 3)} s)"),
        "warm: seconds from choosing another selection (or value) in Explore's neuron surgery panel to its "
        "patched bars showing it (one patched forward pass; the panel is a fragment)"),
    "layers": Entry(
        "--layers", "layers", LAYERS_CONFIGS, lambda b, n, a: measure_layers(b, n, a.runs),
        lambda r: (f"layers {r['config']}: warm median {r['median_seconds']:.3f} s (runs "
                   f"{', '.join(f'{t:.3f}' for t in r['runs_seconds'])}; target {r['target_seconds']} s; "
                   f"first open {r['first_open_seconds']:.3f} s)"),
        "warm: seconds from clicking Explore's 'every layer' switch to the strip drawn, on a view whose "
        "explanation is cached and whose strip is not (engine: nip_core.analyses.pathway.layer_strip at every "
        "layer, then the figure)"),
    "fragility": Entry(
        "--fragility", "fragility", FRAGILITY_CONFIGS, lambda b, n, a: measure_fragility(b, n, a.runs),
        lambda r: (f"fragility {r['config']}: warm median {r['median_seconds']:.2f} s (runs "
                   f"{', '.join(f'{t:.2f}' for t in r['runs_seconds'])}; target {r['target_seconds']} s)"),
        "warm: seconds from pressing 'How fragile is this image?' in Explore's fragility panel (defenses "
        "none and jpeg, PGD at the model's defaults, a seed not searched before) to its figure drawn",
        default=("efficientnet-lite0",)),
    "strength": Entry(
        "--strength", "strength", STRENGTH_CONFIGS, lambda b, n, a: measure_strength(b, n, a.runs, a.moves),
        lambda r: (f"strength {r['config']}: sweep median {r['median_sweep_seconds']:.2f} s in the browser "
                   f"(engine {r['median_engine_seconds']:.2f} s; runs {', '.join(f'{t:.2f}' for t in r['sweep_seconds'])}; "
                   f"target {r['target_seconds']} s); slider move median {r['median_move_seconds']:.3f} s "
                   f"(moves {', '.join(f'{t:.3f}' for t in r['move_seconds'])}; target {STRENGTH_MOVE_TARGET_S} s)"),
        "sweep: seconds from switching Explore's attack-strength panel on (a new seed each run, the server "
        "warm) to its response chart drawn; engine: the sweep's own seconds; move: seconds from a slider "
        "key press to the scrubbed view showing the new ε with nothing stale (the panel is a fragment; no "
        "engine call)",
        settings=lambda a: {"moves": a.moves}),
}


def run_entry(entry: Entry, args: argparse.Namespace) -> None:
    """Measure ``entry``'s configurations in one Chromium, print a line each, and write them under its key of
    ``--out`` (the file's other keys are kept), with the machine's load before and after."""
    from playwright.sync_api import sync_playwright

    names = args.configs.split(",") if args.configs else list(entry.default or entry.configs)
    unknown = [n for n in names if n not in entry.configs]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(entry.configs)}")
    before = {"uptime": uptime(), "load_avg": os.getloadavg()}
    results = []
    with sync_playwright() as p:
        browser = launch(p)
        try:
            for name in names:
                r = entry.measure(browser, name, args)
                print(entry.line(r), flush=True)
                results.append(r)
        finally:
            browser.close()
    path = Path(args.out)
    out = json.loads(path.read_text()) if path.exists() else {}
    block = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": args.runs, **entry.settings(args),
             "cpus": os.cpu_count(), "what": entry.what,
             "browser": "Debian Chromium, headless, on the same machine as the server",
             "before": before, "after": {"uptime": uptime(), "load_avg": os.getloadavg()}, "results": results}
    if entry.key is None:
        out.update(block)
    else:
        out[entry.key] = block
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}" + ("" if entry.key is None else f" (key {entry.key!r})"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--first-views", type=int, default=1,
                    help="fresh servers per configuration; first_view_seconds is their median")
    ap.add_argument("--configs", default=None,
                    help="comma-separated configurations (default: all of the mode's); "
                         + "; ".join(f"{e.flag or 'views'}: {', '.join(e.configs)}" for e in ENTRIES.values()))
    ap.add_argument("--out", default="app_speed.json")
    modes = ap.add_mutually_exclusive_group()
    for name, e in ENTRIES.items():
        if e.flag is not None:
            modes.add_argument(e.flag, dest="mode", action="store_const", const=name,
                               help=f"measure the {name} panel ({', '.join(e.configs)}) into the key {e.key!r} of "
                                    "--out, keeping its other keys")
    ap.add_argument("--moves", type=int, default=8, help="with --strength: slider moves timed")
    args = ap.parse_args()
    if not 1 <= args.first_views <= 20 or not 1 <= args.runs <= 20:
        ap.error("--first-views and --runs must be between 1 and 20")
    if not 1 <= args.moves <= 40:
        ap.error("--moves must be between 1 and 40")
    mode = args.mode or "views"
    if mode == "surgery" and args.runs > len(SURGERY_CHANGES):
        ap.error(f"--surgery takes at most {len(SURGERY_CHANGES)} runs (one new setting each)")
    run_entry(ENTRIES[mode], args)


if __name__ == "__main__":
    main()
