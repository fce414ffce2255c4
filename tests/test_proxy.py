"""Two app replicas behind HAProxy on loopback (issue 28), started as ``make serve-class`` starts them.

``scripts/serve_replicas.py`` starts ``python -m app.serve`` twice and Debian's ``haproxy`` with the
configuration rendered from ``deploy/haproxy.cfg.template``. Through the proxy: the protocol load test
(every result checked against the engine), a Chromium page that uploads a digit, and the affinity cookie
routing a Streamlit upload to the replica that holds its session (and, with the other replica's cookie,
the upload refused as Streamlit refuses it without affinity). Ctrl-C stops every process it started.
Nothing leaves the loopback interface. A missing ``haproxy`` is a failure: ``make test`` installs it.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "serve_replicas.py"
_spec = importlib.util.spec_from_file_location("serve_replicas", SCRIPT)
serve_replicas = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_replicas)
COOKIE = serve_replicas.AFFINITY_COOKIE


free_ports = serve_replicas.free_ports


# ----------------------------------------------------------------------------- the configuration

def test_shipped_config_is_the_template_rendered_and_haproxy_accepts_it(tmp_path: Path) -> None:
    shipped = serve_replicas.SHIPPED_CONFIG.read_text()
    assert shipped == serve_replicas.render_config(["127.0.0.1:8501", "127.0.0.1:8502"])
    for needle in (f"cookie {COOKIE} insert indirect nocache", "http-check send meth GET uri /_stcore/health",
                   "http-check expect string ok", "timeout tunnel 8h", "server r1 127.0.0.1:8501 cookie r1",
                   "server r2 127.0.0.1:8502 cookie r2"):
        assert needle in shipped, needle
    assert "balance source" not in shipped       # a classroom behind one public IP would land on one replica
    serve_replicas.check_config(serve_replicas.SHIPPED_CONFIG)
    # several machines: one server line (and cookie value) per replica
    out = subprocess.run([sys.executable, str(SCRIPT), "--print-config", "--servers",
                          "10.0.0.11:8501,10.0.0.12:8501,10.0.0.13:8501"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.findall(r"server (r\d) (\S+) cookie (r\d)", out.stdout) == [
        ("r1", "10.0.0.11:8501", "r1"), ("r2", "10.0.0.12:8501", "r2"), ("r3", "10.0.0.13:8501", "r3")]
    (tmp_path / "three.cfg").write_text(out.stdout)
    serve_replicas.check_config(tmp_path / "three.cfg")
    bad = subprocess.run([sys.executable, str(SCRIPT), "--replicas", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--replicas must be in" in bad.stderr.strip().splitlines()[-1]


def test_kubernetes_manifests_parse_say_not_run_and_keep_cookie_affinity() -> None:
    """deploy/k8s/ is written out, not run here: it parses, says so, and keeps what the proxy test shows."""
    import yaml

    docs = {}
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        assert path.read_text().startswith("# NOT RUN HERE."), path.name
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert set(docs) == {"Deployment", "Service", "Ingress"}
    ann = docs["Ingress"]["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert ann["nginx.ingress.kubernetes.io/session-cookie-name"] == COOKIE
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert docs["Service"]["spec"].get("sessionAffinity", "None") == "None"      # not ClientIP: one public IP
    app = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert app["command"][1:3] == ["-m", "app.serve"]
    assert app["readinessProbe"]["httpGet"]["path"] == app["livenessProbe"]["httpGet"]["path"] == "/_stcore/health"
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()


# ----------------------------------------------------------------------------- two replicas behind the proxy

@dataclass
class Class:
    url: str
    stats: str
    ports: list[int]
    run_dir: Path
    proc: subprocess.Popen
    lines: list[str]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)      # Ctrl-C
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("class")
    proxy, stats, *ports = free_ports(4)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--ports", ",".join(map(str, ports)),
                             "--bind", f"127.0.0.1:{proxy}", "--stats-bind", f"127.0.0.1:{stats}",
                             "--run-dir", str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "NIP_DEVICE": "cpu"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    cls = Class(f"http://127.0.0.1:{proxy}", f"127.0.0.1:{stats}", ports, run_dir, proc, lines)
    try:
        deadline = time.monotonic() + 240
        while not any(line.startswith("ready:") for line in lines):
            assert proc.poll() is None, f"serve_replicas exited with {proc.returncode}: {''.join(lines)[-2000:]}"
            assert time.monotonic() < deadline, f"no replica ready within 240 s: {''.join(lines)[-2000:]}"
            time.sleep(0.5)
        # the proxy's own health checks see both replicas up (checks every 2 s, up after 2 good ones)
        while {r["status"] for r in serve_replicas.proxy_stats(cls.stats).values()} != {"UP"}:
            assert time.monotonic() < deadline, serve_replicas.proxy_stats(cls.stats)
            time.sleep(0.5)
        yield cls
    finally:
        cls.stop()


def test_protocol_load_test_through_the_proxy_spreads_sessions_and_every_result_is_right(served, tmp_path):
    out = tmp_path / "load-proxy.json"
    run = subprocess.run([sys.executable, "scripts/load_test.py", "--client", "protocol", "--url", served.url,
                          "--sessions", "4", "--verify", "full", "--seed", "3", "--timeout", "300", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text())
    assert run.returncode == 0, run.stderr[-3000:]
    assert report["sessions"] == report["ok"] == 4 and report["errors"] == report["wrong_results"] == 0
    assert all(r["ok"] and r["expected"]["defended"] == r["page"]["predictions"]["defended"]
               for r in report["results"])
    # every session's websocket got the proxy's affinity cookie, and both replicas served sessions
    replicas = [r["cookies"].get(COOKIE) for r in report["results"]]
    assert set(replicas) == {"r1", "r2"}, replicas
    assert report["handshake_cookies"] == {f"{COOKIE}={v}": replicas.count(v) for v in ("r1", "r2")}
    stats = serve_replicas.proxy_stats(served.stats)
    assert all(int(stats[r]["stot"]) >= replicas.count(r) for r in ("r1", "r2")), stats


async def _session(url: str, cookies: dict[str, str]) -> tuple[str, object]:
    """A Streamlit session through the proxy: its websocket (open) and its id."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    ws = await websockets.connect(url.replace("http://", "ws://") + "/_stcore/stream", subprotocols=["streamlit"],
                                  max_size=None, additional_headers={"Cookie": "; ".join(
                                      f"{k}={v}" for k, v in cookies.items())})
    msg = BackMsg()
    msg.rerun_script.query_string = ""
    msg.rerun_script.page_script_hash = ""
    await ws.send(msg.SerializeToString())
    async with asyncio.timeout(120):
        async for raw in ws:
            fm = ForwardMsg()
            fm.ParseFromString(raw)
            if fm.WhichOneof("type") == "new_session":
                return fm.new_session.initialize.session_id, ws
    raise AssertionError("no new_session message")


