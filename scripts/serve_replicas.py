"""Serve a class: N app replicas behind HAProxy on this machine (``make serve-class``, ``make stop-class``).

Starts ``python -m app.serve`` (what ``make run`` starts) ``--replicas`` times on ports ``--first-port``,
``--first-port`` + 1, … (loopback only: visitors reach them through the proxy), renders
``deploy/haproxy.cfg.template`` for them and starts ``haproxy`` in the foreground on ``--bind``. It writes
the processes it started to ``RUN_DIR/pids.json`` and stops them all on Ctrl-C (or SIGTERM, or ``stop``).
A replica that exits is started again; if the proxy exits, everything stops.

Each replica gets its share of the cores unless you set them: ``NIP_RUN_SLOTS`` = cores // replicas (at
least 1) and ``NIP_TORCH_THREADS`` = 1.

    .venv/bin/python scripts/serve_replicas.py --replicas 2 --bind 0.0.0.0:8080      # then open :8080
    .venv/bin/python scripts/serve_replicas.py stop
    # replicas on other machines (each runs `make run`): print the proxy's configuration for them
    .venv/bin/python scripts/serve_replicas.py --print-config --servers 10.0.0.11:8501,10.0.0.12:8501
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "haproxy.cfg.template"
SHIPPED_CONFIG = ROOT / "deploy" / "haproxy.cfg"
RUN_DIR = ROOT / ".run" / "class"
AFFINITY_COOKIE = "NIPSERVER"
DEFAULT_BIND = "*:8080"
DEFAULT_STATS = "127.0.0.1:8404"
MAX_REPLICAS = 64


def haproxy_binary() -> str:
    """Debian's haproxy (``make haproxy`` installs it)."""
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
                                             if os.access(p, os.X_OK)), None)
    if found is None:
        raise SystemExit("error: haproxy is not installed: run `make haproxy` (Debian's package)")
    return found


def render_config(servers: list[str], bind: str = DEFAULT_BIND, stats_bind: str = DEFAULT_STATS) -> str:
    """deploy/haproxy.cfg.template for replicas at ``servers`` (HOST:PORT each); replica i is ``r<i>``,
    which is also the value of its affinity cookie."""
    if not servers:
        raise ValueError("at least one replica is needed")
    lines = "\n".join(f"    server r{i} {s} cookie r{i}" for i, s in enumerate(servers, 1))
    return string.Template(TEMPLATE.read_text()).substitute(bind=bind, servers=lines, stats_bind=stats_bind)


