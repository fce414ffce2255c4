"""Label-free NIP with benign-neighbour class selection (nip_core.label_free, issue 6)."""
import pytest
import torch

from nip_core.attacks import run_attack
from nip_core.defenses import DEFENSES, apply_defense
from nip_core.influence import influence_profile, layer_output
from nip_core.label_free import BenignBank, layer_outputs, neighbour_selector, nip_neighbours


def test_benign_bank_votes_by_hand():
    feats = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    bank = BenignBank(feats, torch.tensor([0, 0, 1]), mean=torch.zeros(2), std=torch.ones(2))
    v = bank.votes(torch.tensor([[2.0, 0.0], [0.0, 3.0]]), k=2, num_classes=3)
    # first input (1,0): nearest rows 0 and 1, both class 0; second (0,1): rows 2 (class 1) and 1 (class 0)
    assert torch.equal(v, torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    sim, lab = bank.neighbours(torch.tensor([[2.0, 0.0]]), k=2)
    assert torch.allclose(sim, torch.tensor([[1.0, 0.8]])) and torch.equal(lab, torch.tensor([[0, 0]]))
    # weighted: the second input's neighbours have cosines 1.0 (class 1) and 0.6 (class 0)
    w = bank.votes(torch.tensor([[0.0, 3.0]]), k=2, num_classes=3, weight=5.0)
    e = torch.exp(torch.tensor(5.0 * -0.4))
    assert torch.allclose(w, torch.tensor([[e / (1 + e), 1 / (1 + e), 0.0]]))


def test_layer_outputs_match_single_layer_hook(lenet, digits):
    x = digits[0][:3]
    with lenet.lock:
        outs, logits = layer_outputs(lenet, x, ["conv2", "fc1"])
    assert torch.allclose(outs["fc1"], layer_output(lenet, x, "fc1"))
    assert torch.allclose(outs["conv2"], layer_output(lenet, x, "conv2"))
    assert torch.allclose(logits, lenet.logits(x))


def test_benign_digits_pass_unchanged_and_correct(lenet, digits):
    x, y = digits
    flagged, _, _ = neighbour_selector(lenet, ["conv1"])(x, 0.005)
    assert not flagged.any()                # the detectors judge all eight benign digits benign ...
    r = apply_defense(lenet, "nip-neighbours", x, seed=0)
    assert torch.equal(r.x_def, x)          # ... so they pass untouched and stay correct
    assert torch.equal(lenet.predict(r.x_def), y)


def test_detectors_are_calibrated_on_the_calib_split(lenet):
    from nip_core.data import heldout_split

    sel = neighbour_selector(lenet, ["conv1"])
    xc, _ = heldout_split(lenet, "calib")
    assert sel.calibration_size == len(xc) > 400
    for name, scores in sel.reference_scores.items():
        assert len(scores) == len(xc), name
    scores, _, _ = sel.scores(xc)
    for name, t in sel.thresholds(0.05).items():
        assert torch.equal(scores[name], sel.reference_scores[name]), name
        if name == "low_margin":  # continuous; the others tie at 0 for most benign digits
            assert abs(float((scores[name] > t).float().mean()) - 0.05) < 0.01, name
        assert float((scores[name] > t).float().mean()) <= 0.05 + 1 / len(xc), name  # quantile interpolates


def test_abnormal_neurons_flag_linf_noise(lenet, digits):
    """Benign digits keep conv1 inside its benign range; FGSM 0.1 pushes many neurons out of it."""
    x, y = digits
    sel = neighbour_selector(lenet, ["conv1"])
    lo, hi = sel.ranges["conv1"]
    assert lo.shape == hi.shape == (6 * 28 * 28,) and bool((lo <= hi).all())
    t = sel.thresholds(0.005)["abnormal:conv1"]
    benign, _, _ = sel.scores(x)
    adv = run_attack(lenet, "fgsm", x, y, {"eps": 0.1}, seed=0).x_adv
    attacked, _, _ = sel.scores(adv)
    assert bool((benign["abnormal:conv1"] <= t).all())
    assert bool((attacked["abnormal:conv1"] > t).all())
    assert float(attacked["abnormal:conv1"].min()) > 5 * float(benign["abnormal:conv1"].max())


def test_false_alarm_zero_never_defends(lenet, digits):
    x, _ = digits
    adv = run_attack(lenet, "fgsm", x, digits[1], {"eps": 0.3}, seed=0).x_adv
    assert torch.equal(apply_defense(lenet, "nip-neighbours", adv, {"false_alarm": 0.0}).x_def, adv)


def test_defends_fgsm_toward_neighbour_class_within_budget(lenet, digits):
    x, y = digits
    adv = run_attack(lenet, "fgsm", x, y, {"eps": 0.3}, seed=0).x_adv
    prof = influence_profile(lenet, "fc1")
    xd, used = nip_neighbours(lenet, adv, prof, select_layers=["conv1"], neighbours=10, false_alarm=0.005,
                              k=0.2, budget=0.3, steps=20, step_size=0.03, vote_weight=30.0)
    flagged, votes, _ = neighbour_selector(lenet, ["conv1"])(adv, 0.005)
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


def test_neighbour_vote_only_where_a_calibration_exists(lenet):
    from nip_core.label_free import uses_neighbours
    from nip_core.models import load_model

    assert uses_neighbours(lenet)
    assert not uses_neighbours(load_model("resnet8-cifar10"))


def test_defense_aware_attack_fools_the_vote(lenet, digits):
    """The aware attack targets the neighbour vote as well as the model: BPDA alone over-states nip."""
    from nip_core.attacks import ATTACKS
    from nip_core.evaluation.evaluate import evaluate

    x, y = digits
    r = run_attack(lenet, "nip-aware", x, y, seed=0)
    assert r.params == {"eps": 0.3, "eps_step": 0.01, "max_iter": 40, "norm": "inf", "weight": 100.0, "surrogate": 0.3,
                        "stealth": 0.0, "targets": 3}
    assert (r.x_adv - x).abs().max() <= 0.3 + 1e-6 and r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert not (lenet.predict(r.x_adv) == y).any()
    assert torch.equal(run_attack(lenet, "nip-aware", x, y, seed=0).x_adv, r.x_adv)
    # against the raw-input vote, the attack moves the vote itself
    raw = run_attack(lenet, "nip-aware", x, y, {"targets": 1}, seed=0, against={"vote_binarize": 0.0})
    _, votes, pred = neighbour_selector(lenet, ["conv1"])(raw.x_adv, 0.005)
    assert float((votes.argmax(1) == y).float().mean()) <= 0.5 and not (pred == y).any()
    ev = evaluate("lenet-mnist", [("fgsm", {})], [("none", {}), ("nip", {})], n=8, split="tune")
    aware = ev["summary"]["adaptive_aware_accuracy"]
    assert aware["none"] is None and aware["nip"] is not None
    assert aware["nip"] <= ev["summary"]["adaptive_accuracy"]["nip"]
    (label,) = [k for k in ev["adaptive"] if k.startswith("nip[")]
    assert ev["adaptive"][label]["aware"]["attack"].startswith("nip-aware[")
    assert ATTACKS["nip-aware"].to_json()["library"] == "nip_core" and ATTACKS["fgsm"].to_json()["library"] == "ART"


def test_more_targets_only_strengthen_the_aware_attack(lenet):
    """Retrying toward the next-closest classes keeps every input the first target already won."""
    from nip_core.data import heldout_split

    x, y = heldout_split(lenet, "tune")
    x, y = x[:16], y[:16]
    dp = {"vote_binarize": 0.0}
    kept = []
    for targets in (1, 3):
        adv = run_attack(lenet, "nip-aware", x, y, {"targets": targets}, seed=0, against=dp).x_adv
        kept.append(lenet.predict(apply_defense(lenet, "nip", adv, dp, seed=0).x_def) == y)
    assert not (kept[1] & ~kept[0]).any() and kept[1].sum() <= kept[0].sum()


def test_aware_attack_refuses_models_where_nip_does_not_vote():
    import pytest

    from nip_core.errors import InputError
    from nip_core.models import load_model

    eff = load_model("efficientnet-lite0")
    with pytest.raises(InputError, match="does not apply to model 'efficientnet-lite0'"):
        run_attack(eff, "nip-aware", torch.rand(1, 3, 224, 224), torch.tensor([1]))


def test_explain_reports_why_nip_acted(lenet, digits):
    from nip_core.analyses.explain import explain

    x, y = digits
    e = explain(lenet, x[0], int(y[0]), attack="fgsm", attack_params={"eps": 0.3}, defense="nip", layer="fc1")
    ben, adv = e.decision["benign"], e.decision["adversarial"]
    assert not ben["flagged"] and ben["nip_target"] is None and not any(d["fired"] for d in ben["detectors"].values())
    assert adv["flagged"] and adv["detectors"]["abnormal:conv1"]["fired"]
    assert adv["detectors"]["abnormal:conv1"]["score"] > adv["detectors"]["abnormal:conv1"]["threshold"]
    assert adv["chosen_by"] == "vote" and ben["chosen_by"] is None and adv["vote_binarize"] == 0.4
    assert adv["nip_target"] == adv["vote"][0]["class"] == e.prediction("defended")
    shares = [v["share"] for v in adv["vote"]]
    assert len(shares) == 3 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6
    assert e.summary()["defense_decision"]["adversarial"]["flagged"] is True
    # defenses that do not explain themselves leave it empty
    assert explain(lenet, x[0], int(y[0]), defense="jpeg", layer="fc1").decision is None


def test_smoothed_class_is_seeded_and_batch_independent(lenet, digits):
    from nip_core.label_free import smoothed_class

    x, _ = digits
    cls, share = smoothed_class(lenet, x, 0.1, 16, seed=3)
    again, share2 = smoothed_class(lenet, x, 0.1, 16, seed=3)
    assert torch.equal(cls, again) and torch.equal(share, share2)
    alone = [smoothed_class(lenet, x[i:i + 1], 0.1, 16, seed=3) for i in range(len(x))]
    assert torch.equal(cls, torch.cat([c for c, _ in alone]))
    assert torch.allclose(share, torch.cat([s for _, s in alone]), atol=1e-6)
    # by hand: the mean softmax over the same 16 sign patterns
    g = torch.Generator().manual_seed(3)
    signs = torch.randint(0, 2, (16, *x.shape[1:]), generator=g).float() * 2 - 1
    mean = torch.stack([lenet.logits((x + 0.1 * s).clamp(0, 1)).softmax(1) for s in signs]).mean(0)
    assert torch.equal(cls, mean.argmax(1)) and torch.allclose(share, mean.max(1).values, atol=1e-6)
    # no noise: the model's own prediction and confidence
    c0, s0 = smoothed_class(lenet, x, 0.0, 4)
    assert torch.equal(c0, lenet.predict(x)) and torch.allclose(s0, lenet.logits(x).softmax(1).max(1).values)


def test_pocket_rule_sends_minimal_adversarials_back_and_leaves_large_ones_to_the_vote(lenet, digits):
    """DeepFool stops just past the boundary: the smoothed class is the original one. FGSM 0.3 moves
    far more conv1 neurons than ``small_level``, so the (binarised) vote decides there."""
    from nip_core.label_free import VOTE_SOURCES, nip_targets, selector_for

    x, y = digits
    p = DEFENSES["nip"].params_for(lenet)
    assert p["pocket_amp"] > 0 and p["vote_binarize"] > 0
    sel = selector_for(lenet, p)
    df = run_attack(lenet, "deepfool", x, y, seed=0).x_adv
    dec = nip_targets(lenet, sel, df, p, seed=0)
    off = nip_targets(lenet, sel, df, p | {"pocket_amp": 0.0}, seed=0)
    assert dec["flagged"].all() and not (dec["pred"] == y).any()
    assert dec["pocket"].sum() >= 6
    assert torch.equal(dec["target"][dec["pocket"]], dec["smoothed"][dec["pocket"]])
    assert not (dec["smoothed"][dec["pocket"]] == dec["pred"][dec["pocket"]]).any()
    assert torch.equal(dec["target"][~dec["pocket"]], off["target"][~dec["pocket"]])
    assert (dec["target"] == y).sum() >= (off["target"] == y).sum() and (dec["target"] == y).float().mean() >= 0.875
    # the defense itself follows the decision
    r = apply_defense(lenet, "nip", df, seed=0)
    assert (lenet.predict(r.x_def) == y).float().mean() >= 0.875
    big = run_attack(lenet, "fgsm", x, y, {"eps": 0.3}, seed=0).x_adv
    dbig = nip_targets(lenet, sel, big, p, seed=0)
    assert not dbig["pocket"].any() and (dbig["scores"]["abnormal:conv1"] > p["small_level"]).all()
    assert torch.equal(dbig["target"], nip_targets(lenet, sel, big, p | {"pocket_amp": 0.0})["target"])
    assert [VOTE_SOURCES[int(c)] for c in dbig["source"]] == ["vote"] * len(x)
    assert torch.equal(dbig["target"], dbig["votes"].argmax(1))
    # the decision is explained with the same numbers
    from nip_core.label_free import explain_decision

    why = explain_decision(lenet, df, p, seed=0)
    for i, w in enumerate(why):
        assert w["pocket"]["applied"] == bool(dec["pocket"][i]) and w["nip_target"] == int(dec["target"][i])
        if w["pocket"]["applied"]:
            assert w["pocket"]["smoothed_class"] != w["prediction"] and 0 < w["pocket"]["smoothed_share"] <= 1


def test_aware_attack_targets_the_evaluated_defense_settings(lenet, digits, monkeypatch):
    """evaluate's aware column attacks nip as configured, not nip's registered defaults."""
    import nip_core.label_free as nv
    from nip_core.evaluation.evaluate import evaluate

    seen = []
    real = nv.aware_attack

    def spy(model, x, y, p, ap, seed=0):
        seen.append(p)
        return real(model, x, y, p, ap, seed)

    monkeypatch.setattr(nv, "aware_attack", spy)
    x, y = digits
    run_attack(lenet, "nip-aware", x[:2], y[:2], {"max_iter": 2}, against={"neighbours": 3, "vote_weight": 0.0})
    assert seen[-1]["neighbours"] == 3 and seen[-1]["vote_weight"] == 0.0
    run_attack(lenet, "nip-aware", x[:2], y[:2], {"max_iter": 2})
    assert seen[-1] == DEFENSES["nip"].params_for(lenet)
    evaluate("lenet-mnist", [("fgsm", {})], [("nip", {"neighbours": 5})], n=2, split="tune")
    assert seen[-1]["neighbours"] == 5


def test_tables_that_include_the_calibration_digits_carry_a_warning(lenet):
    from nip_core.evaluation.evaluate import split_warnings

    [w] = split_warnings(lenet, "all", 600, ["none", "jpeg", "nip"])
    assert "'nip'" in w and "500+" in w and "--split report" in w
    assert split_warnings(lenet, "all", 500, ["nip"]) == []          # positions 0–499: tune + report
    assert split_warnings(lenet, "report", 10_000, ["nip", "nip-oracle"]) == []
    assert split_warnings(lenet, "all", 900, ["jpeg", "nip-oracle"]) == []
    assert len(split_warnings(lenet, "all", 900, ["nip", "nip-neighbours"])) == 2


def test_binarise_and_its_surrogate_gradient():
    from nip_core.label_free import binarise

    x = torch.tensor([0.0, 0.2, 0.5, 0.51, 0.9], requires_grad=True)
    assert binarise(x, 0.5).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    b = binarise(x, 0.5, surrogate=0.1)
    assert b.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]                    # same forward pass
    (g,) = torch.autograd.grad(b.sum(), x)
    sig = torch.sigmoid((x.detach() - 0.5) / 0.1)
    assert torch.allclose(g, sig * (1 - sig) / 0.1)                    # the sigmoid's gradient
    assert binarise(x, 0.5).grad_fn is None or not binarise(x, 0.5).requires_grad


