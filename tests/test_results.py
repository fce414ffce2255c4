"""UI prose reads its numbers from the shipped result files (nip_core.results, issue 11)."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from nip_core import results
from nip_core.errors import InputError


def test_headline_matches_the_shipped_report():
    raw = json.loads((results.RESULTS_DIR / "paper-mnist-report.json").read_text())
    h = results.headline("paper-mnist", "nip")
    assert h.mean_adv_accuracy == raw["summary"]["mean_adv_accuracy"]["nip"]
    assert h.aware_accuracy == raw["summary"]["adaptive_aware_accuracy"]["nip"]
    assert (h.split, h.n_images) == (raw["split"], raw["n_images"])


def test_a_rerun_report_updates_the_prose(tmp_path, monkeypatch):
    from app import common as C

    for f in results.RESULTS_DIR.glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "paper-mnist-report.json"
    raw = json.loads(path.read_text())
    raw["summary"]["mean_adv_accuracy"]["nip"] = 0.5123
    raw["summary"]["adaptive_aware_accuracy"]["nip"] = 0.4321
    path.write_text(json.dumps(raw))
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    assert "0.512" in C.label_free_note() and "0.432" in C.label_free_note()
    assert "43%" in C.aware_note()


def test_views_type_no_report_numbers():
    """No accuracy-like decimal (0.945, .78) or percentage is typed into the app's prose strings."""
    import ast

    from nip_core.runtime import REPO_ROOT

    number = re.compile(r"(?<![\w.=/])(0?\.\d{2,3}|\d{1,3}%)(?![\w.])")
    offenders = []
    for f in [REPO_ROOT / "app" / "common.py", *sorted((REPO_ROOT / "app" / "views").glob("*.py"))]:
        for node in ast.walk(ast.parse(f.read_text())):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if len(text.split()) >= 4 and number.search(text):
                offenders.append(f"{f.name}:{node.lineno}: {text[:80]!r}")
    assert not offenders, "\n".join(offenders)


def test_unknown_suite_is_a_clear_error():
    with pytest.raises(InputError, match="no shipped report"):
        results.headline("paper-nothing")
