"""The shipped result files (``docs/results/*.json``) and the headline numbers read from them.

Every number that the app's prose quotes comes through :func:`headline`, so a re-run report
(``make evaluate-paper`` and friends) updates every page without editing text.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from nip_core.errors import InputError
from nip_core.runtime import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "docs" / "results"

# Suite → the shipped result file of its report run (the tables the app shows on arrival).
SHIPPED_SUITES = {
    "paper-mnist": "paper-mnist-report.json",
    "paper-imagenet": "paper-imagenet.json",
}


def shipped_result(file_name: str) -> dict[str, Any]:
    """The parsed result file ``docs/results/<file_name>`` (re-read when the file changes)."""
    path = RESULTS_DIR / file_name
    try:
        return _read(path, path.stat().st_mtime_ns)
    except FileNotFoundError:
        raise InputError(f"no shipped result {file_name!r} in {RESULTS_DIR}.") from None


@lru_cache(maxsize=16)
def _read(path: Path, _mtime: int) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Headline:
    """One defense's headline numbers in one shipped result (``None`` where not measured)."""

    suite: str
    split: str
    n_images: int
    defense: str
    mean_adv_accuracy: float | None
    benign_accuracy: float | None
    bpda_accuracy: float | None
    aware_accuracy: float | None
    undefended_mean_adv_accuracy: float | None

    def fmt(self, field: str, digits: int = 3) -> str:
        """A number as prose shows it (``"0.945"``; ``"n/a"`` when missing)."""
        v = getattr(self, field)
        return "n/a" if v is None else f"{v:.{digits}f}"

    def pct(self, field: str) -> str:
        v = getattr(self, field)
        return "n/a" if v is None else f"{100 * v:.0f}%"


def headline(suite: str = "paper-mnist", defense: str = "nip") -> Headline:
    """The headline numbers of ``defense`` in the shipped report of ``suite``."""
    if suite not in SHIPPED_SUITES:
        raise InputError(f"no shipped report for suite {suite!r}; shipped: {', '.join(SHIPPED_SUITES)}.")
    r = shipped_result(SHIPPED_SUITES[suite])
    s = r["summary"]
    return Headline(suite=suite, split=r.get("split", "?"), n_images=int(r.get("n_images", 0)), defense=defense,
                    mean_adv_accuracy=s["mean_adv_accuracy"].get(defense),
                    benign_accuracy=s["benign_accuracy"].get(defense),
                    bpda_accuracy=s["adaptive_accuracy"].get(defense),
                    aware_accuracy=s.get("adaptive_aware_accuracy", {}).get(defense),
                    undefended_mean_adv_accuracy=s["mean_adv_accuracy"].get("none"))