def test_binarised_vote_ignores_perturbations_that_cannot_cross_the_threshold(lenet, digits):
    """An L∞ change of 0.3 flips no pixel farther than 0.3 from the threshold, so the binarised vote stays."""
    from nip_core.label_free import selector_for

    x, y = digits
    p = DEFENSES["nip"].params_for(lenet)
    sel = selector_for(lenet, p)
    raw = selector_for(lenet, p | {"vote_binarize": 0.0})
    t = p["vote_binarize"]
    assert 0.3 < t < 0.7 and sel.binarize == t and raw.binarize == 0.0
    g = torch.Generator().manual_seed(0)
    delta = 0.3 * (torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1)
    far = (x < t - 0.3) | (x > t + 0.3)
    xp = (x + delta * far).clamp(0, 1)
    assert (xp - x).abs().max() <= 0.3 + 1e-6 and ((xp - x).abs() > 0.29).float().mean() > 0.4
    (_, v_x, _), (_, v_p, _) = sel.scores(x), sel.scores(xp)
    assert torch.equal(v_x, v_p) and (v_x.argmax(1) == y).float().mean() >= 0.875
    (_, r_x, _), (_, r_p, _) = raw.scores(x), raw.scores(xp)
    assert not torch.allclose(r_x, r_p)                                # the raw vote does move
    # the range detector still reads the raw maps, so the perturbation is flagged
    assert (sel.scores(xp)[0]["abnormal:conv1"] > sel.thresholds(0.005)["abnormal:conv1"]).all()


