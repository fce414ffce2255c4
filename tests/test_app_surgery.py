"""Explore's neuron surgery panel under AppTest (issue 19): on request, one patched pass per change,
one message for a bad selection, the settings in the share link, neurons picked on the grid."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from tests.app_support import SURGERY_CHARTS, VIEW_CHARTS, _app, _ok, _submit, calls_made, engine_counters

M = "lenet-mnist"
K = f"explore.surgery.{M}."


def _opened(query: dict | None = None) -> AppTest:
    """Explore with defaults (LeNet, FGSM, nip) after Run, and the surgery panel opened."""
    at = _app(query)
    if not query:
        at = _submit(at, "Run")
        assert not at.query_params.get("surgery")            # closed until asked for: the first view is light
        assert len(at.get("plotly_chart")) == VIEW_CHARTS
        at.toggle(key=K + "open").set_value(True).run()
    return at


def _verdict(at: AppTest) -> str:
    """The panel's sentence: green (st.success) when the class returns, else an st.info."""
    [text] = [e.value for e in [*at.success, *at.info] if e.value.startswith(("The class", "The attack did not flip", "The model already"))]
    return text


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _counters(monkeypatch) -> dict[str, list]:
    """Count calls of the engine's heavy steps where the app looks them up (and call through)."""
    return engine_counters(monkeypatch, ["nip_core.analyses.explain.explain", "nip_core.analyses.explain.run_attack", "nip_core.analyses.explain.apply_defense",
                   "nip_core.analyses.explain.neuron_influence", "nip_core.attacks.run_attack", "nip_core.defenses.apply_defense",
                   "nip_core.influence.influence_profile", "nip_core.analyses.surgery.source_activations",
                   "nip_core.analyses.surgery.surgery", "nip_core.analyses.surgery.patch"])


def _made(calls: dict[str, list]) -> dict[str, int]:
    """Calls made since the last reset (then reset)."""
    return calls_made(calls, "nip_core.analyses.surgery")


def test_panel_opens_on_request_and_shows_the_three_passes() -> None:
    at = _opened()
    _ok(at)
    assert len(at.get("plotly_chart")) == VIEW_CHARTS + SURGERY_CHARTS
    assert at.selectbox(key=K + "layer").value == "fc1"                       # the run's influence layer
    assert at.selectbox(key=K + "kind").value == "front" and at.slider(key=K + "k").value == 0.2
    assert at.selectbox(key=K + "value").value == "benign"
    m = _metrics(at)
    assert {"benign margin", "adversarial margin", "patched margin", "recovery share"} <= set(m)
    assert float(m["benign margin"]) > 0 > float(m["adversarial margin"])     # the attack flipped the digit
    assert 0 < float(m["recovery share"]) <= 1.5
    assert _verdict(at).startswith("The class returns. With 15 neurons of fc1 set to benign")
    assert _verdict(at) in [e.value for e in at.success]
    assert (at.query_params["surgery"], at.query_params["surgery_layer"], at.query_params["surgery_value"]) == (
        "front:0.2", "fc1", "benign")
    # closing it drops it from the link
    at.toggle(key=K + "open").set_value(False).run()
    _ok(at)
    assert "surgery" not in at.query_params and len(at.get("plotly_chart")) == VIEW_CHARTS


def test_a_change_costs_one_patched_pass_and_never_the_attack_defense_or_explanation(monkeypatch) -> None:
    at = _opened()
    _ok(at)
    calls = _counters(monkeypatch)
    at.selectbox(key=K + "kind").set_value("random").run()
    _ok(at)
    made = _made(calls)
    assert set(made) <= {"surgery", "patch"} and made.get("surgery", 0) <= 1, made
    # Settings no other test computes (the caches live as long as the test process):
    at.number_input(key=K + "n.fc1").set_value(7).run()
    _ok(at)
    assert at.query_params["surgery"] == "random:7"
    assert _made(calls) == {"surgery": 1, "patch": 1}             # one patched pass, nothing else
    at.selectbox(key=K + "value").set_value("zero").run()
    _ok(at)
    assert at.query_params["surgery_value"] == "zero"
    assert _made(calls) == {"surgery": 1, "patch": 1}
    # back to a setting seen before: nothing is computed at all (a scrub costs no engine call)
    at.selectbox(key=K + "value").set_value("benign").run()
    _ok(at)
    assert _made(calls) == {}
    # another layer: its unpatched passes once, then one patched pass per change
    at.selectbox(key=K + "layer").set_value("fc2").run()
    _ok(at)
    made = _made(calls)
    made.pop("nip_core.influence.influence_profile", None)       # the layer's shipped profile, loaded once
    assert made == {"source_activations": 1, "surgery": 1, "patch": 1}, made
    assert at.query_params["surgery_layer"] == "fc2"
    at.number_input(key=K + "n.fc2").set_value(9).run()
    assert _made(calls) == {"surgery": 1, "patch": 1}


