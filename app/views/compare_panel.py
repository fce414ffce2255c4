"""Explore's "Pin and compare" panel: keep one run (A), and show the next run (B) of the same image
beside it (``nip_core.analyses.compare``; issue 21).

A is kept as its :class:`~nip_core.run.Run` (``app.compute.explanation``'s key), so showing it again costs
nothing (the cached explanation). B is whatever Explore runs next: another attack, ε, defense or
seed, or another model of the same dataset. For gallery images A rides in the share link as
``pin_model``, ``pin_image``, ``pin_attack``, ``pin_ap``, ``pin_defense``, ``pin_dp``, ``pin_layer``,
``pin_method``, ``pin_k`` and ``pin_seed`` (the same texts as Explore's own parameters), so one link
reopens both runs. A link whose pinned run cannot be read shows one warning and pins nothing.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app.compute import build_run, explanation
from app.loaders import gallery_entries, get_model, visible_models, BYOM_KEY
from app.progress import run_with_progress
from app import links
from app.widgets import guarded, init_state, params_text, parse_params_text, show_error
from nip_core import figures as F
from nip_core.run import Run
from nip_core.attacks import ATTACKS
from nip_core.analyses.compare import comparable, compare_runs, run_title
from nip_core.defenses import DEFENSES
from nip_core.errors import InputError
from nip_core.images import tensor_to_png_bytes
from nip_core.influence import METHODS

P = PREFIX = "explore.pin."
PINNED = P + "request"           # run A (a Run)
LINK_WARNING = P + "link_warning"
EXPLORE_IMAGE = "explore.{model}.image"   # Explore's gallery choice per model (pinning preselects A's image)
LINK_KEYS = ("pin_model", "pin_image", "pin_attack", "pin_ap", "pin_defense", "pin_dp", "pin_layer", "pin_method",
             "pin_k", "pin_seed")
K_RANGE, SEED_RANGE = (0.01, 0.5), (0, 2**31 - 1)
VARIANTS = ("benign", "adversarial", "defended")


# ----------------------------------------------------------------------------- the share link

def link_params(run: Run) -> dict[str, str]:
    """Run A as ``pin_*`` query parameters (gallery images only: {} for an upload)."""
    if run.image_bytes is not None:
        return {}
    return {"pin_model": run.model, "pin_image": run.image_key, "pin_attack": run.attack,
            "pin_ap": params_text(run.attack_kwargs), "pin_defense": run.defense,
            "pin_dp": params_text(run.defense_kwargs), "pin_layer": run.layer, "pin_method": run.method,
            "pin_k": f"{run.k:g}", "pin_seed": str(run.seed)}


def run_from_link(qp, own_models: list[str]) -> Run:
    """Run A from a link's ``pin_*`` parameters; InputError naming every problem."""
    problems: list[str] = []
    model = qp.get("pin_model")
    if model not in visible_models(own_models):
        raise InputError(f"unknown model {model!r}")
    m = get_model(model)
    entries = {e["key"]: e for e in gallery_entries(model)}
    image = qp.get("pin_image")
    if image not in entries:
        problems.append(f"unknown example image {image!r}")

    def unit(kind: str, registry, params_arg: str) -> tuple[str | None, dict]:
        name = qp.get(kind)
        if name not in registry or (kind == "pin_attack" and not ATTACKS[name].applies_to(m)):
            problems.append(f"{kind[4:]} {name!r} does not apply to model {model!r}" if name in registry
                            else f"unknown {kind[4:]} {name!r}")
            return None, {}
        try:
            return name, registry[name].params_for(m, parse_params_text(qp.get(params_arg, "")))
        except InputError as exc:
            problems.append(f"{kind[4:]} parameters: {exc}")
            return None, {}

    attack, ap = unit("pin_attack", ATTACKS, "pin_ap")
    defense, dp = unit("pin_defense", DEFENSES, "pin_dp")
    layer = qp.get("pin_layer", m.spec.default_layer)
    if layer not in m.spec.layers:
        problems.append(f"unknown layer {layer!r}")
    method = qp.get("pin_method", "conductance")
    if method not in METHODS:
        problems.append(f"unknown influence method {method!r}")
    numbers = {}
    for name, kind, (lo, hi), default in (("pin_k", float, K_RANGE, "0.2"), ("pin_seed", int, SEED_RANGE, "0")):
        try:
            numbers[name] = kind(qp.get(name, default))
            if not lo <= numbers[name] <= hi:
                raise ValueError
        except ValueError:
            problems.append(f"{name[4:]} must be {kind.__name__} in [{lo}, {hi}]; got {qp.get(name)!r}")
    if problems:
        raise InputError("; ".join(problems))
    return build_run(model, image, None, entries[image]["label"], attack, ap, defense, dp, layer, method,
                         numbers["pin_k"], numbers["pin_seed"])


