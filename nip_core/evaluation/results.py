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
from nip_core.runtime import RESULTS_DIR


# Suite → the file its report run ships as (the tables the app shows on arrival). A suite is
# shipped when its file exists: re-running a suite's report adds it to the app without a code change.
SUITE_FILES = {
    "paper-mnist": "paper-mnist-report.json",
    "paper-fashion": "paper-fashion-report.json",
    "paper-imagenet": "paper-imagenet.json",
    "paper-cifar10": "paper-cifar10.json",
}


# Suite → its mediation run (``evaluate --mediation``, docs/nip-research.md Round 5): neurons of each
# successful adversarial put back to their benign or defended values.
MEDIATION_FILES = {
    "paper-mnist": "paper-mnist-report-mediation.json",
    "paper-fashion": "paper-fashion-report-mediation.json",
    "paper-imagenet": "paper-imagenet-mediation.json",
    "paper-cifar10": "paper-cifar10-mediation.json",
}


# Suite → its elasticity run (``evaluate --eps-grid``, docs/elasticity.md).
ELASTIC_FILES = {
    "paper-mnist": "paper-mnist-report-elastic.json",
    "paper-fashion": "paper-fashion-report-elastic.json",
}


# Suite → its adversarial-training run: the suite on the adversarially trained model, over the suite
# model's own report images (``evaluate --images-of``, docs/nip-research.md Round 7).
AT_FILES = {
    "paper-fashion": "paper-fashion-report-at.json",
}


def shipped_adversarial_training(suite: str) -> str | None:
    """The file name of ``suite``'s shipped adversarial-training run, or None when none ships."""
    f = AT_FILES.get(suite)
    return f if f and (RESULTS_DIR / f).is_file() else None


def adversarial_training_comparison(standard: dict[str, Any], robust: dict[str, Any]) -> dict[str, list[dict]]:
    """Two results on the same images side by side: the suite's standard model and the adversarially
    trained one (``robust``, run with ``--images-of`` the standard model).

    Returns:
        ``by_attack``: per attack, the accuracy of each model with no defense (and the standard model
        with ``nip``); ``by_defense``: per defense both have, each model's benign accuracy, mean
        accuracy under attack and adaptive (BPDA) accuracy. Keys name the models.

    Raises:
        InputError: the two results are not on the same images (``robust``'s ``data.images_of`` is not
            ``standard``'s model, or the splits or image counts differ).
    """
    a, b = standard["model"], robust["model"]
    data = robust.get("data") or {}
    if data.get("images_of") != a or robust.get("split") != standard.get("split") or \
            robust.get("n_images") != standard.get("n_images"):
        raise InputError(f"{b}'s result is not on {a}'s {standard.get('split')} images; run it with --images-of {a}.")

    def cell(r: dict, attack: str, defense: str) -> float | None:   # defense: a bare name (its rows' defense_name)
        return next((row["defended_adv_accuracy"] for row in r["rows"]
                     if row["attack"] == attack and row.get("defense_name", row["defense"]) == defense), None)

    attacks = list(dict.fromkeys(row["attack"] for row in standard["rows"]))   # labels as the rows spell them
    by_attack = [{"attack": att, f"{a}: no defense": cell(standard, att, "none"), f"{a}: nip": cell(standard, att, "nip"),
                  f"{b}: no defense": cell(robust, att, "none")}
                 for att in attacks if any(row["attack"] == att for row in robust["rows"])]
    sa, sb = standard["summary"], robust["summary"]
    by_defense = []
    for d in standard["defenses"]:
        if d not in robust["defenses"]:
            continue
        row: dict[str, Any] = {"defense": d}
        for name, s in ((a, sa), (b, sb)):
            row |= {f"{name}: benign": s["benign_accuracy"].get(d), f"{name}: mean under attack": s["mean_adv_accuracy"].get(d),
                    f"{name}: adaptive": s.get("adaptive_accuracy", {}).get(d)}
        by_defense.append(row)
    return {"by_attack": by_attack, "by_defense": by_defense}


def shipped_elastic(suite: str) -> str | None:
    """The file name of ``suite``'s shipped elasticity run, or None when none ships."""
    f = ELASTIC_FILES.get(suite)
    return f if f and (RESULTS_DIR / f).is_file() else None


