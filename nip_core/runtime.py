"""Device choice, seeding and paths shared by the whole engine."""
from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Any

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


# Seeding a process-wide RNG and drawing from it must not interleave across threads: hold this
# (after the model's lock) around every seed_everything/np.random.seed and the draws that follow.
RNG_LOCK = threading.RLock()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_torch_threads() -> int:
    """Torch threads per computation: ``NIP_TORCH_THREADS`` (default 1), set only if different."""
    n = int(os.environ.get("NIP_TORCH_THREADS", "1") or 1)
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
