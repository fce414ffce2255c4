"""Device choice, seeding and paths shared by the whole engine."""
from __future__ import annotations

import os
import random
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"
RESULTS_DIR = REPO_ROOT / "docs" / "results"     # the shipped result files


def get_device() -> torch.device:
    """CUDA when there is one, else CPU (``NIP_DEVICE`` overrides)."""
    forced = os.environ.get("NIP_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment() -> dict[str, Any]:
    """The software and machine a result was computed with (written into every result file)."""
    import platform

    import art
    import captum

    return {"python": platform.python_version(), "torch": torch.__version__, "captum": captum.__version__,
            "art": art.__version__, "device": str(get_device()),
            "machine": platform.machine(), "cpus": torch.get_num_threads()}


# NumPy's and Python's process-wide RNGs are one stream for every thread: seeding one and drawing
# from it must not interleave across threads. Only the units that draw from them (ART attacks with a
# random start or random search, the noise defenses: ``draws_global_rng`` in the attack and defense
# registries) hold this lock, for their whole run; every other run computes without it
# (:func:`global_rng`).
RNG_LOCK = threading.RLock()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def global_rng(draws: bool, seed: int | None = None) -> Iterator[None]:
    """The process-wide RNGs for a run that ``draws`` from them: held (``RNG_LOCK``) and, with
    ``seed``, seeded for the block. A run that draws nothing neither waits nor seeds (seeding would
    move the stream of a run that holds the lock). Torch's global RNG is seeded too, but no unit's
    result depends on it (tests/test_concurrency.py checks both claims for every unit)."""
    if not draws:
        yield
        return
    with RNG_LOCK:
        if seed is not None:
            seed_everything(seed)
        yield


_RUN_STREAM = threading.local()   # .state: the calling run's own NumPy stream (a RandomState state)


@contextmanager
def run_stream(seed: int) -> Iterator[None]:
    """Give the calling thread's run its own NumPy stream for the block, seeded as
    :func:`seed_everything` seeds the global one; the library draws wrapped by :func:`routed` take
    from it. A run whose only global draws are routed ones needs no lock for the rest of its work
    and gives the bits it gave when it seeded the global RNG and drew from it alone."""
    before = getattr(_RUN_STREAM, "state", None)
    _RUN_STREAM.state = [np.random.RandomState(seed % (2**32)).get_state()]
    try:
        yield
    finally:
        _RUN_STREAM.state = before


def routed(draw):
    """Wrap a library function that draws from NumPy's global RNG (ART's ``random_sphere``): inside
    :func:`run_stream` it draws from the run's own stream (swapped into the global RNG under
    ``RNG_LOCK`` for the draw only, then swapped out); elsewhere it is the library's own."""
    if getattr(draw, "_nip_routed", False):
        return draw

    def wrapper(*args, **kwargs):
        box = getattr(_RUN_STREAM, "state", None)
        if box is None:
            return draw(*args, **kwargs)
        with RNG_LOCK:
            saved = np.random.get_state()
            np.random.set_state(box[0])
            try:
                return draw(*args, **kwargs)
            finally:
                box[0] = np.random.get_state()
                np.random.set_state(saved)

    wrapper._nip_routed = True
    wrapper.__wrapped__ = draw
    return wrapper


# ----------------------------------------------------------------------------- run slots and threads

def cpu_count() -> int:
    """Cores this process may use (its CPU affinity, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_WARNED: set[str] = set()


def env_count(name: str) -> int | None:
    """A whole number >= 1 from the environment; unset or empty: None. A bad value is named in one
    warning line on stderr (once per process) and ignored, so the default applies."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n >= 1:
        return n
    if name not in _WARNED:
        _WARNED.add(name)
        print(f"warning: {name}={raw!r} is not a whole number >= 1; ignored (the default from the core count "
              "applies)", file=sys.stderr)
    return None


def concurrency() -> tuple[int, int]:
    """``(run slots, torch threads per run)`` for this machine.

    Default: one slot per core and one torch thread per run (slots × threads = cores). A run is many
    small ops (one image through LeNet or EfficientNet-B0) that intra-op threads barely speed up and
    that spin-wait for cores other runs hold, while separate runs scale with the cores
    (docs/performance.md, "Run slots"). ``NIP_RUN_SLOTS`` and ``NIP_TORCH_THREADS`` override; with
    one of them set, the other is derived so that their product stays the core count.
    """
    cores = cpu_count()
    slots, threads = env_count("NIP_RUN_SLOTS"), env_count("NIP_TORCH_THREADS")
    if slots is None and threads is None:
        return cores, 1
    if slots is None:
        return max(1, cores // threads), threads
    if threads is None:
        return slots, max(1, cores // slots)
    return slots, threads


def set_torch_threads() -> int:
    """Torch threads per computation (:func:`concurrency`), set only if different."""
    n = concurrency()[1]
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def cache_dir() -> Path:
    """Where computed artefacts (influence profiles) are cached on disk."""
    root = Path(os.environ.get("NIP_CACHE_DIR", Path.home() / ".cache" / "nip_explorer"))
    root.mkdir(parents=True, exist_ok=True)
    return root


_IMPORT_LOCK = threading.Lock()
_IMPORTED: set[str] = set()   # read without the lock: a finished import never blocks a caller


def import_art() -> None:
    """Import ART's attacks, defences and estimators once, under a lock. Two threads importing
    different ART submodules at the same moment (the app's warm-up and a visitor's run) can see a
    partially initialised module and fail with a circular-import error."""
    if "art" in _IMPORTED:
        return
    with _IMPORT_LOCK:
        import art.attacks.evasion  # noqa: F401
        import art.defences.preprocessor  # noqa: F401
        import art.estimators.classification  # noqa: F401
        _IMPORTED.add("art")


def import_torchvision() -> None:
    """Import torchvision (about 2 s: its package import loads all its models and ``torch._dynamo``)
    under the same lock as ART, for the same reason. Photos and ImageNet class names do not need it
    (``nip_core.images``, ``nip_core.sources.imagenet``); digit uploads and user data folders do."""
    if "torchvision" in _IMPORTED:
        return
    with _IMPORT_LOCK:
        import torchvision.transforms  # noqa: F401
        _IMPORTED.add("torchvision")