def shipped_mediation(suite: str) -> str | None:
    """The file name of ``suite``'s shipped mediation run, or None when none ships."""
    f = MEDIATION_FILES.get(suite)
    return f if f and (RESULTS_DIR / f).is_file() else None


def shipped_suites() -> dict[str, str]:
    """Suite → result file, for the suites whose result file is present in :data:`RESULTS_DIR`."""
    return {s: f for s, f in SUITE_FILES.items() if (RESULTS_DIR / f).is_file()}


SHIPPED_SUITES = shipped_suites()


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
    shipped = shipped_suites()
    if suite not in shipped:
        raise InputError(f"no shipped report for suite {suite!r}; shipped: {', '.join(shipped)}.")
    r = shipped_result(shipped[suite])
    s = r["summary"]
    return Headline(suite=suite, split=r.get("split", "?"), n_images=int(r.get("n_images", 0)), defense=defense,
                    mean_adv_accuracy=s["mean_adv_accuracy"].get(defense),
                    benign_accuracy=s["benign_accuracy"].get(defense),
                    bpda_accuracy=s["adaptive_accuracy"].get(defense),
                    aware_accuracy=s.get("adaptive_aware_accuracy", {}).get(defense),
                    undefended_mean_adv_accuracy=s["mean_adv_accuracy"].get("none"))


MAX_RESULT_BYTES = 20 * 1024 * 1024
_ROW_FIELDS = ("attack", "defense", "defended_adv_accuracy")


def read_result(data: bytes, name: str = "the file") -> dict[str, Any]:
    """An evaluation result (``evaluate``'s JSON, from the CLI, the app or a Ray run), checked.

    Args:
        data: the file's bytes (UTF-8 JSON, at most ``MAX_RESULT_BYTES``).
        name: how messages name the file.

    Returns:
        The parsed result, with ``attacks``/``defenses`` filled in from the rows when missing.

    Raises:
        InputError: not JSON, or not the shape of an evaluation result (one sentence saying what is
            missing).
    """
    if len(data) > MAX_RESULT_BYTES:
        raise InputError(f"{name} is {len(data) / 2**20:.1f} MB, over the {MAX_RESULT_BYTES / 2**20:g} MB limit "
                         "for a results file.")
    try:
        r = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{name} is not a JSON file; open the .json that `python -m nip_core evaluate` or the "
                         "Benchmark page wrote.") from None
    how = "it is not an evaluation result (the .json of `python -m nip_core evaluate` or the Benchmark page)"
    if not isinstance(r, dict):
        raise InputError(f"{name}: {how}.")
    missing = [k for k in ("model", "rows", "summary") if k not in r]
    if missing:
        raise InputError(f"{name}: {how}; it has no {', '.join(repr(k) for k in missing)}.")
    rows = r["rows"]
    if not isinstance(rows, list) or not rows or not all(isinstance(x, dict) for x in rows):
        raise InputError(f"{name}: {how}; 'rows' must be a non-empty list of table rows.")
    for i, row in enumerate(rows):
        lacks = [k for k in _ROW_FIELDS if k not in row]
        if lacks:
            raise InputError(f"{name}: row {i} has no {', '.join(repr(k) for k in lacks)}.")
        v = row["defended_adv_accuracy"]
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1):
            raise InputError(f"{name}: row {i} has an accuracy of {v!r}; accuracies lie in [0, 1].")
    summary = r["summary"]
    if not isinstance(summary, dict) or not all(isinstance(summary.get(k), dict)
                                                for k in ("mean_adv_accuracy", "benign_accuracy")):
        raise InputError(f"{name}: {how}; its 'summary' lacks mean_adv_accuracy and benign_accuracy.")
    block = r.get("per_image")   # per-image records (nip_core.evaluation.slices); files written before them have none
    if block is not None:
        n = r.get("n_images", len(rows[0].get("correct") or ""))
        if not isinstance(block, dict) or not isinstance(block.get("labels"), (str, list)) \
                or len(block["labels"]) != n:
            raise InputError(f"{name}: its per-image records ('per_image') do not cover its {n} images.")
    r.setdefault("attacks", list(dict.fromkeys(row["attack"] for row in rows)))
    r.setdefault("defenses", list(dict.fromkeys(row["defense"] for row in rows)))
    r.setdefault("adaptive", {})
    r.setdefault("benign", {})
    r.setdefault("n_images", rows[0].get("n", "?"))
    r["summary"].setdefault("adaptive_accuracy", {})
    return r
