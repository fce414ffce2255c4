"""Explore's neuron surgery panel: set chosen neurons of one layer to chosen values in the adversarial
pass and watch the prediction (``nip_core.analyses.surgery``; issue 19).

Opened on request under a run. The panel is a fragment: a widget change re-runs only the panel and
costs one patched forward pass (``app.compute.surgery_view``; the view's unpatched passes at the
layer are kept by ``app.compute.surgery_sources``), never the attack, the defense or the page.
For gallery images the settings ride in the share link (``surgery``, ``surgery_layer``,
``surgery_value``: the texts the CLI's ``--select``/``--layer``/``--value`` take).
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from app.compute import INFLUENCE_GROUPS, surgery_sources, surgery_view
from app.loaders import get_model, get_profile
from app import links
from app.widgets import guarded, init_state, show_error
from nip_core import figures as F
from nip_core.run import Run
from nip_core.errors import InputError
from nip_core.analyses.surgery import SCALE_RANGE, Selection, check_selection, parse_selection, parse_value

P = PREFIX = "explore.surgery."
LINK_ERROR = P + "link_error"
LINK_KEYS = ("surgery", "surgery_layer", "surgery_value")
KINDS = {
    "front": "front neurons (strongest for the class)",
    "tail": "tail neurons (weakest for the class)",
    "front+tail": "front and tail neurons",
    "changed": "the N neurons the attack changed most",
    "random": "N random neurons (the control)",
    "indices": "neurons I type or pick on the grid",
}
VALUES = {
    "benign": "their benign values",
    "defended": "their values on the defended input",
    "zero": "zero",
    "scale": "A × their adversarial values",
    "mean": "their mean over benign images",
}
DEFAULT_N, DEFAULT_SCALE = 10, 2.0
MAX_LISTED = 40                      # patched neurons listed by index under the grid
K_RANGE = (0.01, 0.5)


def key(model_name: str, *parts: str) -> str:
    return P + ".".join((model_name,) + parts)


def open_key(model_name: str) -> str:
    return key(model_name, "open")


def n_key(model_name: str, layer: str) -> str:
    """N of ``changed:N`` / ``random:N`` is kept per layer (layers differ in width)."""
    return key(model_name, "n", layer)


# ----------------------------------------------------------------------------- the share link

def from_link(qp, model_name: str, model) -> None:
    """Copy a link's surgery settings into the panel's state and open the panel; a link without
    them closes it. Settings the engine refuses are reported once by the panel (one error) and
    replaced by the panel's defaults."""
    st.session_state.pop(LINK_ERROR, None)
    if "surgery" not in qp:
        st.session_state[open_key(model_name)] = False
        return
    st.session_state[open_key(model_name)] = True
    problems: list[str] = []
    layer = qp.get("surgery_layer")
    st.session_state.pop(key(model_name, "layer"), None)     # default: the run's influence layer
    if layer is not None:
        try:
            model.layer(layer)
            st.session_state[key(model_name, "layer")] = layer
        except InputError as exc:
            problems.append(str(exc))
    try:
        set_selection(model_name, parse_selection(qp["surgery"]), layer if not problems else None)
    except InputError as exc:
        problems.append(str(exc))
    try:
        value = parse_value(qp.get("surgery_value", "benign"))
        st.session_state[key(model_name, "value")] = value.kind
        if value.scale is not None:
            st.session_state[key(model_name, "scale")] = value.scale
    except InputError as exc:
        problems.append(str(exc))
    if problems:
        st.session_state[LINK_ERROR] = ("The link's surgery settings could not all be used (the panel's defaults "
                                        "stand in): " + " ".join(problems))


def set_selection(model_name: str, sel: Selection, layer: str | None) -> None:
    """Widget state for a parsed selection (``none`` is typed as such)."""
    if sel.kind in INFLUENCE_GROUPS:
        if sel.k < K_RANGE[0]:
            raise InputError(f"the panel takes K from {K_RANGE[0]:g} to {K_RANGE[1]:g}; got {sel.k:g}.")
        st.session_state[key(model_name, "kind")] = sel.kind
        st.session_state[key(model_name, "k")] = float(sel.k)
    elif sel.kind in ("changed", "random"):
        st.session_state[key(model_name, "kind")] = sel.kind
        st.session_state[P + "pending_n"] = (layer, int(sel.n))   # its layer's width is known in the panel
    else:
        st.session_state[key(model_name, "kind")] = "indices"
        st.session_state[key(model_name, "indices")] = str(sel)


