"""Engine pieces of the classroom (issue 15): the tour's example images, calibration made once."""
from __future__ import annotations

import json

import torch

from nip_core.attacks import run_attack
from nip_core.calibration import calibration_for
from nip_core.data import gallery
from nip_core.defenses import apply_defense
from nip_core.analyses.explain import demo_image
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


def test_contrast_image_falls_back_to_the_first_image_the_attack_fools(lenet):
    """One model twice: no image is fooled on A and held on B, so the first correct, fooled one wins."""
    from nip_core.analyses.compare import contrast_image

    key = contrast_image(lenet, lenet, "fgsm")
    for it in gallery("mnist"):
        x, y = it.image[None], torch.tensor([it.label])
        if int(lenet.predict(x)[0]) == it.label and int(lenet.predict(run_attack(lenet, "fgsm", x, y).x_adv)[0]) != it.label:
            assert key == it.key
            break


def test_contrast_image_needs_one_dataset(lenet):
    import pytest

    from nip_core.analyses.compare import contrast_image
    from nip_core.errors import InputError
    from nip_core.models import load_model

    with pytest.raises(InputError, match="different example images"):
        contrast_image(lenet, load_model("lenet-fashion"))


def test_robust_step_garment_fools_the_standard_model_and_not_the_robust_one():
    """The tour's robust-model step: the same garment and FGSM on lenet-fashion and lenet-fashion-at."""
    from app.tour import BY_KEY
    from nip_core.analyses.compare import contrast_image
    from nip_core.models import load_model

    step = BY_KEY["robust"]
    standard, robust = (load_model(m) for m in step.pair)
    it = _item(standard, contrast_image(standard, robust, step.attack))
    x, y = it.image[None], torch.tensor([it.label])
    assert int(standard.predict(x)[0]) == int(robust.predict(x)[0]) == it.label
    assert int(standard.predict(run_attack(standard, step.attack, x, y).x_adv)[0]) != it.label
    assert int(robust.predict(run_attack(robust, step.attack, x, y).x_adv)[0]) == it.label