def from_link(qp, model_name: str, model) -> None:
    """Pin the run a link names (its ``pin_*`` parameters), or unpin when the link names none."""
    st.session_state.pop(LINK_WARNING, None)
    if not any(k in qp for k in LINK_KEYS):
        st.session_state.pop(PINNED, None)
        return
    try:
        st.session_state[PINNED] = run_from_link(qp, st.session_state.get(BYOM_KEY, []))
        preselect_image(st.session_state[PINNED], skip=qp.get("model"))
    except Exception as exc:        # a bad link pins nothing; the main run stays
        st.session_state.pop(PINNED, None)
        st.session_state[LINK_WARNING] = (f"The link's pinned run could not be reopened ({exc}), so nothing is "
                                          "pinned; the link's main run is shown as usual.")


def write_link(pinned: Run | None) -> None:
    """Put run A in the page's link (or take it out when nothing, or an upload, is pinned)."""
    params = link_params(pinned) if pinned is not None else {}
    links.drop(k for k in LINK_KEYS if k not in params)
    links.update(params)


# ----------------------------------------------------------------------------- the panel

def pin(run: Run) -> None:
    """Keep ``run`` as run A."""
    st.session_state[PINNED] = run
    preselect_image(run, skip=run.model)


def preselect_image(run: Run, skip: str | None) -> None:
    """Explore's other models of A's dataset start from A's gallery image (one image, two models)."""
    from nip_core.models import MODELS

    if run.image_bytes is not None:
        return
    gallery = MODELS[run.model].gallery
    for name in visible_models(st.session_state.get(BYOM_KEY, [])):
        if name != skip and MODELS[name].gallery == gallery:
            st.session_state[EXPLORE_IMAGE.format(model=name)] = run.image_key


def unpin() -> None:
    st.session_state.pop(PINNED, None)


def section(run: Run, expl) -> None:
    """The pin button or, when a run is pinned, the comparison (a fragment)."""
    if LINK_WARNING in st.session_state:
        st.warning(st.session_state.pop(LINK_WARNING))
    panel(run)


