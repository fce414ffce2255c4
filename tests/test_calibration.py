"""Calibration of the label-free nip and the never-harm rule (issue 12)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from nip_core.calibration import calibrate, calibration_for, forget_user_calibration
from nip_core.defenses import apply_defense
from nip_core.errors import InputError
from nip_core.label_free import uses_neighbours
from nip_core.models import load_model
from nip_core.runtime import REPO_ROOT


@pytest.fixture()
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NIP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def cifar():
    return load_model("resnet8-cifar10")


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar20")
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from export_cifar10_samples import export

    assert export(out) == 20
    return out


def test_without_calibration_nip_passes_inputs_through(cifar, own_cache):
    """Never harm: no calibration, no change (the old top-K fallback flipped benign photos)."""
    from nip_core.data import heldout_split

    assert calibration_for(cifar) is None and not uses_neighbours(cifar)
    x, y = heldout_split(cifar, "all")
    out = apply_defense(cifar, "nip", x).x_def
    assert torch.equal(out, x)
    assert (cifar.predict(out) == y).sum() == len(y)


def test_mnist_builtin_calibration_matches_the_documented_splits(lenet):
    from nip_core.data import benign_reference, heldout_split

    cal = calibration_for(lenet)
    xr, yr = cal.reference(400)
    xb, yb = benign_reference(lenet, 400)
    assert torch.equal(xr, xb) and torch.equal(yr, yb)
    assert torch.equal(cal.calib_x, heldout_split(lenet, "calib")[0])


def test_user_calibration_is_cached_reused_and_forgotten(cifar, cifar_folder, own_cache):
    from nip_core.sources.userdata import load_labelled_data

    data = load_labelled_data(cifar_folder, class_names=cifar.class_names, channels=3, size=32, preprocess="natural")
    cal, path = calibrate(cifar, data, seed=0)
    assert path.exists() and path.parent == own_cache / "calibration"
    mtime = path.stat().st_mtime_ns
    again, path2 = calibrate(cifar, data, seed=0)
    assert path2 == path and path.stat().st_mtime_ns == mtime          # reused, not rebuilt
    used = calibration_for(cifar)
    assert used is not None and used.data_sha256 == data.data_sha256 and uses_neighbours(cifar)
    assert torch.equal(used.bank_x, cal.bank_x)
    # the bank holds only images the model gets right, from the calib split
    assert (cifar.predict(used.bank_x) == used.bank_y).all()
    forget_user_calibration(cifar)
    assert calibration_for(cifar) is None


def test_calibrate_without_data_needs_a_dataset_of_its_own(cifar, own_cache):
    with pytest.raises(InputError, match="--data"):
        calibrate(cifar)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nip_core", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=900)


def test_cli_evaluate_on_user_data_reports_data_and_calibration(cifar, cifar_folder, tmp_path):
    env = os.environ | {"NIP_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "r.json"
    r = _cli("evaluate", "--model", "resnet8-cifar10", "--data", str(cifar_folder), "--attacks", "fgsm[eps=0.0314]",
             "--defenses", "none,nip", "--no-adaptive", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["data"]["n_found"] == 20 and res["data"]["skipped"] == []
    # every image of the folder the model classifies correctly (the README's "18 of 20"), counted here
    from nip_core.sources.cifar10 import cifar10_samples
    x, y, _ = cifar10_samples()
    assert res["n_images"] == int((cifar.predict(x) == y).sum())
    assert res["summary"]["benign_accuracy"]["nip"] == res["summary"]["benign_accuracy"]["none"] == 1.0
    assert res["calibration"]["nip"]["calibrated"] is False
    assert "no calibration for resnet8-cifar10" in r.stderr
    bad = _cli("evaluate", "--model", "resnet8-cifar10", "--data", str(tmp_path / "missing"), "--attacks", "fgsm",
               "--defenses", "none", "--out", str(tmp_path / "x.json"), env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
