"""Streamlit pages under AppTest: every page runs with defaults, draws its charts, never raises."""
from __future__ import annotations

import json
import threading

import pytest
from streamlit.testing.v1 import AppTest

from tests.app_support import (INTERACTIVE_CHARTS, SURGERY_CHARTS, VIEW_CHARTS, VIEW_METRICS, _app,  # noqa: F401
                               _lenet_safetensors, _load_own_model, _ok, _png_digit, _submit)


def _view_drawn(at: AppTest) -> bool:
    """The run's result is on the page: its three predictions, and no Plotly chart until asked for."""
    return VIEW_METRICS <= {m.label for m in at.metric} and len(at.get("plotly_chart")) == VIEW_CHARTS




@pytest.fixture(scope="module")
def explored() -> AppTest:
    """Explore with defaults (LeNet, FGSM, nip), after pressing Run."""
    at = _app()
    _ok(at)
    assert at.selectbox(key="explore.model").value == "lenet-mnist"
    assert at.selectbox(key="explore.lenet-mnist.attack").value == "fgsm"
    assert at.selectbox(key="explore.lenet-mnist.defense").value == "nip"
    assert _view_drawn(at)                     # the first visit shows the default run at once
    return _submit(at, "Run")


def test_explore_run_shows_all_views(explored: AppTest) -> None:
    at = explored
    _ok(at)
    assert _view_drawn(at)
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == VIEW_METRICS
    assert all(v.isdigit() for v in metrics.values())
    assert any(c.value.startswith("The attack ") for c in at.caption)        # the signature verdict
    assert any(m.value.startswith("The attack ") for m in at.markdown)       # what happened, in one line
    at.toggle(key="explore.interactive").set_value(True).run()               # the Plotly charts, on request
    assert len(at.get("plotly_chart")) == INTERACTIVE_CHARTS
    at.toggle(key="explore.interactive").set_value(False).run()
    # nip explains itself (detectors on the benign and the adversarial input), in two static tables
    assert len(at.table) == 2 and not at.dataframe
    for t in at.table:
        df = t.value
        assert list(df.columns) == ["score", "threshold", "fires"] and len(df) == 3
    assert any(h.value.startswith("Why `nip`") for h in at.subheader)
    assert any("Not flagged" in m.value for m in at.markdown)                # the benign digit passes
    assert at.query_params["attack"] == "fgsm" and at.query_params["defense"] == "nip"


def test_every_defense_comparison_runs_on_request(explored: AppTest) -> None:
    """Off until asked for (a class opening one link pays for it once per student); then every defense."""
    at = explored
    toggle = at.toggle(key="explore.compare.lenet-mnist")
    assert toggle.value is False
    toggle.set_value(True).run()
    _ok(at)
    assert len(at.get("plotly_chart")) == VIEW_CHARTS + 1 and len(at.dataframe) == 1
    table = at.dataframe[0].value
    assert {"none", "jpeg", "nip", "nip-oracle", "random-sign"} <= set(table["defense"])


def test_explore_neuron_drill_down(explored: AppTest) -> None:
    """Off until asked for; then one neuron's maps on the three inputs and its profile across classes."""
    at = explored
    assert not [s for s in at.selectbox if s.key and s.key.startswith("explore.neuron.")]
    at.toggle(key="explore.drill").set_value(True).run()
    [sb] = [s for s in at.selectbox if s.key and s.key.startswith("explore.neuron.")]
    sb.select_index(5).run()
    _ok(at)
    assert len(at.get("plotly_chart")) >= VIEW_CHARTS + 4
    at.toggle(key="explore.drill").set_value(False).run()


def test_explore_link_reproduces_view() -> None:
    at = _app({"model": "lenet-mnist", "attack": "pgd", "ap": "eps=0.1;max_iter=5", "defense": "median",
               "layer": "fc2", "k": "0.3", "seed": "3"})
    _ok(at)
    assert not at.warning
    assert at.selectbox(key="explore.lenet-mnist.attack").value == "pgd"
    assert at.number_input(key="explore.lenet-mnist.a.pgd.max_iter").value == 5
    assert at.selectbox(key="explore.lenet-mnist.layer").value == "fc2"
    assert _view_drawn(at)                      # the link runs the view


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
    assert any("Pocket rule:" in c.proto.help for c in at.caption)          # behind the caption's help icon
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


def _upload_image(at: AppTest, name: str, data: bytes, mime: str = "image/png") -> AppTest:
    """Explore's "Upload an image" through its real widgets: the source radio, then the uploader."""
    at.radio(key="explore.source").set_value("Upload an image").run()
    return at.file_uploader(key="explore.upload").set_value((name, data, mime)).run()


