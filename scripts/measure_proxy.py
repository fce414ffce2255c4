"""One server directly vs N replicas behind HAProxy: the same protocol load test against each (issue 28).

For each model: starts one ``python -m app.serve`` on a free loopback port, warms it with one session,
waits ``--settle`` seconds (the launch warm-up loads the other models meanwhile), runs
``scripts/load_test.py --client protocol --verify full`` with ``--sessions`` sessions, and stops it; then
the same with ``scripts/serve_replicas.py`` (``--replicas`` replicas behind HAProxy, each replica warmed
directly, the load test through the proxy). Same plans and seed for both. Writes one JSON with both
reports (every session's result, checked against the engine in-process), the load average before and
after each, and the ratios.

    .venv/bin/python scripts/measure_proxy.py --sessions 20 --out docs/results/load-proxy.json
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


load_test = _load("load_test")
serve_replicas = _load("serve_replicas")


def warm(url: str, model: str, seed: int) -> float:
    """One session alone (its own seed, not one of the measured plans); returns its seconds."""
    plan = dict(load_test.session_plans(model, 1, seed + 10_000)[0], session=-1)
    res = asyncio.run(load_test.run_protocol_session(url, plan, 300, 0))
    if res["errors"] or res["complete_s"] is None:
        raise SystemExit(f"error: the warm-up session at {url} failed: {res['errors']}")
    return round(res["complete_s"], 3)


def run_load(url: str, args, model: str, out: Path) -> dict[str, Any]:
    rc = load_test.main(["--client", "protocol", "--url", url, "--sessions", str(args.sessions), "--model", model,
                         "--verify", "full", "--seed", str(args.seed), "--timeout", "600", "--out", str(out)])
    report = json.loads(out.read_text())
    report["exit_status"] = rc
    return report


def single(args, model: str, tmp: Path) -> dict[str, Any]:
    port = load_test.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = load_test.start_app(port, tmp / f"single-{model}.log")
    try:
        load_test.wait_healthy(url, proc, 180)
        warm_s = warm(url, model, args.seed)
        time.sleep(args.settle)
        report = run_load(url, args, model, tmp / f"single-{model}.json")
    finally:
        load_test.stop_app(proc)
    return {"setup": "one server, directly", "warm_session_s": {str(port): warm_s}} | report


def replicated(args, model: str, tmp: Path) -> dict[str, Any]:
    proxy, stats, *ports = serve_replicas.free_ports(2 + args.replicas)
    run_dir = tmp / f"class-{model}"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve_replicas.py"),
                             "--ports", ",".join(map(str, ports)), "--bind", f"127.0.0.1:{proxy}",
                             "--stats-bind", f"127.0.0.1:{stats}", "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        deadline = time.monotonic() + 240
        while not any(line.startswith("ready:") for line in lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"error: the replicas did not start: {''.join(lines)[-1500:]}")
            time.sleep(0.5)
        warm_s = {str(p): warm(f"http://127.0.0.1:{p}", model, args.seed) for p in ports}   # each replica directly
        time.sleep(args.settle)
        report = run_load(f"http://127.0.0.1:{proxy}", args, model, tmp / f"proxy-{model}.json")
        report["proxy_stats"] = {name: {k: row[k] for k in ("status", "stot", "scur", "smax", "hrsp_2xx", "hrsp_4xx",
                                                            "hrsp_5xx")}
                                 for name, row in serve_replicas.proxy_stats(f"127.0.0.1:{stats}").items()}
        env = serve_replicas.replica_env(len(ports))
        report["replica_env"] = {k: env[k] for k in ("NIP_RUN_SLOTS", "NIP_TORCH_THREADS")}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(90)
    return {"setup": f"{args.replicas} replicas behind HAProxy (scripts/serve_replicas.py, "
                     "deploy/haproxy.cfg.template)", "warm_session_s": warm_s} | report



def summary(report: dict[str, Any]) -> dict[str, Any]:
    return {"ok": report["ok"], "sessions": report["sessions"], "errors": report["errors"],
            "wrong_results": report["wrong_results"], "wall_s": report["wall_s"],
            "sessions_per_min": round(60 * report["sessions"] / report["wall_s"], 2),
            "complete_s": report["complete_s"], "first_result_s": report["first_result_s"],
            "load_before": report["before"]["uptime"], "load_after": report["after"]["uptime"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lenet-mnist", help="comma-separated; each gets both runs")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settle", type=float, default=30, help="seconds between the warm-up session and the test")
    ap.add_argument("--out", default="load-proxy.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("NIP_DEVICE", "cpu")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="nip-measure-proxy-") as d:
        tmp = Path(d)
        for model in args.models.split(","):
            one = single(args, model, tmp)
            many = replicated(args, model, tmp)
            a, b = summary(one), summary(many)
            runs[model] = {
                "single": a, "replicas": b,
                "throughput_ratio": round(b["sessions_per_min"] / a["sessions_per_min"], 2),
                "p50_ratio": round(b["complete_s"]["p50"] / a["complete_s"]["p50"], 2),
                "p95_ratio": round(b["complete_s"]["p95"] / a["complete_s"]["p95"], 2),
                "reports": {"single": one, "replicas": many}}
            print(json.dumps({model: {k: v for k, v in runs[model].items() if k != "reports"}}, indent=1), flush=True)
    out = {"command": "python scripts/measure_proxy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"cpus": os.cpu_count()},
           "note": "both runs on this machine: the protocol clients, the servers and the proxy share its cores; "
                   "each server warmed by one session of its own seed, then --settle seconds, before the test",
           "sessions": args.sessions, "replicas": args.replicas, "seed": args.seed, "settle_s": args.settle,
           "runs": runs}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    ok = all(r["reports"][k]["exit_status"] == 0 for r in runs.values() for k in ("single", "replicas"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
