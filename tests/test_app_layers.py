"""Explore's all-layers strip under AppTest (issue 20 §3): off until asked for, computed once per
view, and a neuron picked on it opens in the drill-down and in neuron surgery."""
from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from tests.app_support import VIEW_CHARTS, _app, _ok, _submit

M = "lenet-mnist"
OPEN = "explore.layers.open"
S = f"explore.surgery.{M}."


def _count_strips(monkeypatch) -> list:
    """Count the engine's layer_strip calls where the app looks it up (and call through)."""
    import nip_core.analyses.pathway as pathway

    calls: list = []
    real = pathway.layer_strip

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(pathway, "layer_strip", counted)
    return calls


def _strip_chart(at: AppTest):
    [chart] = [c for c in at.get("plotly_chart")
               if json.loads(c.proto.spec)["layout"]["title"]["text"].startswith("Every layer at once")]
    return chart


def _pick(at: AppTest, layer: str, neuron: int) -> None:
    """What the browser sends when a neuron marker is clicked: the chart's selection as its widget value."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    chart = _strip_chart(at)
    spec = json.loads(chart.proto.spec)
    [markers] = [i for i, t in enumerate(spec["data"]) if t.get("name") == "neurons"]
    custom = spec["data"][markers]["customdata"]
    index = custom.index([layer, neuron])
    point = {"customdata": [layer, neuron], "curve_number": markers, "point_index": index, "point_number": index,
             "x": spec["data"][markers]["x"][index], "y": spec["data"][markers]["y"][index]}
    states = at._tree.get_widget_states()
    states.widgets.append(WidgetState(id=chart.proto.id, string_value=json.dumps(
        {"selection": {"points": [point], "point_indices": [index], "box": [], "lasso": []}})))
    at._run(states)


def test_strip_opens_on_request_computes_once_and_a_pick_opens_the_neuron(monkeypatch) -> None:
    calls = _count_strips(monkeypatch)
    at = _submit(_app(), "Run")
    _ok(at)
    assert at.toggle(key=OPEN).value is False and len(at.get("plotly_chart")) == VIEW_CHARTS   # light first view
    assert calls == [] and "layers" not in at.query_params
    at.toggle(key=OPEN).set_value(True).run()
    _ok(at)
    assert len(calls) == 1 and len(at.get("plotly_chart")) == VIEW_CHARTS + 1
    assert at.query_params["layers"] == "1"
    spec = json.loads(_strip_chart(at).proto.spec)
    [markers] = [t for t in spec["data"] if t.get("name") == "neurons"]
    layers = [c[0] for c in markers["customdata"]]
    assert layers == [lay for lay in ("conv1", "conv2", "fc1", "fc2") for _ in range(3)]
    # another widget of the page: the strip is not computed again
    at.radio(key="explore.quantity").set_value("activations").run()
    _ok(at)
    assert len(calls) == 1

    # a neuron of the run's layer (fc1): the drill-down and surgery open on it
    fc1 = [c[1] for c in markers["customdata"] if c[0] == "fc1"]
    _pick(at, "fc1", fc1[1])
    _ok(at)
    assert len(calls) == 1
    assert at.toggle(key="explore.drill").value is True
    assert at.selectbox(key=f"explore.neuron.{M}.fc1").value == fc1[1]
    assert at.toggle(key=S + "open").value is True and at.selectbox(key=S + "layer").value == "fc1"
    assert at.selectbox(key=S + "kind").value == "indices" and at.text_input(key=S + "indices").value == str(fc1[1])
    assert at.query_params["surgery"] == str(fc1[1]) and at.query_params["surgery_layer"] == "fc1"
    assert any(i.value.startswith(f"Neuron {fc1[1]} of fc1 is open in the drill-down") for i in at.info)

    # a neuron of another layer: surgery takes it, the drill-down says how to get there
    conv2 = [c[1] for c in markers["customdata"] if c[0] == "conv2"]
    _pick(at, "conv2", conv2[0])
    _ok(at)
    assert at.selectbox(key=S + "layer").value == "conv2" and at.text_input(key=S + "indices").value == str(conv2[0])
    assert at.selectbox(key=f"explore.neuron.{M}.fc1").value == fc1[1]          # the drill-down stays on fc1
    assert any("run again with the influence measured at conv2" in i.value for i in at.info)
    [button] = [b for b in at.button if b.label == "Run again with influence at conv2"]
    button.click().run()
    _ok(at)
    assert at.selectbox(key=f"explore.{M}.layer").value == "conv2" and at.query_params["layer"] == "conv2"
    assert at.selectbox(key=f"explore.neuron.{M}.conv2").value == conv2[0]     # its drill-down is open on it
    assert len(calls) == 2                                                       # the new run's strip, once
    at.toggle(key=OPEN).set_value(False).run()
    _ok(at)
    assert "layers" not in at.query_params


def test_a_link_with_layers_opens_the_strip() -> None:
    at = _app({"model": M, "image": "mnist-test-21", "attack": "fgsm", "defense": "nip", "seed": "0", "layers": "1"})
    _ok(at)
    assert at.toggle(key=OPEN).value is True
    assert _strip_chart(at) is not None and at.query_params["layers"] == "1"


def test_a_failing_strip_is_one_message_and_the_run_stays(monkeypatch) -> None:
    import nip_core.analyses.pathway as pathway
    from nip_core.errors import InputError

    def broken(*a, **kw):
        raise InputError("no influence profile for class 7.")
    monkeypatch.setattr(pathway, "layer_strip", broken)
    at = _app({"model": M, "image": "mnist-test-13", "attack": "pgd", "defense": "jpeg", "seed": "5", "layers": "1"})
    assert not at.exception
    [err] = [e.value for e in at.error]
    assert err == "no influence profile for class 7." and len(at.get("plotly_chart")) == VIEW_CHARTS
