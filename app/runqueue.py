"""The run queue: who computes now, who waits, and when the server's warm-up may take a turn.

Every session's heavy computation takes a turn of :data:`RUNS` (first come, first served; as many
runs at once as the machine has run slots, by default one per core, ``NIP_RUN_SLOTS`` overrides);
:data:`ACTIVITY` counts the page runs in progress so the warm-up can wait for a pause;
:func:`configure_torch` gives each run its torch threads (slots × threads = cores by default).
Runs in different slots compute at once, on one model or on several: each holds its own replica of
the model's module tree for its hooks (``LoadedModel.lease``), and only the attacks and defenses
that draw from NumPy's global RNG wait for one another (``nip_core.runtime.global_rng``).
Pure threading, no Streamlit:
``app.warmup`` imports it before the server has started, and the pages show a run's place in the
queue through ``app.progress``.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator


# ----------------------------------------------------------------------------- torch threads

def configure_torch() -> int:
    """Torch threads per run, set once per process: ``NIP_TORCH_THREADS``, else the cores divided
    by the run slots (default: one thread per run, one slot per core; ``nip_core.runtime.concurrency``).

    The server shares its machine with its visitors' runs (and on a small machine, their browsers):
    with more OpenMP threads than free cores, every op spin-waits for a core another run holds, and
    a LeNet Explore run was about seventy times slower on a loaded 2-core machine with two threads
    per op (docs/performance.md).
    """
    from nip_core.runtime import set_torch_threads

    return set_torch_threads()


# ----------------------------------------------------------------------------- the run queue

def default_slots() -> int:
    """Run slots for this server: ``NIP_RUN_SLOTS``, else derived from the cores
    (``nip_core.runtime.concurrency``; docs/performance.md, "Run slots"). Imported when first
    needed: this module stays importable before the engine (and torch) are."""
    from nip_core.runtime import concurrency

    return concurrency()[0]


class RunQueue:
    """First come, first served admission for the heavy computations of every session.

    ``slots`` runs at a time get the CPU (each its share of the cores); the others wait their turn
    and are told their place ("your run starts after 3 others") instead of more runs than cores
    fighting over the CPU. Re-entrant per thread: a run that needs another cached computation does
    not queue behind itself.
    """

    def __init__(self, slots: int | None = None) -> None:
        self._slots = slots                # None: the machine's default, read at the first turn
        self._cond = threading.Condition()
        self._tickets: deque[object] = deque()
        self._running = 0
        self._local = threading.local()
        self._last_visit = float("-inf")   # monotonic time a visitor's run last ended

    @property
    def slots(self) -> int:
        if self._slots is None:
            self._slots = default_slots()
        return self._slots

    def waiting(self) -> int:
        """Runs waiting for a slot now."""
        with self._cond:
            return len(self._tickets)

    def held(self) -> bool:
        """Whether the calling thread holds a slot."""
        return getattr(self._local, "depth", 0) > 0

    @contextmanager
    def lent(self, held: bool) -> Iterator[None]:
        """In a worker thread: act as the holder of the slot its starting thread holds (``held``),
        so the worker's own turns pass through instead of queueing behind that slot."""
        if not held:
            yield
            return
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth

    @contextmanager
    def turn(self, report: Callable[[int], None] | None = None, background: bool = False,
             quiet_s: float = 0.0) -> Iterator[None]:
        """Hold a slot for the block; while waiting, ``report(runs ahead)`` whenever that number changes.

        A ``background`` turn (the server's warm-up) starts only when no visitor's run is running or
        waiting and none has ended in the last ``quiet_s`` seconds, so a visitor waits for at most one
        background step and a busy class is not slowed down by warming models nobody asked for.
        """
        if background:
            yield from self._background_turn(quiet_s)
            return
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        ticket, told = object(), None
        with self._cond:
            self._tickets.append(ticket)
        try:
            while True:
                with self._cond:
                    pos = self._tickets.index(ticket)
                    if pos < self.slots - self._running:
                        self._tickets.remove(ticket)
                        self._running += 1
                        break
                    ahead = pos + self._running
                    if ahead == told:
                        self._cond.wait(timeout=0.5)
                        continue
                told = ahead
                if report is not None:
                    report(ahead)
        except BaseException:
            with self._cond:
                if ticket in self._tickets:
                    self._tickets.remove(ticket)
                self._cond.notify_all()
            raise
        yield from self._hold(visit=True)

    def _background_turn(self, quiet_s: float) -> Iterator[None]:
        if getattr(self._local, "depth", 0):
            yield
            return
        with self._cond:
            while self._tickets or self._running or time.monotonic() - self._last_visit < quiet_s:
                self._cond.wait(timeout=0.5)
            self._running += 1
        yield from self._hold(visit=False)

    def _hold(self, visit: bool) -> Iterator[None]:
        """Run the caller's block in the slot taken, then give it back (a visitor's run also
        marks the time, so background turns wait for quiet)."""
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with self._cond:
                self._running -= 1
                if visit:
                    self._last_visit = time.monotonic()
                self._cond.notify_all()


RUNS = RunQueue()   # slots: NIP_RUN_SLOTS, else one per core (default_slots)


class Activity:
    """Page runs in progress and when the last one ended (the warm-up waits for a pause)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._last_end = float("-inf")

    @contextmanager
    def page_run(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_end = time.monotonic()
                self._cond.notify_all()

    def wait_quiet(self, quiet_s: float) -> None:
        """Until no page run is in progress and none ended in the last ``quiet_s`` seconds."""
        with self._cond:
            while self._active or time.monotonic() - self._last_end < quiet_s:
                self._cond.wait(timeout=0.25)


ACTIVITY = Activity()


def queue_message(ahead: int) -> str:
    return f"waiting: your run starts after {ahead} other{'s' if ahead != 1 else ''}"


def queued(progress: Callable[[float, str], None] | None):
    """``RUNS.turn`` reporting the place in the queue through a progress callback."""
    return RUNS.turn(None if progress is None else lambda ahead: progress(0.0, queue_message(ahead)))
