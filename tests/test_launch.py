"""``python -m app.serve``: the engine warms in a background thread from the moment the server starts.

Run in a fresh interpreter: the test process has imported torch and ART long ago.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, sys, threading, time
from app import warmup

assert "torch" not in sys.modules
t0 = time.perf_counter()
thread = warmup.start_at_launch()
assert warmup.start_at_launch() is thread          # once per process
seen = {}

def visitor():   # a visitor's page arriving while the preload imports: waits, then needs a photo model
    warmup.wait_for_engine()
    seen["engine_ready"] = warmup.ENGINE_READY.is_set()
    seen["art_loaded"] = "art.attacks.evasion" in sys.modules

def visitor_model():
    warmup.wait_for_engine()
    from nip_core.models import load_model
    seen["model"] = id(load_model("efficientnet-lite0"))

threads = [threading.Thread(target=f) for f in (visitor, visitor_model)]
for t in threads:
    t.start()
for t in threads:
    t.join()
thread.join(300)
from nip_core.models import load_model
from nip_core.models.base import _LOADED
print(json.dumps({"alive": thread.is_alive(), "loaded": sorted(_LOADED), "ready": seen.get("engine_ready"),
                  "art": seen.get("art_loaded"), "same_model": seen.get("model") == id(load_model("efficientnet-lite0")),
                  "seconds": time.perf_counter() - t0}))
"""


def _probe(code: str, env_extra: dict[str, str] | None = None) -> dict:
    import os

    env = {**os.environ, **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_launch_preload_imports_the_engine_and_loads_every_built_in_model_once() -> None:
    r = _probe(PROBE)
    assert r["alive"] is False
    assert r["ready"] is True and r["art"] is True      # the page waited for the whole import step
    assert r["same_model"] is True                      # the visitor got the preload's network, not a second copy
    assert r["loaded"] == sorted(["lenet-mnist", "lenet-fashion", "lenet-fashion-at", "efficientnet-lite0", "resnet8-cifar10"])


def test_without_a_launcher_pages_do_not_wait_and_warmup_off_means_no_thread() -> None:
    code = r"""
import json, threading
from app import warmup

class Recorded(threading.Event):   # records every wait for the engine
    waits = []
    def wait(self, timeout=None):
        self.waits.append(timeout)
        return super().wait(0)

warmup.ENGINE_READY = Recorded()
warmup.wait_for_engine(timeout=30)
no_launcher = list(Recorded.waits)
no_thread = warmup.start_at_launch() is None
warmup._LAUNCH = threading.Thread(target=lambda: None)   # as if app.serve had started the preload
warmup.wait_for_engine(timeout=30)
print(json.dumps({"no_launcher": no_launcher, "launcher": Recorded.waits[len(no_launcher):], "thread": no_thread}))
"""
    r = _probe(code, {"NIP_NO_WARMUP": "1"})
    assert r["no_launcher"] == []     # streamlit run app/streamlit_app.py: the page never waits for the engine
    assert r["launcher"] == [30]      # python -m app.serve: it waits for the preload's imports
    assert r["thread"] is True        # NIP_NO_WARMUP=1 switches the launch preload off too


def test_importing_warmup_loads_neither_streamlit_nor_torch() -> None:
    """app.serve imports app.warmup before Streamlit's server starts and before the preload imports the
    engine: that import takes only the run queue (no Streamlit), not the pages' cached functions."""
    code = r"""
import json, sys
import app.warmup
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("app", "streamlit", "torch", "nip_core"))))
"""
    assert _probe(code) == ["app", "app.runqueue", "app.warmup"]


def test_make_run_starts_the_launcher() -> None:
    makefile = (ROOT / "Makefile").read_text()
    run = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "-m app.serve" in run


def test_the_model_a_visitors_link_names_is_loaded_first() -> None:
    code = r"""
import json
from app import warmup
warmup.want("no-such-model")            # a hostile or stale link: ignored
warmup.want("efficientnet-lite0")       # the first visitor's link, before the engine is ready
warmup.start_at_launch().join(300)
from nip_core.models.base import _LOADED
print(json.dumps({"order": list(_LOADED)}))
"""
    r = _probe(code)
    assert r["order"][0] == "efficientnet-lite0"
    assert sorted(r["order"]) == sorted(["lenet-mnist", "lenet-fashion", "lenet-fashion-at", "efficientnet-lite0", "resnet8-cifar10"])
