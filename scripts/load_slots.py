"""Run slots 1 versus 2: the protocol load test on each model mix, one fresh server per setting.

For every ``--models`` entry and every ``--configs`` setting (``slots:threads``), this runs
``scripts/load_test.py --client protocol --verify full`` with the same sessions, plans and seed
(a fresh server each time, started by ``load_test`` with ``NIP_RUN_SLOTS`` / ``NIP_TORCH_THREADS``),
then writes one JSON report: per run the wall time, throughput (sessions per second of the
sessions' wall time), p50/p95 of the time to the full page, how many sessions were verified, the
load average before and after; per model the throughput ratio of each setting to the first.
Exit status 0 when every session of every run returned its own, engine-verified result.

``--engine-only``: no server; the first 8 plans of each model computed by the engine in this
process (``explain``, as the verifier computes them), one by one and then by two threads at once,
to tell the engine's own scaling from the page's (Streamlit, figures) under one GIL.

    flock /tmp/heavy.lock .venv/bin/python scripts/load_slots.py --sessions 20 --out docs/results/load-slots.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def _config(text: str) -> tuple[int, int]:
    try:
        slots, threads = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SLOTS:THREADS (e.g. 2:1)") from None
    if not (1 <= slots <= 64 and 1 <= threads <= 64):
        raise argparse.ArgumentTypeError(f"{text!r}: slots and threads must be in [1, 64]")
    return slots, threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["efficientnet-lite0", "lenet-mnist"])
    ap.add_argument("--configs", nargs="+", type=_config, default=[(1, 1), (2, 1)],
                    help="SLOTS:THREADS settings, the first is the baseline (default: 1:1 2:1)")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per session")
    ap.add_argument("--engine-only", action="store_true",
                    help="no server: the engine's own serial versus two-thread time for each model's plans")
    ap.add_argument("--out", default="load-slots.json")
    args = ap.parse_args(argv)
    import load_test

    if args.engine_only:
        return engine_only(args.models, args.seed, args.out, argv)

    runs, ok = [], True
    with tempfile.TemporaryDirectory(prefix="load-slots-") as tmp:
        for model in args.models:
            for slots, threads in args.configs:
                out = Path(tmp) / f"{model}-{slots}-{threads}.json"
                load_before = os.getloadavg()
                rc = load_test.main(["--client", "protocol", "--verify", "full", "--model", model,
                                     "--sessions", str(args.sessions), "--seed", str(args.seed),
                                     "--timeout", str(args.timeout), "--slots", str(slots),
                                     "--threads", str(threads), "--out", str(out)])
                rep = json.loads(out.read_text())
                ok &= rc == 0
                runs.append({
                    "model": model, "slots": slots, "threads": threads, "sessions": rep["sessions"],
                    "verified_ok": rep["ok"], "errors": rep["errors"], "wrong_results": rep["wrong_results"],
                    "wall_s": rep["wall_s"], "throughput_per_min": round(60 * rep["sessions"] / rep["wall_s"], 3),
                    "complete_s": rep["complete_s"], "first_result_s": rep["first_result_s"],
                    "queue_ahead_max": rep["queue_ahead_max"], "app_ready_s": rep["app_ready_s"],
                    "server_cpu_s": rep["server_cpu_s"], "client_cpu_s": rep["client_cpu_s"],
                    "server_cores_busy": (None if rep["server_cpu_s"] is None
                                          else round(rep["server_cpu_s"] / rep["wall_s"], 2)),
                    "verifier_torch_threads": rep["verifier_torch_threads"],
                    "load_avg_before": [round(v, 2) for v in load_before],
                    "load_avg_after": [round(v, 2) for v in os.getloadavg()],
                    "uptime_before": rep["before"]["uptime"], "uptime_after": rep["after"]["uptime"],
                    "per_session": [{"session": r["plan"]["session"], "attack": r["plan"]["attack"],
                                     "defense": r["plan"]["defense"], "complete_s": r["complete_s"], "ok": r["ok"]}
                                    for r in rep["results"]],
                })
                print(json.dumps({k: runs[-1][k] for k in ("model", "slots", "threads", "verified_ok", "wall_s",
                                                             "throughput_per_min", "complete_s", "load_avg_before",
                                                             "server_cores_busy", "client_cpu_s")}),
                      flush=True)
    summary = {}
    for model in args.models:
        mine = [r for r in runs if r["model"] == model]
        base = mine[0]
        summary[model] = [{"slots": r["slots"], "threads": r["threads"],
                           "throughput_ratio": round(r["throughput_per_min"] / base["throughput_per_min"], 3),
                           "p50_s": r["complete_s"]["p50"], "p95_s": r["complete_s"]["p95"],
                           "all_verified": r["verified_ok"] == r["sessions"]} for r in mine]
    report = {
        "what": "scripts/load_test.py --client protocol --verify full, one fresh server per setting, same plans "
                "and seed; throughput = sessions / wall time of the sessions (all opened at once)",
        "command": "flock /tmp/heavy.lock .venv/bin/python scripts/load_slots.py " + " ".join(argv or sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpus": os.cpu_count(),
        "summary": summary, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    return 0 if ok else 1


def engine_only(models: list[str], seed: int, out: str, argv: list[str] | None) -> int:
    from concurrent.futures import ThreadPoolExecutor

    import load_test
    from nip_core.runtime import set_torch_threads

    os.environ.setdefault("NIP_DEVICE", "cpu")
    threads = set_torch_threads()
    report = {"what": "the engine alone (nip_core.analyses.explain, the load test's first 8 plans per model), one by one "
                      "versus two threads at once, after one warm-up pass; no Streamlit",
              "command": "flock /tmp/heavy.lock .venv/bin/python scripts/load_slots.py "
                         + " ".join(argv or sys.argv[1:]),
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpus": os.cpu_count(),
              "torch_threads": threads, "models": {}}
    for model in models:
        plans = load_test.session_plans(model, 8, seed)
        first = [load_test.expected_result(p, True) for p in plans]      # warm: profiles, calibrations
        load_before = os.getloadavg()
        t, c = time.perf_counter(), time.process_time()
        serial = [load_test.expected_result(p, True) for p in plans]
        serial_s, serial_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(2) as pool:
            two = list(pool.map(lambda p: load_test.expected_result(p, True), plans))
        two_s, two_cpu = time.perf_counter() - t, time.process_time() - c
        report["models"][model] = {
            "serial_s": round(serial_s, 3), "two_threads_s": round(two_s, 3), "ratio": round(serial_s / two_s, 3),
            "cores_busy_serial": round(serial_cpu / serial_s, 2), "cores_busy_two_threads": round(two_cpu / two_s, 2),
            "same_results": first == serial == two, "load_avg_before": [round(v, 2) for v in load_before],
            "load_avg_after": [round(v, 2) for v in os.getloadavg()]}
        print(model, json.dumps(report["models"][model]), flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(m["same_results"] for m in report["models"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
