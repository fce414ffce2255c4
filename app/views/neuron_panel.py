"""Explore's drill-down: one neuron's activation map on the three inputs and its benign profile across
classes (off until asked for: four more charts that a class opening one link would each draw)."""
from __future__ import annotations

import streamlit as st

from app.compute import is_conv_layer, neuron_maps
from app.loaders import get_profile
from app.widgets import init_state
from nip_core import figures as F
from nip_core.run import Run

PREFIX = "explore.neuron."
DRILL = "explore.drill"           # the switch (the layer strip opens it when a neuron is picked there)
LINK_KEYS: tuple[str, ...] = ()


def from_link(qp, model_name: str, model) -> None:
    """The drill-down has no link parameters."""


def section(run: Run, expl) -> None:
    if st.toggle("One neuron: its maps and its profile across classes", key=init_state(DRILL, False),
                 help="Pick a neuron (front neurons first): where in the image it fires on the benign, adversarial "
                      "and defended input, and its benign influence for every class."):
        show_neuron(run, expl)


def show_neuron(run: Run, expl) -> None:
    ref = expl.reference_class
    n = len(expl.influence["benign"])
    groups = F.neuron_groups(n, expl.front, expl.tail, expl.dead)
    rank = {int(j): r for r, j in enumerate(expl.front)}
    order = [int(j) for j in expl.front] + [j for j in range(n) if j not in rank]
    nk = PREFIX + f"{run.model}.{expl.layer}"
    if nk in st.session_state and st.session_state[nk] not in order:
        del st.session_state[nk]
    neuron = st.selectbox("Neuron (front neurons first)", order, key=init_state(nk, order[0]),
                          format_func=lambda j: f"neuron {j} · {groups[j]}"
                          + (f" (front rank {rank[j] + 1})" if j in rank else ""))
    maps = neuron_maps(run, int(neuron))
    conv = is_conv_layer(run.model, expl.layer)
    st.caption("Conv layer: the channel's activation map, upsampled to the image." if conv else
               "Fully connected layer: the map is where in the image the neuron looks (input-gradient magnitude).")
    top = float(maps.max()) if float(maps.max()) > 0 else 1.0
    for i, (v, col) in enumerate(zip(F.VARIANTS, st.columns(3))):
        with col:
            st.plotly_chart(F.spatial_overlay(expl.images[v], maps[i], f"neuron {neuron} on the {v} input", zmax=top,
                                              value_label="activation<br>(layer output units)" if conv
                                              else "|∂a/∂x|<br>(normalised, 0–1)"),
                            key=f"explore.fig.map.{v}", width="stretch")
    prof = get_profile(run.model, expl.layer, expl.method)
    classes = list(range(len(expl.class_names))) if len(expl.class_names) <= 20 else \
        sorted(set(prof.per_class) | {ref})[:30]
    st.plotly_chart(F.neuron_across_classes(prof, int(neuron), classes, expl.class_names, highlight=ref),
                    key="explore.fig.across", width="stretch")
    if len(expl.class_names) > 20:
        st.caption("ImageNet class profiles exist only for classes already computed over the few shipped photos.")
