"""UI prose reads its numbers from the shipped result files (nip_core.evaluation.results, issue 11)."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from nip_core.evaluation import results
from nip_core.errors import InputError


def test_headline_matches_the_shipped_report():
    raw = json.loads((results.RESULTS_DIR / "paper-mnist-report.json").read_text())
    h = results.headline("paper-mnist", "nip")
    assert h.mean_adv_accuracy == raw["summary"]["mean_adv_accuracy"]["nip"]
    assert h.aware_accuracy == raw["summary"]["adaptive_aware_accuracy"]["nip"]
    assert (h.split, h.n_images) == (raw["split"], raw["n_images"])


def test_a_rerun_report_updates_the_prose(tmp_path, monkeypatch):
    from app.notes import aware_note, label_free_note

    for f in results.RESULTS_DIR.glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "paper-mnist-report.json"
    raw = json.loads(path.read_text())
    raw["summary"]["mean_adv_accuracy"]["nip"] = 0.5123
    raw["summary"]["adaptive_aware_accuracy"]["nip"] = 0.4321
    path.write_text(json.dumps(raw))
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    assert "0.512" in label_free_note() and "0.432" in label_free_note()
    assert "43%" in aware_note()


def test_views_type_no_report_numbers():
    """No accuracy-like decimal (0.945, .78) or percentage is typed into the app's prose strings."""
    import ast

    from nip_core.runtime import REPO_ROOT

    number = re.compile(r"(?<![\w.=/])(0?\.\d{2,3}|\d{1,3}%)(?![\w.])")
    offenders = []
    for f in sorted((REPO_ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if len(text.split()) >= 4 and number.search(text):
                offenders.append(f"{f.name}:{node.lineno}: {text[:80]!r}")
    assert not offenders, "\n".join(offenders)


def test_unknown_suite_is_a_clear_error():
    with pytest.raises(InputError, match="no shipped report"):
        results.headline("paper-nothing")


def test_shipped_suites_are_the_result_files_present(tmp_path, monkeypatch):
    shutil.copy(results.RESULTS_DIR / "paper-mnist-report.json", tmp_path / "paper-mnist-report.json")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    assert results.shipped_suites() == {"paper-mnist": "paper-mnist-report.json"}
    shutil.copy(tmp_path / "paper-mnist-report.json", tmp_path / "paper-cifar10.json")   # a new report appears
    assert list(results.shipped_suites()) == ["paper-mnist", "paper-cifar10"]
    with pytest.raises(InputError, match="no shipped report for suite 'paper-imagenet'"):
        results.headline("paper-imagenet")


def test_read_result_accepts_every_shipped_file_and_refuses_others():
    for f in results.RESULTS_DIR.glob("*.json"):
        raw = f.read_bytes()
        if b'"rows"' not in raw:           # app_speed.json, load.json: not evaluation results
            with pytest.raises(InputError, match="not an evaluation result"):
                results.read_result(raw, f.name)
            continue
        r = results.read_result(raw, f.name)
        assert r["attacks"] and r["defenses"] and r["rows"]
    bad = [(b"\xff\xfe", "not a JSON file"), (b"[1, 2]", "not an evaluation result"),
           (b'{"model": "m", "rows": [], "summary": {}}', "non-empty list"),
           (b'{"model": "m", "rows": [{"attack": "a", "defense": "d", "defended_adv_accuracy": 7}], '
            b'"summary": {"mean_adv_accuracy": {}, "benign_accuracy": {}}}', "accuracies lie in"),
           (b" " * (results.MAX_RESULT_BYTES + 1), "over the")]
    for data, words in bad:
        with pytest.raises(InputError, match=words):
            results.read_result(data, "x.json")
