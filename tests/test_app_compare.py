"""Explore's "Pin and compare" under AppTest (issue 21): pin run A, run B, see both; unpin; one link
reopens both runs with the same numbers; a bad pinned setting in a link is one warning."""
from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from tests.app_support import VIEW_CHARTS, _app, _ok, _submit

M = "lenet-mnist"
P = "explore.pin."
COMPARE_TITLE = "both runs on one colour scale"


def _compare_charts(at: AppTest) -> list[dict]:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return [s for s in specs if COMPARE_TITLE in s["layout"]["title"]["text"]]


def _shown(at: AppTest) -> tuple:
    """What the comparison shows: the statistics table, the overlap metrics and the identity table."""
    [stats] = [t.value for t in at.table if t.value.index.name == "statistic"]
    metrics = {m.label: m.value for m in at.metric if m.label in ("fell in both", "A only", "B only", "Jaccard overlap")}
    [ids] = [d.value for d in at.dataframe if "fell in" in d.value.columns]
    return stats.to_dict(), metrics, ids.to_dict("list")


def _pinned_then_b() -> AppTest:
    """Explore's default run (LeNet, FGSM, nip) pinned as A; then B: PGD (ε 0.1, 5 steps)."""
    at = _submit(_app(), "Run")
    _ok(at)
    assert at.button(key=P + "pin").label == "Pin this run" and not _compare_charts(at)
    at.button(key=P + "pin").click().run()
    _ok(at)
    assert any(i.value.startswith("Run A is pinned") for i in at.info)
    assert at.query_params["pin_attack"] == "fgsm" and at.query_params["pin_model"] == M
    at.selectbox(key=f"explore.{M}.attack").set_value("pgd").run()
    at.number_input(key=f"explore.{M}.a.pgd.eps").set_value(0.1)        # in the form: sent with Run
    at.number_input(key=f"explore.{M}.a.pgd.max_iter").set_value(5)
    return _submit(at, "Run")


def test_pin_run_b_and_see_both_then_unpin() -> None:
    at = _pinned_then_b()
    _ok(at)
    [fig] = _compare_charts(at)
    assert [t["name"] for t in fig["data"] if t["name"] != "dead"] == [
        f"{r} {v}" for r in ("A (pinned)", "B") for v in ("benign", "adversarial", "defended")]
    assert len(at.get("plotly_chart")) == VIEW_CHARTS + 1
    assert any(i.value.startswith("**B changes:** attack fgsm → pgd[eps=0.1;max_iter=5]. ") for i in at.info)   # what differs, first
    stats, metrics, ids = _shown(at)
    assert stats["A (pinned)"]["attack"] == "fgsm (eps 0.2)" and stats["B"]["attack"].startswith("pgd (eps 0.1")
    both, a_only, b_only = (int(metrics[k]) for k in ("fell in both", "A only", "B only"))
    assert len(ids["neuron"]) == both + a_only + b_only > 0
    assert float(metrics["Jaccard overlap"]) == round(both / (both + a_only + b_only), 2)
    assert f"{both + a_only} front neurons fell in A" in " ".join(i.value for i in at.info)
    # the link carries A beside B
    qp = at.query_params
    assert (qp["attack"], qp["pin_attack"], qp["pin_defense"], qp["pin_image"]) == ("pgd", "fgsm", "nip", qp["image"])
    # the activations view redraws the panel only, on the same shared scale
    at.radio(key=P + "quantity").set_value("activations").run()
    _ok(at)
    [fig] = _compare_charts(at)
    assert fig["layout"]["title"]["text"].startswith("Neuron activation")
    # unpin: the comparison and the link's pin_* parameters go, the run stays
    at.button(key=P + "unpin").click().run()
    _ok(at)
    assert not _compare_charts(at) and not any(k.startswith("pin_") for k in at.query_params)
    assert at.button(key=P + "pin").label == "Pin this run" and len(at.get("plotly_chart")) == VIEW_CHARTS
    assert at.query_params["attack"] == "pgd"


def test_one_link_reopens_both_runs_with_the_same_numbers() -> None:
    at = _pinned_then_b()
    _ok(at)
    link = dict(at.query_params)
    shown = _shown(at)
    again = _app(link)
    _ok(again)
    assert not again.warning
    assert again.session_state[P + "request"] == at.session_state[P + "request"]       # A's exact settings
    assert again.session_state["explore.request"] == at.session_state["explore.request"]   # and B's
    assert len(_compare_charts(again)) == 1 and _shown(again) == shown
    assert again.selectbox(key=f"explore.{M}.attack").value == "pgd"
    assert dict(again.query_params) == link