def test_binarised_vote_resists_the_defense_aware_attack(lenet):
    """The aware attack (which also attacks the binarised vote, through a surrogate gradient)
    fools the raw-vote nip far more often than the registered one."""
    from nip_core.data import heldout_split

    x, y = heldout_split(lenet, "tune")
    x, y = x[:16], y[:16]
    kept = {}
    for name, dp in (("binarised", {}), ("raw", {"vote_binarize": 0.0})):
        adv = run_attack(lenet, "nip-aware", x, y, {"weight": 10.0}, seed=0, against=dp).x_adv
        assert (lenet.predict(adv) == y).sum() <= 1                    # the model alone is fooled
        kept[name] = int((lenet.predict(apply_defense(lenet, "nip", adv, dp, seed=0).x_def) == y).sum())
    assert kept["binarised"] >= kept["raw"] + 4, kept


def test_aware_attack_l2_mode_stays_in_its_ball(lenet, digits):
    x, y = digits
    r = run_attack(lenet, "nip-aware", x, y, {"norm": "2", "eps": 1.5, "eps_step": 0.2, "max_iter": 10,
                                             "targets": 1}, seed=0)
    norms = (r.x_adv - x).flatten(1).norm(dim=1)
    assert bool((norms <= 1.5 + 1e-4).all()) and float(norms.max()) > 1.0      # it uses its budget
    assert (r.x_adv - x).abs().max() > 0.3                                     # and is not an L∞-0.3 attack
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1


