"""The run type of the front door (nip_core.run.Run): hashable, validated once, normalised."""
from __future__ import annotations

import pytest

from nip_core.errors import InputError
from nip_core.models import load_model
from nip_core.run import Run


@pytest.fixture(scope="module")
def lenet():
    return load_model("lenet-mnist")


def test_defaults_are_dropped_so_one_setting_has_one_key(lenet):
    a = Run.build(lenet, "0", attack="pgd", attack_params={"eps": 0.2, "max_iter": 5})
    b = Run.build(lenet, "0", attack="pgd", attack_params={"max_iter": 5})
    default_eps = dict(a.attack_params).get("eps")
    assert default_eps is None or default_eps == 0.2
    assert (a == b) == (default_eps is None)
    assert hash(a) == hash(Run.build(lenet, "0", attack="pgd", attack_params={"eps": 0.2, "max_iter": 5}))
    assert a.attack_kwargs["max_iter"] == 5 and a.layer == lenet.spec.default_layer


def test_nip_defenses_act_at_the_runs_layer_method_and_k(lenet):
    r = Run.build(lenet, "0", defense="nip-oracle", layer="fc1", k=0.1)
    assert r.defense_kwargs["layer"] == "fc1" and r.defense_kwargs["k"] == 0.1
    assert "layer" not in Run.build(lenet, "0", defense="jpeg", layer="fc1").defense_kwargs


@pytest.mark.parametrize("kw, message", [
    ({"attack": "nope"}, "unknown attack 'nope'"), ({"defense": "nope"}, "unknown defense 'nope'"),
    ({"layer": "fc9"}, "no layer 'fc9'"), ({"k": 0.7}, "must be float in"), ({"seed": -1}, "seed must be"),
    ({"attack": "pgd", "attack_params": {"eps": -3}}, "eps"),
])
def test_bad_settings_raise_one_input_error(lenet, kw, message):
    with pytest.raises(InputError, match=message):
        Run.build(lenet, "0", **kw)


def test_differences_name_what_changed_first(lenet):
    a = Run.build(lenet, "0", attack="pgd")
    b = a.with_(model="lenet-fashion", attack="fgsm")
    assert a.differences(b) == ["model lenet-mnist → lenet-fashion", "attack pgd → fgsm"]
    assert a.differences(a) == []


def test_a_new_unit_in_with_starts_from_its_defaults(lenet):
    r = Run.build(lenet, "0", attack="pgd", attack_params={"max_iter": 5}, defense="nip-oracle", layer="fc1")
    assert r.with_(defense="none").defense_params == ()
    assert r.with_(defense="jpeg").with_(defense="nip-oracle").defense_kwargs == r.defense_kwargs
    assert r.with_(attack="fgsm").attack_params == () and r.with_(seed=3).attack_params == r.attack_params


def test_a_nip_defense_is_named_once_in_differences(lenet):
    nip = Run.build(lenet, "0", defense="nip-oracle", layer="fc1")
    # a NIP defense's layer, method and k are the run's own: named once, as such
    assert nip.differences(nip.with_(defense="median", defense_params=())) == ["defense nip-oracle → median"]