def test_a_bad_selection_is_one_message_and_the_run_stays() -> None:
    at = _opened()
    front = _verdict(at)
    at.selectbox(key=K + "kind").set_value("indices").run()
    _ok(at)
    typed = at.text_input(key=K + "indices").value                       # starts from the neurons patched last
    assert len(typed.split(", ")) == 15 and _verdict(at) == front.replace("front:0.2", typed)
    at.text_input(key=K + "indices").set_value("").run()
    _ok(at)
    assert any(i.value.startswith("Type neuron indices") for i in at.info)  # nothing typed: a hint, no error
    for text, words in (("999", "neuron index 999 is outside layer 'fc1', whose neurons are 0–119"),
                        ("3,,x", "unknown selection '3,,x'")):
        at.text_input(key=K + "indices").set_value(text).run()
        assert not at.exception
        [err] = [e.value for e in at.error]
        assert words in err
        assert len(at.get("plotly_chart")) == VIEW_CHARTS + 1               # the run, and the grid to pick on
        assert {"benign prediction", "adversarial prediction", "defended prediction"} <= set(_metrics(at))
        assert "patched margin" not in _metrics(at)
    at.text_input(key=K + "indices").set_value("3, 17").run()
    _ok(at)
    assert _verdict(at).startswith("The class does not return. With 2 neurons of fc1")
    assert at.query_params["surgery"] == "3,17"
    # a layer narrower than the typed indices
    at.selectbox(key=K + "layer").set_value("conv1").run()
    [err] = [e.value for e in at.error]
    assert "neuron index 17 is outside layer 'conv1', whose neurons are 0–5" in err


def test_bad_surgery_settings_in_a_link_are_one_message_and_defaults_stand_in() -> None:
    base = {"model": M, "image": "mnist-test-21", "attack": "fgsm", "defense": "nip", "seed": "0"}
    at = _app(base | {"surgery": "front:0.2", "surgery_layer": "nope", "surgery_value": "scale:20"})
    assert not at.exception and not at.warning
    [err] = [e.value for e in at.error]
    assert "has no layer 'nope'" in err and "scale must be a number in [-10, 10]" in err
    assert len(at.get("plotly_chart")) == VIEW_CHARTS + SURGERY_CHARTS      # the run and the panel, on defaults
    assert at.selectbox(key=K + "layer").value == "fc1" and at.selectbox(key=K + "value").value == "benign"
    assert at.query_params["surgery_value"] == "benign"                     # the link now says what is shown
    at = _app(base | {"surgery": "banana"})
    [err] = [e.value for e in at.error]
    assert "unknown selection 'banana'" in err and len(at.get("plotly_chart")) == VIEW_CHARTS + SURGERY_CHARTS
    at = _app(base | {"surgery": "random:500", "surgery_layer": "fc1"})
    [err] = [e.value for e in at.error]
    assert "selection 'random:500' asks for 500 neurons; layer 'fc1' has 120" in err
    assert at.number_input(key=K + "n.fc1").value == 10


