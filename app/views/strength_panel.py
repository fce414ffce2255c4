"""Explore's attack-strength panel: the run's attack at a dozen budgets ε, each through the run's defense,
and a slider that scrubs them (``nip_core.analyses.strength``; issue 20 §1).

Opened on request under a run (closed by default: the first view stays light). Opening it computes the
sweep once (``app.compute.strength_view``, with a progress bar and, on the switch, the expected time);
every grid point's view (images, group chart, the three activation grids as one image) is built then
too (``app.compute.strength_frames``), and the response chart is drawn once per sweep outside the
slider's fragment: a move re-runs the fragment alone, makes no engine call and builds no figure. For gallery images the slider's ε rides in the share link (``strength_eps``)
and a link with it reopens the panel there. Attacks without a budget get one line saying why.
"""
from __future__ import annotations

import math

import streamlit as st

from app.compute import strength_frames, strength_view
from app.progress import run_with_progress
from app import links
from app.views.panel import link_value
from app.widgets import guarded, init_state, show_error
from nip_core import figures as F
from nip_core.run import Run
from nip_core.errors import InputError
from nip_core.evaluation.bench import estimate_sweep_seconds
from nip_core.analyses.strength import DEFAULT_N, no_sweep_reason

P = PREFIX = "explore.strength."
LINK = "strength_eps"
LINK_KEYS = (LINK,)
LINK_ERROR = P + "link_error"
PENDING = P + "pending_eps"
N = DEFAULT_N                        # strengths above 0 (the grid also has ε = 0)


def key(model_name: str, *parts: str) -> str:
    return P + ".".join((model_name,) + parts)


def open_key(model_name: str) -> str:
    return key(model_name, "open")


def eps_key(model_name: str) -> str:
    return key(model_name, "eps")


# ----------------------------------------------------------------------------- the share link

def from_link(qp, model_name: str, model) -> None:
    """A link with ``strength_eps`` opens the panel at the grid point nearest that ε; one without closes it.
    A value that is not a number ≥ 0 is reported once by the panel, which then opens at the run's ε."""
    text = link_value(qp, LINK, open_key(model_name), (LINK_ERROR, PENDING))
    if text is None:
        return
    try:
        eps = float(text)
        if not math.isfinite(eps) or eps < 0:
            raise ValueError
        st.session_state[PENDING] = eps
    except ValueError:
        st.session_state[LINK_ERROR] = (f"The link's strength_eps must be a number ≥ 0; got {text!r}. "
                                        "The slider starts at the run's ε.")


def write_link(run: Run, eps: float) -> None:
    """Put the slider's ε in the page's link (gallery images only: an upload's link cannot reopen it)."""
    if run.image_bytes is not None:
        return
    links.update({LINK: f"{eps:.6g}"})


def drop_link() -> None:
    links.drop(LINK_KEYS)


# ----------------------------------------------------------------------------- the panel

def seconds_text(s: float) -> str:
    return "under a second" if s < 1 else f"about {s:.0f} s"


def section(run: Run, expl) -> None:
    """The panel's heading and its switch (off until asked for); the sweep is computed when it is on."""
    model_name = run.model
    reason = no_sweep_reason(expl.attack)
    if reason is not None:
        st.caption(f"No strength slider for `{expl.attack}`. {reason}")
        drop_link()
        return
    est = estimate_sweep_seconds(model_name, expl.attack, expl.attack_params, N, measured=expl.seconds)
    when = "" if est is None else f" ({seconds_text(est)})"
    if not st.toggle(f"Attack strength: {expl.attack} at {N + 1} strengths from 0 to twice its ε{when}",
                     key=init_state(open_key(model_name), False),
                     help=f"Each strength goes through {expl.defense}; a slider scrubs them. Computed once when "
                          "switched on (the estimate is scaled from this run's own attack and defense times); the "
                          "slider then only shows what was computed."):
        drop_link()
        return
    try:
        run_with_progress(f"Sweeping ε{when}", strength_view, run, N)
        strength_frames(run, N)     # every grid point's view, built once: a slider move only shows one
    except Exception as exc:     # a strength out of the attack's range: one message, the run above stays
        show_error(exc, "strength sweep")
        return
    with guarded("strength panel"):
        overview(run)
    panel(run)


