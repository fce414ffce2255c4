"""Load test: several concurrent browser sessions through the Explore page.

Starts the Streamlit app on a free loopback port (or targets ``--url``), opens ``--sessions``
headless Chromium sessions at once — each its own browser context, so its own Streamlit
session — and sends each through Explore with a different gallery image, attack and defense
via the page's query parameters (``model``, ``image``, ``attack``, ``ap``, ``defense``, ``dp``,
``seed``; a link with them runs on load, as if **Run** were pressed). For each session it
records:

* ``first_result_s`` – time until the three prediction metrics are on the page;
* ``complete_s``     – time until the page finished (the *Download summary* button is drawn);
* errors shown by the page (``st.error`` / exceptions) or raised by the browser;
* whether the page shows *its own* result: the caption names its attack, defense and true
  label, and the benign (and with ``--verify full``: adversarial and defended) predictions
  equal the engine's for that request, computed here in-process with the server's torch threads
  per run (``--threads``, else this machine's default; results are bit-reproducible per thread count).

``--slots`` / ``--threads`` set the started server's run slots and torch threads per run
(``NIP_RUN_SLOTS`` / ``NIP_TORCH_THREADS``); the report has the server's and this client's CPU
seconds over the sessions' wall time.

With ``--client protocol`` each session also records the cookies set on its websocket handshake:
Streamlit sets none there, so through a proxy (``make serve-class``) they name the replica that holds
the session, and the report counts the sessions per cookie (``handshake_cookies``).

It writes a JSON report (``--out``) with p50/p95/max latencies, the longest queue a session was
told about ("your run starts after N others"), and the machine's load (``uptime``) before and
after. Exit status 0 when every session finished with its own correct result, 1 otherwise.

``--plan class`` is a class opening one demo link at once (issue 15): every session LeNet + FGSM +
nip on the same image, each with its own eps and seed. The browsers run on the same machine as the
server (one headless Chromium, a context per session), so they share its cores. With
``--teacher-first`` one more session (the teacher's) opens the demo first, alone, in the same
browser, so the browser has loaded the app's code once before the class arrives; without it, all
sessions also compile the app's JavaScript at the same moment.

Uses Playwright with the system Chromium (``/usr/bin/chromium``; never ``playwright install``)
and refuses any request that leaves the loopback interface.

    .venv/bin/python scripts/load_test.py --sessions 4 --out load.json
    .venv/bin/python scripts/load_test.py --url http://127.0.0.1:8501 --sessions 6 --out load.json
    .venv/bin/python scripts/load_test.py --plan class --sessions 20 --verify full --out docs/results/load.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_SESSIONS = 24
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

# (attack, attack params, defense, defense params): cheap settings so sessions finish on a shared CPU.
PLANS = [
    ("fgsm", {"eps": 0.2}, "nip", {"steps": 10}),
    ("pgd", {"max_iter": 10, "eps_step": 0.05}, "nip-global", {"steps": 10}),
    ("bim", {"max_iter": 5}, "jpeg", {}),
    ("deepfool", {"max_iter": 10}, "random-sign", {}),
    ("mifgsm", {"max_iter": 5}, "median", {}),
    ("fgsm", {"eps": 0.3}, "bitdepth", {}),
    ("pgd", {"max_iter": 5, "eps_step": 0.05}, "gaussian", {}),
    ("apgd", {"max_iter": 5}, "nip", {"steps": 5}),
]


# ----------------------------------------------------------------------------- plans and expectations

def class_plans(model_name: str, n: int, seed: int) -> list[dict[str, Any]]:
    """A class opening one demo: every session FGSM + nip on the same image, each with its own eps and
    seed (eps spread over [0.1, 0.3])."""
    from nip_core.data import gallery
    from nip_core.models import load_model

    it = gallery(load_model(model_name).spec.gallery)[0]
    return [{"session": i, "model": model_name, "image": it.key, "label": it.label, "label_name": it.label_name,
             "attack": "fgsm", "ap": {"eps": round(0.1 + 0.2 * i / max(1, n - 1), 3)}, "defense": "nip", "dp": {},
             "seed": seed + i} for i in range(n)]


def session_plans(model_name: str, n: int, seed: int) -> list[dict[str, Any]]:
    """One configuration per session: distinct gallery images (distinct labels first)."""
    from nip_core.data import gallery
    from nip_core.models import load_model

    items = gallery(load_model(model_name).spec.gallery)
    by_label: dict[int, list] = {}
    for it in items:
        by_label.setdefault(it.label, []).append(it)
    order = [grp[i] for i in range(max(map(len, by_label.values()))) for grp in by_label.values() if i < len(grp)]
    plans = []
    for i in range(n):
        it = order[i % len(order)]
        attack, ap, defense, dp = PLANS[i % len(PLANS)]
        plans.append({"session": i, "model": model_name, "image": it.key, "label": it.label,
                      "label_name": it.label_name, "attack": attack, "ap": ap, "defense": defense, "dp": dp,
                      "seed": seed + i})
    return plans


def _params_text(params: dict[str, Any]) -> str:
    return ";".join(f"{k}={v}" for k, v in params.items())


def plan_query(plan: dict[str, Any]) -> str:
    return urllib.parse.urlencode({"model": plan["model"], "image": plan["image"], "attack": plan["attack"],
                                   "ap": _params_text(plan["ap"]), "defense": plan["defense"],
                                   "dp": _params_text(plan["dp"]), "seed": str(plan["seed"])})


def expected_result(plan: dict[str, Any], full: bool) -> dict[str, str]:
    """The engine's predictions for a plan, as the page names them (class names)."""
    from nip_core.attacks import ATTACKS
    from nip_core.data import gallery
    from nip_core.defenses import DEFENSES
    from nip_core.analyses.explain import explain
    from nip_core.models import load_model

    # The caller set the server's torch threads first (verifier_threads): with another count the float sums
    # run in another order, and on EfficientNet that alone flipped 3 of 20 attack or defense outcomes.
    model = load_model(plan["model"])
    image = next(it.image for it in gallery(model.spec.gallery) if it.key == plan["image"])
    out = {"benign": model.class_names[int(model.predict(image[None])[0])]}
    if full:
        # The page's defaults: layer = the model's default, conductance, k = 0.2; NIP shares them.
        dp = DEFENSES[plan["defense"]].params_for(model, plan["dp"])
        if DEFENSES[plan["defense"]].family == "nip":
            dp.update(layer=model.spec.default_layer, method="conductance", k=0.2)
        e = explain(model, image, plan["label"], attack=plan["attack"],
                    attack_params=ATTACKS[plan["attack"]].params_for(model, plan["ap"]), defense=plan["defense"],
                    defense_params=dp, layer=model.spec.default_layer, method="conductance", k=0.2,
                    seed=plan["seed"])
        out |= {v: e.top(v, 1)[0][1] for v in ("adversarial", "defended")}
    return out


