"""Drawings from Explore's canvas (issue 28 §4): canvas pixels → the 28×28 image a grey model sees, the
share-link token (zlib + URL-safe base64) and its refusal of anything else, the no-attack preview."""
from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest
import torch

from nip_core.errors import InputError
from nip_core.images import (DRAWING_SIZE, MAX_DRAWING_TOKEN, decode_drawing, drawing_from_canvas, drawing_to_tensor,
                             encode_drawing, load_image, tensor_to_png_bytes)


def _canvas(px: int = 280, alpha_background: int = 255) -> np.ndarray:
    """A black canvas with a white vertical bar (a "1") left of centre and a short cross stroke."""
    a = np.zeros((px, px, 4), np.uint8)
    a[..., 3] = alpha_background
    a[40:240, 60:80, :] = 255
    a[40:60, 40:80, :] = 255
    return a


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(zlib.compress(raw)).decode().rstrip("=")


def test_canvas_becomes_an_mnist_digit_centred_by_mass() -> None:
    d = drawing_from_canvas(_canvas(), "mnist")
    assert d.shape == (DRAWING_SIZE, DRAWING_SIZE) and d.dtype == np.uint8 and d.max() == 255
    ys, xs = np.nonzero(d > 25)
    # fitted in the 20×20 box (MNIST's recipe), not at the canvas's left edge but centred by mass
    assert ys.max() - ys.min() + 1 <= 20 and xs.max() - xs.min() + 1 <= 20
    mass = d.astype(float)
    cy, cx = (mass.sum(1) * np.arange(28)).sum() / mass.sum(), (mass.sum(0) * np.arange(28)).sum() / mass.sum()
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    # the same as an upload of the same picture (white on black) through the one image loader
    from PIL import Image
    import io
    buf = io.BytesIO()
    Image.fromarray(_canvas()[..., :3]).save(buf, "PNG")
    up = load_image(buf.getvalue(), channels=1, size=28, preprocess="mnist")
    assert torch.equal((up[0] * 255).round().to(torch.uint8), torch.from_numpy(d))


def test_transparent_background_counts_as_black_and_fashion_uses_its_own_recipe() -> None:
    a = _canvas(alpha_background=0)
    a[..., :3][a[..., 3] == 0] = 0
    assert np.array_equal(drawing_from_canvas(a, "mnist"), drawing_from_canvas(_canvas(), "mnist"))
    f = drawing_from_canvas(_canvas(), "fashion")
    ys, _ = np.nonzero(f > 25)
    assert ys.max() - ys.min() + 1 == 28                    # Fashion-MNIST: longest side 28


def test_empty_canvas_is_none_and_bad_pixels_are_one_sentence() -> None:
    blank = np.zeros((280, 280, 4), np.uint8)
    blank[..., 3] = 255
    assert drawing_from_canvas(blank) is None
    faint = blank.copy()
    faint[100:120, 100:120, :3] = 20                        # below a tenth of full ink
    assert drawing_from_canvas(faint) is None
    for bad in (None, "pixels", np.zeros((280, 280, 3), np.uint8), np.zeros((4, 4, 4), np.uint8),
                np.zeros((280, 280, 4), object), np.full((20, 20, 4), np.nan)):
        with pytest.raises(InputError) as e:
            drawing_from_canvas(bad)
        assert "\n" not in str(e.value) and "canvas" in str(e.value)
    with pytest.raises(InputError, match="28×28 grey models"):
        drawing_from_canvas(_canvas(), "imagenet")


def test_token_round_trip_is_exact_and_small() -> None:
    d = drawing_from_canvas(_canvas())
    t = encode_drawing(d)
    assert set(t) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") and "=" not in t
    assert len(t) < 400
    assert np.array_equal(decode_drawing(t), d)
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)   # the worst case
    assert len(encode_drawing(noise)) <= MAX_DRAWING_TOKEN and np.array_equal(decode_drawing(encode_drawing(noise)), noise)
    x = drawing_to_tensor(d, channels=1)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and float(x.max()) == 1.0
    assert torch.equal(drawing_to_tensor(d, 3)[2], x[0])
    with pytest.raises(InputError):
        encode_drawing(np.zeros((28, 27), np.uint8))
    with pytest.raises(InputError):
        encode_drawing(np.zeros((28, 28), np.float32))


@pytest.mark.parametrize("token, why", [
    ("", "empty"),
    (None, "expected text"),
    (12, "expected text"),
    ("A" * (MAX_DRAWING_TOKEN + 1), "over the"),
    ("eJz<script>", "URL-safe base64"),
    ("eJz+/abc", "URL-safe base64"),
    ("ab==", "URL-safe base64"),
    ("abcde", "not base64"),
    ("aGVsbG8gd29ybGQ", "not compressed"),                                   # base64 of "hello world"
    (_token(b"\x00" * 783), "exactly 28×28"),
    (_token(b"\x00" * 785), "exactly 28×28"),
    (_token(b"\x00" * 1_000_000), "exactly 28×28"),                        # a zlib bomb: never inflated
    (_token(b"\x00" * 784)[:-4], "exactly 28×28"),                          # truncated stream
    (_token(b"\x00" * 784) + base64.urlsafe_b64encode(b"tail").decode().rstrip("="), "not"),
    ("\u0661\u0662\u0663\u0664", "URL-safe base64"),                         # non-ASCII digits
])
def test_hostile_tokens_are_one_sentence(token, why) -> None:
    with pytest.raises(InputError) as e:
        decode_drawing(token)
    msg = str(e.value)
    assert msg.startswith("The drawing in the link is damaged") and why in msg and "\n" not in msg


def test_bomb_token_is_short_and_refused_quickly() -> None:
    t = _token(b"\x00" * 1_000_000)
    assert len(t) <= MAX_DRAWING_TOKEN        # small enough to reach the decompressor: its limit stops it


def test_preview_is_the_model_s_prediction_and_influence_without_attack() -> None:
    from nip_core.analyses.preview import preview
    from nip_core.influence import neuron_influence
    from nip_core.models import load_model

    m = load_model("lenet-mnist")
    x = drawing_to_tensor(drawing_from_canvas(_canvas()))
    p = preview(m, x, "fc1")
    logits = m.logits(x[None])[0]
    assert p.prediction == int(logits.argmax()) and torch.allclose(p.probabilities, logits.softmax(0))
    assert p.top(m.class_names, 3)[0][0] == p.prediction and len(p.top(m.class_names, 3)) == 3
    want = neuron_influence(m, x[None], p.prediction, "fc1", "conductance", exact_affine=True)[0]
    assert p.influence.shape == (120,) and torch.allclose(p.influence, want)
    with pytest.raises(InputError, match="takes a"):
        preview(m, torch.zeros(3, 28, 28))
    assert tensor_to_png_bytes(x).startswith(b"\x89PNG")
