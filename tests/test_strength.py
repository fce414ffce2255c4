"""Attack strength (issue 20, §1): one image under one attack at a grid of budgets, each through the defense.

The grid's arithmetic is checked by hand; the run's own ε reproduces ``explain`` (same settings, same seed);
ε = 0 is the benign image; the step keeps its ratio to ε; the same seed gives the same numbers; attacks
without a budget are refused with their reason; bad values raise InputError."""
from __future__ import annotations

import pytest
import torch

from nip_core import figures as F
from nip_core.attacks import ATTACKS
from nip_core.data import gallery
from nip_core.defenses import apply_defense
from nip_core.errors import InputError
from nip_core.analyses.explain import explain
from nip_core.evaluation.bench import estimate_sweep_seconds
from nip_core.analyses.strength import (DEFAULT_N, eps_grid, no_sweep_reason, strength_sweep,
                               sweepable)

PGD = {"eps": 0.3, "eps_step": 0.03, "max_iter": 5}


@pytest.fixture(scope="module")
def digit(lenet):
    it = gallery(lenet.spec.gallery)[0]
    return it.image, it.label


@pytest.fixture(scope="module")
def fgsm_nip(lenet, digit):
    """The app's default view (FGSM at its default ε, the label-free nip) swept at the default 12 strengths."""
    return strength_sweep(lenet, *digit, attack="fgsm", defense="nip", seed=0)


@pytest.fixture(scope="module")
def pgd_jpeg(lenet, digit):
    return strength_sweep(lenet, *digit, attack="pgd", attack_params=PGD, defense="jpeg", layer="conv2", k=0.3,
                          seed=4, n=6)