# ----------------------------------------------------------------------------- server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m app.serve`` on ``port``; ``env``: variables set for it (``NIP_RUN_SLOTS`` …)."""
    cmd = [sys.executable, "-m", "app.serve",   # what make run starts
           "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless=true",
           "--server.fileWatcherType=none", "--browser.gatherUsageStats=false"]
    log = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=os.environ | (env or {}))


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: the app exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/_stcore/health", timeout=5) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"error: the app at {url} was not healthy within {timeout:.0f} s")


def stop_app(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group we started, nothing else
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# ----------------------------------------------------------------------------- browser sessions

async def _loopback_only(route) -> None:
    host = urllib.parse.urlsplit(route.request.url).hostname or ""
    if host in LOOPBACK or route.request.url.startswith(("data:", "blob:")):
        await route.continue_()
    else:
        await route.abort()


# One cheap look at the page per poll: plain DOM queries and textContent (no layout, no accessibility
# tree), so that twenty polling sessions do not spend the CPU they are measuring.
_SNAPSHOT = """
() => {
  const all = s => [...document.querySelectorAll(s)];
  const text = e => (e.textContent || '').trim();
  const metrics = {};
  for (const m of all('[data-testid="stMetric"]')) {
    const l = m.querySelector('[data-testid="stMetricLabel"]'), v = m.querySelector('[data-testid="stMetricValue"]');
    if (l && v) metrics[text(l).replace(' prediction', '')] = text(v);
  }
  const live = e => !e.closest('[data-stale="true"]');
  return {
    metrics,
    caption: all('[data-testid="stCaptionContainer"]').map(text).find(t => t.includes('· attack ')) || '',
    download: all('button').some(b => live(b) && text(b) === 'Download summary (JSON)'),
    charts: all('.js-plotly-plot').filter(p => live(p) && p.querySelector('.main-svg')).length,
    pictures: all('.st-key-explore-result img').filter(i => live(i) && i.complete && i.naturalWidth > 0).length,
    errors: all('[data-testid="stException"], [data-testid="stAlertContentError"]')
              .map(e => text(e).split('\\n')[0].slice(0, 300)),
    queue: (all('[data-testid="stProgress"]').map(text).find(t => t.includes('your run starts after')) || ''),
  };
}
"""
VIEW_CHARTS = 0   # Plotly charts an Explore view draws (app/views/explore.py; tests/test_app.py VIEW_CHARTS)
VIEW_PICTURES = 10   # its result as images: 3 inputs, 3 neuron maps, 2 changes, 2 colour bars (issue 26)


async def run_session(browser, url: str, plan: dict[str, Any], timeout: float, start_gap: float) -> dict[str, Any]:
    """Open the plan's link and poll until its view is complete: the metrics, every chart drawn and
    the last element (the *Download summary* button) on the page, and the result's pictures loaded."""
    await asyncio.sleep(max(0.0, start_gap * plan["session"]))
    res: dict[str, Any] = {"plan": plan, "errors": [], "first_result_s": None, "complete_s": None,
                           "queue_ahead_max": 0}
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    await ctx.route("**/*", _loopback_only)
    page = await ctx.new_page()
    page.on("pageerror", lambda exc: res["errors"].append(f"browser: {exc}"[:300]))
    t0 = time.perf_counter()
    deadline = t0 + timeout
    try:
        await page.goto(f"{url}/?{plan_query(plan)}", wait_until="domcontentloaded", timeout=timeout * 1000)
        while time.perf_counter() < deadline:
            snap = await page.evaluate(_SNAPSHOT)
            m = re.search(r"your run starts after (\d+)", snap["queue"])
            if m:
                res["queue_ahead_max"] = max(res["queue_ahead_max"], int(m.group(1)))
            metrics = snap["metrics"]
            if res["first_result_s"] is None and {"benign", "adversarial", "defended"} <= set(metrics):
                res["first_result_s"] = time.perf_counter() - t0
                res["page"] = {"predictions": metrics, "caption": snap["caption"]}
            if "page" in res and snap["download"] and snap["charts"] >= VIEW_CHARTS \
                    and snap["pictures"] >= VIEW_PICTURES:
                res["complete_s"] = time.perf_counter() - t0
                res["page"] = {"predictions": metrics, "caption": snap["caption"]}
                break
            if snap["errors"]:
                res["errors"] += snap["errors"]
                break
            await asyncio.sleep(0.5)
        else:
            res["errors"].append(f"timeout after {timeout:.0f} s")
    except Exception as exc:  # browser or navigation failure: one line in the report
        res["errors"].append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    finally:
        await ctx.close()
    return res


async def run_protocol_session(url: str, plan: dict[str, Any], timeout: float, start_gap: float) -> dict[str, Any]:
    """The same session without a browser: Streamlit's own websocket protocol (the messages a browser
    sends and receives), so the browsers' work is not on this machine. ``complete_s`` is when the
    server finished the page run (every element, charts included, sent)."""
    import websockets
    from streamlit.proto.Alert_pb2 import Alert
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    await asyncio.sleep(max(0.0, start_gap * plan["session"]))
    res: dict[str, Any] = {"plan": plan, "errors": [], "first_result_s": None, "complete_s": None,
                           "queue_ahead_max": 0}
    metrics: dict[str, str] = {}
    caption = ""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            ws_url = url.replace("http://", "ws://", 1) + "/_stcore/stream"
            async with websockets.connect(ws_url, subprotocols=["streamlit"], max_size=None) as ws:
                res["cookies"] = handshake_cookies(ws.response.headers.get_all("Set-Cookie"))
                msg = BackMsg()
                msg.rerun_script.query_string = plan_query(plan)
                msg.rerun_script.page_script_hash = ""
                await ws.send(msg.SerializeToString())
                async for raw in ws:
                    fm = ForwardMsg()
                    fm.ParseFromString(raw)
                    kind = fm.WhichOneof("type")
                    if kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                        el = fm.delta.new_element
                        what = el.WhichOneof("type")
                        if what == "metric":
                            metrics[el.metric.label.replace(" prediction", "")] = el.metric.body
                        elif what == "markdown" and "· attack " in el.markdown.body:
                            caption = el.markdown.body
                        elif what == "progress":
                            m = re.search(r"your run starts after (\d+)", el.progress.text)
                            if m:
                                res["queue_ahead_max"] = max(res["queue_ahead_max"], int(m.group(1)))
                        elif what == "exception":
                            res["errors"].append(f"exception: {el.exception.message[:300]}")
                        elif what == "alert" and el.alert.format == Alert.ERROR:
                            res["errors"].append(el.alert.body.splitlines()[0][:300])
                        if res["first_result_s"] is None and {"benign", "adversarial", "defended"} <= set(metrics):
                            res["first_result_s"] = time.perf_counter() - t0
                    if kind == "script_finished":
                        if fm.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY:
                            res["complete_s"] = time.perf_counter() - t0
                            res["page"] = {"predictions": dict(metrics), "caption": caption}
                        else:
                            res["errors"].append(f"script finished with status {fm.script_finished}")
                        break
    except TimeoutError:
        res["errors"].append(f"timeout after {timeout:.0f} s")
    except Exception as exc:  # connection failure: one line in the report
        res["errors"].append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    return res


def handshake_cookies(set_cookie: list[str]) -> dict[str, str]:
    """The cookies set on a session's websocket handshake: Streamlit sets none there, so these are a
    proxy's (its session-affinity cookie names the replica that holds the session)."""
    from http.cookies import CookieError, SimpleCookie

    jar: SimpleCookie = SimpleCookie()
    for header in set_cookie:
        try:
            jar.load(header)
        except CookieError:
            continue
    return {k: m.value for k, m in jar.items()}


async def drive_protocol(url: str, plans: list[dict[str, Any]], timeout: float, start_gap: float,
                         teacher: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    first = await run_protocol_session(url, teacher, timeout, 0) if teacher is not None else None
    return list(await asyncio.gather(*(run_protocol_session(url, p, timeout, start_gap) for p in plans))), first


async def drive(url: str, plans: list[dict[str, Any]], timeout: float, start_gap: float,
                teacher: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every plan's session at once in one browser (a context each); with ``teacher``, that session
    first, alone and to the end, in the same browser (the tab a teacher opens the demo in)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            first = await run_session(browser, url, teacher, timeout, 0) if teacher is not None else None
            return list(await asyncio.gather(*(run_session(browser, url, p, timeout, start_gap) for p in plans))), first
        finally:
            await browser.close()


# ----------------------------------------------------------------------------- report

def check(res: dict[str, Any], expected: dict[str, str]) -> list[str]:
    """Problems with a session's page versus its own request (empty: correct)."""
    plan, page = res["plan"], res.get("page")
    if page is None:
        return ["no result on the page"]
    problems = []
    cap = page.get("caption", "")
    for needle in (f"attack {plan['attack']} ", f"defense {plan['defense']} ",
                   f"true label {plan['label_name']} "):
        if needle not in cap:
            problems.append(f"caption lacks {needle.strip()!r}: {cap[:160]!r}")
    for variant, name in expected.items():
        got = page["predictions"].get(variant)
        if got != name:
            problems.append(f"{variant} prediction {got!r}, engine says {name!r}")
    return problems


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) the process ``pid`` has used, from ``/proc``; None
    where that is not readable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def verifier_threads(server_env: dict[str, str]) -> int:
    """Give this process the torch threads per run of the server (``server_env`` over this
    machine's defaults) before it computes the engine's results: float sums on the CPU are
    bit-reproducible for one thread count, not across counts (an EfficientNet prediction near a
    class boundary can differ between 1 and 2 threads)."""
    os.environ.update(server_env)
    from nip_core.runtime import set_torch_threads

    return set_torch_threads()


def uptime() -> str:
    """``uptime``'s line (the machine's load while measuring), or "" where it is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, max(0, int(round(q / 100 * len(v) + 0.5)) - 1))], 3)


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": round(max(values), 3) if values else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running app (loopback only); default: start one on a free port")
    ap.add_argument("--sessions", type=int, default=4, help=f"concurrent sessions (1–{MAX_SESSIONS})")
    ap.add_argument("--model", default="lenet-mnist")
    ap.add_argument("--plan", choices=["mixed", "class"], default="mixed",
                    help="mixed: a different image, attack and defense per session; class: every session the "
                         "same demo link (FGSM + nip) with its own eps and seed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per session")
    ap.add_argument("--stagger", type=float, default=0.0, help="seconds between session starts")
    ap.add_argument("--verify", choices=["benign", "full"], default="benign",
                    help="check the benign prediction (default) or all three against the engine")
    ap.add_argument("--teacher-first", action="store_true",
                    help="before the sessions, one more (the teacher's, its own eps and seed) opens the demo in "
                         "the same browser and finishes; the browser has then loaded the app's code once")
    ap.add_argument("--client", choices=["browser", "protocol"], default="browser",
                    help="browser: headless Chromium on this machine; protocol: Streamlit's websocket protocol "
                         "without a browser (what the server does when the browsers are elsewhere)")
    ap.add_argument("--slots", type=int,
                    help="run slots of the server this script starts (NIP_RUN_SLOTS; default: the server's own, "
                         "one per core)")
    ap.add_argument("--threads", type=int,
                    help="torch threads per run of the server this script starts (NIP_TORCH_THREADS; default: "
                         "cores / slots)")
    ap.add_argument("--out", default="load.json")
    args = ap.parse_args(argv)
    Path(args.out).resolve().parent.mkdir(parents=True, exist_ok=True)
    if not 1 <= args.sessions <= MAX_SESSIONS:
        ap.error(f"--sessions must be in [1, {MAX_SESSIONS}]")
    if not 10 <= args.timeout <= 3600:
        ap.error("--timeout must be in [10, 3600] seconds")
    for flag in ("slots", "threads"):
        value = getattr(args, flag)
        if value is not None and not 1 <= value <= 256:
            ap.error(f"--{flag} must be in [1, 256]")
        if value is not None and args.url:
            ap.error(f"--{flag} sets the server this script starts; it cannot be used with --url")
    server_env = {k: str(v) for k, v in (("NIP_RUN_SLOTS", args.slots), ("NIP_TORCH_THREADS", args.threads))
                  if v is not None}
    os.environ.setdefault("NIP_DEVICE", "cpu")

    proc = None
    if args.url:
        url = args.url.rstrip("/")
        if urllib.parse.urlsplit(url).hostname not in LOOPBACK:
            ap.error("--url must be a loopback address (127.0.0.1 or localhost)")
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_app(port, Path(args.out).with_suffix(".server.log"), server_env)
    try:
        t_ready = time.perf_counter()
        wait_healthy(url, proc, 180)
        ready_s = time.perf_counter() - t_ready
        plans = (class_plans if args.plan == "class" else session_plans)(args.model, args.sessions, args.seed)
        load_before = {"uptime": uptime(), "load_avg": os.getloadavg()}
        teacher = None
        if args.teacher_first:
            teacher = dict(plans[0], session=-1, seed=args.seed + 10_000)
            teacher["ap"] = dict(teacher["ap"], eps=0.25) if "eps" in teacher["ap"] else teacher["ap"]
        server_cpu0 = process_cpu_s(proc.pid) if proc is not None else None
        client_cpu0 = time.process_time()
        t0 = time.perf_counter()
        run = drive if args.client == "browser" else drive_protocol
        results, teacher_res = asyncio.run(run(url, plans, args.timeout, args.stagger, teacher))
        wall = time.perf_counter() - t0
        client_cpu = time.process_time() - client_cpu0
        server_cpu1 = process_cpu_s(proc.pid) if proc is not None else None
    finally:
        if proc is not None:
            stop_app(proc)

    threads = verifier_threads(server_env)
    for res in results:
        res["expected"] = expected_result(res["plan"], args.verify == "full")
        res["problems"] = check(res, res["expected"])
        res["ok"] = not res["errors"] and not res["problems"] and res["complete_s"] is not None
    first = [r["first_result_s"] for r in results if r["first_result_s"] is not None]
    complete = [r["complete_s"] for r in results if r["complete_s"] is not None]
    report = {
        "url": url, "started_app": proc is not None, "app_ready_s": round(ready_s, 3), "sessions": len(results),
        "ok": sum(r["ok"] for r in results), "errors": sum(bool(r["errors"]) for r in results),
        "wrong_results": sum(bool(r["problems"]) for r in results if r.get("page")),
        "wall_s": round(wall, 3), "first_result_s": stats(first), "complete_s": stats(complete),
        "teacher_first": None if teacher_res is None else {
            "complete_s": teacher_res["complete_s"], "errors": teacher_res["errors"],
            "note": "the teacher's session ran alone before the others; the sessions' times start when they "
                    "all open their links at once"},
        "verify": args.verify, "plan": args.plan, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
        "before": load_before, "after": {"uptime": uptime(), "load_avg": os.getloadavg()},
        "queue_ahead_max": max((r.get("queue_ahead_max", 0) for r in results), default=0),
        "client": args.client, "server_env": server_env, "verifier_torch_threads": threads,
        "server_cpu_s": None if server_cpu1 is None or server_cpu0 is None else round(server_cpu1 - server_cpu0, 2),
        "client_cpu_s": round(client_cpu, 2),
        # protocol sessions through a proxy: how many sessions each affinity cookie (replica) got
        "handshake_cookies": {f"{k}={v}": sum(r.get("cookies", {}).get(k) == v for r in results)
                              for k, v in sorted({kv for r in results for kv in r.get("cookies", {}).items()})},
        "browsers": ("the same machine (one headless Chromium, one context per session)" if args.client == "browser"
                     else "none: Streamlit's websocket protocol from this process (as if the browsers were elsewhere)"),
        "results": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in results],
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("sessions", "ok", "errors", "wrong_results", "wall_s", "first_result_s",
                                             "complete_s", "queue_ahead_max", "handshake_cookies", "before")}))
    for r in results:
        if not r["ok"]:
            print(f"session {r['plan']['session']} ({r['plan']['attack']}/{r['plan']['defense']}): "
                  f"{'; '.join(r['errors'] + r['problems'])}", file=sys.stderr)
    return 0 if report["ok"] == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