def test_paired_comparisons_by_hand():
    from nip_core.evaluation.evaluate import paired_comparisons

    rows = [{"attack": "a", "defense": "nip[x]", "defense_name": "nip", "correct": "1110100"},
            {"attack": "a", "defense": "jpeg", "defense_name": "jpeg", "correct": "1001100"},
            {"attack": "b", "defense": "nip[x]", "defense_name": "nip", "correct": "1111111"},
            {"attack": "b", "defense": "jpeg", "defense_name": "jpeg", "correct": "1111111"}]
    benign = {"nip[x]": {"correct": "11"}, "jpeg": {"correct": "10"}}
    out = paired_comparisons(rows, benign, "nip")
    a = out["attacks"]["a"]["jpeg"]
    # images 1, 2 only nip; image 3 only jpeg: exact binomial two-sided p for 2 of 3 = 1.0
    assert (a["only_this"], a["only_other"], a["p_value"]) == (2, 1, 1.0)
    assert out["attacks"]["b"]["jpeg"] == {"only_this": 0, "only_other": 0, "p_value": 1.0}
    assert out["benign"]["jpeg"]["only_this"] == 1 and out["defense"] == "nip[x]"
    many = paired_comparisons([dict(rows[0], correct="1" * 12), dict(rows[1], correct="0" * 12)], {}, "nip")
    assert many["attacks"]["a"]["jpeg"]["p_value"] == pytest.approx(2 * 0.5 ** 12)