def test_a_link_with_a_bad_pinned_setting_is_one_warning_and_the_run_stays() -> None:
    at = _pinned_then_b()
    link = dict(at.query_params)
    for bad, words in (({"pin_ap": "eps=7"}, "attack parameters"), ({"pin_attack": "nope"}, "unknown attack 'nope'"),
                       ({"pin_layer": "fc9", "pin_k": "x"}, "unknown layer 'fc9'; k must be float")):
        again = _app(link | bad)
        assert not again.exception
        [warning] = [w.value for w in again.warning]
        assert warning.startswith("The link's pinned run could not be reopened") and words in warning, warning
        assert len(again.get("plotly_chart")) == VIEW_CHARTS and not _compare_charts(again)   # B, unpinned
        assert again.button(key=P + "pin").label == "Pin this run"
        assert not any(k.startswith("pin_") for k in again.query_params)       # the link now says what is shown


def test_the_tour_pins_the_standard_model_beside_the_robust_one() -> None:
    """Two models of one dataset: group statistics, not neuron identities, and the reason said."""
    from app import tour as T

    q = T.step_query(T.BY_KEY["robust"], "lenet-fashion")
    at = _app(q)
    _ok(at)
    assert not at.warning and len(_compare_charts(at)) == 1
    [stats] = [t.value for t in at.table if t.value.index.name == "statistic"]
    a, b = stats["A (pinned)"], stats["B"]
    assert (a["model · layer"], b["model · layer"]) == ("lenet-fashion · fc1", "lenet-fashion-at · fc1")
    assert a["adversarial prediction"].endswith("✗ wrong") and b["adversarial prediction"].endswith("✓ correct")
    assert not [m for m in at.metric if m.label == "Jaccard overlap"] and not at.dataframe   # no identities
    [verdict] = [i.value for i in at.info if "The attack fooled" in i.value]
    assert verdict.startswith("**B changes:** model lenet-fashion → lenet-fashion-at. The attack fooled A but not B. "
                              "The runs use two models (lenet-fashion, lenet-fashion-at)")
    # a student who opens A's model in full finds the pinned garment already chosen
    at.selectbox(key="explore.model").set_value("lenet-fashion").run()
    assert at.selectbox(key="explore.lenet-fashion.image").value == q["image"]


def test_a_pinned_upload_is_compared_but_stays_out_of_the_link() -> None:
    from tests.app_support import _png_digit

    at = _app()
    at.radio(key="explore.source").set_value("Upload an image").run()
    at.file_uploader(key="explore.upload").set_value(("digit.png", _png_digit(), "image/png")).run()
    at = _submit(at, "Run")
    at.button(key=P + "pin").click().run()
    _ok(at)
    assert any("an uploaded image: the link cannot carry it" in c.value for c in at.caption)
    at.selectbox(key=f"explore.{M}.defense").set_value("median").run()
    at = _submit(at, "Run")
    _ok(at)
    assert len(_compare_charts(at)) == 1 and at.query_params["image"] == "upload"
    assert any(i.value.startswith("**B changes:** defense nip → median") for i in at.info)
    assert not any(k.startswith("pin_") for k in at.query_params)


def test_switching_model_keeps_the_settings_marks_the_result_stale_and_b_differs_only_in_the_model() -> None:
    """Issue 26 §3: PGD pinned on lenet-fashion, then lenet-fashion-at picked: the attack, its ε, the defense,
    the seed and the image stay (one line says so); the old result is marked stale until Run; B's verdict
    names the one difference first."""
    at = _app({"model": "lenet-fashion", "image": "sneaker-02565", "attack": "pgd", "ap": "eps=0.15;max_iter=5",
               "defense": "median", "seed": "3"})
    _ok(at)
    assert not any(w.value.startswith("**Stale:**") for w in at.warning)
    at.button(key=P + "pin").click().run()
    at.selectbox(key="explore.model").set_value("lenet-fashion-at").run()
    _ok(at)
    new = "explore.lenet-fashion-at."
    assert at.selectbox(key=new + "attack").value == "pgd"
    assert at.number_input(key=new + "a.pgd.eps").value == 0.15 and at.number_input(key=new + "a.pgd.max_iter").value == 5
    assert at.selectbox(key=new + "defense").value == "median" and at.number_input(key=new + "seed").value == 3
    assert at.selectbox(key=new + "image").value == "sneaker-02565"
    assert any(i.value.startswith("Switched to lenet-fashion-at: kept") for i in at.info)
    [stale] = [w.value for w in at.warning if w.value.startswith("**Stale:**")]
    assert "model lenet-fashion → lenet-fashion-at" in stale
    at = _submit(at, "Run")
    _ok(at)
    assert not any(w.value.startswith("**Stale:**") for w in at.warning)
    assert at.query_params["attack"] == "pgd" and at.query_params["model"] == "lenet-fashion-at"
    [verdict] = [i.value for i in at.info if i.value.startswith("**B changes:**")]
    assert verdict.startswith("**B changes:** model lenet-fashion → lenet-fashion-at. ")     # nothing else differs