def test_explore_runs_on_an_image_uploaded_through_the_widget(lenet, digits) -> None:
    """A held-out digit of another class than the gallery's first example, uploaded as a PNG: the run
    shows the engine's predictions for that image (decoded and attacked here, independently)."""
    import torch

    from nip_core.attacks import run_attack
    from nip_core.data import gallery
    from nip_core.images import load_image, tensor_to_png_bytes

    x, y = digits
    i = next(i for i in range(len(y)) if int(y[i]) != gallery("mnist")[0].label)
    png = tensor_to_png_bytes(x[i])
    seen = load_image(png, channels=1, size=28, preprocess=lenet.spec.preprocess).unsqueeze(0)
    benign = int(lenet.predict(seen)[0])
    adversarial = int(lenet.predict(run_attack(lenet, "fgsm", seen, torch.tensor([benign]), seed=0).x_adv)[0])
    assert benign == int(y[i])

    at = _upload_image(_app(), "my digit.png", png)
    _ok(at)
    captions = [im.caption for el in at.get("image") for im in el.proto.imgs]
    assert [c for c in captions if c.endswith("sees it")] == ["my digit.png as the model sees it"]   # the upload
    at.selectbox(key="explore.lenet-mnist.upload_label").set_value(int(y[i])).run()
    at = _submit(at, "Run")
    _ok(at)
    assert _view_drawn(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["benign prediction"] == str(benign) and metrics["adversarial prediction"] == str(adversarial)
    assert at.query_params["image"] == "upload" and at.query_params["model"] == "lenet-mnist"


def test_garbage_upload_through_the_widget_is_one_error_line() -> None:
    at = _upload_image(_app(), "notes.png", b"this is not an image at all")
    assert not at.exception
    [err] = [e.value for e in at.error]
    assert err.startswith("Cannot use notes.png:") and ("text file" in err or "not a supported image" in err)
    at = _submit(at, "Run")                                  # nothing to run on: said, not raised
    assert not at.exception and not at.get("plotly_chart")
    assert any(e.value == "Choose an example or upload a valid image first." for e in at.error)
    at.file_uploader(key="explore.upload").set_value(("cut.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
                                                       "image/png")).run()
    assert not at.exception
    assert [e.value for e in at.error][0].startswith("Cannot use cut.png:")


def test_oracle_without_label_is_an_input_error() -> None:
    from app.compute import explanation
    from nip_core.errors import InputError
    from nip_core.run import Run

    with pytest.raises(InputError, match="true label"):
        explanation(Run("lenet-mnist", "x", _png_digit(), None, "fgsm", (), "nip-oracle", (), "fc1", "conductance",
                        0.2, 0))



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
    assert len(at.latex) == 3                          # NIP's objective and step, and mediation's recovery share
    assert "f_{G \\leftarrow x}(x')" in at.latex[2].value
    assert any("not deployable" in w.value for w in at.warning)


def test_benchmark_page_runs_a_new_grid() -> None:
    at = _app()
    at.switch_page("views/benchmark.py").run()
    at.radio(key="benchmark.source").set_value("run").run()
    _ok(at)
    assert at.multiselect(key="benchmark.attacks").value == ["fgsm", "pgd"]
    assert at.number_input(key="benchmark.n").value == 20
    assert not at.get("plotly_chart")                                       # nothing runs before the click
    at = _submit(at, "Run benchmark")
    _ok(at)
    assert len(at.get("plotly_chart")) == 1
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["images"] == "20"
    rows = at.dataframe[3].value               # summary, intervals, pairs, then every row
    assert len(rows) == 2 * 5 and rows["defended_adv_accuracy"].between(0, 1).all()
    assert len([b for b in at.get("download_button")]) == 2
    ci = at.dataframe[1].value
    assert len(ci) == 2 * 5 + 5 and ((ci["ci_low"] <= ci["accuracy"]) & (ci["accuracy"] <= ci["ci_high"])).all()
    # nip against the 4 other defenses, on 2 attacks and the benign images, image by image
    pairs = at.dataframe[2].value
    assert len(pairs) == 3 * 4 and set(pairs["inputs"]) == {"benign", "fgsm[eps=0.2]", "pgd[eps=0.3;eps_step=0.01;max_iter=40]"}
    assert (pairs["only nip right"] + pairs["only the other right"] <= 20).all() and pairs["McNemar p"].between(0, 1).all()


def test_bring_your_own_model_is_per_session_and_refuses_pickles():
    import io
    import pickle

    from safetensors.torch import save
    from app.loaders import load_custom, visible_models
    from nip_core.errors import InputError
    from nip_core.models.lenet import LeNet5

    net = LeNet5(num_classes=3)
    weights = save({k: v.contiguous() for k, v in net.state_dict().items()})
    name = load_custom("lenet", weights, b"cat\ndog\nbird\n", None)
    assert name.startswith("custom-lenet-")
    assert name in visible_models([name]) and name not in visible_models([])
    assert {"lenet-mnist", "efficientnet-lite0"} <= set(visible_models([]))
    buf = io.BytesIO()
    pickle.dump(net.state_dict(), buf)
    with pytest.raises(InputError, match="safetensors"):
        load_custom("lenet", buf.getvalue(), b"a\nb\nc\n", None)




def _offered(box) -> list[str]:
    """The model names a Model select box offers (its options read "name — summary")."""
    return [o.split(" — ")[0] for o in box.options]


def test_bring_your_own_model_through_the_sidebar_form() -> None:
    at = _app()
    name = _load_own_model(at, _lenet_safetensors(seed=21), b"cat\ndog\nbird\n")
    assert name.startswith("custom-lenet-")
    box = at.selectbox(key="explore.model")
    assert _offered(box)[-1] == name and box.value == "lenet-mnist"          # offered, not forced
    box.set_value(name).run()
    _ok(at)
    at = _submit(at, "Run")
    _ok(at)
    assert at.query_params["model"] == name and _view_drawn(at)
    assert {m.value for m in at.metric} <= {"cat", "dog", "bird"}            # the model's own classes
    # Without a weights file the form says what is missing.
    [w] = [u for u in at.sidebar.file_uploader if u.label == "Weights (.safetensors)"]
    w.set_value(None)
    [b for b in at.sidebar.button if b.label == "Load model"][0].click().run()
    assert not at.exception and any(e.value == "Upload both the weights and the class names." for e in at.error)


def test_one_sessions_model_is_invisible_and_unlinkable_in_another() -> None:
    """Session A loads its model; session B, opened with A's share link, gets a clear message and the
    default model, and no Model box of B offers A's model."""
    a = _app()
    name = _load_own_model(a, _lenet_safetensors(seed=22), b"left\nright\nup\n")
    assert name in _offered(a.selectbox(key="explore.model"))

    b = _app({"model": name, "attack": "fgsm", "defense": "nip"})            # A's link, opened by B
    assert not b.exception
    [warning] = [w.value for w in b.warning if "link were ignored" in w.value]
    assert f"unknown model {name!r}" in warning
    assert b.selectbox(key="explore.model").value == "lenet-mnist"
    assert b.query_params["model"] == "lenet-mnist"                          # the view shown is the default's
    assert _view_drawn(b) and not b.error
    assert name not in _offered(b.selectbox(key="explore.model"))
    for page, box in (("views/benchmark.py", "benchmark.model"), ("views/profiles.py", "profiles.model")):
        b.switch_page(page).run()
        if page == "views/benchmark.py":
            b.radio(key="benchmark.source").set_value("run").run()
        _ok(b)
        offered = _offered(b.selectbox(key=box))
        assert name not in offered and {"lenet-mnist", "efficientnet-lite0"} <= set(offered), page
    # A still has it.
    a.run()
    assert name in _offered(a.selectbox(key="explore.model"))


# ----------------------------------------------------------------------------- the classroom (issue 15)

def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label.replace(" prediction", ""): m.value for m in at.metric}


