"""NIP does what the method says on real digits: front up, tail down, and (oracle) restores."""
import torch

from nip_core.attacks import run_attack
from nip_core.defenses import apply_defense
from nip_core.influence import influence_profile, neuron_activations
from nip_core.nip import inverse_perturbation, nip_defend


def _group_means(model, x, layer, fm, tm):
    a = neuron_activations(model, x, layer)
    return a[:, fm].mean(1), a[:, tm].mean(1)


def test_inverse_perturbation_strengthens_front_and_weakens_tail(lenet, digits):
    x, y = digits
    prof = influence_profile(lenet, "fc1")
    adv = run_attack(lenet, "pgd", x, y, {"eps": 0.2}, seed=0).x_adv
    for c in range(3):
        fm, tm = prof.masks(int(y[c]), 0.2)
        xd = inverse_perturbation(lenet, adv[c:c + 1], fm, tm, "fc1", budget=0.2, steps=10, step_size=0.03)
        f0, t0 = _group_means(lenet, adv[c:c + 1], "fc1", fm, tm)
        f1, t1 = _group_means(lenet, xd, "fc1", fm, tm)
        assert f1 > f0 and t1 <= t0
        assert (xd - adv[c:c + 1]).abs().max() <= 0.2 + 1e-6 and xd.min() >= 0 and xd.max() <= 1


def test_zero_budget_changes_nothing(lenet, digits):
    prof = influence_profile(lenet, "fc1")
    fm, tm = prof.masks(None, 0.2)
    x = digits[0][:2]
    assert torch.equal(inverse_perturbation(lenet, x, fm, tm, "fc1", 0.0, 5, 0.05), x)


def test_oracle_restores_pgd_and_keeps_benign(lenet, digits):
    x, y = digits
    adv = run_attack(lenet, "pgd", x, y, {}, seed=0).x_adv
    assert (lenet.predict(adv) == y).float().mean() <= 0.25
    restored = apply_defense(lenet, "nip-oracle", adv, y=y).x_def
    assert (lenet.predict(restored) == y).float().mean() >= 0.85
    benign = apply_defense(lenet, "nip-oracle", x, y=y).x_def
    assert torch.equal(lenet.predict(benign), y)


def test_topk_mode_picks_a_candidate_class(lenet, digits):
    x, y = digits
    prof = influence_profile(lenet, "fc1")
    xd, used = nip_defend(lenet, x, prof, mode="topk", k=0.2, budget=0.3, steps=5, step_size=0.05, candidates=3)
    top3 = lenet.logits(x).topk(3, 1).indices
    assert all(int(u) in top3[i].tolist() for i, u in enumerate(used))
    assert xd.shape == x.shape
