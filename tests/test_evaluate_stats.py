"""Statistics that go with an evaluation table: intervals for accuracies, shown in the heatmap."""
import pytest

from nip_core.evaluation.evaluate import wilson_interval
from nip_core.figures import evaluation_heatmap


def test_wilson_interval_known_values():
    from scipy.stats import binomtest

    # Wilson's score interval as SciPy computes it (no continuity correction), not our own output
    for k, n in ((5, 10), (0, 10), (10, 10), (19, 20), (333, 350)):
        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-4), (k, n)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)   # the textbook example
    assert wilson_interval(347, 350)[0] > 0.97 and wilson_interval(0, 0) == (0.0, 1.0)
    lo20, hi20 = wilson_interval(19, 20)
    lo350, hi350 = wilson_interval(333, 350)          # same accuracy, many more images: narrower
    assert hi350 - lo350 < (hi20 - lo20) / 3


def test_heatmap_hover_shows_the_interval_from_per_image_results():
    result = {"model": "m", "n_images": 4, "seed": 0, "attacks": ["a"], "defenses": ["none", "nip"],
              "rows": [{"attack": "a", "defense": "none", "defended_adv_accuracy": 0.0, "correct": "0000"},
                       {"attack": "a", "defense": "nip", "defended_adv_accuracy": 0.75, "correct": "1101"}],
              "benign": {"none": {"correct": "1111"}, "nip": {"correct": "1111"}},
              "summary": {"benign_accuracy": {"none": 1.0, "nip": 1.0}}, "adaptive": {}}
    fig = evaluation_heatmap(result)
    hover = fig.data[0].customdata
    lo, hi = wilson_interval(3, 4)
    assert hover[0][1] == f"<br>95% interval {100 * lo:.0f}–{100 * hi:.0f}% (3/4 images)"
    assert "(4/4 images)" in hover[1][0] and "%{customdata}" in fig.data[0].hovertemplate
    # older results without per-image data still draw, without an interval
    for r in result["rows"]:
        del r["correct"]
    del result["benign"]
    assert list(evaluation_heatmap(result).data[0].customdata[0]) == ["", ""]


def test_expected_attack_seconds_scales_the_shipped_bench(monkeypatch):
    import nip_core.evaluation.bench as bench

    monkeypatch.setattr(bench, "_ATTACK_TIMES", {"m": {"pgd": {"per_image": 2.0, "params": {"max_iter": 10}},
                                                       "fgsm": {"per_image": 0.5, "params": {"eps": 0.1}}}})
    assert bench.expected_attack_seconds("m", "pgd", {"max_iter": 40}) == pytest.approx(8.0)
    assert bench.expected_attack_seconds("m", "fgsm", {"eps": 0.3}) == pytest.approx(0.5)
    assert bench.expected_attack_seconds("m", "cw-l2", {}) is None
    assert bench.expected_attack_seconds("other", "pgd", {}) is None
    monkeypatch.setattr(bench, "_ATTACK_TIMES", None)                  # the shipped file itself
    assert bench.expected_attack_seconds("efficientnet-lite0", "pixel", {"max_iter": 10}) > 60


def test_accuracy_intervals_from_bits_and_from_older_files():
    from nip_core.evaluation.evaluate import accuracy_intervals, wilson_interval

    result = {"n_images": 4, "defenses": ["none", "nip"],
              "rows": [{"attack": "fgsm", "defense": "none", "defended_adv_accuracy": 0.25, "correct": "0100"},
                       {"attack": "fgsm", "defense": "nip", "defended_adv_accuracy": 0.75, "n": 4}],
              "benign": {"none": {"accuracy": 1.0, "correct": "1111"}},
              "summary": {"benign_accuracy": {"none": 1.0, "nip": 0.5}}}
    rows = accuracy_intervals(result)
    assert [(r["inputs"], r["defense"], r["correct"], r["n"]) for r in rows] == [
        ("fgsm", "none", 1, 4), ("fgsm", "nip", 3, 4), ("benign", "none", 4, 4), ("benign", "nip", 2, 4)]
    assert (rows[1]["ci_low"], rows[1]["ci_high"]) == wilson_interval(3, 4)
    assert rows[2]["ci_high"] == 1.0 and rows[2]["ci_low"] < 1.0


def test_heatmap_of_every_shipped_result_has_a_number_in_every_attack_row():
    """The shipped reports list attacks with `target=-1` that their rows leave out: rows must still match."""
    import numpy as np

    from nip_core.evaluation.results import shipped_result, shipped_suites

    for suite, file in shipped_suites().items():
        result = shipped_result(file)
        fig = evaluation_heatmap(result)
        z = np.array(fig.data[0].z, dtype=float)
        n_attacks = len({r["attack"] for r in result["rows"]})
        assert np.isfinite(z[:n_attacks]).all(), suite
