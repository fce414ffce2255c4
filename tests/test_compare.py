"""Pin and compare, the engine (issue 21): overlaps, group statistics and the shared colour scale,
checked by hand on six neurons; then two real runs of one digit."""
from __future__ import annotations

import pytest
import torch

from nip_core.analyses.compare import _params_text, comparable, compare_runs, overlap, run_stats
from nip_core.errors import InputError
from nip_core.analyses.explain import Explanation
from nip_core.figures import compare_heatmaps

T = torch.tensor


def _run(adv, *, model="tiny", layer="hidden", defended=(3.0, 3.0, 1.0, 0.0, 1.0, 1.0), influence=None,
         image=None, attack="fgsm", logits_adv=(0.0, 2.0), front=(0, 1, 2)) -> Explanation:
    """Six neurons: front 0, 1, 2 · middle 3 · tail 4, 5; benign activations 4, 2, 1, 0, 0, 1; class 0."""
    benign = T([4.0, 2.0, 1.0, 0.0, 0.0, 1.0])
    acts = {"benign": benign, "adversarial": T(adv), "defended": T(defended)}
    infl = influence or {v: a / 10 for v, a in acts.items()}
    x = image if image is not None else torch.zeros(1, 2, 2)
    return Explanation(
        model_name=model, layer=layer, method="conductance", k=0.5, label=0, reference_class=0,
        images={"benign": x, "adversarial": x + 0.1, "defended": x}, influence=infl, activations=acts,
        logits={"benign": T([2.0, 0.0]), "adversarial": T(logits_adv), "defended": T([2.0, 0.0])},
        front=T(front), middle=T([3]), tail=T([4, 5]), dead=torch.zeros(6, dtype=torch.bool),
        class_names=["a", "b"], attack=attack, attack_params={"eps": 0.1}, defense="median", defense_params={})


A_ADV = (1.0, 3.0, 0.0, 0.0, 2.0, 1.0)     # front 0 and 2 fell, 1 rose; tail 4 rose
B_ADV = (4.0, 1.0, 0.0, 0.0, 0.0, 1.0)     # front 1 and 2 fell; no tail rose


def test_overlap_by_hand() -> None:
    o = overlap([0, 2, 2], [2, 1])
    assert (o.a_only, o.b_only, o.both) == ((0,), (1,), (2,))
    assert o.jaccard == pytest.approx(1 / 3)
    assert overlap([5], [5]).jaccard == 1.0 and overlap([1], [2]).jaccard == 0.0
    assert overlap([], []).jaccard is None


def test_run_stats_by_hand() -> None:
    s = run_stats(_run(A_ADV))
    assert s.front == (0, 1, 2) and s.front_fell == (0, 2) and s.tail_rose == (4,)
    # front means: benign 7/3, adversarial 4/3, defended 7/3; tail means: benign 0.5, adversarial 1.5
    assert s.front_drop == pytest.approx(1.0) and s.front_drop_share == pytest.approx(3 / 7)
    assert s.tail_rise == pytest.approx(1.0) and s.tail_rise_share == pytest.approx(3 / 7)
    assert s.recovery == pytest.approx(1.0)
    assert s.correct == {"benign": True, "adversarial": False, "defended": True} and s.flipped
    assert s.predictions["adversarial"][:2] == (1, "b")
    # an attack that moves nothing: no recovery share (0 / 0)
    flat = run_stats(_run((4.0, 2.0, 1.0, 0.0, 0.0, 1.0), logits_adv=(2.0, 0.0)))
    assert flat.front_fell == () and flat.recovery is None and not flat.flipped


def test_same_model_compares_identities() -> None:
    a, b = _run(A_ADV), _run(B_ADV, attack="pgd")
    cmp = compare_runs(a, b)
    assert cmp.neurons_match and cmp.why_groups is None
    assert (cmp.fell.both, cmp.fell.a_only, cmp.fell.b_only) == ((2,), (0,), (1,))
    assert cmp.fell.jaccard == pytest.approx(1 / 3)
    rows = cmp.identity_rows()
    assert [(r["neuron"], r["fell in"]) for r in rows] == [(2, "both"), (0, "A only"), (1, "B only")]
    assert [r["Δ activation A"] for r in rows] == [-1.0, -3.0, 1.0]
    assert [r["Δ activation B"] for r in rows] == [-1.0, 0.0, -1.0]
    assert "front in A" not in rows[0]                     # one front group: nothing to say
    # another k: B's front is 1 and 2 only, so A's neuron 0 is front in A alone
    rows = compare_runs(a, _run(B_ADV, front=(1, 2))).identity_rows()
    assert [(r["neuron"], r["front in A"], r["front in B"]) for r in rows] == [(2, True, True), (0, True, False),
                                                                               (1, True, True)]
    assert cmp.changed == ["attack fgsm → pgd"]
    assert "2 front neurons fell in A and 2 in B, 1 of them in both (Jaccard overlap 0.33)" in cmp.verdict()
    assert cmp.verdict().startswith("The attack fooled both runs.")


