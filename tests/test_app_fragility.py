"""Explore's fragility panel under AppTest (issue 20 §4): opened on request, the button computes once
(with the engine's numbers and the shipped distribution's percentiles), uploads through the real
uploader, one message for an image the model already gets wrong, the share link, a user's model."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

import nip_core.analyses.fragility as fr
from tests.app_support import VIEW_CHARTS, _app, _load_own_model, _lenet_safetensors, _ok, _png_digit, _submit

M = "lenet-mnist"
K = f"explore.fragility.{M}."
BUTTON = "Find the smallest attack that flips it"
PCT = "percentile (low = fragile)"


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """Every call of the engine's ``fragility`` (its keyword arguments), calling through."""
    made: list[dict] = []
    real = fr.fragility

    def counted(*a, **kw):
        made.append(kw)
        return real(*a, **kw)
    monkeypatch.setattr(fr, "fragility", counted)
    return made


def _run(at: AppTest, seed: int) -> AppTest:
    """Run the view with ``seed`` (each test its own: the caches outlive a test)."""
    at.number_input(key=f"explore.{M}.seed").set_value(seed)           # in the form: sent with the click
    at = _submit(at, "Run")
    assert at.query_params["seed"] == str(seed)
    _ok(at)
    return at


def _open(at: AppTest) -> AppTest:
    assert not [b for b in at.button if b.label == BUTTON]             # closed until asked for
    at.toggle(key=K + "open").set_value(True).run()
    _ok(at)
    return at


def _press(at: AppTest) -> AppTest:
    [b] = [b for b in at.button if b.label == BUTTON]
    b.click().run()
    _ok(at)
    return at


def _table(at: AppTest):
    [t] = [t for t in at.table if "flip ε" in t.value.columns]
    return t.value


def _downloads(at: AppTest) -> list[str]:
    return [d.proto.label for d in at.get("download_button")]


def test_the_button_on_an_upload_computes_once_and_shows_the_table(calls) -> None:
    at = _app()
    at.radio(key="explore.source").set_value("Upload an image").run()
    at.file_uploader(key="explore.upload").set_value(("my digit.png", _png_digit(), "image/png")).run()
    at = _open(_run(at, 31))
    assert at.multiselect(key=K + "defenses.nip").value == ["none", "jpeg", "nip"]   # none, jpeg, the run's
    assert not calls and len(at.get("plotly_chart")) == VIEW_CHARTS                   # nothing before the click
    at = _press(at)
    assert len(calls) == 1 and calls[0]["seed"] == 31 and calls[0]["defenses"] == [("none", {}), ("jpeg", {}),
                                                                                     ("nip", {})]
    table = _table(at)
    assert list(table.index) == ["none", "jpeg", "nip"]
    assert list(table.columns) == ["flip ε", "what happened", "defended prediction at that ε", PCT]
    for d in ("none", "jpeg"):                     # the shipped distribution covers these two
        assert table.loc[d, PCT].isdigit() and 0 <= int(table.loc[d, PCT]) <= 100
    assert table.loc["nip", PCT] == "the distribution has no 'nip'"
    assert len(at.get("plotly_chart")) == VIEW_CHARTS + 1
    assert {"fragility.json", "fragility.html (report)"} <= set(_downloads(at))
    assert "fragility" not in at.query_params and at.query_params["image"] == "upload"  # an upload's link
    # Reruns of the page and of the panel, and the button again: the result is read back, never recomputed.
    at.radio(key="explore.quantity").set_value("activations").run()
    _ok(at)
    assert _table(at).equals(table)
    at = _press(at)
    assert len(calls) == 1 and _table(at).equals(table)
    # Another choice of defenses: nothing runs until the button is pressed again.
    at.multiselect(key=K + "defenses.nip").set_value(["none"]).run()
    _ok(at)
    assert len(calls) == 1 and not [t for t in at.table if "flip ε" in t.value.columns]
    at = _press(at)
    assert len(calls) == 2 and list(_table(at).index) == ["none"]
    assert _table(at).loc["none"].equals(table.loc["none"])          # same seed, same image: same numbers


