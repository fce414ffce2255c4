"""How the Ray backend scales on this machine: the paper-mnist suite on the tune split, run
serially, on ``--ray local --workers 1`` and on ``--workers 2``, one torch thread per worker and
a fresh shard cache for each run. Writes ``docs/results/ray_scaling.json``.

    nice -n 10 python scripts/ray_scaling.py [--out docs/results/ray_scaling.json] [--split tune]

Each configuration runs as its own ``python -m nip_core evaluate`` process, so the wall time
includes starting Python (and Ray); ``seconds_total`` is the evaluation's own clock. The
machine's load average is recorded before and after each run: on a shared machine other jobs
take cores away, which shows up as lower efficiency, not as an error.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"serial": [], "ray-1": ["--ray", "local", "--workers", "1"], "ray-2": ["--ray", "local", "--workers", "2"]}


def deterministic(o):
    """A result without timing, environment and run details (what must not change)."""
    if isinstance(o, dict):
        return {k: deterministic(v) for k, v in o.items()
                if "seconds" not in k and k not in ("environment", "distributed")}
    return [deterministic(v) for v in o] if isinstance(o, list) else o


def run(name: str, extra: list[str], split: str, work: Path) -> tuple[dict, dict]:
    out = work / f"{name}.json"
    cmd = [sys.executable, "-m", "nip_core", "evaluate", "--suite", "paper-mnist", "--split", split, "--seed", "0",
           "--threads", "1", "--cache", str(work / f"cache-{name}"), *extra, "--out", str(out)]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{name} failed: {p.stderr.strip().splitlines()[-1:]}")
    result = json.loads(out.read_text())
    print(f"{name}: {wall:.1f} s wall, {result['seconds_total']:.1f} s evaluating", file=sys.stderr)
    return result, {"command": " ".join(["python", "-m", "nip_core", *cmd[3:]]).replace(str(work), "$TMP"),
                    "wall_seconds": round(wall, 2), "seconds_total": round(result["seconds_total"], 2),
                    "load_before": [round(v, 2) for v in load_before],
                    "load_after": [round(v, 2) for v in os.getloadavg()],
                    "distributed": result["distributed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs/results/ray_scaling.json"))
    ap.add_argument("--split", default="tune")
    args = ap.parse_args()
    runs, results = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in CONFIGS.items():
            results[name], runs[name] = run(name, extra, args.split, Path(tmp))
    first = deterministic(results["serial"])
    t = {k: v["seconds_total"] for k, v in runs.items()}
    w = {k: v["wall_seconds"] for k, v in runs.items()}
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = {
        "question": "Does the Ray backend give the serial numbers, and how does it scale from 1 to 2 workers?",
        "suite": "paper-mnist", "split": args.split, "n_images": results["serial"]["n_images"],
        "shards": results["serial"]["distributed"]["shards"], "shard_size": results["serial"]["distributed"]["shard_size"],
        "threads_per_worker": 1, "cpus": os.cpu_count(), "uptime_at_end": uptime,
        "identical_deterministic_fields": {k: deterministic(r) == first for k, r in results.items()},
        "runs": runs,
        # efficiency: the share of the ideal 2× speed-up that 2 workers reach over 1
        "efficiency_2_over_1": round(t["ray-1"] / (2 * t["ray-2"]), 3),
        "speedup_2_over_serial": round(t["serial"] / t["ray-2"], 3),
        # what Ray costs with one worker: start-up, actors loading the model, shipping shards
        "ray_overhead_over_serial": round(t["ray-1"] / t["serial"] - 1, 3),
        "ray_overhead_over_serial_wall": round(w["ray-1"] / w["serial"] - 1, 3),
        "note": "2-core machine shared with other jobs: see load_before/load_after of each run.",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("identical_deterministic_fields", "efficiency_2_over_1",
                                             "speedup_2_over_serial", "ray_overhead_over_serial")}, indent=2))


if __name__ == "__main__":
    main()