@pytest.mark.parametrize("name", ["lenet-fashion", "lenet-fashion-at"])
def test_every_detector_can_fire_at_its_false_alarm_rate(name):
    """Issue 26: on Fashion-MNIST 17 (14) of the 1,000 calib images get no neighbour vote for
    their prediction (share against = 1), so the 99.5% quantile was 1 and `> 1` never fired.
    Saturated scores are now ordered by a tie-break: each detector flags about `false_alarm` of
    the benign calib images, never none, never more than the rate plus one image."""
    from nip_core.models import load_model

    model = load_model(name)
    p = DEFENSES["nip"].params_for(model)
    sel = neighbour_selector(model, ["conv1"], p["neighbours"], p["per_class"], p["vote_weight"], p["vote_binarize"])
    n = sel.calibration_size
    for det, t in sel.thresholds(0.005).items():
        rate = float((sel.reference_scores[det] > t).float().mean())
        assert 0.005 - 2 / n <= rate <= 0.005 + 1 / n, (det, rate)
    ns = sel.reference_scores["no_support"]
    assert int((ns >= 1).sum()) > 0.005 * n       # the saturation is real ...
    assert float(sel.thresholds(0.005)["no_support"]) > 1   # ... and the threshold now lies among the ties


def test_no_support_below_saturation_is_the_vote_share_against(lenet, digits):
    """The tie-break changes only saturated scores: below 1 the score is the share of votes against."""
    x, _ = digits
    sel = neighbour_selector(lenet, ["conv1"])
    scores, votes, pred = sel.scores(x)
    against = 1 - votes.gather(1, pred.view(-1, 1)).squeeze(1)
    below = against < 1
    assert bool(below.any())
    assert torch.equal(scores["no_support"][below], against[below])
    assert bool((scores["no_support"][~below] >= 1).all())
