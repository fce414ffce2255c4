"""Cache keys (issue 22 §4): the evaluation cache follows the code as it runs and the shipped files'
contents; nip's neighbour bank and lenet-mnist's calibration are read back from disk in a fresh
process, identical, and rebuilt when their key changes. Edits happen on copies, never on the repo."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import nip_core.calibration as calibration
import nip_core.fingerprint as fingerprint
import nip_core.label_free as label_free
from nip_core.fingerprint import code_fingerprint, shipped_fingerprint, stripped_source
from nip_core.evaluation.shards import Shard, shard_key

ROOT = Path(__file__).resolve().parent.parent


def test_stripped_source_drops_comments_and_docstrings_only():
    base = "def f(x):\n    return x + 1\n"
    noted = ('"""Module."""\n# a comment\ndef f(x):  # why\n    """Add one."""\n\n    return x + 1  # more\n')
    assert stripped_source(noted) == stripped_source(base)
    assert stripped_source(base.replace("1", "2")) != stripped_source(base)
    assert stripped_source(base.replace("x + 1", "1 + x")) != stripped_source(base)
    # a function that is only a docstring still has a body; a string that is an argument stays
    assert stripped_source('def g():\n    "doc"\n') == "def g():\n    pass"
    assert "'a'" in stripped_source("print('a')\n")


@pytest.fixture(scope="module")
def engine_copies(tmp_path_factory):
    """Three copies of ``nip_core``: as it is, with comments and docstrings edited, and with one
    default changed (plus an edit of a file that never computes a number)."""
    root = tmp_path_factory.mktemp("engines")
    same, comments, constant = (root / n / "nip_core" for n in ("same", "comments", "constant"))
    for dst in (same, comments, constant):
        shutil.copytree(ROOT / "nip_core", dst, ignore=shutil.ignore_patterns("__pycache__"))
    nip = comments / "nip.py"
    text = nip.read_text()
    first_def = text.index("\ndef ")
    nip.write_text(text[:first_def] + "\n# a new comment line\n" + text[first_def:]
                   .replace('"""', '"""An edited docstring. ', 1))
    drawn = comments / "figures" / "explore.py"
    drawn.write_text(drawn.read_text() + "\nEDITED_BUT_NOT_NUMERIC = 1\n")
    evaluate = constant / "evaluation" / "evaluate.py"
    assert "SHARD_SIZE = 64\n" in evaluate.read_text()
    evaluate.write_text(evaluate.read_text().replace("SHARD_SIZE = 64\n", "SHARD_SIZE = 65\n"))
    return same, comments, constant


def test_code_fingerprint_ignores_comments_but_not_constants(engine_copies):
    same, comments, constant = engine_copies
    assert code_fingerprint(same) == code_fingerprint()            # the path is not part of it
    assert code_fingerprint(comments) == code_fingerprint()
    assert code_fingerprint(constant) != code_fingerprint()


def _key() -> str:
    return shard_key({"model": "lenet-mnist", "seed": 0}, Shard("benign", 0, 0, 4))


def test_shard_key_follows_the_code_as_it_runs(engine_copies, monkeypatch):
    same, comments, constant = engine_copies
    original = _key()
    for root, expect_same in ((same, True), (comments, True), (constant, False)):
        monkeypatch.setattr(fingerprint, "ENGINE_ROOT", root)
        assert (_key() == original) is expect_same, root


def test_shard_key_follows_the_shipped_profiles_and_calibrations(tmp_path, monkeypatch):
    assets = ROOT / "assets"
    copies = {}
    for name in ("same", "profile", "calibration"):
        copies[name] = tmp_path / name
        for sub in ("models", "profiles", "calibration"):
            shutil.copytree(assets / sub, copies[name] / sub)
    # a changed shipped profile: one neuron's global score
    prof = sorted((copies["profile"] / "profiles").glob("lenet-mnist-fc1-*.safetensors"))[0]
    t = load_file(str(prof))
    t["global"][0] += 1.0
    save_file(t, str(prof))
    # a changed shipped calibration file (bytes appended: a different file, same name)
    cal = sorted((copies["calibration"] / "calibration").glob("*.npz"))[0]
    cal.write_bytes(cal.read_bytes() + b"\0")

    original = _key()
    assert shipped_fingerprint(copies["same"]) == shipped_fingerprint()
    for name, expect_same in (("same", True), ("profile", False), ("calibration", False)):
        monkeypatch.setattr(fingerprint, "SHIPPED_ROOT", copies[name])
        assert (_key() == original) is expect_same, name


def test_shard_key_covers_the_shards_images_and_the_calibration(lenet, monkeypatch):
    from nip_core.evaluation.evaluate import EvalContext, EvalJob

    ctx = EvalContext(EvalJob("lenet-mnist", [("fgsm", {})], [("none", {}), ("nip", {})], 8, split="tune"))
    first, second = Shard("benign", 0, 0, 4), Shard("benign", 0, 4, 8)
    a, b = ctx.key_fields(first, "cpu"), ctx.key_fields(second, "cpu")
    assert a["images"] != b["images"] and a["calibration"] == calibration.calibration_for(lenet).key
    no_nip = EvalContext(EvalJob("lenet-mnist", [("fgsm", {})], [("none", {})], 8, split="tune"))
    assert no_nip.key_fields(first, "cpu")["calibration"] is None
    assert no_nip.key_fields(first, "cpu")["images"] == a["images"]


# ---------------------------------------------------------------------------------------------
# nip's neighbour bank and lenet-mnist's calibration on disk

DUMP = r"""
import sys
import torch
import nip_core.calibration as calibration
import nip_core.label_free as label_free
from nip_core.defenses import DEFENSES
from nip_core.models import load_model

