"""Explore's third image source, for the 28×28 grey models: a drawing canvas (issue 28 §4).

Beside the gallery and the upload. The canvas is ``streamlit-drawable-canvas`` (Fabric.js; see
docs/ui.md "Drawing a digit"), white ink on black as MNIST's digits are. It sends its pixels when a
stroke ends (mouse up), not while the pen moves: that is the debounce. Each stroke re-runs only this
fragment, which turns the pixels into the 28×28 image the model sees (``nip_core.images
.drawing_from_canvas``: the model's own preprocessing, as for an upload) and shows the model's
prediction and the neuron grid of the view's layer for it (``nip_core.analyses.preview``: one forward
pass and one attribution; no attack). **Run** then attacks and defends the drawing like any image.

The drawing rides in the share link as ``draw=<token>`` (the 28×28 uint8 image, zlib + URL-safe
base64: about 100–400 characters); a link with it reopens the drawing and, with the same settings,
the same result. A damaged token is one warning and the page opens on the gallery.
"""
from __future__ import annotations

import streamlit as st

from app.compute import drawing_preview
from app.widgets import guarded
from nip_core.errors import InputError
from nip_core.images import DRAWING_PREFIX, DRAWING_SIZE, decode_drawing, drawing_from_canvas, encode_drawing

P = "explore.draw."
LABEL = "Draw"                     # the image source's name in Explore's radio
CANVAS_PX = 280                    # 10 canvas pixels per model pixel
STROKE_PX = 20                     # MNIST's strokes are about 2 of its 28 pixels wide


def applies(model) -> bool:
    """A canvas only for the models that read a 28×28 grey image (MNIST, Fashion-MNIST)."""
    spec = model.spec
    return spec.input_size == DRAWING_SIZE and spec.input_channels == 1 and spec.preprocess in ("mnist", "fashion")


def token_key(model_name: str) -> str:
    """The drawing shown now (its link token), or None."""
    return P + model_name + ".token"


def link_key(model_name: str) -> str:
    """The drawing a share link brought (its token): shown until the canvas has ink of its own."""
    return P + model_name + ".link"


def image_key(token: str) -> str:
    return DRAWING_PREFIX + token


def token_of(image_key: str) -> str | None:
    """The drawing token of an Explore image key (``draw:<token>``), or None for any other image."""
    return image_key[len(DRAWING_PREFIX):] if image_key.startswith(DRAWING_PREFIX) else None


def from_query(text: str, model_name: str, problems: list[str]) -> bool:
    """A link's ``draw=``: keep its drawing for the canvas (True), or record one problem (False)."""
    try:
        decode_drawing(text)
    except InputError as exc:
        problems.append(str(exc).rstrip("."))
        st.session_state.pop(link_key(model_name), None)
        return False
    st.session_state[link_key(model_name)] = text
    st.session_state[token_key(model_name)] = text
    return True


def source(model_name: str, layer: str, method: str) -> tuple[str, None, None] | None:
    """The canvas and its live prediction; returns Explore's (image key, no bytes, no label) for the
    drawing shown now, or None while nothing is drawn."""
    canvas(model_name, layer, method)
    token = st.session_state.get(token_key(model_name))
    return None if token is None else (image_key(token), None, None)


@st.fragment
def canvas(model_name: str, layer: str, method: str) -> None:
    """The canvas beside the model's view of the drawing; a stroke re-runs only this."""
    from streamlit_drawable_canvas import st_canvas

    from app.loaders import get_model

    model = get_model(model_name)
    left, right = st.columns([3, 2])
    with left:
        result = st_canvas(stroke_width=STROKE_PX, stroke_color="#FFFFFF", background_color="#000000",
                           height=CANVAS_PX, width=CANVAS_PX, drawing_mode="freedraw", return_image_data=True,
                           key=P + model_name + ".canvas")
        st.caption("Draw with the mouse (or a finger); the model's view follows each stroke. The toolbar under "
                   "the canvas undoes or clears. **Run** attacks and defends the drawing.")
    token = st.session_state.get(link_key(model_name))
    try:
        if (result.json_data or {}).get("objects"):
            drawn = drawing_from_canvas(result.image_data, model.spec.preprocess)
            token = None if drawn is None else encode_drawing(drawn)
    except InputError as exc:
        st.warning(str(exc))
        token = None
    except Exception:  # a malformed message from the browser component: one line, never a traceback
        st.warning("The canvas sent a drawing that could not be read; clear it and draw again.")
        token = None
    st.session_state[token_key(model_name)] = token
    with right, guarded("drawing preview"):
        if token is None:
            st.info("Draw a digit on the canvas." if model.spec.preprocess == "mnist" else
                    "Draw a piece of clothing on the canvas (white on black, as Fashion-MNIST's photos are).")
            return
        if token == st.session_state.get(link_key(model_name)) and not (result.json_data or {}).get("objects"):
            st.caption("The drawing from the link (draw on the canvas to replace it).")
        shown = drawing_preview(model_name, token, layer, method)
        st.image(shown["png"], width=112, caption="as the model sees it (28×28)")
        c, name, p = shown["top"][0]
        st.markdown(f"**predicts {name}** ({p * 100:.1f}%)  \n" +
                    " · ".join(f"{n} {q * 100:.1f}%" for _, n, q in shown["top"][1:]))
        st.image(shown["grid"], caption=f"Neuron influence toward {name} — layer {layer} ({method}; red: for, "
                                        "blue: against). No attack yet: press Run.")