def test_two_models_compare_group_statistics_and_say_why() -> None:
    a, b = _run(A_ADV, model="standard"), _run(B_ADV, model="robust", logits_adv=(1.0, 0.0))
    cmp = compare_runs(a, b)
    assert not cmp.neurons_match and cmp.fell is None and cmp.identity_rows() == []
    assert "two models (standard, robust)" in cmp.why_groups and "cannot be matched" in cmp.why_groups
    stats = {r["statistic"]: (r["A (pinned)"], r["B"]) for r in cmp.stats_rows()}
    assert stats["front neurons that fell"] == ("2 of 3", "2 of 3")
    # B's front mean falls from 7/3 to 5/3: −2/7 ≈ −29%; A's by 3/7 ≈ −43%
    assert stats["front mean activation change"] == ("-43%", "-29%")
    assert stats["tail neurons that rose"] == ("1 of 2", "0 of 2")
    assert stats["adversarial prediction"] == ("b (88%) ✗ wrong", "a (73%) ✓ correct")
    assert stats["defense recovery of the front mean"] == ("100%", "100%")
    assert cmp.verdict().startswith("The attack fooled A but not B.")
    assert "model standard → robust" in cmp.changed
    # another layer of the same model: neurons differ as well
    other = compare_runs(_run(A_ADV), _run(B_ADV, layer="conv"))
    assert other.fell is None and "two layers (hidden, conv)" in other.why_groups


def test_runs_of_two_images_are_not_compared() -> None:
    a, b = _run(A_ADV), _run(B_ADV, image=torch.ones(1, 2, 2))
    assert "different images" in comparable(a, b)
    with pytest.raises(InputError, match="different images"):
        compare_runs(a, b)
    assert comparable(a, _run(B_ADV)) is None


def test_heatmaps_share_one_colour_scale_covering_both_runs() -> None:
    zero = T([0.0] * 6)
    ia = {"benign": T([1.0, -2.0, 0.5, 0, 0, 0]), "adversarial": zero, "defended": zero}
    ib = {"benign": zero, "adversarial": T([0, 0, 0, 0, -9.0, 3.0]), "defended": zero}
    a, b = _run(A_ADV, influence=ia), _run(B_ADV, influence=ib)
    fig = compare_heatmaps(a, b)
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-9.0, 9.0)     # B's extreme sets it for A too
    maps = [t for t in fig.data if t.name != "dead"]
    assert len(maps) == 6 and {t.coloraxis for t in maps} == {"coloraxis"}
    assert [t.name for t in maps] == ["A (pinned) benign", "A (pinned) adversarial", "A (pinned) defended",
                                      "B benign", "B adversarial", "B defended"]
    # swapped, the scale is the same: it depends on both runs, not on the first
    swapped = compare_heatmaps(b, a)
    assert swapped.layout.coloraxis.cmax == 9.0
    # a dead neuron is drawn grey, not as a value: B's −9 on a dead neuron no longer sets the scale
    b.dead = torch.tensor([False, False, False, False, True, False])
    fig = compare_heatmaps(a, b)
    assert fig.layout.coloraxis.cmax == 3.0 and any(t.name == "dead" for t in fig.data)
    act = compare_heatmaps(a, b, "activations")
    assert act.layout.coloraxis.cmax == 4.0 and "activation" in act.layout.title.text


def test_two_attacks_on_one_digit(lenet) -> None:
    """Real runs: FGSM and a weaker PGD on one MNIST digit, same model and layer."""
    from nip_core.data import gallery
    from nip_core.analyses.explain import explain

    it = gallery("mnist")[3]
    a = explain(lenet, it.image, it.label, attack="fgsm", defense="none")
    b = explain(lenet, it.image, it.label, attack="pgd", attack_params={"eps": 0.1, "max_iter": 5}, defense="none")
    cmp = compare_runs(a, b)
    assert cmp.neurons_match and cmp.a.front == cmp.b.front                  # one image, one class, one profile
    fell_a = {int(j) for j in a.front if a.activations["adversarial"][j] < a.activations["benign"][j]}
    assert set(cmp.a.front_fell) == fell_a and set(cmp.fell.both) | set(cmp.fell.a_only) == fell_a
    assert cmp.changed[0] == "attack fgsm → pgd"
    again = compare_runs(explain(lenet, it.image, it.label, attack="fgsm", defense="none"), b)
    assert (again.a, again.fell, again.stats_rows()) == (cmp.a, cmp.fell, cmp.stats_rows())   # deterministic


def test_parameters_read_as_a_student_writes_them() -> None:
    assert _params_text({"eps": 2 / 255, "max_iter": 10, "target": -1}) == "eps 2/255, max_iter 10"
    assert _params_text({"eps": 0.2, "eps_step": 0.01, "target": 3}) == "eps 0.2, eps_step 0.01, target 3"
    a = _run(A_ADV)
    b = _run(B_ADV)
    b.attack_params = {"eps": 4 / 255}
    assert compare_runs(a, b).changed == ["fgsm eps 0.1 → 4/255"]
    b.defense = "none"                      # no defense: no recovery to speak of
    rows = {r["statistic"]: r["B"] for r in compare_runs(a, b).stats_rows()}
    assert rows["defense recovery of the front mean"] == "no defense"
