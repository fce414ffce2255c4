"""How a page shows a run: its place in the run queue, then a progress bar, and no spinner.

Long computations run in a worker thread so the page can show their progress messages without
the cached function itself touching Streamlit (cached functions that draw would be replayed on a
cache hit into containers that no longer exist).
"""
from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import streamlit as st
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from app.runqueue import RUNS, queue_message


@contextmanager
def page_turn(active: bool = True) -> Iterator[None]:
    """Hold one run-queue slot for a whole page run (compute *and* draw), showing the place in the
    queue while waiting: a class's sessions then finish one after another, first come first served,
    instead of all drawing at once at the end. ``active=False``: no turn (cheap reruns)."""
    if not active:
        yield
        return
    slot = st.empty()
    with RUNS.turn(lambda ahead: slot.progress(0.0, text=queue_message(ahead))):
        slot.empty()
        yield


def run_with_progress(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, _progress=cb, **kwargs)`` in a worker thread, showing its progress in a bar.

    The cached function only puts messages on a queue; this (script) thread draws them, including
    the run queue's "your run starts after N others". A plain progress bar, not an animated status
    box: a browser tab showing a spinning status for the length of a queue burns a tenth of a core,
    and a class waiting together would spend more on spinners than on their runs. The bar is
    removed when the run is done. Exceptions from ``fn`` are re-raised here.
    """
    messages: queue.Queue[tuple[float, str]] = queue.Queue()
    box: dict[str, Any] = {}

    held = RUNS.held()   # the page's turn, lent to its worker

    def work() -> None:
        try:
            with RUNS.lent(held):
                box["value"] = fn(*args, _progress=lambda f, m: messages.put((float(f), str(m))), **kwargs)
        except BaseException as exc:  # re-raised in the script thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="nip-explorer-worker", daemon=True)
    add_script_run_ctx(worker, get_script_run_ctx())
    slot = st.empty()
    worker.start()
    shown = None
    while worker.is_alive() or not messages.empty():
        try:
            frac, msg = messages.get(timeout=0.1)
        except queue.Empty:
            continue
        if (frac, msg) != shown:
            slot.progress(min(max(frac, 0.0), 1.0), text=f"{label}: {msg}")
            shown = (frac, msg)
    worker.join()
    slot.empty()
    if "error" in box:
        raise box["error"]
    return box["value"]


QUIET_CSS = "<style>[data-testid='stStatusWidget'] { display: none; }</style>"


def quiet_running_indicator() -> None:
    """Hide Streamlit's animated "running" indicator: the pages show their own progress bars, and
    the animation costs every open tab CPU for as long as its script runs (a queued class)."""
    st.html(QUIET_CSS)
