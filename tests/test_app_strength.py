"""Explore's attack-strength panel under AppTest (issue 20, §1): closed until asked for, computed once when
opened, a slider that scrubs the sweep with no engine call, the slider's ε in the share link, one line for
attacks without a budget."""
from __future__ import annotations


from streamlit.testing.v1 import AppTest

from tests.app_support import VIEW_CHARTS, _app, _ok, _submit, calls_made, engine_counters

M = "lenet-mnist"
K = f"explore.strength.{M}."
STRENGTH_CHARTS = 2     # the response chart and the group chart at the slider's ε (its activation grids: one image)
BASE = {"model": M, "image": "mnist-test-21", "attack": "fgsm", "defense": "nip"}
# Every heavy step of the engine, where the app (or the engine) looks it up.
HEAVY = ["nip_core.analyses.strength.strength_sweep", "nip_core.analyses.strength.run_attack", "nip_core.analyses.strength.apply_defense",
         "nip_core.analyses.strength.neuron_activations", "nip_core.analyses.strength.influence_profile",
         "nip_core.analyses.explain.explain", "nip_core.analyses.explain.run_attack", "nip_core.analyses.explain.apply_defense",
         "nip_core.analyses.explain.neuron_influence", "nip_core.analyses.explain.neuron_activations",
         "nip_core.analyses.explain.influence_profile", "nip_core.attacks.run_attack", "nip_core.defenses.apply_defense",
         "nip_core.influence.influence_profile", "nip_core.influence.neuron_influence",
         "nip_core.influence.neuron_activations"]


def _counters(monkeypatch) -> dict[str, list]:
    """Count calls of the engine's heavy steps (and call through)."""
    return engine_counters(monkeypatch, HEAVY)


def _made(calls: dict[str, list]) -> dict[str, int]:
    """Calls made since the last reset (then reset)."""
    return calls_made(calls)


def _run(seed: int) -> AppTest:
    """Explore with defaults (LeNet, FGSM, nip) and ``seed``, after Run (a seed no other test sweeps: the
    caches live as long as the test process)."""
    at = _app()
    at.number_input(key=f"explore.{M}.seed").set_value(seed)       # in the form: sent with the Run click
    at = _submit(at, "Run")
    assert at.query_params["seed"] == str(seed)
    return at


def _slider(at: AppTest):
    return at.select_slider(key=K + "eps")


def _at_eps(at: AppTest) -> str:
    """The scrubbed view's heading: "At ε = …"."""
    [text] = [m.value for m in at.markdown if m.value.startswith("**At ε = ")]
    return text


def _predictions(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("predicts **")]


def test_opening_computes_once_and_the_slider_costs_no_engine_call(monkeypatch) -> None:
    at = _run(seed=11)
    _ok(at)
    toggle = at.toggle(key=K + "open")
    assert toggle.value is False and "strength_eps" not in at.query_params      # closed: the first view stays light
    assert len(at.get("plotly_chart")) == VIEW_CHARTS
    assert "at 13 strengths from 0 to twice its ε" in toggle.label          # ε = 0 and 12 above it
    assert toggle.label.endswith((" s)", "(under a second)"))                 # the expected time, before it starts
    calls = _counters(monkeypatch)
    toggle.set_value(True).run()
    _ok(at)
    made = _made(calls)
    assert made["nip_core.analyses.strength.strength_sweep"] == 1
    assert made["nip_core.analyses.strength.run_attack"] == 12 and made["nip_core.analyses.strength.apply_defense"] == 13, made
    assert "nip_core.analyses.explain.explain" not in made                          # the run above is not recomputed
    assert len(at.get("plotly_chart")) == VIEW_CHARTS + STRENGTH_CHARTS
    slider = _slider(at)
    grid = list(slider.options)
    assert len(grid) == 13 and grid[0] == "0" and grid[6] == "0.2 (51/255)" and grid[-1] == "0.4 (102/255)"
    assert slider.value == 0.2 and at.query_params["strength_eps"] == "0.2"   # starts at the run's ε
    seen = {}
    for eps in (0.0, 0.4, 0.0333333333333, 0.166666666667, 0.2, 0.3, 0.0):
        _slider(at).set_value(eps).run()
        _ok(at)
        assert _made(calls) == {}, eps                                     # zero engine calls per move
        assert _slider(at).value == eps and at.query_params["strength_eps"] == f"{eps:.6g}"
        assert len(at.get("plotly_chart")) == VIEW_CHARTS + STRENGTH_CHARTS
        seen[eps] = (_at_eps(at), _predictions(at))
    # the view follows the slider: at ε = 0 the adversarial is the benign digit, at 2ε the attack wins
    benign, adversarial, _ = seen[0.0][1]
    assert benign == adversarial and "green" in adversarial
    assert "red" in seen[0.4][1][1] and seen[0.4][0] == "**At ε = 0.4 (102/255)**"
    # the view above (the run) is unchanged by the panel
    assert {m.label: m.value for m in at.metric}.keys() == {"benign prediction", "adversarial prediction",
                                                            "defended prediction"}