def _tour_card(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Guided tour · step"))


def test_tour_page_offers_every_step_with_a_link() -> None:
    at = _app()
    at.switch_page("views/tour.py").run()
    _ok(at)
    assert at.selectbox(key="tour.model").value == "lenet-mnist"
    opens = [b for b in at.button if b.label.startswith("Open step")]
    assert [b.label for b in opens] == [f"Open step {i}" for i in range(1, 10)]
    links = [c.value for c in at.code]
    assert len(links) == 9 and all("model=" in u and "tour=" in u for u in links)
    # the ablation runs on the image of the label-free nip step; the surgery step's link opens the panel
    from urllib.parse import parse_qs, urlsplit
    q = [parse_qs(urlsplit(u).query) for u in links]
    assert q[4]["defense"] == ["counter-attack"] and q[4]["image"] == q[3]["image"] and q[3]["defense"] == ["nip"]
    assert q[5]["surgery"] == ["front:0.2"] and q[5]["surgery_value"] == ["benign"] and q[5]["defense"] == ["none"]
    # the robust-model step: lenet-fashion-at with lenet-fashion pinned beside it, on one garment
    assert (q[7]["model"], q[7]["pin_model"], q[7]["tm"]) == (["lenet-fashion-at"], ["lenet-fashion"], ["lenet-mnist"])
    assert q[7]["pin_image"] == q[7]["image"] and q[7]["pin_attack"] == q[7]["attack"] == ["fgsm"]
    assert "model=resnet8-cifar10" in links[-1] and "tm=lenet-mnist" in links[-1]    # the photo step
    # One click opens Explore with the step's preset, run, and the step's card on top.
    [b for b in at.button if b.label == "Open step 2"][0].click().run()
    _ok(at)
    assert at.query_params["tour"] == "attack" and at.query_params["defense"] == "none"
    assert "step 2 of 9" in _tour_card(at) and _view_drawn(at)


def test_tour_photo_model_skips_the_steps_that_need_a_calibration() -> None:
    at = _app()
    at.switch_page("views/tour.py").run()
    at.selectbox(key="tour.model").set_value("resnet8-cifar10").run()
    _ok(at)
    assert [b.label for b in at.button if b.label.startswith("Open step")] == [
        "Open step 1", "Open step 2", "Open step 3", "Open step 6", "Open step 8", "Open step 9"]
    why = [c.value for c in at.caption if c.value.startswith("Not on this model")]
    assert len(why) == 3 and all("calibrate --model resnet8-cifar10" in w for w in why)


def test_tour_walk_tells_the_story_on_lenet() -> None:
    """From a step-1 share link, Next through all nine steps: each view shows its part of the story."""
    from app import tour as T

    at = _app(T.step_query(T.STEPS[0], "lenet-mnist"))
    _ok(at)
    seen = {}
    for i, step in enumerate(T.STEPS):
        if i:
            [b for b in at.button if b.label == "Next step"][0].click().run()
            _ok(at)
        assert f"step {i + 1} of 9" in _tour_card(at) and at.query_params["tour"] == step.key
        assert at.query_params["attack"] == step.attack and at.query_params["defense"] == step.defense
        surgery = step.key == "surgery"             # the one step that opens the surgery panel
        pinned = step.key == "robust"               # the one step that pins a run beside it
        assert len(at.get("plotly_chart")) == VIEW_CHARTS + (SURGERY_CHARTS if surgery else 0) + pinned
        assert ("surgery" in at.query_params) == surgery and ("pin_model" in at.query_params) == pinned
        seen[step.key] = _metrics(at)
        if pinned:
            [seen["robust"]["verdict"]] = [i.value for i in at.info if "The attack fooled" in i.value]
        if surgery:
            [seen["surgery"]["verdict"]] = [e.value for e in at.success if e.value.startswith("The class")]
    assert seen["neurons"]["adversarial"] == seen["neurons"]["benign"]          # ε = 0: nothing happens
    assert seen["attack"]["adversarial"] != seen["attack"]["benign"]            # FGSM flips the digit
    assert seen["attack"]["defended"] == seen["attack"]["adversarial"]          # no defense
    assert seen["oracle"]["defended"] == seen["oracle"]["benign"]               # NIP with the label restores it
    assert seen["label-free"]["defended"] == seen["label-free"]["benign"]       # so does the label-free nip
    # the ablation on the same image: without the neurons, the same class choice gives the same prediction
    assert seen["counter-attack"]["defended"] == seen["label-free"]["defended"]
    # surgery on the attack step's view: the front neurons set back to their benign values bring the class back
    assert at.query_params.get("surgery") is None
    assert seen["surgery"]["verdict"].startswith("The class returns.")
    assert float(seen["surgery"]["recovery share"]) > 0.5 and seen["surgery"]["adversarial"] != seen["surgery"]["benign"]
    assert seen["aware"]["adversarial"] != seen["aware"]["benign"]
    assert seen["aware"]["defended"] != seen["aware"]["benign"]                 # the aware attack beats nip
    # the same garment and FGSM: the standard model (A, pinned) is fooled, the adversarially trained one (B) is not
    assert seen["robust"]["verdict"].startswith("**B changes:** model lenet-fashion → lenet-fashion-at. ")   # first
    assert "The attack fooled A but not B. The runs use two models" in seen["robust"]["verdict"]
    assert seen["robust"]["adversarial"] == seen["robust"]["benign"]
    assert at.query_params["model"] == "resnet8-cifar10"                       # the photo
    assert any("no calibration for resnet8-cifar10" in c.proto.help for c in at.caption)
    assert seen["photo"]["defended"] == seen["photo"]["adversarial"]            # nip passes it through
    assert [b for b in at.button if b.label == "Next step"][0].disabled                # the last step


def test_form_shows_only_the_parameters_that_apply() -> None:
    at = _app()
    _ok(at)
    # LeNet + nip (calibrated): common parameters visible, internals in the Advanced expander.
    [adv] = [e for e in at.expander if e.label.startswith("Advanced")]
    inner = {w.label.split(" (")[0] for w in adv.number_input} | {w.label for w in adv.selectbox}
    assert {"vote_binarize", "neighbours", "pocket_amp", "per_class", "gate", "false_alarm", "select_layers"} <= inner
    outside = {w.label.split(" (")[0] for w in at.number_input} - inner
    assert {"budget", "steps", "step_size"} <= outside and not outside & {"vote_binarize", "neighbours"}
    sel = at.selectbox(key="explore.lenet-mnist.d.nip.select_layers")
    assert set(sel.options) == {"auto", "conv1", "conv2", "conv1+conv2"}
    # EfficientNet + nip (no calibration): no nip internals at all, and how to calibrate. (Its default
    # defense is nip-oracle, ModelSpec.first_run: pick nip.)
    at.selectbox(key="explore.model").set_value("efficientnet-lite0").run()
    at.selectbox(key="explore.efficientnet-lite0.defense").set_value("nip").run()
    _ok(at)
    assert not [e for e in at.expander if e.label.startswith("Advanced")]
    labels = {w.label.split(" (")[0] for w in at.number_input}
    assert not labels & {"vote_binarize", "neighbours", "pocket_amp", "budget", "per_class"}
    assert any("no calibration for efficientnet-lite0" in c.proto.help and "calibrate --model" in c.proto.help
               for c in at.caption)
    assert at.selectbox(key="explore.efficientnet-lite0.layer").options == [
        "block6", "block10", "block14", "block15", "head"]
    # ResNet-8 + nip-global: NIP's budget and steps; NIP runs at the model's own layers.
    at.selectbox(key="explore.model").set_value("resnet8-cifar10").run()
    at.selectbox(key="explore.resnet8-cifar10.defense").set_value("nip-global").run()
    labels = {w.label.split(" (")[0] for w in at.number_input}
    assert {"budget", "steps", "step_size"} <= labels and "candidates" not in labels
    assert at.selectbox(key="explore.resnet8-cifar10.layer").options == ["stem", "stack1", "stack2", "stack3"]
    at = _submit(at, "Run")
    _ok(at)
    assert at.query_params["layer"] == "stack3" and _view_drawn(at)


def test_benchmark_shows_the_shipped_tables_on_arrival() -> None:
    from nip_core.evaluation.results import shipped_result, shipped_suites

    at = _app()
    at.switch_page("views/benchmark.py").run()
    _ok(at)
    suites = shipped_suites()
    sb = at.selectbox(key="benchmark.suite")
    assert [o.split(" — ")[0] for o in sb.options] == list(suites) and sb.value == "paper-mnist"
    result = shipped_result(suites["paper-mnist"])
    assert len(at.get("plotly_chart")) == 1                                # the heatmap, without a Run
    assert {m.label: m.value for m in at.metric}["images"] == str(result["n_images"])
    summary, intervals, pairs = (at.dataframe[i].value for i in range(3))
    assert list(summary["defense"]) == result["defenses"]
    assert len(intervals) == len(result["rows"]) + len(result["defenses"])
    assert (intervals["ci_low"] <= intervals["ci_high"]).all() and len(pairs) > 0
    assert len(at.get("download_button")) == 2
    sb.set_value("paper-imagenet").run()
    _ok(at)
    assert at.subheader[0].value.startswith("efficientnet-lite0") and len(at.get("plotly_chart")) == 1


def test_benchmark_draws_the_shipped_mediation_on_request() -> None:
    from nip_core.analyses.mediation import mediation_table
    from nip_core.evaluation.results import shipped_mediation, shipped_result

    at = _app()
    at.switch_page("views/benchmark.py").run()
    assert len(at.get("plotly_chart")) == 1                    # nothing extra until asked for
    at.toggle(key="benchmark.shipped.mediation").set_value(True).run()
    _ok(at)
    med = shipped_result(shipped_mediation("paper-mnist"))
    assert at.selectbox(key="benchmark.shipped.med.paper-mnist.layer").value == "fc1"      # lenet's influence layer
    assert at.selectbox(key="benchmark.shipped.med.paper-mnist.attack").options == list(med["mediation"]["by_attack"])
    assert len(at.get("plotly_chart")) == 3
    table = at.dataframe[-1].value                               # the table of every attack × layer
    assert len(table) == len(mediation_table(med)) == len(med["attacks"]) * len(med["mediation"]["layers"])
    # CIFAR-10: nip passes inputs through there, and the figure says n/a instead of a bar
    at.selectbox(key="benchmark.suite").set_value("paper-cifar10").run()
    _ok(at)
    fig = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert fig["data"][0]["x"][0] == "nip (n/a)" and fig["data"][0]["y"][0] is None
    assert at.selectbox(key="benchmark.shipped.med.paper-cifar10.layer").value == "stack3"


def test_benchmark_draws_the_shipped_elasticity_on_request() -> None:
    from nip_core.evaluation.results import shipped_elastic, shipped_result

    at = _app()
    at.switch_page("views/benchmark.py").run()
    at.toggle(key="benchmark.shipped.elastic").set_value(True).run()
    _ok(at)
    block = shipped_result(shipped_elastic("paper-mnist"))["elasticity"]
    k = "benchmark.shipped.elastic.paper-mnist."
    assert at.selectbox(key=k + "attack").options == list(block["by_attack"])
    fig = json.loads(at.get("plotly_chart")[-1].proto.spec)
    lines = [t for t in fig["data"] if t.get("mode") == "lines+markers"]
    shown = at.multiselect(key=k + "defenses").value
    assert len(lines) == 1 + len([d for d in shown if d != "none"])          # the undefended line, dashed
    sweep = block["by_attack"][at.selectbox(key=k + "attack").value]
    assert lines[0]["x"] == sweep["eps"]
    assert lines[0]["y"] == pytest.approx([100 * a for a in sweep["undefended"]["accuracy"]])
    at.multiselect(key=k + "defenses").set_value([shown[0]]).run()
    assert len([t for t in json.loads(at.get("plotly_chart")[-1].proto.spec)["data"]
                if t.get("mode") == "lines+markers"]) == 1 + (shown[0] != "none")


def test_benchmark_opens_a_results_json_and_refuses_bad_files() -> None:
    from nip_core.evaluation.results import RESULTS_DIR

    at = _app()
    at.switch_page("views/benchmark.py").run()
    at.radio(key="benchmark.source").set_value("open").run()
    _ok(at)
    assert not at.get("plotly_chart")
    good = (RESULTS_DIR / "lenet-fgsm-pgd-cw.json").read_bytes()
    at.file_uploader(key="benchmark.result_file").set_value(("mine.json", good, "application/json")).run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 1 and {m.label: m.value for m in at.metric}["images"] == "100"
    for name, data, words in [("notes.json", b"this is not json", "not a JSON file"),
                              ("other.json", b'{"model": "x", "rows": []}', "'summary'"),
                              ("rows.json", b'{"model": "x", "rows": [{"attack": "a"}], "summary": {}}', "row 0")]:
        at.file_uploader(key="benchmark.result_file").set_value((name, data, "application/json")).run()
        assert not at.exception and not at.get("plotly_chart")
        [err] = [e.value for e in at.error]
        assert err.startswith(name) and words in err


def _digit_zip(extra: dict[str, bytes] | None = None) -> bytes:
    import io
    import zipfile

    from nip_core.data import gallery
    from nip_core.images import tensor_to_png_bytes

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for it in gallery("mnist"):
            z.writestr(f"digits/{it.label}/{it.key}.png", tensor_to_png_bytes(it.image))
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return buf.getvalue()


def test_benchmark_reads_uploaded_data_and_refuses_hostile_archives() -> None:
    at = _app()
    at.switch_page("views/benchmark.py").run()
    at.radio(key="benchmark.source").set_value("run").run()
    data = _digit_zip({"digits/3/broken.png": b"not a png", "digits/zebra/z.png": b"x"})
    at.file_uploader(key="benchmark.data_file").set_value(("digits.zip", data, "application/zip")).run()
    assert not at.exception and not at.error
    [ok] = [s.value for s in at.success]
    assert ok.startswith("Read 20 of 22 images from digits.zip") and "2 skipped" in ok
    skipped = at.dataframe[0].value
    assert sorted(skipped["file"]) == ["3/broken.png", "zebra/z.png"] and list(skipped.columns) == [
        "file", "kind", "reason"]
    # A path that climbs out of the archive: refused with one sentence, nothing extracted, no traceback.
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("digits/1/a.png", b"x")
        z.writestr("../../etc/evil.png", b"x")
    at.file_uploader(key="benchmark.data_file").set_value(("evil.zip", buf.getvalue(), "application/zip")).run()
    assert not at.exception
    [err] = [e.value for e in at.error]
    assert err.startswith("Cannot use evil.zip") and "points outside its folder" in err and "refused" in err
    at.file_uploader(key="benchmark.data_file").set_value(("fake.zip", b"PK\x03\x04 nonsense", "application/zip")).run()
    assert not at.exception and "not a readable .zip" in at.error[0].value


def test_run_queue_is_first_come_first_served_and_tells_the_place():
    """Ordered by events, not sleeps: each run arrives once the one before is queued, and each holds
    its slot until the runs behind it have been told their new place."""
    from app.runqueue import RunQueue, queue_message

    q = RunQueue(slots=1)
    order, told = [], {}
    seen = threading.Condition()   # notified whenever a run is told its place
    hold, a_running = threading.Event(), threading.Event()

    def report(name: str):
        def tell(ahead: int) -> None:
            with seen:
                told.setdefault(name, []).append(ahead)
                seen.notify_all()
        return tell

    def until_told(places: dict[str, int]) -> bool:
        with seen:
            return seen.wait_for(lambda: all(told.get(n, [None])[-1] == v for n, v in places.items()), 10)

    # While a run holds the slot, the runs behind it move up one place each.
    moved_up = {"b": {"c": 1, "d": 2}, "c": {"d": 1}, "d": {}}
    held_until_told = {}

    def job(name: str) -> None:
        with q.turn(report(name)):
            order.append(name)
            if name == "a":
                a_running.set()
                hold.wait(10)
            else:
                held_until_told[name] = until_told(moved_up[name])
            with q.turn():        # re-entrant: a run needing another queued computation does not wait on itself
                pass

    threads = {n: threading.Thread(target=job, args=(n,), name=n) for n in "abcd"}
    threads["a"].start()
    assert a_running.wait(10)
    for n in "bcd":               # b, c, d arrive in this order: each once the one before is queued
        threads[n].start()
        with seen:
            assert seen.wait_for(lambda n=n: n in told, 10)
    assert q.waiting() == 3 and told == {"b": [1], "c": [2], "d": [3]}
    hold.set()
    for t in threads.values():
        t.join(10)
    assert not any(t.is_alive() for t in threads.values())
    assert order == ["a", "b", "c", "d"] and held_until_told == {"b": True, "c": True, "d": True}
    assert told == {"b": [1], "c": [2, 1], "d": [3, 2, 1]}   # "a" took the free slot: never told to wait
    assert q.waiting() == 0 and queue_message(3) == "waiting: your run starts after 3 others"


def test_benchmark_runs_the_grid_on_uploaded_data() -> None:
    at = _app()
    at.switch_page("views/benchmark.py").run()
    at.radio(key="benchmark.source").set_value("run").run()
    at.file_uploader(key="benchmark.data_file").set_value(("digits.zip", _digit_zip(), "application/zip")).run()
    at.multiselect(key="benchmark.attacks").set_value(["fgsm"])
    at.multiselect(key="benchmark.defenses").set_value(["none", "median"])
    at = _submit(at, "Run benchmark")
    _ok(at)
    assert len(at.get("plotly_chart")) == 1
    assert any(c.value.startswith("Images: your data, read 20 of 20 images from digits.zip") for c in at.caption)
    assert at.subheader[0].value.startswith("lenet-mnist:")
    n = int({m.label: m.value for m in at.metric}["images"])
    assert 1 <= n <= 20                    # the gallery digits the model classifies correctly


class _WaitSpy(threading.Condition):
    """A run queue's condition that counts, per thread name, how often a thread waited on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: dict[str, int] = {}
        self._seen = threading.Condition()

    def wait(self, timeout=None):
        with self._seen:
            name = threading.current_thread().name
            self.waits[name] = self.waits.get(name, 0) + 1
            self._seen.notify_all()
        return super().wait(timeout)

    def until(self, name: str, more_than: int = 0) -> bool:
        """Block until thread ``name`` has waited more than ``more_than`` times."""
        with self._seen:
            return self._seen.wait_for(lambda: self.waits.get(name, 0) > more_than, 10)


def test_background_turns_wait_for_visitors_runs():
    """The warm-up's steps start only when no visitor's run is running or waiting: a warm-up step
    already waiting when a visitor's run ends does not jump ahead of the visitor queued behind it,
    and stays waiting while that visitor runs."""
    from app.runqueue import RunQueue

    q = RunQueue(slots=1)
    q._cond = spy = _WaitSpy()    # before any thread uses the queue
    order, running, seen_by_warm = [], set(), {}
    release, a_running, b_queued = threading.Event(), threading.Event(), threading.Event()

    def visitor_a() -> None:
        with q.turn():
            order.append("a")
            running.add("a")
            a_running.set()
            release.wait(10)
            running.discard("a")

    def visitor_b() -> None:
        with q.turn(lambda ahead: b_queued.set()):
            order.append("b")
            running.add("b")
            # hold the slot until the warm-up has checked again (and kept waiting) while b runs
            seen_by_warm["b_held"] = spy.until("warm", more_than=spy.waits.get("warm", 0))
            running.discard("b")

    def warm() -> None:
        with q.turn(background=True):
            order.append("warm")
            seen_by_warm["running"] = set(running)
            with q.turn():        # a cached computation inside a warm-up step: re-entrant
                pass

    threads = [threading.Thread(target=f, name=n) for f, n in ((visitor_a, "a"), (warm, "warm"), (visitor_b, "b"))]
    threads[0].start()
    assert a_running.wait(10)
    threads[1].start()
    assert spy.until("warm")      # the warm-up waits behind a's run
    threads[2].start()
    assert b_queued.wait(10)      # b queued behind a, after the warm-up
    assert order == ["a"]
    release.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert order == ["a", "b", "warm"]
    assert seen_by_warm == {"b_held": True, "running": set()}


def test_a_page_turn_lends_its_slot_to_its_worker():
    """The page holds the slot for compute and drawing; its worker's queued computation does not wait.

    Decided by what the queue tells the worker, not by how long it takes: a turn that has to wait
    reports its place first; a lent slot runs at once."""
    from app.runqueue import RUNS

    outcome, decided = [], threading.Event()

    def told_to_wait(ahead: int) -> None:
        outcome.append(f"waits behind {ahead}")
        decided.set()

    with RUNS.turn():
        held = RUNS.held()

        def worker() -> None:
            with RUNS.lent(held), RUNS.turn(told_to_wait):
                outcome.append("ran")
                decided.set()

        t = threading.Thread(target=worker)
        t.start()
        assert decided.wait(60)            # a guard against a hang, not a timing threshold
    t.join(60)
    assert held and outcome == ["ran"] and not RUNS.held() and not t.is_alive()


def test_tour_on_fashion_mnist_offers_every_step():
    at = _app()
    at.switch_page("views/tour.py").run()
    at.selectbox(key="tour.model").set_value("lenet-fashion").run()
    _ok(at)
    assert [b.label for b in at.button if b.label.startswith("Open step")] == [f"Open step {i}" for i in range(1, 10)]
    links = [c.value for c in at.code]
    assert all("model=lenet-fashion&" in u for u in links[:7]) and "tm=lenet-fashion" in links[8]
    assert "model=lenet-fashion-at&" in links[7] and "pin_model=lenet-fashion&" in links[7]   # the robust step


def test_benchmark_shows_the_adversarial_training_comparison_on_the_same_images() -> None:
    from nip_core.evaluation.results import adversarial_training_comparison, shipped_adversarial_training, shipped_result
    from nip_core.evaluation.robustness import card_robustness

    at = _app()
    at.switch_page("views/benchmark.py").run()
    assert "benchmark.shipped.at" not in [t.key for t in at.toggle]        # MNIST has no robust model
    at.selectbox(key="benchmark.suite").set_value("paper-fashion").run()
    at.toggle(key="benchmark.shipped.at").set_value(True).run()
    _ok(at)
    std = shipped_result("paper-fashion-report.json")
    rob = shipped_result(shipped_adversarial_training("paper-fashion"))
    assert rob["model"] == "lenet-fashion-at" and rob["data"]["images_of"] == "lenet-fashion"
    cmp = adversarial_training_comparison(std, rob)
    frames = {tuple(d.value.columns): d.value for d in at.dataframe}
    by_attack = frames[tuple(cmp["by_attack"][0])]
    assert list(by_attack["attack"]) == list(dict.fromkeys(r["attack"] for r in std["rows"]))
    assert list(by_attack["lenet-fashion-at: no defense"]) == pytest.approx(
        [r["defended_adv_accuracy"] for r in rob["rows"] if r["defense"] == "none"])
    assert list(by_attack["lenet-fashion: nip"]) == pytest.approx(
        [r["defended_adv_accuracy"] for r in std["rows"] if r["defense_name"] == "nip"])
    by_defense = frames[tuple(cmp["by_defense"][0])]
    assert list(by_defense["defense"]) == std["defenses"]
    # the card's figures, read from the cards
    metrics = {m.label: m.value for m in at.metric}
    for model in ("lenet-fashion", "lenet-fashion-at"):
        card = card_robustness(model)
        for what, label in (("clean", "clean"), ("pgd", "PGD-20"), ("autoattack", "AutoAttack")):
            assert metrics[f"{model}: {label}"] == f"{100 * card[what]['accuracy']:.1f}%"
    captions = " ".join(c.value for c in at.caption)
    assert "black-box" in captions and "--images-of lenet-fashion" in captions
    assert f"classifies {rob['data']['clean_correct']} of them" in captions


def test_explore_and_profiles_run_the_adversarially_trained_model() -> None:
    at = _app({"model": "lenet-fashion-at", "image": "ankle-boot-02214", "attack": "pgd", "defense": "jpeg"})
    _ok(at)
    assert at.selectbox(key="explore.model").value == "lenet-fashion-at"
    assert _view_drawn(at)                      # the link runs the view
    at.switch_page("views/profiles.py").run()
    at.selectbox(key="profiles.model").set_value("lenet-fashion-at")
    _submit(at, "Show profile")
    _ok(at)
    from nip_core.influence import influence_profile
    from nip_core.models import load_model

    shipped = influence_profile(load_model("lenet-fashion-at"), "fc1")       # from assets/profiles
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["neurons"] == "120" and metrics["classes profiled"] == "10"
    assert metrics["dead neurons"] == str(int(shipped.dead.sum()))


def test_start_the_tour_opens_its_first_step_on_the_model_shown() -> None:
    """Issue 26 §1: the first screen's "Start the tour" opens step 1 as a run on this page."""
    at = _app()
    _ok(at)
    at.button(key="explore.tour.start").click().run()
    _ok(at)
    assert "step 1 of 9" in _tour_card(at) and at.query_params["tour"] == "neurons"
    assert at.query_params["model"] == "lenet-mnist" and _view_drawn(at)
    assert not [b for b in at.button if b.label == "Start the tour"]        # the card takes its place
