"""Warm the shared caches once per server process, in a background thread.

The first session to run the app starts :func:`start`; the page does not wait for it. The thread
fills the same ``st.cache_resource`` / ``st.cache_data`` entries the pages use (models, galleries,
influence profiles, calibration) and runs each model's default Explore view once, so the engine's
one-time costs (library imports, the label-free ``nip``'s benign bank, first passes through each
network) are paid before a visitor asks. The model a shared link names goes first. The thread
runs at a lower OS priority than the sessions, and each step takes a *background* turn of the run
queue (``RunQueue.turn(background=True)``): it starts only when no visitor's run is running or
waiting, so a visitor waits for at most one warm-up step.

Set ``NIP_NO_WARMUP=1`` to switch it off (tests that time cold starts, debugging).
"""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("nip_explorer.warmup")
_LOCK = threading.Lock()
_THREAD: threading.Thread | None = None
DONE = threading.Event()
ENABLED = os.environ.get("NIP_NO_WARMUP", "") in ("", "0")   # in-process tests switch it off


def start(first: str | None = None) -> threading.Thread | None:
    """Start the warm-up thread once per process; ``first``: a model to warm before the others."""
    global _THREAD
    with _LOCK:
        if _THREAD is None and ENABLED:
            _THREAD = threading.Thread(target=_run, args=(first,), name="nip-explorer-warmup", daemon=True)
            _THREAD.start()
        return _THREAD


def order(first: str | None) -> list[str]:
    """Built-in models, ``first`` (if it is one) first, then the default model, then the rest."""
    from nip_core.byom import is_custom
    from nip_core.models import MODELS

    shipped = [m for m in MODELS if not is_custom(m)]
    head = [m for m in (first, "lenet-mnist") if m in shipped]
    return list(dict.fromkeys(head + shipped))


def _run(first: str | None) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)   # Linux: per-thread niceness
    except (AttributeError, OSError):
        pass
    try:
        prime_imports()
        for i, name in enumerate(order(first)):
            warm_model(name, quiet_s=0.0 if i == 0 else QUIET_S)
    except Exception:   # a warm-up failure only costs speed; the page reports real errors itself
        log.exception("warm-up stopped")
    finally:
        DONE.set()


def prime_imports() -> None:
    """Import the attack library (ART: about 3 s, half of it SciPy) while the first visitor's page is
    still being built; their first attack would otherwise pay for it."""
    from nip_core.runtime import import_art

    import_art()


QUIET_S = 5.0   # warm another model only after visitors' runs have paused this long


def warm_model(name: str, quiet_s: float = 0.0) -> None:
    """Load one model's shared objects and run its default Explore view (default image, attack, defense)
    and the tour's example choice, one background step at a time (a visitor's run goes first).

    Args:
        quiet_s: each step waits until no visitor's run has ended for this long (a model no visitor
            has asked for yet waits for a pause, so a class is not slowed down by it).
    """
    from app import common as C
    from app import tour as T

    def step(fn, *args):
        with C.RUNS.turn(background=True, quiet_s=quiet_s):
            return fn(*args)

    model = step(C.get_model, name)
    entries = step(C.gallery_entries, name)
    layer = model.spec.default_layer
    step(C.get_profile, name, layer, "conductance")
    step(C.has_calibration, name)
    e = entries[0]
    # Explore's default view of this model, built as the page builds it: the same cache entry.
    request = step(C.build_request, name, e["key"], None, e["label"], "fgsm", {}, "nip", {}, layer,
                   "conductance", 0.2, 0)
    step(C.explanation, *request)
    for s in T.STEPS:   # the guided tour's example images
        if not s.photo and T.why_not(s, name) is None:
            step(T.step_image, s, name)
    log.info("warmed %s", name)
