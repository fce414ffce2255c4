"""Label-free NIP with benign-neighbour class selection (nip_core.nip_variants, issue 6)."""
import torch

from nip_core.attacks import run_attack
from nip_core.defenses import DEFENSES, apply_defense
from nip_core.influence import influence_profile, layer_output
from nip_core.nip_variants import BenignBank, layer_outputs, neighbour_selector, nip_neighbours


def test_benign_bank_votes_by_hand():
    feats = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    bank = BenignBank(feats, torch.tensor([0, 0, 1]), mean=torch.zeros(2), std=torch.ones(2))
    v = bank.votes(torch.tensor([[2.0, 0.0], [0.0, 3.0]]), k=2, num_classes=3)
    # first input (1,0): nearest rows 0 and 1, both class 0; second (0,1): rows 2 (class 1) and 1 (class 0)
    assert torch.equal(v, torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    sim, _ = bank.neighbours(torch.tensor([[2.0, 0.0]]), k=2)
    assert torch.allclose(sim, torch.tensor([0.9]))            # mean of cosines 1.0 and 0.8


def test_layer_outputs_match_single_layer_hook(lenet, digits):
    x = digits[0][:3]
    with lenet.lock:
        outs, logits = layer_outputs(lenet, x, ["conv2", "fc1"])
    assert torch.allclose(outs["fc1"], layer_output(lenet, x, "fc1"))
    assert torch.allclose(outs["conv2"], layer_output(lenet, x, "conv2"))
    assert torch.allclose(logits, lenet.logits(x))


def test_benign_digits_pass_unchanged_and_correct(lenet, digits):
    x, y = digits
    flagged, _, _ = neighbour_selector(lenet, ["conv1", "conv2"])(x, 0.01)
    assert not flagged.any()                # the detectors judge all eight benign digits benign ...
    r = apply_defense(lenet, "nip-neighbours", x, seed=0)
    assert torch.equal(r.x_def, x)          # ... so they pass untouched and stay correct
    assert torch.equal(lenet.predict(r.x_def), y)


def test_detector_false_alarm_is_calibrated_on_benign_references(lenet):
    sel = neighbour_selector(lenet, ["conv1", "conv2"])
    for name, t in sel.thresholds(0.05).items():
        assert abs(float((sel.reference_scores[name] > t).float().mean()) - 0.05) < 0.01, name


def test_false_alarm_zero_never_defends(lenet, digits):
    x, _ = digits
    adv = run_attack(lenet, "fgsm", x, digits[1], {"eps": 0.3}, seed=0).x_adv
    assert torch.equal(apply_defense(lenet, "nip-neighbours", adv, {"false_alarm": 0.0}).x_def, adv)


def test_defends_fgsm_toward_neighbour_class_within_budget(lenet, digits):
    x, y = digits
    adv = run_attack(lenet, "fgsm", x, y, {"eps": 0.3}, seed=0).x_adv
    prof = influence_profile(lenet, "fc1")
    xd, used = nip_neighbours(lenet, adv, prof, select_layers=["conv1", "conv2"], neighbours=25, false_alarm=0.01,
                              k=0.2, budget=0.3, steps=20, step_size=0.03)
    flagged, votes, _ = neighbour_selector(lenet, ["conv1", "conv2"])(adv, 0.01)
    touched = used >= 0
    assert touched.any() and torch.equal(touched, flagged)            # NIP ran exactly on the flagged inputs
    assert torch.equal(used[touched], votes[touched].argmax(1))       # ... toward the vote winner
    assert torch.equal(xd[~touched], adv[~touched])
    assert (xd - adv).abs().max() <= 0.3 + 1e-6 and xd.min() >= 0 and xd.max() <= 1
    # NIP reaches the chosen class, and on these digits that beats no defense
    assert (lenet.predict(xd[touched]) == used[touched]).float().mean() >= 0.8
    assert (lenet.predict(xd) == y).sum() > (lenet.predict(adv) == y).sum()


def test_deterministic_and_registered_as_nip(lenet, digits):
    x, y = digits
    adv = run_attack(lenet, "fgsm", x, y, {"eps": 0.2}, seed=0).x_adv
    a = apply_defense(lenet, "nip", adv, {"candidates": 2}).x_def
    b = apply_defense(lenet, "nip", adv, {"candidates": 2}).x_def
    assert torch.equal(a, b)
    assert DEFENSES["nip"].transform is DEFENSES["nip-neighbours"].transform
    assert "nip-topk" in DEFENSES and DEFENSES["nip-topk"].deployable
