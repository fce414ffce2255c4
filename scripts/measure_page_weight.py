"""Measure the page weight of Explore's first view: Chromium's CPU time to load and draw it.

The class demo opens one share link per student; new panels must not make that view heavier
(issue 20, "Page weight": at most a 10% rise). This script starts the app of a checkout (``--repo``,
default this one) as ``make run`` does, opens the first view in Debian's Chromium (headless, driven
by Playwright), waits until the page has settled (the script run finished, the influence heatmaps
drawn, then a quiet second), and reads the renderer's own accounting from the DevTools protocol
(``Performance.enable`` with ``threadTicks``, so durations are CPU time of the page's main thread, then
``Performance.getMetrics``): ``TaskDuration`` (all its tasks), ``ScriptDuration``, ``LayoutDuration``
and ``RecalcStyleDuration``, in seconds.

One load first warms the server (its explanation is then cached, so every measured load asks the
server for the same cached view) and is not counted; then ``--loads`` fresh pages, each in a new
browser context (no HTTP cache, no session), are measured and the median of each metric is kept.

The result goes under ``page_weight.<label>`` of ``--out`` (its other keys are kept), with the
checkout's commit, the view's query and the load average before and after. When both ``before`` and
``after`` are present, ``page_weight.rise_percent`` gives the rise of each median metric and
``page_weight.meets_target`` whether TaskDuration rose by at most 10%. On a shared machine the
numbers are only comparable at similar load: measure both at a quiet moment.

Usage (the lead, at the end, on a quiet machine):
    git worktree add /tmp/before 636f116
    python scripts/measure_page_weight.py --repo /tmp/before --label before --out docs/results/app_speed.json
    python scripts/measure_page_weight.py --label after --out docs/results/app_speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_e2e_browser import _FRESH_HEATMAPS, HEATMAP_TITLES, app_server, launch, wait_idle  # noqa: E402

# The class demo's first view (scripts/measure_app_speed.py's lenet-fgsm): LeNet, FGSM, nip, run on arrival.
DEFAULT_QUERY = "?model=lenet-mnist&image=mnist-test-21&attack=fgsm&defense=nip&seed=0"
METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")
TARGET_RISE_PERCENT = 10.0
SETTLE_MS = 1000


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def load_state() -> dict:
    return {"uptime": uptime(), "load_avg": list(os.getloadavg())}


def commit_of(repo: Path) -> dict:
    """The checkout's commit and whether its tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()
    return {"commit": git("rev-parse", "--short=12", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


# Explore's result drawn: its influence heatmaps as Plotly charts (until issue 26) or as images (since).
_RESULT_DRAWN = f"""(titles) => ({_FRESH_HEATMAPS})(titles) >= 2 || [...document.querySelectorAll(
    '.st-key-explore-result img')].filter(i => i.complete && i.naturalWidth > 0).length >= 8"""


def settle(page, query: str) -> None:
    """Until Streamlit has finished the run and drawn its result (Explore runs its default view on
    a first visit since issue 26; before, the bare page showed only the form), then a quiet second."""
    try:
        page.wait_for_function(_RESULT_DRAWN, arg=HEATMAP_TITLES, timeout=900_000 if query else 60_000, polling=50)
    except Exception:
        if query:
            raise
        page.get_by_role("button", name="Run", exact=True).wait_for(timeout=300_000)
    wait_idle(page, timeout_ms=900_000)
    page.wait_for_timeout(SETTLE_MS)


def one_load(browser, url: str, query: str) -> dict[str, float]:
    """A fresh context and page: open the view, let it settle, read the renderer's metrics."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    try:
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable", {"timeDomain": "threadTicks"})
        page.goto(f"{url}/{query}")
        settle(page, query)
        got = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        return {k: float(got[k]) for k in METRICS}
    finally:
        context.close()


def measure(repo: Path, query: str, loads: int) -> dict:
    from playwright.sync_api import sync_playwright

    log = Path(tempfile.gettempdir()) / "nip_page_weight.log"
    before = load_state()
    per_load = []
    with app_server(log, poll_s=0.1, root=repo) as (url, _proc), sync_playwright() as p:
        browser = launch(p)
        try:
            one_load(browser, url, query)                      # warms the server; not counted
            for i in range(loads):
                per_load.append(one_load(browser, url, query))
                print(f"load {i + 1}/{loads}: " + ", ".join(f"{k} {v:.3f} s" for k, v in per_load[-1].items()),
                      flush=True)
        finally:
            browser.close()
    return {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **commit_of(repo), "query": query,
            "loads": loads, "median_seconds": {k: statistics.median(r[k] for r in per_load) for k in METRICS},
            "per_load_seconds": per_load, "load_before": before, "load_after": load_state()}


def rise(block: dict) -> None:
    """``rise_percent`` and ``meets_target`` once both ``before`` and ``after`` exist (else removed)."""
    block.pop("rise_percent", None)
    block.pop("meets_target", None)
    b, a = block.get("before"), block.get("after")
    if not (b and a):
        return
    if b["query"] != a["query"]:
        block["rise_percent"] = None
        block["rise_note"] = "before and after measured different views; no rise computed"
        return
    block.pop("rise_note", None)
    block["rise_percent"] = {k: 100 * (a["median_seconds"][k] / b["median_seconds"][k] - 1)
                             for k in METRICS if b["median_seconds"][k] > 0}
    block["meets_target"] = block["rise_percent"].get("TaskDuration", float("inf")) <= TARGET_RISE_PERCENT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True, help="where the result goes: before or after (or any other name)")
    ap.add_argument("--repo", default=str(ROOT), help="the checkout whose app is measured (default: this one)")
    ap.add_argument("--loads", type=int, default=5, help="measured page loads (fresh pages); the median is kept")
    ap.add_argument("--query", default=DEFAULT_QUERY,
                    help="the view's share-link query (default: the class demo's first view; '' for the bare page)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "app_speed.json"),
                    help="JSON file; the result goes under page_weight.<label>, other keys are kept")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    if not (repo / "app" / "serve.py").is_file():
        ap.error(f"--repo {args.repo}: no app/serve.py there (not a checkout of this project)")
    if not 1 <= args.loads <= 50:
        ap.error("--loads must be between 1 and 50")
    if args.query and not args.query.startswith("?"):
        ap.error("--query must start with '?' (or be empty for the bare page)")
    result = measure(repo, args.query, args.loads)
    path = Path(args.out)
    out = json.loads(path.read_text()) if path.exists() else {}
    block = out.setdefault("page_weight", {})
    block["what"] = ("Chromium's CPU time (DevTools Performance.getMetrics, threadTicks: the page's main thread) to "
                     "load Explore's first view and draw it until settled; median of fresh page loads after one "
                     "warm-up load; target: TaskDuration rises by at most 10% from before to after")
    block["browser"] = "Debian Chromium, headless, on the same machine as the server"
    block["cpus"] = os.cpu_count()
    block["target_rise_percent"] = TARGET_RISE_PERCENT
    block[args.label] = result
    rise(block)
    path.write_text(json.dumps(out, indent=2) + "\n")
    med = result["median_seconds"]
    print(f"{args.label} ({result['commit']}{' +dirty' if result['dirty'] else ''}): "
          + ", ".join(f"{k} {v:.3f} s" for k, v in med.items()))
    if block.get("rise_percent"):
        print("rise: " + ", ".join(f"{k} {v:+.1f}%" for k, v in block["rise_percent"].items())
              + f"; meets target (TaskDuration ≤ +{TARGET_RISE_PERCENT:g}%): {block['meets_target']}")
    print(f"wrote {path} (key 'page_weight.{args.label}')")


if __name__ == "__main__":
    main()