def _put(url: str, session_id: str, cookies: dict[str, str], xsrf: str, data: bytes) -> tuple[int, str]:
    """Streamlit's upload request, as its frontend sends it (multipart, XSRF header and cookie)."""
    boundary = "nipexplorerboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"digit.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/_stcore/upload_file/{session_id}/file-1", data=body, method="PUT", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "X-Xsrftoken": xsrf,
        "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_affinity_cookie_routes_an_upload_to_its_session_replica(served):
    """The page's first request gets the cookie; the websocket and the upload carry it. With the
    other replica's cookie the same upload reaches a replica that does not hold the session, and
    Streamlit refuses it: affinity is what makes uploads land."""
    from http.cookies import SimpleCookie

    from nip_core.data import gallery
    from nip_core.images import tensor_to_png_bytes

    with urllib.request.urlopen(served.url + "/_stcore/health", timeout=10) as r:   # sets both cookies
        jar = SimpleCookie()
        for header in r.headers.get_all("Set-Cookie"):
            jar.load(header)
    cookies = {k: m.value for k, m in jar.items()}
    assert cookies.get(COOKIE) in ("r1", "r2") and "_streamlit_xsrf" in cookies, cookies
    png = tensor_to_png_bytes(gallery("mnist")[5].image)

    async def go():
        session_id, ws = await _session(served.url, cookies)
        try:
            own = _put(served.url, session_id, cookies, cookies["_streamlit_xsrf"], png)
            other = {**cookies, COOKIE: "r2" if cookies[COOKIE] == "r1" else "r1"}
            wrong = _put(served.url, session_id, other, cookies["_streamlit_xsrf"], png)
        finally:
            await ws.close()
        return own, wrong

    own, wrong = asyncio.run(go())
    assert own[0] == 204, own
    assert wrong[0] == 400 and "Invalid session_id" in wrong[1], wrong


