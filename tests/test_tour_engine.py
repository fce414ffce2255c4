"""Engine pieces of the classroom (issue 15): the tour's example images, calibration made once."""
from __future__ import annotations

import json

import torch

from nip_core.attacks import run_attack
from nip_core.calibration import calibration_for
from nip_core.data import gallery
from nip_core.defenses import apply_defense
from nip_core.explain import demo_image
from nip_core.runtime import ASSETS


def _item(model, key):
    return next(it for it in gallery(model.spec.gallery) if it.key == key)


def test_demo_image_is_fooled_by_the_attack_and_restored_by_the_oracle(lenet):
    key = demo_image(lenet, "fgsm", restore=("nip-oracle", "nip"))
    it = _item(lenet, key)
    x, y = it.image[None], torch.tensor([it.label])
    assert int(lenet.predict(x)[0]) == it.label
    xa = run_attack(lenet, "fgsm", x, y).x_adv
    assert int(lenet.predict(xa)[0]) != it.label
    for d in ("nip-oracle", "nip"):
        xd = apply_defense(lenet, d, xa, y=y if d == "nip-oracle" else None).x_def
        assert int(lenet.predict(xd)[0]) == it.label


def test_demo_image_falls_back_to_the_best_partial_match(lenet):
    """No defense 'none' restores a fooled digit: the wish fails everywhere, so the first image that is
    classified correctly and fooled wins."""
    key = demo_image(lenet, "fgsm", restore=("none",))
    for it in gallery("mnist"):
        x, y = it.image[None], torch.tensor([it.label])
        if int(lenet.predict(x)[0]) == it.label and int(lenet.predict(run_attack(lenet, "fgsm", x, y).x_adv)[0]) != it.label:
            assert key == it.key
            break


def test_shipped_tour_examples_name_gallery_images_of_the_current_weights(lenet):
    shipped = json.loads((ASSETS / "tour.json").read_text())
    entry = shipped["lenet-mnist"]
    assert entry["weights_sha256"] == lenet.weights_sha256
    assert entry["aware"] in {it.key for it in gallery("mnist")}


def test_calibration_is_made_once_per_process(lenet, monkeypatch):
    import nip_core.calibration as cal

    first = calibration_for(lenet)
    calls = []
    monkeypatch.setattr(cal, "heldout_split", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        AssertionError("rebuilt")))
    monkeypatch.setattr(cal, "_load", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        AssertionError("re-read")))
    assert calibration_for(lenet) is first and not calls
