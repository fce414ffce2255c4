"""Explore's all-layers strip: the attack and the defense at every hookable layer, and the pathway of
the neurons the attack changed most (``nip_core.analyses.pathway``; issue 20, section 3).

Opened on run under a run (the first view stays light). The panel is a fragment: it computes
once per view (``app.compute.layer_strip``, cached on the view's plain-value key) and picking a
neuron re-runs the page only to open that neuron in the drill-down (when it is of the run's layer)
and in neuron surgery (any layer). For gallery images the open strip rides in the share link
(``layers=1``).
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from app.compute import layer_strip
from app.progress import run_with_progress
from app.views import surgery_panel
from app import links
from app.widgets import guarded, init_state, show_error
from nip_core import figures as F
from nip_core.run import Run
from nip_core.analyses.surgery import Selection

P = PREFIX = "explore.layers."
OPEN = P + "open"
CHART = P + "chart"
PICKED = P + "picked"              # (run, layer, neuron) of the last neuron picked on the strip
RERUN = P + "rerun"                # set by a pick: the page (not just this fragment) runs again
LINK_KEY = "layers"
LINK_KEYS = (LINK_KEY,)
# Explore's own keys (app/views/explore.py): the drill-down's switch and neuron, the influence layer, a run.
DRILL = "explore.drill"
AUTORUN = "explore.autorun"


def drill_key(model_name: str, layer: str) -> str:
    return f"explore.neuron.{model_name}.{layer}"


def layer_key(model_name: str) -> str:
    return f"explore.{model_name}.layer"


# ----------------------------------------------------------------------------- the share link

def from_link(qp, model_name: str, model) -> None:
    """A link with ``layers=1`` opens the strip; a link without it closes it."""
    st.session_state[OPEN] = qp.get(LINK_KEY) == "1"


def write_link(run: Run, is_open: bool) -> None:
    """``layers=1`` in the page's link while the strip is open (gallery images only, as surgery)."""
    want = is_open and run.image_bytes is None
    if want:
        links.update({LINK_KEY: "1"})
    else:
        links.drop(LINK_KEYS)


# ----------------------------------------------------------------------------- the panel

def section(run: Run, expl) -> None:
    """The strip's heading and its switch (off until asked for)."""
    is_open = st.toggle("Every layer at once: the attack's pathway", key=init_state(OPEN, False),
                        help="How the attack and the defense move each layer's front and tail neurons, and the "
                             "neurons the attack changed most, joined layer to layer.")
    write_link(run, is_open)
    if is_open:
        panel(run, expl)


@st.fragment
def panel(run: Run, expl) -> None:
    """The strip; a picked neuron opens in the drill-down and in surgery below."""
    if st.session_state.pop(RERUN, False):    # a neuron was picked: the panels below follow it
        st.rerun()
    try:
        strip = run_with_progress("Measuring every layer", layer_strip, run)
    except Exception as exc:                   # one message; the run above stays
        show_error(exc, "every layer")
        return
    picked = st.session_state.get(PICKED)
    picked = picked[1:] if picked and picked[0] == run else None
    with guarded("every layer"):               # a fragment re-run has no page around it to catch errors
        st.plotly_chart(F.layer_strip_figure(strip, expl.layer, picked), key=CHART, width="stretch",
                        on_select=lambda: pick(run, expl.layer), selection_mode="points")
        st.caption("Bars: how the attack (orange) and the defense (dark) move each layer's front and tail means. "
                   "Pathway: the neurons the attack changed most; **click one** to open it below.",
                   help="**Bars (bottom), per layer:** how the attack (adversarial − benign, orange) and the defense "
                        "(defended − adversarial, dark) move the mean activation of the layer's front neurons (its top "
                        f"{expl.k:g} of live neurons by benign influence toward class {expl.reference_class}) and its "
                        f"tail neurons (the bottom {expl.k:g}). The paper expects the attack to lower the front and "
                        "raise the tail, and NIP to undo both. Each layer has its own scale; the run's layer (★) shows "
                        "the group means of the run above as differences.\n\n**Pathway (top):** each layer's neurons "
                        "that the attack changed most (▲ raised, ▼ lowered; colour: their group), joined to the next "
                        "layer's by activation × gradient on the adversarial input: how much the upstream neuron drives "
                        "the downstream one (green: up, purple: down; thickness relative to the strongest edge between "
                        "the same two layers; hover an edge's middle for its value). Click a neuron to open it in the "
                        "drill-down and in neuron surgery below.")
        if not strip.defense_acted:
            st.caption(f"The defense `{expl.defense}` left every layer's front and tail means where the attack put "
                       "them (it passed the adversarial through unchanged), so its bars are 0.")
        if picked is not None:
            note(run, expl, *picked)


def note(run: Run, expl, layer: str, neuron: int) -> None:
    """What the pick opened; for a neuron of another layer than the run's, the way to its drill-down."""
    if layer == expl.layer:
        st.info(f"Neuron {neuron} of {layer} is open in the drill-down and in neuron surgery below.")
        return
    st.info(f"Neuron {neuron} of {layer} is preselected in neuron surgery below. The drill-down shows neurons of "
            f"the run's influence layer, {expl.layer}: to see this neuron's maps there, run again with the "
            f"influence measured at {layer}.")
    st.button(f"Run again with influence at {layer}", key=P + "switch", on_click=switch_layer,
              args=(run.model, layer, neuron),
              help="Sets the influence layer to this one and presses Run. NIP acts at the influence layer, so the "
                   "defended image (and every number of the run) may change.")


def pick(run: Run, run_layer: str) -> None:
    """Callback of the strip: the picked neuron opens in the drill-down (its layer being the run's) and
    in neuron surgery (any layer); the page then runs again so that both show it."""
    event: Any = st.session_state.get(CHART)
    got = F.picked_layer_neuron(event["selection"]["points"] if event else [])
    if got is None:
        return
    layer, neuron = got
    model_name = run.model
    st.session_state[PICKED] = (run, layer, neuron)
    st.session_state[surgery_panel.open_key(model_name)] = True
    st.session_state[surgery_panel.key(model_name, "layer")] = layer
    surgery_panel.set_selection(model_name, Selection("indices", indices=(neuron,)), layer)
    if layer == run_layer:
        st.session_state[DRILL] = True
        st.session_state[drill_key(model_name, layer)] = neuron
    st.session_state[RERUN] = True


def switch_layer(model_name: str, layer: str, neuron: int) -> None:
    """Callback of "Run again with influence at …": the form's layer, the drill-down's neuron, and a run."""
    st.session_state[layer_key(model_name)] = layer
    st.session_state[DRILL] = True
    st.session_state[drill_key(model_name, layer)] = neuron
    st.session_state[AUTORUN] = True
    st.session_state[RERUN] = True