def test_grid_by_hand() -> None:
    assert eps_grid(0.3, 1.0, 6) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    g = eps_grid(0.2, 1.0)
    assert len(g) == DEFAULT_N + 1 and g[0] == 0 and g[-1] == 0.4 and g[6] == 0.2
    assert all(abs(b - a - 0.2 / 6) < 1e-12 for a, b in zip(g, g[1:]))
    # clipped at the attack's largest budget: the top is 1, ε stays on the grid, finer above it
    assert eps_grid(0.8, 1.0, 12) == [0.0, 0.08, 0.16, 0.24, 0.32, 0.4, 0.48, 0.56, 0.64, 0.72, 0.8, 0.9, 1.0]
    assert eps_grid(1.0, 1.0, 4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    # the chosen ε is on the grid exactly, however it is written
    for eps in (4 / 255, 0.1, 2 / 3, 1e-3):
        grid = eps_grid(eps, 1.0)
        assert eps in grid and grid == sorted(grid) and len(set(grid)) == len(grid)


@pytest.mark.parametrize("bad", [0, 1, 41, 2.0, True, "12", None])
def test_bad_n_is_refused(bad) -> None:
    with pytest.raises(InputError, match="number of strengths n"):
        eps_grid(0.1, 1.0, bad)


def test_the_runs_eps_reproduces_explain(lenet, digit, fgsm_nip, pgd_jpeg) -> None:
    for sweep, kw in ((fgsm_nip, dict(attack="fgsm", defense="nip", seed=0)),
                      (pgd_jpeg, dict(attack="pgd", attack_params=PGD, defense="jpeg", layer="conv2", k=0.3, seed=4))):
        e = explain(lenet, *digit, **kw)
        i = sweep.chosen
        assert sweep.eps[i] == e.attack_params["eps"] and sweep.params[i] == e.attack_params
        for v in ("adversarial", "defended"):
            assert torch.equal(sweep.images[v][i], e.images[v])
            assert torch.allclose(sweep.logits[v][i], e.logits[v], atol=1e-5, rtol=0)
            assert torch.allclose(sweep.activations[v][i], e.activations[v], atol=1e-5, rtol=0)
        assert torch.equal(sweep.front, e.front) and torch.equal(sweep.tail, e.tail)
        # the group means: explain's own definition, at this ε
        mine = sweep.at(i).group_means()
        theirs = e.group_means()
        for v in ("benign", "adversarial", "defended"):
            for g in ("front", "middle", "tail"):
                assert mine[v][g] == pytest.approx(theirs[v][g], abs=1e-5)
                assert sweep.group_means[v][g][i] == mine[v][g]
        assert sweep.reference_class == e.reference_class


def test_eps_zero_is_the_benign_image(lenet, digit, pgd_jpeg) -> None:
    x, _ = digit
    s = pgd_jpeg
    assert s.eps[0] == 0 and s.params[0] is None
    assert torch.equal(s.images["adversarial"][0], x) and torch.equal(s.images["benign"], x)
    assert torch.allclose(s.logits["adversarial"][0], lenet.logits(x[None])[0], atol=1e-5, rtol=0)
    assert torch.equal(s.images["defended"][0], apply_defense(lenet, "jpeg", x[None], seed=4).x_def[0])
    # every stronger point is a real attack within its budget
    for i in range(1, len(s)):
        d = (s.images["adversarial"][i] - x).abs().max()
        assert 0 < d <= s.eps[i] + 1e-6


def test_step_keeps_its_ratio_to_eps(pgd_jpeg) -> None:
    s = pgd_jpeg
    assert s.eps == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6] and s.step_ratio == 0.1
    assert [p["eps_step"] for p in s.params[1:]] == [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    assert all(p["max_iter"] == 5 for p in s.params[1:])


def test_predictions_confidence_margin_and_flips_agree(lenet, fgsm_nip, pgd_jpeg) -> None:
    for s in (fgsm_nip, pgd_jpeg):
        ref = s.reference_class
        for v in ("adversarial", "defended"):
            preds = [int(c) for c in lenet.predict(s.images[v])]
            assert s.predictions(v) == preds
            p = lenet.probabilities(s.images[v])[:, ref]
            assert s.confidence[v] == pytest.approx(p.tolist(), abs=1e-5)
            others = s.logits[v].clone()
            others[:, ref] = -float("inf")
            assert s.margin[v] == pytest.approx((s.logits[v][:, ref] - others.max(1).values).tolist(), abs=1e-5)
            assert all((m > 0) == (c == ref) for m, c in zip(s.margin[v], preds))
            wrong = [i for i, c in enumerate(preds) if c != ref]
            assert s.flip[v] == (wrong[0] if wrong else None)
            assert s.flip_eps(v) == (s.eps[wrong[0]] if wrong else None)
        change = (s.images["defended"] - s.images["adversarial"]).abs().amax((1, 2, 3))
        assert s.defense_change == pytest.approx(change.tolist(), abs=0)
    assert max(pgd_jpeg.defense_change) > 0 and fgsm_nip.defense_change[0] == 0     # nip passes the benign digit
    # FGSM at twice its default ε fools the undefended LeNet on this digit, and not at ε = 0
    assert fgsm_nip.flip["adversarial"] not in (None, 0)


def test_same_seed_same_numbers(lenet, digit, pgd_jpeg) -> None:
    kw = dict(attack="pgd", attack_params=PGD, defense="jpeg", layer="conv2", k=0.3, n=6)
    again = strength_sweep(lenet, *digit, seed=4, **kw)
    for v in ("adversarial", "defended"):
        assert torch.equal(again.images[v], pgd_jpeg.images[v])
        assert torch.equal(again.logits[v], pgd_jpeg.logits[v])
    assert again.group_means == pgd_jpeg.group_means and again.flip == pgd_jpeg.flip
    other = strength_sweep(lenet, *digit, seed=5, **kw)        # PGD starts at a seeded random point
    assert not torch.equal(other.images["adversarial"][1:], pgd_jpeg.images["adversarial"][1:])


def test_attacks_without_a_budget_say_why(lenet, digit) -> None:
    assert set(sweepable()) == {"fgsm", "bim", "pgd", "pgd-l2", "mifgsm", "apgd"}
    for a in sweepable():
        assert no_sweep_reason(a) is None
    for a, words in (("cw-l2", "smallest perturbation"), ("deepfool", "nearest decision boundary"),
                     ("square", "query-based black-box"), ("hsj", "decision-based"), ("autoattack", "worst of four")):
        reason = no_sweep_reason(a)
        assert words in reason and "\n" not in reason and "fgsm, bim, pgd" in reason
        with pytest.raises(InputError, match=words):
            strength_sweep(lenet, *digit, attack=a)
    assert all(no_sweep_reason(a) for a in ATTACKS if a not in sweepable())
    with pytest.raises(InputError, match="unknown attack"):
        no_sweep_reason("banana")


@pytest.mark.parametrize("kw, words", [
    (dict(n=1), "number of strengths n"),
    (dict(k=0.7), "parameter 'k'"),
    (dict(label=10), "label must be a class in \\[0, 9\\]"),
    (dict(attack_params={"eps": 0.0}), "ε must be above 0"),
    (dict(attack_params={"eps": 1.5}), "parameter 'eps' must be float in \\[0, 1\\]"),
    (dict(attack="pgd", attack_params={"eps": 0.002, "eps_step": 0.0002}), "out of range for pgd"),
    (dict(layer="nope"), "no layer 'nope'"),
    (dict(defense="nip-oracle", label=None), "needs the true label"),
])
def test_bad_values_raise_input_error(lenet, digit, kw, words) -> None:
    args = dict(label=digit[1], attack="fgsm", defense="none") | kw
    with pytest.raises(InputError, match=words):
        strength_sweep(lenet, digit[0], **args)


def test_bad_image_shape(lenet) -> None:
    with pytest.raises(InputError, match="image must have shape"):
        strength_sweep(lenet, torch.zeros(3, 28, 28), attack="fgsm", defense="none")


def test_estimate_before_it_starts() -> None:
    # a model the bench does not know: the measured unit only (4 attacks, 5 defenses)
    assert estimate_sweep_seconds("tiny", "fgsm", {}, 4, measured={"attack": 1.0, "defense": 0.5}) == 6.5
    assert estimate_sweep_seconds("tiny", "fgsm", {}, 4) is None
    # the bench: n attacks at its time per image, plus two forward passes of 2n + 1 images
    fast = estimate_sweep_seconds("lenet-mnist", "fgsm", {"eps": 0.2}, 12)
    pgd = estimate_sweep_seconds("efficientnet-lite0", "pgd", {"max_iter": 10}, 12)
    assert 0 < fast < 1 < pgd
    assert estimate_sweep_seconds("efficientnet-lite0", "pgd", {"max_iter": 20}, 12) > pgd


def test_response_chart_marks_the_flips_and_the_slider(fgsm_nip, pgd_jpeg) -> None:
    for s in (fgsm_nip, pgd_jpeg):
        fig = F.strength_response(s, current=3)
        names = {t.name for t in fig.data}
        assert {"no defense", f"defended ({s.defense})", "front neurons, no defense",
                "tail neurons, defended (" + s.defense + ")"} <= names
        conf = [t for t in fig.data if t.name == "no defense"][0]
        assert list(conf.x) == s.eps and list(conf.y) == pytest.approx([100 * c for c in s.confidence["adversarial"]])
        dotted = sorted(sh.x0 for sh in fig.layout.shapes if sh.type == "line" and sh.line.dash == "dot")
        want = sorted({s.flip_eps(v) for v in ("adversarial", "defended") if s.flip_eps(v) is not None})
        assert sorted(set(dotted)) == want
        band = [sh for sh in fig.layout.shapes if sh.type == "rect"]
        assert band and all(sh.x0 < s.eps[3] < sh.x1 for sh in band)
        title = fig.layout.title.text
        for v, label in (("adversarial", "no defense"), ("defended", f"defended ({s.defense})")):
            assert (f"{label}: flips at ε" in title) == (s.flip[v] is not None)
            assert (f"{label}: never flips" in title) == (s.flip[v] is None)
    assert F.eps_text(8 / 255) == "0.03137 (8/255)" and F.eps_text(1.5, "L2") == "1.5" and F.eps_text(0) == "0"


def test_scrubbed_view_reuses_the_explore_figures(fgsm_nip) -> None:
    v = fgsm_nip.at(fgsm_nip.flip["adversarial"])
    assert v.prediction("adversarial") != fgsm_nip.reference_class
    heat = F.influence_heatmaps(v, "activations")
    assert heat.layout.title.text.startswith("Neuron activation — layer fc1 (120 neurons")
    bars = F.group_chart(v, "activations")
    assert [t.name for t in bars.data] == ["benign", "adversarial", "defended"]
    with pytest.raises(InputError, match="outside the sweep"):
        fgsm_nip.at(len(fgsm_nip))


def test_frames_hold_every_grid_point_s_view_built_once(fgsm_nip) -> None:
    """The slider shows frames built when the panel opens: one per ε, each the grid point's own view."""
    import io

    from PIL import Image

    frames = F.strength_frames(fgsm_nip)
    assert [f.eps for f in frames] == fgsm_nip.eps
    i = fgsm_nip.flip["adversarial"]
    view = fgsm_nip.at(i)
    f = frames[i]
    assert f.top == {v: view.top(v, 1)[0] for v in F.VARIANTS}
    assert f.top["adversarial"][0] != fgsm_nip.reference_class
    assert f.reference_confidence["defended"] == pytest.approx(fgsm_nip.confidence["defended"][i])
    assert [t.name for t in f.groups.data] == ["benign", "adversarial", "defended"]
    assert [t.y for t in f.groups.data] == [t.y for t in F.group_chart(view, "activations").data]
    assert frames[0].images["adversarial"] == frames[0].images["benign"]           # ε = 0: the benign image
    assert f.images["adversarial"] != f.images["benign"]
    maps = Image.open(io.BytesIO(f.maps))
    assert maps.mode == "RGB" and maps.width > 3 * maps.height > 0
    assert frames[0].maps != f.maps                                                # the grids follow ε


def test_neuron_grids_png_lays_neurons_out_as_the_heatmaps_do() -> None:
    import io

    import numpy as np
    from PIL import Image

    from nip_core.figures.common import _diverging_lut, neuron_grids_png

    # 5 neurons on a 2×3 grid (cells of 60 px with panel_px=180): +1, -1, 0, dead, +0.5; one blank cell
    png = neuron_grids_png([("a", [1.0, -1.0, 0.0, 7.0, 0.5])], dead=[0, 0, 0, 1, 0], panel_px=180)
    px = np.asarray(Image.open(io.BytesIO(png)))
    cell = lambda r, c: tuple(px[20 + r * 60 + 30, c * 60 + 30])               # noqa: E731 (a cell's centre)
    lut = _diverging_lut()
    assert cell(0, 0) == tuple(lut[255]) and cell(0, 1) == tuple(lut[0])      # ±lim: the scale's ends
    assert cell(0, 2) == tuple(lut[128])                                       # 0: the middle (white)
    assert cell(1, 0) == (189, 189, 189)                                       # dead: grey, not its 7.0
    assert cell(1, 2) == (255, 255, 255)                                       # past n: blank
    with pytest.raises(ValueError):
        neuron_grids_png([("a", [1.0]), ("b", [1.0, 2.0])])