def overview(run: Run) -> None:
    """What the sweep is and its response chart: drawn once per sweep, outside the slider's fragment."""
    sweep = strength_view(run, N)               # cached when the section computed it: no engine call
    if LINK_ERROR in st.session_state:
        show_error(InputError(st.session_state.pop(LINK_ERROR)), "strength link")
    ref = sweep.reference_class
    step = "" if sweep.step_ratio is None else f", its step scaled to keep step/ε = {sweep.step_ratio:.3g}"
    st.caption(f"`{sweep.attack}` on the model at {len(sweep.eps) - 1} budgets ε from 0 to "
               f"{F.eps_text(sweep.eps[-1], sweep.norm)}{step}, seed {sweep.seed}; each adversarial then goes "
               f"through `{sweep.defense}`. ε = 0 is the benign image; the dashed line is this run's ε "
               f"({F.eps_text(sweep.chosen_eps, sweep.norm)}), where the numbers equal the view above. "
               f"Everything is measured toward {class_text(ref, sweep.class_names[ref])}. Computed in "
               f"{sweep.seconds['total']:.2f} s. \"Flips at ε\" is the first of these strengths that flips; the "
               "fragility panel searches in 1/255 steps, so its flip ε can be smaller.")
    if not any(sweep.defense_change):
        st.info(f"`{sweep.defense}` left every one of these inputs unchanged, so its dashed lines lie on the solid "
                "ones.")
    st.plotly_chart(F.strength_response(sweep), key=P + "fig.response", width="stretch")


@st.fragment
def panel(run: Run) -> None:
    """The slider and the scrubbed view; a slider move re-runs only this."""
    with guarded("strength panel"):     # a fragment re-run has no page around it to catch errors
        show(run)


def show(run: Run) -> None:
    """The slider and the grid point it is on, from the frames built when the panel opened."""
    model_name = run.model
    sweep = strength_view(run, N)               # cached: no engine call
    frames = strength_frames(run, N)
    ref = sweep.reference_class
    ref_text = class_text(ref, sweep.class_names[ref])
    sk = eps_key(model_name)
    pending = st.session_state.pop(PENDING, None)
    if pending is not None:
        st.session_state[sk] = sweep.eps[sweep.index(pending)]
    elif st.session_state.get(sk) not in sweep.eps:      # a new sweep: start at the run's ε
        st.session_state[sk] = sweep.chosen_eps
    eps = st.select_slider("ε: drag through the computed strengths (nothing is recomputed)", options=sweep.eps,
                           key=sk, format_func=lambda e: F.eps_text(e, sweep.norm))
    frame = frames[sweep.eps.index(eps)]
    write_link(run, eps)
    st.markdown(f"**At ε = {F.eps_text(eps, sweep.norm)}**")
    for v, col in zip(F.VARIANTS, st.columns(3)):
        with col:
            c, name, p = frame.top[v]
            st.markdown(f"**{v}**")
            st.image(frame.images[v], width=120)
            verdict = (":green[the reference class]" if c == ref else
                       f":red[{ref_text}: {frame.reference_confidence[v] * 100:.1f}%]")
            st.markdown(f"predicts **{name}** ({p * 100:.1f}%)  \n{verdict}")
    st.plotly_chart(frame.groups, key=P + "fig.groups", width="stretch", config={"staticPlot": True})
    st.image(frame.maps, caption=f"Neuron activation at this ε — layer {sweep.layer} ({len(sweep.dead)} neurons, "
                                 "grey = dead; one colour scale for every ε of the sweep, red = high)")


def class_text(c: int, name: str) -> str:
    """``class 0`` (MNIST's names are the digits), ``class 285 (Egyptian cat)``."""
    return f"class {c}" if name == str(c) else f"class {c} ({name})"