@st.fragment
def panel(run: Run) -> None:
    """Pin / unpin, and run A beside this run (B); re-runs alone when its buttons or switch change."""
    pinned = st.session_state.get(PINNED)
    write_link(pinned)
    if pinned is None:
        cols = st.columns([1, 4], vertical_alignment="center")
        cols[0].button("Pin this run", key=P + "pin", on_click=pin, args=(run,), width="stretch",
                       help="Keeps this run as A. Then change the attack, ε, defense or seed, or pick another model "
                            "of the same dataset (same image), and press Run: the new run B is shown beside A, with "
                            "both runs' neurons on one colour scale.")
        cols[1].caption("Pin and compare: keep this run as A, change a setting, Run, and see B beside it.")
        return
    try:
        expl_a = run_with_progress("Reopening the pinned run", explanation, pinned)
    except Exception as exc:
        show_error(exc, "pinned run")
        st.button("Unpin", key=P + "unpin", on_click=unpin)
        return
    expl_b = explanation(run)
    cols = st.columns([1, 1, 3])
    cols[0].button("Unpin", key=P + "unpin", on_click=unpin, width="stretch",
                   help="Forget run A (and take it out of the link).")
    same = pinned == run
    if not same:
        cols[1].button("Pin this run (B) instead", key=P + "repin", on_click=pin, args=(run,), width="stretch",
                       help="Keep this run (B) as the new A.")
    cols[2].caption(f"**A (pinned):** {run_title(expl_a)}"
                    + ("" if pinned.image_bytes is None else " · an uploaded image: the link cannot carry it"))
    if same:
        st.info("Run A is pinned. Change the attack, ε, defense or seed, or pick another model of the same dataset "
                "(the image stays), and press **Run**: the new run appears here beside A.")
        return
    reason = comparable(expl_a, expl_b)
    if reason is not None:
        st.info(f"Nothing to compare yet: {reason}.")
        return
    with guarded("comparing the runs"):      # a fragment re-run has no page around it to catch errors
        show_comparison(expl_a, expl_b, pinned.differences(run))


def show_comparison(expl_a, expl_b, differences: list[str]) -> None:
    """What differs between A and B first (``Run.differences``), then the verdict and the figures."""
    cmp = compare_runs(expl_a, expl_b)
    st.info(f"**B changes:** {'; '.join(differences) if differences else 'nothing'}. {cmp.verdict()}")
    for name, expl, s, col in zip(("A (pinned)", "B (this run)"), (expl_a, expl_b), (cmp.a, cmp.b), st.columns(2)):
        with col, st.container(border=True):
            st.markdown(f"**{name}** · {run_title(expl)}")
            st.image([tensor_to_png_bytes(expl.images[v]) for v in VARIANTS], width=120,
                     caption=[f"{v}: {s.predictions[v][1]} ({s.predictions[v][2] * 100:.0f}%) "
                              f"{'✓ correct' if s.correct[v] else '✗ wrong'}" for v in VARIANTS])
    quantity = st.radio("Heatmaps show", ["influence", "activations"], horizontal=True,
                        key=init_state(P + "quantity", "influence"),
                        help="influence: Captum layer attribution toward the reference class; activations: the "
                             "layer's mean output per neuron. Both runs share one colour scale.")
    st.plotly_chart(F.compare_heatmaps(expl_a, expl_b, quantity), key=P + "fig.heatmaps", width="stretch")
    st.markdown("**Each run's neuron groups** (front: the class's strongest neurons in the run's own profile; "
                "changes are adversarial against benign)")
    st.table(pd.DataFrame(cmp.stats_rows()).set_index("statistic"))
    st.caption("✓ correct: the prediction is the reference class. Mean activation changes are shares of the run's own benign "
               "front mean, so they compare across models. Defense recovery: how much of the front mean's fall the "
               "defense undid.")
    if cmp.fell is None:        # the verdict above said why neurons are not matched
        st.caption("Everything below the comparison is run B (this run) in full.")
        return
    o = cmp.fell
    st.markdown("**Which front neurons fell under attack** (same model and layer: neuron j is the same unit in "
                "both runs)")
    m = st.columns(4)
    m[0].metric("fell in both", len(o.both))
    m[1].metric("A only", len(o.a_only))
    m[2].metric("B only", len(o.b_only))
    m[3].metric("Jaccard overlap", "n/a" if o.jaccard is None else f"{o.jaccard:.2f}",
                help="|both| / |A or B|: 1 = the same front neurons fell in both runs, 0 = none in common.")
    rows = cmp.identity_rows()
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                     column_config={"Δ activation A": st.column_config.NumberColumn(format="%.4f"),
                                    "Δ activation B": st.column_config.NumberColumn(format="%.4f")})
        st.caption("Front neurons whose activation fell under attack (Δ = adversarial − benign, layer output units).")
    else:
        st.caption("No front neuron's activation fell under attack in either run.")
    st.caption("Everything below the comparison is run B (this run) in full.")
