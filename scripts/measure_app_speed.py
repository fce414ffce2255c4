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

The machine's load (``uptime``) is recorded before and after: on a shared machine the numbers
are only comparable at similar load.

Usage:  python scripts/measure_app_speed.py --runs 3 --out docs/results/app_speed.json
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
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_e2e_browser import (app_server, launch, set_seed_and_run_time, wait_heatmaps,  # noqa: E402
                                    wait_idle)

CONFIGS = {
    "lenet-fgsm": {"query": "?model=lenet-mnist&image=mnist-test-21&attack=fgsm&defense=nip&seed=0",
                   "target_s": 1.0, "first_view_target_s": 10.0},
    "efficientnet-pgd": {"query": "?model=efficientnet-lite0&image=chelsea&attack=pgd&ap=max_iter%3D10"
                                  "&defense=nip&seed=0", "target_s": 3.0, "first_view_target_s": 10.0},
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--first-views", type=int, default=1,
                    help="fresh servers per configuration; first_view_seconds is their median")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default="app_speed.json")
    args = ap.parse_args()
    if not 1 <= args.first_views <= 20 or not 1 <= args.runs <= 20:
        ap.error("--first-views and --runs must be between 1 and 20")
    from playwright.sync_api import sync_playwright

    before = {"uptime": uptime(), "load_avg": os.getloadavg()}
    results = []
    with sync_playwright() as p:
        browser = launch(p)
        try:
            for name in args.configs.split(","):
                r = measure(browser, name, args.runs, args.first_views)
                print(f"{name}: first view {r['first_view_seconds']:.2f} s "
                      f"({', '.join(f'{t:.2f}' for t in r['first_views_seconds'])}; target {r['first_view_target_seconds']} s); "
                      f"warm median {r['median_seconds']:.2f} s (runs {', '.join(f'{t:.2f}' for t in r['runs_seconds'])}; "
                      f"target {r['target_seconds']} s)", flush=True)
                results.append(r)
        finally:
            browser.close()
    out = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": args.runs, "first_views": args.first_views,
           "cpus": os.cpu_count(),
           "browser": "Debian Chromium, headless, on the same machine as the server",
           "before": before, "after": {"uptime": uptime(), "load_avg": os.getloadavg()}, "results": results}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