def check_config(path: Path) -> None:
    out = subprocess.run([haproxy_binary(), "-c", "-q", "-f", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: haproxy rejects {path}: {(out.stderr or out.stdout).strip().splitlines()[-1:]}")


def replica_env(replicas: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("NIP_RUN_SLOTS", str(max(1, (os.cpu_count() or 1) // replicas)))
    env.setdefault("NIP_TORCH_THREADS", "1")
    return env


def start_replica(port: int, log: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "app.serve", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.headless=true", "--server.fileWatcherType=none", "--browser.gatherUsageStats=false"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def start_proxy(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], cwd=ROOT, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/_stcore/health", timeout=3) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


def proxy_stats(stats_bind: str) -> dict[str, dict[str, str]]:
    """HAProxy's per-server statistics (the stats page's CSV): server name → its row."""
    with urllib.request.urlopen(f"http://{stats_bind}/;csv", timeout=5) as r:
        rows = r.read().decode().lstrip("# ").splitlines()
    head = rows[0].split(",")
    out = {}
    for line in rows[1:]:
        row = dict(zip(head, line.split(",")))
        if row.get("pxname") == "streamlit_replicas" and row.get("svname") not in ("BACKEND", "FRONTEND"):
            out[row["svname"]] = row
    return out


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process we started (its own process group) and wait for it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass


class _Stop(Exception):
    pass


def serve(args) -> int:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / "pids.json"
    if pid_file.exists() and _alive(json.loads(pid_file.read_text()).get("supervisor")):
        raise SystemExit(f"error: a class is already served from {run_dir} (stop it with `make stop-class`)")
    ports = [int(p) for p in args.ports.split(",")] if args.ports else [args.first_port + i for i in range(args.replicas)]
    config = run_dir / "haproxy.cfg"
    config.write_text(render_config([f"127.0.0.1:{p}" for p in ports], args.bind, args.stats_bind))
    check_config(config)
    env = replica_env(len(ports))

    def on_signal(signum, _frame):
        raise _Stop(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    replicas: dict[int, subprocess.Popen] = {}
    proxy = None
    restarted: dict[int, float] = {}
    try:
        for p in ports:
            replicas[p] = start_replica(p, run_dir / f"replica-{p}.log", env)
        proxy = start_proxy(config, run_dir / "haproxy.log")
        _write_pids(pid_file, proxy, replicas, ports, args)
        print(f"starting {len(ports)} replicas on ports {', '.join(map(str, ports))} behind haproxy on {args.bind} "
              f"(slots {env['NIP_RUN_SLOTS']}, torch threads {env['NIP_TORCH_THREADS']} each; logs in {run_dir})",
              flush=True)
        waiting, announced = set(ports), False
        deadline = time.monotonic() + args.ready_timeout
        while True:
            if proxy.poll() is not None:
                print(f"error: haproxy exited with status {proxy.returncode} (see {run_dir / 'haproxy.log'})",
                      file=sys.stderr)
                return 1
            for p, proc in list(replicas.items()):
                if proc.poll() is not None:
                    if time.monotonic() - restarted.get(p, -1e9) < 30:
                        print(f"error: the replica on port {p} exited twice within 30 s "
                              f"(see {run_dir / f'replica-{p}.log'})", file=sys.stderr)
                        return 1
                    print(f"the replica on port {p} exited with status {proc.returncode}; starting it again",
                          file=sys.stderr, flush=True)
                    restarted[p] = time.monotonic()
                    replicas[p] = start_replica(p, run_dir / f"replica-{p}.log", env)
                    _write_pids(pid_file, proxy, replicas, ports, args)
            if not announced:
                waiting = {p for p in waiting if not healthy(f"http://127.0.0.1:{p}")}
                # ready once every replica answers and the proxy's own checks count it up (before, it answers 503)
                if not waiting and _all_up(args.stats_bind, len(ports)):
                    announced = True
                    print(f"ready: {len(ports)} replicas behind http://{_display(args.bind)}/ "
                          f"(statistics: http://{args.stats_bind}/)", flush=True)
                elif time.monotonic() > deadline:
                    what = f"replicas on ports {sorted(waiting)} not healthy" if waiting else "the proxy sees replicas down"
                    print(f"error: {what} after {args.ready_timeout:.0f} s", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except _Stop:
        print("stopping the class", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if proxy is not None:
            stop_group(proxy)
        for proc in replicas.values():
            stop_group(proc)
        pid_file.unlink(missing_ok=True)


def _all_up(stats_bind: str, n: int) -> bool:
    """True when the proxy's health checks count ``n`` replicas up (it sends visitors only to those)."""
    try:
        states = [row["status"] for row in proxy_stats(stats_bind).values()]
    except (OSError, ValueError):
        return False
    return len(states) == n and all(st == "UP" for st in states)


def _display(bind: str) -> str:
    host, _, port = bind.rpartition(":")
    return f"{'localhost' if host in ('*', '0.0.0.0', '', '::') else host}:{port}"


def _write_pids(path: Path, proxy, replicas, ports, args) -> None:
    path.write_text(json.dumps({"supervisor": os.getpid(), "haproxy": proxy.pid,
                                "replicas": {str(p): replicas[p].pid for p in ports},
                                "bind": args.bind, "stats": args.stats_bind}, indent=1) + "\n")


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # a pid can be reused: only ours if it still runs this script
    try:
        return "serve_replicas" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True


def stop(args) -> int:
    """Ask the supervisor (``serve``) to stop everything it started, and wait for it."""
    pid_file = Path(args.run_dir) / "pids.json"
    if not pid_file.exists():
        print(f"no class is served from {args.run_dir}")
        return 0
    pid = json.loads(pid_file.read_text()).get("supervisor")
    if not _alive(pid):
        print(f"the class in {args.run_dir} is no longer running (stale {pid_file.name} removed)")
        pid_file.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.3)
    if _alive(pid):
        print(f"error: process {pid} did not stop within 60 s", file=sys.stderr)
        return 1
    print("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", nargs="?", choices=["serve", "stop"], default="serve")
    ap.add_argument("--replicas", type=int, default=2, help=f"app processes (1–{MAX_REPLICAS})")
    ap.add_argument("--first-port", type=int, default=8501, help="the first replica's port; the others follow")
    ap.add_argument("--ports", help="the replicas' ports, comma-separated (instead of --replicas/--first-port)")
    ap.add_argument("--bind", default=DEFAULT_BIND, help="the proxy's address (HAProxy bind syntax), e.g. *:8080")
    ap.add_argument("--stats-bind", default=DEFAULT_STATS, help="HAProxy's statistics page (keep it on loopback)")
    ap.add_argument("--run-dir", default=str(RUN_DIR), help="where the configuration, logs and pids go")
    ap.add_argument("--ready-timeout", type=float, default=180)
    ap.add_argument("--print-config", action="store_true",
                    help="print the proxy's configuration for --servers (or the local replicas) and exit")
    ap.add_argument("--servers", help="HOST:PORT of each replica, comma-separated (with --print-config)")
    args = ap.parse_args(argv)
    if not 1 <= args.replicas <= MAX_REPLICAS:
        ap.error(f"--replicas must be in [1, {MAX_REPLICAS}]")
    if args.ports:
        try:
            ports = [int(p) for p in args.ports.split(",")]
        except ValueError:
            ap.error("--ports must be whole numbers separated by commas")
        if not all(0 < p < 65536 for p in ports) or len(set(ports)) != len(ports):
            ap.error("--ports must be distinct ports in [1, 65535]")
    elif not 0 < args.first_port <= 65536 - args.replicas:
        ap.error("--first-port must leave room for every replica below 65536")
    if args.print_config:
        if args.servers:
            servers = [s.strip() for s in args.servers.split(",") if s.strip()]
            if not servers or not all(s.rpartition(":")[2].isdigit() for s in servers):
                ap.error("--servers must be HOST:PORT entries separated by commas")
        else:
            servers = [f"127.0.0.1:{args.first_port + i}" for i in range(args.replicas)]
        print(render_config(servers, args.bind, args.stats_bind), end="")
        return 0
    if args.servers:
        ap.error("--servers only goes with --print-config (start the replicas on their machines with `make run`)")
    return stop(args) if args.action == "stop" else serve(args)



def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open together while they are picked)."""
    import socket
    from contextlib import ExitStack

    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


if __name__ == "__main__":
    raise SystemExit(main())