def test_a_gallery_image_shows_the_engines_numbers_and_its_percentiles_and_the_link_reopens_it(lenet, calls):
    from nip_core.data import gallery

    at = _open(_run(_app(), 32))
    at.multiselect(key=K + "defenses.nip").set_value(["none", "jpeg"]).run()
    at = _press(at)
    assert len(calls) == 1
    item = gallery("mnist")[0]
    want = fr.fragility(lenet, item.image, item.label, defenses=[("none", {}), ("jpeg", {})], seed=32).result
    shipped = json.loads(fr.distribution_path(lenet).read_text())
    table = _table(at)
    for d in ("none", "jpeg"):
        c = want["defenses"][d]
        assert c["status"] == "flipped"                                    # a digit PGD at 0.3 flips
        assert table.loc[d, "flip ε"] == f"{c['flip_eps']:.4f} ({c['flip_eps_255']:g}/255)"
        assert table.loc[d, "defended prediction at that ε"] == c["prediction_name"]
        assert table.loc[d, PCT] == f"{fr.percentile(c['flip_eps'], shipped['defenses'][d]['flip_eps']):.0f}"
    assert any("docs/results/fragility-lenet-mnist.json" in c.value for c in at.caption)
    assert at.query_params["fragility"] == "none,jpeg"
    link = dict(at.query_params)
    calls.clear()
    again = _app(link)                                   # the link opens the panel with the same result
    _ok(again)
    assert again.toggle(key=K + "open").value is True
    assert again.multiselect(key=K + "defenses.nip").value == ["none", "jpeg"]
    assert _table(again).equals(table) and not calls      # read back from the cache, nothing recomputed
    # closing the panel drops it from the link
    again.toggle(key=K + "open").set_value(False).run()
    assert "fragility" not in again.query_params and not [t for t in again.table if "flip ε" in t.value.columns]


def test_an_image_the_model_already_gets_wrong_is_one_message(lenet, calls) -> None:
    from nip_core.images import load_image

    png = _png_digit()
    seen = int(lenet.predict(load_image(png, channels=1, size=28, preprocess=lenet.spec.preprocess)[None])[0])
    wrong = (seen + 3) % 10
    at = _app()
    at.radio(key="explore.source").set_value("Upload an image").run()
    at.file_uploader(key="explore.upload").set_value(("digit.png", png, "image/png")).run()
    at.selectbox(key=f"explore.{M}.upload_label").set_value(wrong).run()   # a true class the model does not say
    at = _press(_open(_run(at, 33)))
    assert len(calls) == 1
    [warning] = [w.value for w in at.warning]
    assert warning.startswith(f"The model already gets this image wrong: it predicts '{seen}', the label is "
                              f"'{wrong}'")
    assert not [t for t in at.table if "flip ε" in t.value.columns]
    assert len(at.get("plotly_chart")) == VIEW_CHARTS and "fragility.json" not in _downloads(at)


def test_no_defense_chosen_and_bad_link_settings_are_one_message_each(calls) -> None:
    at = _open(_run(_app(), 34))
    at.multiselect(key=K + "defenses.nip").set_value([]).run()
    _ok(at)
    [b] = [b for b in at.button if b.label == BUTTON]
    assert b.disabled and any(i.value == "Choose at least one defense." for i in at.info)
    base = {"model": M, "image": "mnist-test-21", "attack": "fgsm", "defense": "nip", "seed": "35"}
    at = _app(base | {"fragility": "none,zap,nip-oracle"})
    assert not at.exception and not at.warning
    [err] = [e.value for e in at.error]
    assert "'zap'" in err and "nip-oracle" not in err       # the gallery image has a label: the oracle can run
    assert at.multiselect(key=K + "defenses.nip").value == ["none", "nip-oracle"]
    assert list(_table(at).index) == ["none", "nip-oracle"] and len(calls) == 1


def test_a_users_model_says_no_distribution_exists(calls) -> None:
    at = _app()
    name = _load_own_model(at, _lenet_safetensors(seed=23), b"cat\ndog\nbird\n")
    at.selectbox(key="explore.model").set_value(name).run()
    at = _submit(at, "Run")
    _ok(at)
    at.toggle(key=f"explore.fragility.{name}.open").set_value(True).run()
    at.multiselect(key=f"explore.fragility.{name}.defenses.nip").set_value(["none"]).run()
    at = _press(at)
    assert len(calls) == 1 and calls[0]["defenses"] == [("none", {})]
    # the gallery's digit labels are not this model's classes: the reference is its own prediction
    assert any("differs from the model's prediction on the image" in c.proto.help for c in at.caption)
    assert not at.warning and _table(at).loc["none", PCT] == "—"
    assert any(i.value.startswith("No percentiles: no distribution exists for a user's model") for i in at.info)
