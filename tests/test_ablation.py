"""The ablation units of issue 13: counter-attack (nip without neurons), its oracle, and the
authors' released protocol (nip-authors)."""
from __future__ import annotations

import pytest
import torch

from nip_core.attacks import run_attack
from nip_core.defenses import DEFENSES, apply_defense
from nip_core.errors import InputError
from nip_core.nip import logit_perturbation


@pytest.fixture(scope="module")
def adversarial(lenet, digits):
    x, y = digits
    x, y = x[:24], y[:24]
    return x, y, run_attack(lenet, "pgd", x, y, {"eps": 0.3}, seed=0).x_adv


def test_logit_perturbation_moves_toward_the_target_within_budget(lenet, digits):
    x, y = digits
    target = (y[:16] + 1) % 10
    xd = logit_perturbation(lenet, x[:16], target, budget=0.3, steps=20, step_size=0.03)
    assert (xd - x[:16]).abs().max() <= 0.3 + 1e-6 and 0 <= xd.min() and xd.max() <= 1
    assert (lenet.predict(xd) == target).float().mean() >= 0.9


def test_counter_attack_shares_nips_detection_and_class_choice(lenet, digits, adversarial):
    from nip_core.label_free import nip_targets, selector_for

    x, y, adv = adversarial
    # benign digits that nip leaves alone, counter-attack leaves alone too (same detector)
    for name in ("nip", "counter-attack"):
        out = apply_defense(lenet, name, x, seed=0).x_def
        assert torch.equal(out, x), name
    p = DEFENSES["counter-attack"].params_for(lenet)
    dec = nip_targets(lenet, selector_for(lenet, p), adv, p, seed=0)
    ca = apply_defense(lenet, "counter-attack", adv, seed=0).x_def
    flagged = dec["flagged"]
    assert flagged.any()
    # where flagged, the counter-attack lands on the class nip is pointed at
    assert (lenet.predict(ca[flagged]) == dec["target"][flagged]).float().mean() >= 0.9
    assert torch.equal(ca[~flagged], adv[~flagged])
    assert not DEFENSES["counter-attack"].needs_labels and DEFENSES["counter-attack"].deployable


def test_counter_attack_oracle_needs_labels_and_restores(lenet, adversarial):
    x, y, adv = adversarial
    with pytest.raises(InputError, match="true labels"):
        apply_defense(lenet, "counter-attack-oracle", adv)
    out = apply_defense(lenet, "counter-attack-oracle", adv, y=y).x_def
    assert (lenet.predict(out) == y).float().mean() >= 0.95
    assert not DEFENSES["counter-attack-oracle"].deployable


def test_nip_authors_is_one_rms_step_from_the_benign_gradient(lenet, adversarial):
    x, y, adv = adversarial
    with pytest.raises(InputError, match="benign image"):
        apply_defense(lenet, "nip-authors", adv)
    r0 = apply_defense(lenet, "nip-authors", adv, {"eta": 0.0}, x_benign=x).x_def
    assert torch.equal(r0, adv)                                   # η = 0: nothing moves
    eta = 0.05
    r = apply_defense(lenet, "nip-authors", adv, {"eta": eta}, x_benign=x).x_def
    step = (r - adv).flatten(1)
    # unit RMS before scaling: the step's RMS is η wherever clipping to [0,1] did not cut it
    unclipped = ((adv + (r - adv)) > 0).flatten(1) & ((adv + (r - adv)) < 1).flatten(1)
    rms = torch.stack([step[i][unclipped[i]].pow(2).mean().sqrt() for i in range(len(step))])
    assert torch.allclose(rms, torch.full_like(rms, eta), rtol=0.35)
    assert not DEFENSES["nip-authors"].deployable and DEFENSES["nip-authors"].needs_benign
