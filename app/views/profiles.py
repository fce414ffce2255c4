"""Profiles: the benign neuron-influence profiles NIP relies on."""
from __future__ import annotations

import streamlit as st

from app.loaders import BYOM_KEY, gallery_entries, get_model, get_profile, visible_models
from app.progress import run_with_progress
from app.widgets import guarded, init_state
from nip_core import figures as F
from nip_core.influence import METHODS
from nip_core.models import MODELS

P = "profiles."


def main() -> None:
    st.title("Influence profiles")
    st.markdown("A neuron's **influence** on class *c* is its Captum layer attribution toward *c* (summed over "
                "positions). The per-class profile averages it over benign examples of *c*; the global profile "
                "over every reference toward its own class. **Front** neurons are the top *k* of live neurons, "
                "**tail** neurons the bottom *k*; **dead** neurons never fire on the references and are grey.")
    with st.form(P + "form"):
        c = st.columns(4)
        model_name = c[0].selectbox("Model", visible_models(st.session_state.get(BYOM_KEY, [])),
                                    key=init_state(P + "model", "lenet-mnist"))
        spec = MODELS[model_name]
        lk = P + f"{model_name}.layer"
        layer = c[1].selectbox("Layer", list(spec.layers), key=init_state(lk, spec.default_layer))
        method = c[2].selectbox("Method", list(METHODS), key=init_state(P + "method", "conductance"))
        k = c[3].slider("k", 0.05, 0.5, step=0.05, key=init_state(P + "k", 0.2))
        st.form_submit_button("Show profile", type="primary")
    if layer not in spec.layers:  # the model changed inside the form
        layer = spec.default_layer
    with guarded("profiles"):
        model = get_model(model_name)
        prof = run_with_progress(f"Profile of {model_name} · {layer}", _profile, model_name, layer, method)
        if spec.gallery == "imagenet":
            st.warning("EfficientNet class profiles are computed over the few shipped photos (and their mirror "
                       "images), not over ImageNet: treat them as illustrations. Shown: the gallery's classes.")
            classes = sorted({e["label"] for e in gallery_entries(model_name)})
            prof_classes = run_with_progress("Per-class profiles", _class_fill, model_name, layer, method,
                                             tuple(classes))
        else:
            prof_classes = sorted(prof.per_class)
        show(model, prof, prof_classes, float(k))


def _profile(model_name: str, layer: str, method: str, _progress=None):
    if _progress:
        _progress(0.1, "loading or computing the profile")
    return get_profile(model_name, layer, method)


def _class_fill(model_name: str, layer: str, method: str, classes: tuple, _progress=None) -> list[int]:
    prof = get_profile(model_name, layer, method)
    for i, c in enumerate(classes):
        if _progress:
            _progress(i / len(classes), f"class {c}")
        prof.class_scores(c)
    return list(classes)


def show(model, prof, classes: list[int], k: float) -> None:
    names = model.class_names
    cols = st.columns(3)
    cols[0].metric("neurons", prof.n_neurons)
    cols[1].metric("dead neurons", int(prof.dead.sum()))
    cols[2].metric("classes profiled", len(classes))
    st.plotly_chart(F.profile_heatmap(prof, classes, names), key=P + "fig.profile", width="stretch")
    st.markdown(f"**Front and tail neurons per class** (k = {k:g} of {prof.n_neurons - int(prof.dead.sum())} live "
                "neurons; front listed strongest first, tail weakest last)")
    rows = []
    for c in list(classes) + [None]:
        front, _, tail = prof.groups(c, k)
        rows.append({"class": "global" if c is None else f"{c}: {names[c]}", "front": len(front),
                     "front neurons": ", ".join(str(int(j)) for j in front[:20]) + (" …" if len(front) > 20 else ""),
                     "tail": len(tail),
                     "tail neurons": ", ".join(str(int(j)) for j in tail[-20:]) + (" …" if len(tail) > 20 else "")})
    st.dataframe(rows, hide_index=True, width="stretch")
    dead = [int(j) for j in prof.dead.nonzero().flatten()]
    st.markdown(f"**Dead neurons** ({len(dead)}): " + (", ".join(map(str, dead[:200])) or "none")
                + (" …" if len(dead) > 200 else ""))
    ncol = st.columns([1, 3])
    options = list(range(prof.n_neurons))
    neuron = ncol[0].selectbox("Neuron", options, key=init_state(P + f"neuron.{model.name}.{prof.layer}", 0))
    ncol[1].plotly_chart(F.neuron_across_classes(prof, int(neuron), classes, names), key=P + "fig.neuron",
                         width="stretch")


main()
