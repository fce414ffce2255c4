"""Every registered attack and defense runs, respects its contract, and validates parameters."""
import math

import pytest
import torch

from nip_core.attacks import ATTACKS, run_attack
from nip_core.defenses import DEFENSES, apply_defense
from nip_core.errors import InputError

# Small iteration counts keep the suite fast; the attack code paths are the real ones.
QUICK = {
    "bim": {"max_iter": 5}, "pgd": {"max_iter": 10, "eps_step": 0.05}, "pgd-l2": {"max_iter": 10},
    "mifgsm": {"max_iter": 5}, "apgd": {"max_iter": 5}, "cw-l2": {"max_iter": 5, "binary_search_steps": 2},
    "deepfool": {"max_iter": 10}, "ead": {"max_iter": 5, "binary_search_steps": 1}, "square": {"max_iter": 30},
    "hsj": {"max_iter": 2, "max_eval": 50, "init_eval": 10}, "pixel": {"max_iter": 2, "pixels": 3},
    "simba": {"max_iter": 50}, "universal": {"max_iter": 1}, "autoattack": {"max_iter": 5, "square_queries": 20},
}
# Attacks that reliably fool LeNet on these digits even with QUICK settings.
STRONG = {"fgsm", "pgd", "pgd-l2", "mifgsm", "apgd", "cw-l2", "deepfool", "hsj", "autoattack"}


def test_at_least_thirteen_attacks_both_access_kinds():
    assert len(ATTACKS) >= 13
    assert {a.access for a in ATTACKS.values()} == {"white-box", "black-box"}
    assert sum(a.targeted_ok for a in ATTACKS.values()) >= 8


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_runs_and_respects_budget(lenet, digits, name):
    x, y = digits
    x, y = x[:4], y[:4]
    r = run_attack(lenet, name, x, y, QUICK.get(name, {}), seed=0)
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == torch.float32
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    d = (r.x_adv - x).flatten(1)
    if ATTACKS[name].norm == "Linf" and "eps" in r.params:
        assert d.abs().max() <= r.params["eps"] + 1e-5
    if name == "pgd-l2":
        assert d.norm(dim=1).max() <= r.params["eps"] + 1e-4
    if name in STRONG:
        assert (lenet.predict(r.x_adv) != y).any(), f"{name} fooled none of 4 digits"
    # Same seed, same adversarials.
    again = run_attack(lenet, name, x, y, QUICK.get(name, {}), seed=0)
    assert torch.equal(again.x_adv, r.x_adv)


def test_targeted_attack_hits_target(lenet, digits):
    x, y = digits
    r = run_attack(lenet, "pgd", x[:4], y[:4], {"target": 3, "max_iter": 40, "eps_step": 0.02}, seed=0)
    assert (lenet.predict(r.x_adv) == 3).float().mean() >= 0.75


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_defense_runs_is_deterministic_and_stays_in_range(lenet, digits, name):
    x, y = digits
    params = {"max_iter": 2} if name == "tvm" else {}
    r = apply_defense(lenet, name, x[:4], params, y=y[:4], seed=1, x_benign=x[:4])
    assert r.x_def.shape == x[:4].shape and 0 <= float(r.x_def.min()) and float(r.x_def.max()) <= 1
    again = apply_defense(lenet, name, x[:4], params, y=y[:4], seed=1, x_benign=x[:4])
    assert torch.equal(r.x_def, again.x_def)
    if "budget" in r.params:
        assert (r.x_def - x[:4]).abs().max() <= r.params["budget"] + 1e-5


@pytest.mark.parametrize("bad, match", [
    ({"eps": 2.0}, r"'eps' must be float in \[0, 1\]"),
    ({"eps": float("nan")}, "'eps'"),
    ({"eps": "abc"}, "'eps'"),
    ({"max_iter": 2.5}, "whole number"),
    ({"target": 10}, "'target'"),
    ({"nonsense": 1}, "no parameter 'nonsense'"),
])
def test_bad_attack_params_are_named(lenet, bad, match):
    params = {"max_iter": 5} if "max_iter" not in bad else {}
    with pytest.raises(InputError, match=match):
        ATTACKS["pgd"].params_for(lenet, params | bad)


def test_untargetable_attack_refuses_target(lenet):
    with pytest.raises(InputError):
        ATTACKS["deepfool"].params_for(lenet, {"target": 1})


def test_oracle_needs_labels(lenet, digits):
    with pytest.raises(InputError, match="true labels"):
        apply_defense(lenet, "nip-oracle", digits[0][:2])


def test_dataset_defaults_differ(lenet):
    from nip_core.models import load_model
    eff = load_model("efficientnet-lite0")
    assert ATTACKS["pgd"].params_for(lenet)["eps"] == 0.3
    assert math.isclose(ATTACKS["pgd"].params_for(eff)["eps"], 4 / 255)
    assert DEFENSES["nip"].params_for(eff)["budget"] < DEFENSES["nip"].params_for(lenet)["budget"]


@pytest.mark.parametrize("model_name", ["lenet-mnist", "lenet-fashion-at", "efficientnet-lite0"])
def test_every_unit_has_valid_defaults_for_every_model(model_name):
    from nip_core.models import load_model
    model = load_model(model_name)
    for unit in list(ATTACKS.values()) + list(DEFENSES.values()):
        assert isinstance(unit.params_for(model), dict), unit.name