def test_closing_drops_it_from_the_link() -> None:
    at = _run(seed=12)
    at.toggle(key=K + "open").set_value(True).run()
    _ok(at)
    assert "strength_eps" in at.query_params
    at.toggle(key=K + "open").set_value(False).run()
    _ok(at)
    assert "strength_eps" not in at.query_params and len(at.get("plotly_chart")) == VIEW_CHARTS


def test_share_link_reopens_the_panel_at_the_slider_position() -> None:
    at = _run(seed=13)
    at.toggle(key=K + "open").set_value(True).run()
    _slider(at).set_value(0.3).run()
    _ok(at)
    link = dict(at.query_params)
    assert link["strength_eps"] == "0.3" and link["seed"] == "13"
    shown = (_at_eps(at), _predictions(at))
    again = _app(link)
    _ok(again)
    assert again.toggle(key=K + "open").value is True
    assert _slider(again).value == 0.3 and (_at_eps(again), _predictions(again)) == shown
    assert dict(again.query_params) == link
    # an ε between grid points opens at the nearest one
    near = _app(link | {"strength_eps": "0.29"})
    _ok(near)
    assert _slider(near).value == 0.3 and near.query_params["strength_eps"] == "0.3"


def test_a_bad_link_value_is_one_message_and_the_run_s_eps_stands_in() -> None:
    at = _app(BASE | {"seed": "13", "strength_eps": "banana"})
    assert not at.exception and not at.warning
    [err] = [e.value for e in at.error]
    assert "strength_eps must be a number ≥ 0; got 'banana'" in err
    assert _slider(at).value == 0.2 and at.query_params["strength_eps"] == "0.2"
    assert len(at.get("plotly_chart")) == VIEW_CHARTS + STRENGTH_CHARTS


def test_an_attack_without_a_budget_says_why_in_one_line() -> None:
    at = _app(BASE | {"attack": "deepfool", "defense": "none", "seed": "0", "strength_eps": "0.1"})
    _ok(at)
    [line] = [c.value for c in at.caption if c.value.startswith("No strength slider")]
    assert "DeepFool takes the smallest step to the nearest decision boundary" in line
    assert not [t for t in at.toggle if t.key == K + "open"] and "strength_eps" not in at.query_params
    assert len(at.get("plotly_chart")) == VIEW_CHARTS


def test_uploaded_image_keeps_the_slider_out_of_the_link() -> None:
    from tests.app_support import _png_digit

    at = _app()
    at.radio(key="explore.source").set_value("Upload an image").run()
    at.file_uploader(key="explore.upload").set_value(("digit.png", _png_digit(), "image/png")).run()
    at = _submit(at, "Run")
    at.toggle(key=K + "open").set_value(True).run()
    _ok(at)
    assert at.query_params["image"] == "upload" and "strength_eps" not in at.query_params
    _slider(at).set_value(0.0).run()
    _ok(at)
    assert "strength_eps" not in at.query_params and len(_predictions(at)) == 3