def rebuilt(*a, **k):
    raise AssertionError("rebuilt instead of read from the disk cache")

# a fresh process that finds both on disk never runs the passes that build them
calibration.benign_reference = calibration.heldout_split = rebuilt
label_free._outputs = rebuilt
m = load_model("lenet-mnist")
cal = calibration.calibration_for(m)
sel = label_free.selector_for(m, DEFENSES.get_unit("nip").params_for(m, {}))
torch.save({"selector": sel.state()[0], "bank_x": cal.bank_x, "bank_y": cal.bank_y, "calib_x": cal.calib_x,
            "key": cal.key}, sys.argv[1])
"""


@pytest.fixture()
def fresh_memory(tmp_path, monkeypatch):
    """An empty cache folder, and this process's memory of calibrations and banks set aside."""
    monkeypatch.setenv("NIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "_MEMO", {})
    monkeypatch.setattr(label_free, "_BANKS", {})
    return tmp_path / "cache"


def test_bank_and_calibration_are_read_from_disk_in_a_fresh_process(lenet, fresh_memory, tmp_path):
    from nip_core.defenses import DEFENSES

    p = DEFENSES.get_unit("nip").params_for(lenet, {})
    cal = calibration.calibration_for(lenet)
    sel = label_free.selector_for(lenet, p)
    banks = list((fresh_memory / "banks").glob("*.safetensors"))
    assert len(banks) == 1 and calibration.builtin_cache_path(lenet).exists()

    dump = tmp_path / "dump.pt"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", DUMP, str(dump)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    other = torch.load(dump)
    assert other["key"] == cal.key
    for k in ("bank_x", "bank_y", "calib_x"):
        assert torch.equal(other[k], getattr(cal, k)), k
    mine = sel.state()[0]
    assert set(other["selector"]) == set(mine)
    for k, v in mine.items():
        assert torch.equal(other["selector"][k], v), k


def test_a_changed_key_builds_again_and_a_damaged_file_is_rebuilt(lenet, fresh_memory, monkeypatch):
    import dataclasses

    from nip_core.data import DATASETS

    sel = label_free.neighbour_selector(lenet, ["conv1"], 10, 400, 30.0, 0.4)
    [path] = (fresh_memory / "banks").glob("*.safetensors")
    stamp = path.stat().st_mtime_ns
    # another parameter of the bank: another file, the first one untouched
    other = label_free.neighbour_selector(lenet, ["conv1"], 10, 399, 30.0, 0.4)
    assert len(list((fresh_memory / "banks").glob("*.safetensors"))) == 2 and path.stat().st_mtime_ns == stamp
    cal = calibration.calibration_for(lenet)
    assert len(other.banks["conv1"].labels) == len(cal.reference(399)[1]) < len(cal.reference(400)[1])
    # a damaged file is built again, identical to the first build
    path.write_bytes(b"not a bank")
    monkeypatch.setattr(label_free, "_BANKS", {})
    again = label_free.neighbour_selector(lenet, ["conv1"], 10, 400, 30.0, 0.4)
    for k, v in sel.state()[0].items():
        assert torch.equal(again.state()[0][k], v), k
    assert path.stat().st_size > 1000

    # the built-in calibration's key covers the dataset's source file: another file, another key
    before = calibration.builtin_cache_path(lenet)
    changed = fresh_memory / "mnist_changed.csv.gz"
    changed.write_bytes(DATASETS["mnist"].sources()[0].read_bytes() + b"\0")
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], sources=lambda: [changed]))
    assert calibration.builtin_cache_path(lenet) != before
