"""Warm the shared caches once per server process, in a background thread.

The first session to run the app starts :func:`start`; the page does not wait for it. The thread
fills the same ``st.cache_resource`` / ``st.cache_data`` entries the pages use (models, galleries,
influence profiles, calibration) and runs each model's default Explore view once, so the engine's
one-time costs (library imports, the label-free ``nip``'s benign bank, first passes through each
network) are paid before a visitor asks. The model a shared link names goes first. The thread
runs at a lower OS priority than the sessions; it imports the attack library at once (the first
visitor needs it too) and then takes each step only when no visitor's page is running
(``ACTIVITY``) and no visitor's run is queued (a *background* turn of the run queue), so the first
view is never slowed by it and a visitor waits for at most one warm-up step.

Before that, when the server is started with ``python -m app.serve`` (what ``make run`` does),
:func:`start_at_launch` begins at once, while the server starts listening: it imports the engine
(torch, ``nip_core``, ART: about 5 s on a 2-core CPU), then loads the built-in models (each but
the first when no visitor's page is running), so a visitor who opens a shared link on a freshly started server does not pay for them
after their browser has loaded the page. A page waits for the engine imports to finish
(:func:`wait_for_engine`) rather than import the same packages in a second thread.

After the imports and after each model the preload calls ``gc.freeze()``: the half a million
objects that torch, ART and the networks leave behind live as long as the process, and freezing
them takes them out of every later full garbage collection. Streamlit runs one after every
script run (``runner.postScriptGC``): 0.2 s with the GIL held without the freeze, 0 s with it.

Set ``NIP_NO_WARMUP=1`` to switch both off (tests that time cold starts, debugging).
"""
from __future__ import annotations

import gc
import logging
import os
import threading

from app.runqueue import ACTIVITY, RUNS   # no Streamlit: app.serve imports this module before the server starts

log = logging.getLogger("nip_explorer.warmup")
_LOCK = threading.Lock()
_THREAD: threading.Thread | None = None
DONE = threading.Event()
ENABLED = os.environ.get("NIP_NO_WARMUP", "") in ("", "0")   # in-process tests switch it off


_LAUNCH: threading.Thread | None = None
ENGINE_READY = threading.Event()   # the launch preload has imported torch, nip_core and ART


def start_at_launch() -> threading.Thread | None:
    """Start the launch preload once per process (``app.serve`` calls it before the server listens)."""
    global _LAUNCH
    with _LOCK:
        if _LAUNCH is None and ENABLED:
            _LAUNCH = threading.Thread(target=_launch, name="nip-explorer-launch", daemon=True)
            _LAUNCH.start()
        return _LAUNCH


_WANTED: list[str] = []   # models named by visitors' links, in arrival order (the launch preload's hints)


def want(model: str | None) -> None:
    """A visitor's link names ``model``: the launch preload loads it next (call before waiting)."""
    if model and model not in _WANTED and len(_WANTED) < 16:   # names are matched to built-in models later
        _WANTED.append(model)


def wait_for_engine(timeout: float = 300.0) -> None:
    """Wait for the launch preload's imports, if one is running; return at once otherwise."""
    if _LAUNCH is not None:
        ENGINE_READY.wait(timeout)


def _launch() -> None:
    # Normal priority: a visitor who arrives meanwhile waits for exactly these imports.
    try:
        import torch  # noqa: F401
        import nip_core.attacks  # noqa: F401  (models, data, defenses, influence, nip)
        import nip_core.figures  # noqa: F401
        from nip_core.runtime import import_art

        import_art()
        gc.freeze()   # see _freeze
    except Exception:
        log.exception("launch preload: imports failed")
        return
    finally:
        ENGINE_READY.set()
    try:
        from nip_core.models import load_model

        pending = order(None)
        while pending:
            # A model a visitor's link names goes first, at once: that visitor is waiting for it.
            # The others only while no page runs, so they never take CPU from a first view.
            name = next((m for m in _WANTED if m in pending), None)
            if name is None:
                _visitors_quiet()
                name = next((m for m in _WANTED if m in pending), pending[0])
            pending.remove(name)
            prime_model(load_model(name))
            gc.freeze()
        log.info("launch preload done")
    except Exception:   # only speed is lost; the page reports real errors itself
        log.exception("launch preload stopped")