MEDIA_LOADED = """() => {
  const media = [...document.querySelectorAll('img')].filter(i => i.src.includes('/media/'));
  return media.length > 0 && media.every(i => i.complete && i.naturalWidth > 0);
}"""


def test_an_upload_in_chromium_through_the_proxy_lands(served, tmp_path):
    from playwright.sync_api import sync_playwright

    from nip_core.data import gallery
    from nip_core.images import tensor_to_png_bytes
    from tests.test_e2e_browser import image_input, launch, no_exceptions, open_explore

    digit = tmp_path / "digit.png"
    digit.write_bytes(tensor_to_png_bytes(gallery("mnist")[5].image))
    with sync_playwright() as p:
        browser = launch(p)
        try:
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")) else route.abort())
            page = ctx.new_page()
            open_explore(page, served.url)
            page.get_by_text("Upload an image", exact=True).click()
            image_input(page).set_input_files(str(digit))
            page.get_by_text("digit.png as the model sees it").wait_for(timeout=120_000)
            # the images the page shows (the upload as the model sees it among them) are media files that
            # only the session's replica holds: every one loaded
            page.wait_for_function(MEDIA_LOADED, timeout=60_000)
            no_exceptions(page)
            cookie = [c["value"] for c in ctx.cookies(served.url) if c["name"] == COOKIE]
            assert cookie in (["r1"], ["r2"]), ctx.cookies(served.url)
        finally:
            browser.close()


def test_a_replica_that_dies_is_started_again_and_the_proxy_sends_new_visitors_elsewhere_meanwhile(served):
    pid_file = served.run_dir / "pids.json"
    port = served.ports[1]
    old = json.loads(pid_file.read_text())["replicas"][str(port)]
    os.killpg(old, signal.SIGKILL)                  # the replica's own process group (the supervisor started it)
    deadline = time.monotonic() + 240
    while json.loads(pid_file.read_text())["replicas"][str(port)] == old:
        assert time.monotonic() < deadline, "".join(served.lines)[-2000:]
        time.sleep(0.3)
    assert any(f"the replica on port {port} exited" in line for line in served.lines)
    for _ in range(4):                              # meanwhile or after: the proxy answers
        with urllib.request.urlopen(served.url + "/_stcore/health", timeout=30) as r:
            assert r.read() == b"ok"
    while not serve_replicas.healthy(f"http://127.0.0.1:{port}"):
        assert time.monotonic() < deadline, "the restarted replica never answered"
        time.sleep(0.5)


def test_ctrl_c_stops_the_proxy_and_every_replica(served):
    pids = json.loads((served.run_dir / "pids.json").read_text())
    started = [pids["haproxy"], *pids["replicas"].values()]
    assert pids["supervisor"] == served.proc.pid and len(pids["replicas"]) == 2
    assert served.stop() == 0, "".join(served.lines)[-2000:]
    assert any(line.startswith("stopping the class") for line in served.lines)
    for pid in started:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid), pid
    assert not (served.run_dir / "pids.json").exists()
    for port in served.ports:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=3)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0].lower()
    except (OSError, IndexError):
        return "zombie"