def test_share_link_reopens_the_same_surgery() -> None:
    at = _opened()
    at.selectbox(key=K + "layer").set_value("conv2").run()
    at.selectbox(key=K + "kind").set_value("changed").run()
    at.number_input(key=K + "n.conv2").set_value(5).run()
    at.selectbox(key=K + "value").set_value("scale").run()
    at.slider(key=K + "scale").set_value(0.5).run()
    _ok(at)
    link = dict(at.query_params)
    assert (link["surgery"], link["surgery_layer"], link["surgery_value"]) == ("changed:5", "conv2", "scale:0.5")
    shown = (_verdict(at), _metrics(at))
    again = _app(link)
    _ok(again)
    assert again.toggle(key=K + "open").value is True
    assert again.selectbox(key=K + "kind").value == "changed" and again.number_input(key=K + "n.conv2").value == 5
    assert again.slider(key=K + "scale").value == 0.5
    assert (_verdict(again), _metrics(again)) == shown
    assert dict(again.query_params) == link


def test_neurons_picked_on_the_grid_become_the_selection() -> None:
    """The browser sends the picked markers as the grid chart's widget value; send the same here."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    at = _opened()
    [grid] = [c for c in at.get("plotly_chart")
              if json.loads(c.proto.spec)["layout"]["title"]["text"].startswith("Pick neurons")]
    markers = json.loads(grid.proto.spec)["data"][-1]
    assert len(grid.proto.selection_mode) == 3 and markers["type"] == "scatter" and "customdata" in markers
    points = [{"customdata": 3, "curve_number": 2, "point_index": 3, "x": 3, "y": 0},
              {"customdata": 42, "curve_number": 2, "point_index": 42, "x": 9, "y": 3}]
    states = at._tree.get_widget_states()
    states.widgets.append(WidgetState(id=grid.proto.id, string_value=json.dumps(
        {"selection": {"points": points, "point_indices": [3, 42], "box": [], "lasso": []}})))
    at._run(states)
    _ok(at)
    assert at.selectbox(key=K + "kind").value == "indices" and at.text_input(key=K + "indices").value == "3, 42"
    assert "With 2 neurons of fc1" in _verdict(at) and at.query_params["surgery"] == "3,42"


def _grid(at: AppTest):
    [grid] = [c for c in at.get("plotly_chart")
              if json.loads(c.proto.spec)["layout"]["title"]["text"].startswith("Pick neurons")]
    return grid


def test_the_grid_stays_the_same_chart_when_the_selection_changes() -> None:
    """Streamlit names a chart by its figure: the grid must not change with the patched neurons, or the
    browser mounts it afresh on every change. The patched neurons are listed under it instead."""
    at = _opened()
    _ok(at)
    before = _grid(at).proto.id
    patched = [m.value for m in at.markdown if m.value.startswith("**Patched now**")]
    assert patched and patched[0].startswith("**Patched now** (15 neurons): ")
    at.selectbox(key=K + "kind").set_value("tail").run()
    _ok(at)
    at.selectbox(key=K + "value").set_value("zero").run()
    _ok(at)
    assert at.query_params["surgery"] == "tail:0.2" and at.query_params["surgery_value"] == "zero"
    assert _grid(at).proto.id == before
    after = [m.value for m in at.markdown if m.value.startswith("**Patched now**")]
    assert after and after != patched                              # the list follows the selection
    # K names the groups in the grid's hover: a new K is a new grid
    at.slider(key=K + "k").set_value(0.3).run()
    _ok(at)
    assert _grid(at).proto.id != before


def test_uploaded_image_keeps_surgery_out_of_the_link() -> None:
    from tests.app_support import _png_digit

    at = _app()
    at.radio(key="explore.source").set_value("Upload an image").run()
    at.file_uploader(key="explore.upload").set_value(("digit.png", _png_digit(), "image/png")).run()
    at = _submit(at, "Run")
    at.toggle(key=K + "open").set_value(True).run()
    _ok(at)
    assert at.query_params["image"] == "upload" and "surgery" not in at.query_params
    assert _verdict(at)                                                       # the panel works on uploads too


@pytest.mark.parametrize("points, want", [
    ([], []), ([{"customdata": 5}, {"customdata": [2]}, {"customdata": 5}], [2, 5]),
    ([{"x": 1, "y": 2}, {"customdata": "a"}, {"customdata": 1.5}], []),
])
def test_picked_neurons_reads_the_markers(points, want) -> None:
    from nip_core.figures import picked_neurons
    assert picked_neurons(points) == want