def write_link(run: Run, result) -> None:
    """Put the surgery's canonical settings in the page's link (gallery images only)."""
    if run.image_bytes is not None:      # an upload: its link cannot reopen the image
        return
    params = {"surgery": result.selection, "surgery_layer": result.layer, "surgery_value": result.value}
    links.update(params)


def drop_link() -> None:
    links.drop(LINK_KEYS)


# ----------------------------------------------------------------------------- the panel

def section(run: Run, expl) -> None:
    """The panel's heading and its switch (off until asked for, like the other heavy panels)."""
    model_name = run.model
    if not st.toggle("Neuron surgery: set chosen neurons by hand", key=init_state(open_key(model_name), False),
                     help="Set chosen neurons of a layer to chosen values and re-run the adversarial prediction: "
                          "if the class comes back, those neurons carry the attack's effect."):
        drop_link()
        return
    panel(run, expl)


@st.fragment
def panel(run: Run, expl) -> None:
    """Controls, the patched prediction and the neuron grid to pick on; re-runs alone on a change."""
    model_name = run.model
    model = get_model(model_name)
    if LINK_ERROR in st.session_state:
        show_error(InputError(st.session_state.pop(LINK_ERROR)), "surgery link")
    st.caption("The adversarial input runs through the model again with the chosen neurons of one layer replaced "
               "and nothing else changed (a conv neuron is a whole channel map). If the prediction comes back, "
               "those neurons carry the attack's effect.")
    cols = st.columns([1, 1.5, 1.2, 1.5])
    layer = cols[0].selectbox("Layer", list(model.spec.layers), key=init_state(key(model_name, "layer"), expl.layer),
                              help="Default: the layer the influence above is measured at.")
    try:
        n_neurons = surgery_sources(run, layer).n_neurons
    except Exception as exc:
        show_error(exc, "neuron surgery")
        return
    kind = cols[1].selectbox("Neurons to set", list(KINDS), format_func=KINDS.get,
                             key=init_state(key(model_name, "kind"), "front"), on_change=start_typing,
                             args=(model_name,))
    k_key = init_state(key(model_name, "k"), float(expl.k))
    if kind in INFLUENCE_GROUPS:
        k = cols[2].slider("K: share of the live neurons", *K_RANGE, step=0.01, key=k_key,
                           help="front: the top K of the layer's live neurons by benign influence toward the "
                                "reference class; tail: the bottom K.")
        selection = f"{kind}:{k:g}"
    elif kind in ("changed", "random"):
        n = count_input(cols[2], model_name, layer, n_neurons, kind)
        selection = f"{kind}:{n}"
    else:
        selection = cols[2].text_input("Neuron indices", key=init_state(key(model_name, "indices"), ""),
                                       placeholder="e.g. 3, 17, 42", help=f"0 to {n_neurons - 1}, comma-separated; "
                                       "or pick neurons on the grid.")
    value_kind = cols[3].selectbox("Set them to", list(VALUES), format_func=VALUES.get,
                                   key=init_state(key(model_name, "value"), "benign"))
    value = value_kind
    if value_kind == "scale":
        a = cols[3].slider("A", *SCALE_RANGE, step=0.1, key=init_state(key(model_name, "scale"), DEFAULT_SCALE),
                           help="Each chosen neuron's adversarial value times A (1 changes nothing, 0 is zero).")
        value = f"scale:{a:g}"

    result = None
    if kind == "indices" and not selection.strip():
        st.info("Type neuron indices above, or pick neurons on the grid: click one, or take the box or lasso tool.")
    else:
        try:
            result = surgery_view(run, layer, selection, value, int(run.seed))
        except Exception as exc:     # a bad selection: one message, the run above stays
            show_error(exc, "neuron surgery")
    if result is not None:
        show_summary(result)
        write_link(run, result)
        st.session_state[key(model_name, "last")] = result.selected(0)
    bars, grid = st.columns([6, 5])
    with bars:
        if result is not None:
            st.plotly_chart(F.surgery_bars(result), key=P + "fig.bars", width="stretch", config={"staticPlot": True})
        else:
            st.caption("The benign, adversarial and patched predictions appear here once the selection is valid.")
    with grid, guarded("neuron grid"):      # a fragment re-run has no page around it to catch errors
        picker(run, expl, layer, float(st.session_state[k_key]), result)