def _visitors_quiet() -> None:
    """Wait until no visitor's page runs (the launch preload must not take CPU from a first view);
    before the first visitor nothing runs, and it returns at once."""
    ACTIVITY.wait_quiet(FIRST_QUIET_S)


def prime_model(model) -> None:
    """First passes cost more than later ones (kernel selection, allocator growth): one forward and
    backward pass on a black image at batch 1 with the app's torch threads, the model's calibration,
    and the default ``nip`` on that image, which builds its benign-neighbour bank (1.4 s on LeNet).
    The defense draws random numbers only under the engine's RNG lock, and every seeded run reseeds
    under the same lock, so a visitor's run is never disturbed."""
    import torch

    from nip_core.calibration import calibration_for
    from nip_core.defenses import apply_defense
    from nip_core.errors import InputError
    from nip_core.runtime import set_torch_threads

    set_torch_threads()   # what the app's runs use (app.runqueue.configure_torch)
    s = model.spec
    x = torch.zeros(1, s.input_channels, s.input_size, s.input_size, device=model.device, requires_grad=True)
    torch.autograd.grad(model.net(x)[0, 0], x)
    calibration_for(model)
    try:
        apply_defense(model, "nip", x.detach())
    except InputError:   # a model nip does not apply to
        pass


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
        prime_imports()   # overlaps the first visitor's page (they need it too)
        for i, name in enumerate(order(first)):
            warm_model(name, quiet_s=FIRST_QUIET_S if i == 0 else QUIET_S)
    except Exception:   # a warm-up failure only costs speed; the page reports real errors itself
        log.exception("warm-up stopped")
    finally:
        DONE.set()


def prime_imports() -> None:
    """Import what the first visitor's run needs later while their page is still being built: the
    attack library (ART: about 3 s, half of it SciPy). Photos no longer need torchvision."""
    from nip_core.runtime import import_art

    import_art()   # under the engine's lock: ART must not be imported by two threads at once


FIRST_QUIET_S = 1.0   # the first model: once visitors' pages have paused this long
QUIET_S = 5.0         # each other model: after a longer pause (a class is not slowed by them)


def warm_model(name: str, quiet_s: float = 0.0) -> None:
    """Load one model's shared objects and run its default Explore view (default image, attack, defense)
    and the tour's example choice, one background step at a time (a visitor's run goes first).

    Args:
        quiet_s: each step waits until no visitor's run has ended for this long (a model no visitor
            has asked for yet waits for a pause, so a class is not slowed down by it).
    """
    # The pages' own cached functions (they import Streamlit: here, not when app.serve imports this module).
    from app.compute import build_run, explanation
    from app.loaders import gallery_entries, get_model, get_profile, has_calibration
    from app.tour import STEPS, step_image, why_not

    def step(fn, *args):
        ACTIVITY.wait_quiet(quiet_s)   # not while a visitor's page runs: the first view comes first
        with RUNS.turn(background=True, quiet_s=quiet_s):
            return fn(*args)

    model = step(get_model, name)
    entries = step(gallery_entries, name)
    layer = model.spec.default_layer
    step(get_profile, name, layer, "conductance")
    step(has_calibration, name)
    e = entries[0]
    # Explore's default view of this model, built as the page builds it: the same cache entry.
    run = step(build_run, name, e["key"], None, e["label"], "fgsm", {}, "nip", {}, layer,
                   "conductance", 0.2, 0)
    step(explanation, run)
    for s in STEPS:   # the guided tour's example images
        if not s.photo and why_not(s, name) is None:
            step(step_image, s, name)
    log.info("warmed %s", name)
