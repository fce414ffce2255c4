"""Explore's drawing canvas under AppTest (issue 28 §4): offered only for the 28×28 models, a share link
with ``draw=`` reopens the drawing and the same result, a damaged ``draw=`` is one warning and never a
traceback. (Drawing itself, with a mouse, is in tests/test_e2e_canvas.py.)"""
from __future__ import annotations

import numpy as np

from tests.app_support import _app, _ok
from nip_core.images import decode_drawing, encode_drawing

SOURCE = "explore.source"


def _one() -> str:
    """A "1": a vertical bar, already in MNIST's 20×20 box."""
    d = np.zeros((28, 28), np.uint8)
    d[4:24, 13:15] = 255
    return encode_drawing(d)


def _link(model: str = "lenet-mnist", **extra) -> dict:
    return {"model": model, "attack": "fgsm", "defense": "nip", "seed": "0"} | extra


def _preview(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**predicts ")]


def test_canvas_is_offered_only_for_the_28x28_grey_models() -> None:
    at = _app()
    _ok(at)
    assert list(at.radio(key=SOURCE).options) == ["Example gallery", "Upload an image", "Draw"]
    at.radio(key=SOURCE).set_value("Draw").run()
    _ok(at)
    assert any("Draw a digit on the canvas." == i.value for i in at.info) and not _preview(at)
    at.selectbox(key="explore.model").set_value("lenet-fashion").run()
    _ok(at)
    assert at.radio(key=SOURCE).value == "Draw"
    assert any(i.value.startswith("Draw a piece of clothing") for i in at.info)
    at.selectbox(key="explore.model").set_value("resnet8-cifar10").run()
    _ok(at)
    assert list(at.radio(key=SOURCE).options) == ["Example gallery", "Upload an image"]
    assert at.radio(key=SOURCE).value == "Example gallery"          # Draw cannot carry over to a photo model


def test_a_link_with_a_drawing_reopens_it_and_the_same_result() -> None:
    token = _one()
    at = _app(_link(draw=token))
    _ok(at)
    assert not at.warning
    assert at.radio(key=SOURCE).value == "Draw"
    [preview] = _preview(at)
    assert preview.startswith("**predicts 1** (")                       # the model's view, before any attack
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["benign prediction"] == "1"                          # the run is on the drawing
    link = dict(at.query_params)
    assert link["draw"] == token and "image" not in link                # the drawing itself rides in the link
    assert np.array_equal(decode_drawing(link["draw"]), decode_drawing(token))
    again = _app(link)
    _ok(again)
    assert {m.label: m.value for m in again.metric} == metrics and _preview(again) == [preview]
    assert dict(again.query_params) == link
    shown = [c.value for c in again.caption if c.value.startswith(("fgsm", "lenet-mnist"))]
    assert shown == [c.value for c in at.caption if c.value.startswith(("fgsm", "lenet-mnist"))]


def test_a_damaged_drawing_in_a_link_is_one_warning() -> None:
    for bad in ("eJz<script>alert(1)</script>", "AAAA", "x" * 5000, encode_drawing(np.zeros((28, 28), np.uint8))[:-6]):
        at = _app(_link(draw=bad))
        assert not at.exception and not at.error, bad
        [warning] = [w.value for w in at.warning]
        assert "The drawing in the link is damaged" in warning and "\n" not in warning
        assert at.radio(key=SOURCE).value == "Example gallery"
    at = _app(_link("resnet8-cifar10", draw=_one()))
    assert not at.exception and not at.error
    assert "model 'resnet8-cifar10' takes no drawing" in at.warning[0].value
