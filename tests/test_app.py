"""Streamlit pages under AppTest: every page runs with defaults, draws its charts, never raises."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ENTRY = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")
TIMEOUT = 300


def _app(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _submit(at: AppTest, label: str) -> AppTest:
    [button] = [b for b in at.button if b.label == label]
    return button.click().run()


@pytest.fixture(scope="module")
def explored() -> AppTest:
    """Explore with defaults (LeNet, FGSM, nip), after pressing Run."""
    at = _app()
    _ok(at)
    assert at.selectbox(key="explore.model").value == "lenet-mnist"
    assert at.selectbox(key="explore.lenet-mnist.attack").value == "fgsm"
    assert at.selectbox(key="explore.lenet-mnist.defense").value == "nip"
    assert not at.get("plotly_chart")          # nothing runs before the click
    return _submit(at, "Run")


def test_explore_run_shows_all_views(explored: AppTest) -> None:
    at = explored
    _ok(at)
    charts = at.get("plotly_chart")
    # benign image, 2 perturbations, 3 top-5 bars, heatmaps, differences, groups, 3 maps, across-classes, compare
    assert len(charts) >= 14
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"benign prediction", "adversarial prediction", "defended prediction"}
    assert all(v.isdigit() for v in metrics.values())
    assert any(i.value.startswith("The attack ") for i in at.info)           # the signature verdict
    # nip explains itself (detectors on the benign and the adversarial input), then the comparison table
    assert len(at.dataframe) == 3 and len(at.dataframe[2].value) >= 8
    for df in at.dataframe[:2]:
        assert list(df.value.columns) == ["detector", "score", "threshold", "fires"] and len(df.value) == 3
    assert any(h.value.startswith("Why `nip`") for h in at.subheader)
    assert any("Not flagged" in m.value for m in at.markdown)                # the benign digit passes
    assert at.query_params["attack"] == "fgsm" and at.query_params["defense"] == "nip"


def test_explore_neuron_drill_down(explored: AppTest) -> None:
    at = explored
    [sb] = [s for s in at.selectbox if s.key and s.key.startswith("explore.neuron.")]
    sb.select_index(5).run()
    _ok(at)
    assert len(at.get("plotly_chart")) >= 14


def test_explore_link_reproduces_view() -> None:
    at = _app({"model": "lenet-mnist", "attack": "pgd", "ap": "eps=0.1;max_iter=5", "defense": "median",
               "layer": "fc2", "k": "0.3", "seed": "3"})
    _ok(at)
    assert not at.warning
    assert at.selectbox(key="explore.lenet-mnist.attack").value == "pgd"
    assert at.number_input(key="explore.lenet-mnist.a.pgd.max_iter").value == 5
    assert at.selectbox(key="explore.lenet-mnist.layer").value == "fc2"
    assert len(at.get("plotly_chart")) >= 14                               # the link runs the view


def test_bad_query_parameter_warns_not_raises() -> None:
    at = _app({"model": "no-such-model", "attack": "fgsm", "ap": "eps=7", "k": "banana"})
    assert not at.exception
    text = " ".join(w.value for w in at.warning)
    assert "no-such-model" in text and "eps" in text and "k must be" in text
    assert at.selectbox(key="explore.model").value == "lenet-mnist"


def test_link_with_an_attack_that_does_not_apply_warns_and_falls_back() -> None:
    at = _app({"model": "efficientnet-lite0", "image": "chelsea", "attack": "nip-aware", "defense": "nip"})
    assert not at.exception
    assert any("'nip-aware' does not apply to model 'efficientnet-lite0'" in w.value for w in at.warning)
    sb = at.selectbox(key="explore.efficientnet-lite0.attack")
    assert sb.value == "fgsm" and not any(o.startswith("nip-aware") for o in sb.options)
    assert any(o.startswith("pgd") for o in sb.options)


def test_aware_attack_on_lenet_shows_the_vote_fooled() -> None:
    at = _app({"model": "lenet-mnist", "attack": "nip-aware", "defense": "nip", "seed": "0"})
    assert not at.exception and not at.warning
    sb = at.selectbox(key="explore.lenet-mnist.attack")
    assert sb.value == "nip-aware" and any(o.startswith("nip-aware") for o in sb.options)
    assert any("Flagged" in m.value or "Not flagged" in m.value for m in at.markdown)
    assert any(c.value.startswith("`nip-aware` knows") for c in at.caption)


def test_deepfool_on_lenet_explains_the_pocket_rule() -> None:
    """DeepFool stops just past the boundary: nip says it took the class predicted under noise."""
    at = _app({"model": "lenet-mnist", "attack": "deepfool", "defense": "nip", "seed": "0"})
    _ok(at)
    [flagged] = [m.value for m in at.markdown if m.value.startswith(":orange[Flagged")]
    assert "pocket rule" in flagged and "under ±0.1 noise the model predicts" in flagged
    assert any("Pocket rule:" in c.value for c in at.caption)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["defended prediction"] == metrics["benign prediction"] != metrics["adversarial prediction"]


def test_slow_attack_is_announced_before_it_runs() -> None:
    """Picking the pixel attack on EfficientNet warns how long it may take; nothing runs yet."""
    at = _app()
    at.selectbox(key="explore.model").set_value("efficientnet-lite0").run()
    at.selectbox(key="explore.efficientnet-lite0.attack").set_value("pixel").run()
    _ok(at)
    [slow] = [c.value for c in at.caption if c.value.startswith("Slow:")]
    assert "`pixel` may take up to about" in slow and not at.get("plotly_chart")
    at.selectbox(key="explore.efficientnet-lite0.attack").set_value("fgsm").run()
    assert not [c for c in at.caption if c.value.startswith("Slow:")]


def test_garbage_upload_is_an_input_error() -> None:
    # AppTest cannot drive st.file_uploader; the page hands upload bytes to this function and shows
    # its InputError with st.error (the browser test uploads a real image).
    from app.common import load_upload
    from nip_core.errors import InputError

    with pytest.raises(InputError, match="text file|not a supported image"):
        load_upload("lenet-mnist", b"this is not an image at all")
    with pytest.raises(InputError):
        load_upload("lenet-mnist", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)


def test_oracle_without_label_is_an_input_error() -> None:
    from app.common import explanation
    from nip_core.errors import InputError

    with pytest.raises(InputError, match="true label"):
        explanation("lenet-mnist", "x", _png_digit(), None, "fgsm", (), "nip-oracle", (), "fc1", "conductance",
                    0.2, 0)


def _png_digit() -> bytes:
    from nip_core.data import gallery
    from nip_core.images import tensor_to_png_bytes
    return tensor_to_png_bytes(gallery("mnist")[0].image)


def test_profiles_page() -> None:
    at = _app()
    at.switch_page("views/profiles.py").run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 2
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["neurons"] == "120" and int(metrics["dead neurons"]) >= 0 and metrics["classes profiled"] == "10"
    assert len(at.dataframe[0].value) == 11                                 # 10 classes + global


def test_method_page() -> None:
    at = _app()
    at.switch_page("views/method.py").run()
    _ok(at)
    assert len(at.latex) == 2
    assert any("not deployable" in w.value for w in at.warning)


def test_benchmark_page_defaults() -> None:
    at = _app()
    at.switch_page("views/benchmark.py").run()
    _ok(at)
    assert at.multiselect(key="benchmark.attacks").value == ["fgsm", "pgd"]
    assert at.number_input(key="benchmark.n").value == 20
    at = _submit(at, "Run benchmark")
    _ok(at)
    assert len(at.get("plotly_chart")) == 1
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["images"] == "20"
    rows = at.dataframe[0].value
    assert len(rows) == 2 * 5 and rows["defended_adv_accuracy"].between(0, 1).all()
    assert len([b for b in at.get("download_button")]) == 2
    # nip against the 4 other defenses, on 2 attacks and the benign images, image by image
    pairs = at.dataframe[2].value
    assert len(pairs) == 3 * 4 and set(pairs["inputs"]) == {"benign", "fgsm[eps=0.2]", "pgd[eps=0.3;eps_step=0.01;max_iter=40]"}
    assert (pairs["only nip right"] + pairs["only the other right"] <= 20).all() and pairs["McNemar p"].between(0, 1).all()


def test_bring_your_own_model_is_per_session_and_refuses_pickles():
    import io
    import pickle

    from safetensors.torch import save
    from app import common as C
    from nip_core.errors import InputError
    from nip_core.models.lenet import LeNet5

    net = LeNet5(num_classes=3)
    weights = save({k: v.contiguous() for k, v in net.state_dict().items()})
    name = C.load_custom("lenet", weights, b"cat\ndog\nbird\n", None)
    assert name.startswith("custom-lenet-")
    assert name in C.visible_models([name]) and name not in C.visible_models([])
    assert {"lenet-mnist", "efficientnet-lite0"} <= set(C.visible_models([]))
    buf = io.BytesIO()
    pickle.dump(net.state_dict(), buf)
    with pytest.raises(InputError, match="safetensors"):
        C.load_custom("lenet", buf.getvalue(), b"a\nb\nc\n", None)