def count_input(col, model_name: str, layer: str, n_neurons: int, kind: str) -> int:
    """N for ``changed:N``/``random:N``, at most the layer's width (a link's N beyond it is refused)."""
    nk = n_key(model_name, layer)
    pending = st.session_state.pop(P + "pending_n", None)
    if pending is not None and pending[0] in (None, layer):
        try:
            check_selection(f"{kind}:{pending[1]}", n_neurons, layer)
            st.session_state[nk] = pending[1]
        except InputError as exc:
            show_error(InputError(f"The link's surgery settings could not all be used: {exc} "
                                  f"N = {min(DEFAULT_N, n_neurons)} stands in."), "surgery link")
            st.session_state[nk] = min(DEFAULT_N, n_neurons)
    return int(col.number_input("N: neurons", 1, n_neurons, step=1, key=init_state(nk, min(DEFAULT_N, n_neurons)),
                                help=f"Layer {layer} has {n_neurons} neurons."))


def start_typing(model_name: str) -> None:
    """Switching to typed neurons starts from the neurons patched last (to add or remove some)."""
    last = st.session_state.get(key(model_name, "last"))
    ik = key(model_name, "indices")
    if st.session_state.get(key(model_name, "kind")) == "indices" and last and not st.session_state.get(ik, "").strip():
        st.session_state[ik] = ", ".join(str(j) for j in last)


def show_summary(result) -> None:
    """The sentence (green when the class returns), the three passes' margins and the recovery share."""
    returned = int(result.patched.predictions[0]) == int(result.reference_class[0])
    (st.success if returned and result.recovery(0) is not None else st.info)(F.surgery_verdict(result))
    r = result.recovery(0)
    m = st.columns(4)
    margin_help = ("Margin of the reference class: its logit minus the largest other logit; above 0 the model "
                   "predicts the reference class.")
    for col, (name, p) in zip(m, (("benign", result.benign), ("adversarial", result.adversarial),
                                  ("patched", result.patched))):
        col.metric(f"{name} margin", f"{float(p.margins[0]):+.2f}", help=margin_help)
    m[3].metric("recovery share", F.recovery_text(r),
                help="(patched margin − adversarial margin) / (benign margin − adversarial margin): 0 = no change "
                     "from the adversarial, 1 = the benign margin back. n/a when the attack did not flip the "
                     "prediction.")


def picker(run: Run, expl, layer: str, k: float, result) -> None:
    """The layer's neurons on a grid; picking some types their indices into the selection.

    The grid's figure depends only on the layer, the reference class and K, never on the neurons patched
    now: Streamlit names a chart by its figure, so a figure that changed with every selection would be a
    new chart, mounted afresh in the browser on every change (most of a change's time). The patched
    neurons are listed under it instead."""
    model_name = run.model
    chart = key(model_name, "picker")
    st.plotly_chart(surgery_grid(model_name, layer, expl.method, expl.reference_class, k, tuple(expl.class_names)),
                    key=chart, width="stretch", on_select=lambda: picked(chart, model_name),
                    selection_mode=("points", "box", "lasso"))
    selected = result.selected(0) if result is not None else []
    if selected:
        shown = ", ".join(str(j) for j in selected[:MAX_LISTED]) + (", …" if len(selected) > MAX_LISTED else "")
        st.markdown(f"**Patched now** ({len(selected)} neuron{'s' if len(selected) != 1 else ''}): {shown}")
    st.caption("Click a neuron to patch it alone, or take the box or lasso tool at the top right of the grid for "
               "several, or type indices. Colour: the layer's benign influence profile toward the reference class "
               "(red: front, blue: tail); grey cells are dead neurons.")


@st.cache_resource(show_spinner=False, max_entries=64)
def surgery_grid(model_name: str, layer: str, method: str, reference_class: int, k: float,
                 class_names: tuple[str, ...]):
    """The picking grid of one layer (``nip_core.figures.surgery_picker`` with no patched markers), built
    once per layer, class and K (shared, never mutated)."""
    return F.surgery_picker(get_profile(model_name, layer, method), reference_class, k, (), list(class_names))


def picked(chart: str, model_name: str) -> None:
    """Callback of the grid: the picked neurons become the typed selection (an empty pick changes nothing)."""
    event: Any = st.session_state.get(chart)
    neurons = F.picked_neurons(event["selection"]["points"] if event else [])
    if neurons:
        st.session_state[key(model_name, "kind")] = "indices"
        st.session_state[key(model_name, "indices")] = ", ".join(str(j) for j in neurons)
