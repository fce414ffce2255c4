"""Explore: one image through an attack and a defense, with neuron influence side by side.

The first screen is the demo (docs/STYLE: CNN Explainer, TensorFlow Playground): a line on what the
tool shows, the way into the tour, and a run's benign / adversarial / defended result as images and
native elements; the settings live in the sidebar, so they never push the result down. Interactive
Plotly figures and every deeper panel are one switch away (``PANELS``: one module each, see
``app.views.panel``).
"""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app import links
from app import tour as T
from app.compute import build_run, explanation
from app.loaders import (BYOM_KEY, calibration_hint, gallery_entries, get_model, has_calibration,
                         split_image_problem, with_split_image, load_upload, visible_models)
from app.notes import aware_note, label_free_note
from app.progress import page_turn, run_with_progress
from app.views.panel import added_panels
from app.views import (canvas_input, compare_panel, defenses_panel, fragility_panel, layers_panel, neuron_panel,
                       strength_panel, surgery_panel)
from app.widgets import (byom_panel, guarded, init_state, model_picker, param_input, params_text, parse_params_text,
                         show_error)
from nip_core import figures as F
from nip_core.attacks import ATTACKS
from nip_core.evaluation.bench import expected_attack_seconds
from nip_core.defenses import DEFENSES
from nip_core.errors import InputError
from nip_core.figures.raster import explanation_pngs
from nip_core.images import MAX_BYTES as MAX_IMAGE_BYTES, tensor_to_png_bytes
from nip_core.influence import METHODS
from nip_core.run import Run

P = "explore."                      # session-state prefix of this page
DEFAULT_MODEL = "lenet-mnist"
# Each model's default image, attack and defense: ``ModelSpec.first_run`` (nip_core.models.base).
VARIANTS = F.VARIANTS
NIP_SHARED = ("layer", "method", "k", "n_steps")   # set in the influence section / kept at default
SLOW_ATTACK_SECONDS = 10.0   # warn before an attack expected to take longer than this per image
IMAGE_UPLOAD_MAX_MB = MAX_IMAGE_BYTES / 2**20   # the engine's one limit for an image (nip_core.images)
# Under the run, in this order; each satisfies app.views.panel.Panel (a new panel: one module, one line here).
PANELS = (compare_panel, layers_panel, neuron_panel, surgery_panel, fragility_panel, strength_panel, defenses_panel)
MODE_NOTES = {
    "nip": "label-free (deployable): flags inputs whose early neurons leave their benign range, then NIP "
           "toward the class of the nearest benign examples (the pocket rule for small perturbations); it needs a "
           "calibration (labelled benign images: shipped for the MNIST and Fashion-MNIST models) and without one "
           "passes inputs through unchanged",
    "nip-neighbours": "same as nip (its explicit name)",
    "nip-topk": "label-free, class-conditional over the model's top-K candidate classes (deployable)",
    "nip-global": "label-free, one global all-class profile (deployable)",
    "nip-oracle": "uses the TRUE label to pick the profile — analysis only, NOT deployable",
    "random-sign": "control: NIP's budget and steps with random directions",
}
# Shown in the form for every defense that has them; the rest of a label-free nip's parameters are
# its internals (the "Advanced" expander), and only when the model has a calibration for it.
COMMON_PARAMS = ("budget", "steps", "step_size")
TOPK_PARAMS = ("candidates", "rule")
INTRO = ("An adversarial attack changes an image a little to fool a classifier; **NIP** (neuron-level inverse "
         "perturbation, Chen et al. 2021) perturbs it back using the model's own neurons. Below: one image benign, "
         "attacked and defended, and the neurons behind each prediction.")
SHARE_LINK = "The page URL holds the last run: copy it to share the view."
SHARE_UPLOAD = ("The page URL holds the last run's settings, but not its image: an upload cannot travel in a link "
                "(it opens the model's default image instead). Share the image file with the link.")
ORACLE_LINE = ("**`{defense}` is told the TRUE label** (the paper's protocol): it shows NIP's mechanism, "
               "not a defense you could deploy.")


def switch_to_nip(model_name: str) -> None:
    """The deployable label-free ``nip``, one click from the oracle: select it and run."""
    st.session_state[key(model_name, "defense")] = "nip"
    st.session_state[P + "autorun"] = True


def key(model: str, *parts: str) -> str:
    return P + ".".join((model,) + parts)


def defense_group(name: str) -> str:
    return "nip" if DEFENSES[name].family == "nip" else name


def is_label_free(defense: str) -> bool:
    """The label-free ``nip`` (and its alias): the defense that needs a calibration."""
    return any(p.name == "vote_binarize" for p in DEFENSES[defense].spec.params)


# ----------------------------------------------------------------------------- URL → session state

def load_query_params() -> None:
    """Copy a link's configuration into the widgets' state: on a session's first run, and whenever
    the page is opened with other parameters than the ones it last read or wrote (tour steps)."""
    qp = st.query_params
    if not links.is_new(qp.to_dict()):
        return
    if not any(k in qp for k in ("model", "image", "attack", "defense")):
        return
    tour_from_query(qp)
    problems: list[str] = []
    model = qp.get("model", DEFAULT_MODEL)
    if model not in visible_models(st.session_state.get(BYOM_KEY, [])):
        problems.append(f"unknown model {model!r}")
        model = DEFAULT_MODEL
    st.session_state[P + "model"] = model
    st.session_state[P + "model_prev"] = model
    try:
        m = get_model(model)
        keys = [e["key"] for e in gallery_entries(model)]
    except Exception as exc:  # model unavailable: let the page report it
        show_error(exc, "loading model")
        return
    image = qp.get("image")
    if image is not None:
        if image in keys or split_image_problem(model, image, problems) is None:
            st.session_state[key(model, "image")] = image
    if "draw" in qp and canvas_input.applies(m) and canvas_input.from_query(qp["draw"], model, problems):
        st.session_state[P + "source"] = canvas_input.LABEL          # the link's drawing, on the canvas
    elif "draw" in qp and not canvas_input.applies(m):
        problems.append(f"model {model!r} takes no drawing")
    elif st.session_state.get(P + "source") == canvas_input.LABEL:
        st.session_state[P + "source"] = "Example gallery"           # a link to a gallery image shows that image
    usable = {a: u for a, u in ATTACKS.items() if u.applies_to(m)}
    first = m.spec.first_run
    unit_from_query(qp, m, model, "attack", usable, first.attack, "ap", lambda a: ("a", a), problems)
    unit_from_query(qp, m, model, "defense", DEFENSES, first.defense, "dp", lambda d: ("d", defense_group(d)),
                    problems, skip=NIP_SHARED)
    if "layer" in qp:
        if qp["layer"] in m.spec.layers:
            st.session_state[key(model, "layer")] = qp["layer"]
        else:
            problems.append(f"unknown layer {qp['layer']!r}")
    if "method" in qp:
        if qp["method"] in METHODS:
            st.session_state[key(model, "method")] = qp["method"]
        else:
            problems.append(f"unknown influence method {qp['method']!r}")
    for name, kind, lo, hi in (("k", float, 0.01, 0.5), ("seed", int, 0, 2**31 - 1)):
        if name in qp:
            try:
                v = kind(qp[name])
                if not lo <= v <= hi:
                    raise ValueError
                st.session_state[key(model, name)] = v
            except ValueError:
                problems.append(f"{name} must be {kind.__name__} in [{lo}, {hi}]; got {qp[name]!r}")
    for panel in (*PANELS, *added_panels()):
        panel.from_link(qp, model, m)
    if problems:
        st.session_state[P + "query_warning"] = ("Some settings in the link were ignored (defaults used): "
                                                 + "; ".join(problems) + ".")
    st.session_state[P + "autorun"] = True


def unit_from_query(qp, m, model: str, kind: str, registry, default: str, params_arg: str, state_prefix,
                    problems: list[str], skip: tuple[str, ...] = ()) -> None:
    """Copy a link's attack or defense and its parameters into the widgets' state.

    An unknown unit falls back to ``default`` and bad parameters to the unit's defaults; both are
    recorded in ``problems`` for the page to show.
    """
    name = qp.get(kind, default)
    if name not in registry:
        problems.append(f"unknown {kind} {name!r}" if name not in (ATTACKS | DEFENSES) else
                        f"{kind} {name!r} does not apply to model {model!r}")
        name = default
    st.session_state[key(model, kind)] = name
    try:
        values = registry[name].params_for(m, parse_params_text(qp.get(params_arg, "")))
        for pname, v in values.items():
            if pname not in skip:
                st.session_state[key(model, *state_prefix(name), pname)] = v
    except InputError as exc:
        problems.append(f"{kind} parameters: {exc}")


def tour_from_query(qp) -> None:
    """Remember the tour step a link opens (``tour=<step>``, ``tm=<tour model>``), or forget it."""
    step = qp.get("tour")
    st.session_state.pop(P + "scrolled", None)     # a step's link brings its panel into sight again
    if step in T.BY_KEY:
        st.session_state[P + "tour"] = {"step": step, "model": qp.get("tm", qp.get("model")),
                                        "view": (qp.get("model"), qp.get("attack"), qp.get("defense"))}
    else:
        st.session_state.pop(P + "tour", None)


def save_query_params(run: Run) -> None:
    params = {
        "model": run.model, "image": "upload" if run.image_bytes is not None else run.image_key,
        "attack": run.attack, "ap": params_text(run.attack_kwargs), "defense": run.defense,
        "dp": params_text(run.defense_kwargs), "layer": run.layer, "method": run.method, "k": f"{run.k:g}",
        "seed": str(run.seed),
    }
    drawing = canvas_input.token_of(run.image_key) if run.image_bytes is None else None
    if drawing is not None:                 # the drawing itself rides in the link, small (draw=)
        del params["image"]
        params["draw"] = drawing
    tour = st.session_state.get(P + "tour")
    if tour and tour["view"] == (run.model, run.attack, run.defense):   # still the step's view: the link keeps its step
        params["tour"] = tour["step"]
        if tour["model"] != run.model:
            params["tm"] = tour["model"]
    links.replace(params)


# ----------------------------------------------------------------------------- switching model

def carry_settings() -> None:
    """Callback of the model box: the new model starts from the settings shown for the old one.

    The attack, the defense and the parameters the user changed from the old model's defaults carry
    over wherever they apply to the new model; the image carries over within one dataset; the layer
    when the new model has it; method, k and seed always. What cannot carry over, or changes with the
    model's defaults, is named in one line (``P + "carry_note"``) that the page shows once.
    """
    from nip_core.models import MODELS

    ss = st.session_state
    old, new = ss.get(P + "model_prev"), ss.get(P + "model")
    ss[P + "model_prev"] = new
    if not old or old == new:
        return
    try:
        m_old, m_new = get_model(old), get_model(new)
    except Exception:            # the page reports a model it cannot load
        return
    changed: list[str] = []
    if MODELS[old].gallery == MODELS[new].gallery and key(old, "image") in ss:
        image = ss[key(old, "image")]
        if image in [e["key"] for e in gallery_entries(new)] or split_image_problem(new, image, []) is None:
            ss[key(new, "image")] = image
    elif key(old, "image") in ss:
        changed.append("image (another dataset)")
    attack = ss.get(key(old, "attack"), m_old.spec.first_run.attack)
    if ATTACKS[attack].applies_to(m_new):
        ss[key(new, "attack")] = attack
        changed += carry_params(ATTACKS[attack], m_old, m_new, old, new, ("a", attack))
    else:
        fallback = m_new.spec.first_run.attack
        changed.append(f"attack {attack} (does not apply to {new}; {fallback} instead)")
        ss[key(new, "attack")] = fallback
    defense = ss.get(key(old, "defense"), m_old.spec.first_run.defense)
    ss[key(new, "defense")] = defense
    changed += carry_params(DEFENSES[defense], m_old, m_new, old, new, ("d", defense_group(defense)), NIP_SHARED)
    layer = ss.get(key(old, "layer"))
    if layer is not None and layer in m_new.spec.layers:
        ss[key(new, "layer")] = layer
    elif layer is not None:
        ss[key(new, "layer")] = m_new.spec.default_layer
        changed.append(f"layer {layer} → {m_new.spec.default_layer} ({new} has no {layer})")
    for name in ("method", "k", "seed"):
        if key(old, name) in ss:
            ss[key(new, name)] = ss[key(old, name)]
    ss[P + "carry_note"] = (f"Switched to {new}: kept the attack, defense and settings that apply"
                            + (f"; changed: {'; '.join(changed)}." if changed else "."))


def carry_params(unit, m_old, m_new, old: str, new: str, parts: tuple[str, ...], skip=()) -> list[str]:
    """Copy one unit's parameter widgets from model ``old`` to ``new``: a value the user changed from
    the old model's default when the new model accepts it, else the new model's default. Returns
    what changed, in words."""
    ss = st.session_state
    d_old, d_new = unit.params_for(m_old), unit.params_for(m_new)
    out = []
    for p in unit.spec.params:
        if p.name in skip or p.name not in d_new:
            continue
        k_old, k_new = key(old, *parts, p.name), key(new, *parts, p.name)
        shown = ss.get(k_old, d_old.get(p.name))
        target = d_new[p.name]
        if shown != d_old.get(p.name):           # the user's own value: keep it where it applies
            try:
                target = unit.params_for(m_new, {p.name: shown})[p.name]
            except InputError:
                out.append(f"{p.name} {shown} is out of range here ({d_new[p.name]} instead)")
        elif shown != target:
            out.append(f"{p.name} {shown:g} → {target:g} ({new}'s default)" if isinstance(shown, float)
                       else f"{p.name} {shown} → {target} ({new}'s default)")
        ss[k_new] = target
    return out


# ----------------------------------------------------------------------------- the tour

def show_tour_step():
    """The tour's card on top of the page: this step's sentence, a slot for what its run shows
    (filled once the run is known: ``T.step_claim``), and the way on. Returns the slot, or None."""
    tour = st.session_state.get(P + "tour")
    if not tour:
        return None
    steps = list(T.STEPS)
    i = [s.key for s in steps].index(tour["step"])
    step, model = steps[i], tour["model"]
    with st.container(border=True):
        st.markdown(f"**Guided tour · step {i + 1} of {len(steps)}: {step.title}**")
        st.markdown(step.sentence)
        slot = st.empty()
        cols = st.columns([1, 1, 1, 3])
        targets = {"Previous step": steps[i - 1] if i > 0 else None,
                   "Next step": steps[i + 1] if i + 1 < len(steps) else None}
        for col, (label, target) in zip(cols, targets.items()):
            reason = T.why_not(target, model) if target is not None else None
            if col.button(label, key=P + f"tour.{label}", disabled=target is None or reason is not None,
                          help=reason, width="stretch", type="primary" if label == "Next step" else "secondary"):
                st.switch_page(T.EXPLORE_PAGE, query_params=T.step_query(target, model))
        if cols[2].button("Leave the tour", key=P + "tour.leave", width="stretch"):
            st.session_state.pop(P + "tour", None)
            st.rerun()
    return slot


def start_tour(model_name: str) -> None:
    """Open the tour's first step on this model (the Tour page when it cannot run here)."""
    first = T.STEPS[0]
    if T.why_not(first, model_name) is None:
        st.switch_page(T.EXPLORE_PAGE, query_params=T.step_query(first, model_name))
    st.switch_page("views/tour.py")


STYLE = """<style>
[data-testid="stMainBlockContainer"] { padding-top: 2.5rem; }
[data-testid="stMetricValue"] { font-size: 1.5rem; }
</style>"""


def header(model_name: str) -> None:
    st.html(STYLE)
    st.markdown("### NIP Explorer: fight perturbations with perturbations")
    if st.session_state.get(P + "tour"):      # the tour's card says what this view shows
        return
    cols = st.columns([5, 1.2], vertical_alignment="center")
    cols[0].markdown(INTRO)
    if cols[1].button("Start the tour", key=P + "tour.start", type="primary", icon=":material/school:",
                      width="stretch", help="Nine steps, each a run on this page with one sentence on what it shows."):
        start_tour(model_name)


# ----------------------------------------------------------------------------- setup widgets (sidebar)

def choose_image(model_name: str, num_classes: int, class_names: list[str]):
    """A gallery example, an upload or (28×28 models) a drawing; returns (image_key, image_bytes, label) or None."""
    entries = with_split_image(model_name, gallery_entries(model_name), st.session_state.get(key(model_name, "image")))
    model = get_model(model_name)
    sources = ["Example gallery", "Upload an image"] + ([canvas_input.LABEL] if canvas_input.applies(model) else [])
    if st.session_state.get(P + "source") not in (None, *sources):      # e.g. Draw, then a photo model
        st.session_state[P + "source"] = "Example gallery"
    source = st.radio("Image", sources, horizontal=True, key=init_state(P + "source", "Example gallery"),
                      label_visibility="collapsed")
    if source == canvas_input.LABEL:
        return canvas_input.source(model_name, st.session_state.get(key(model_name, "layer"), model.spec.default_layer),
                                   st.session_state.get(key(model_name, "method"), "conductance"))
    if source == "Example gallery":
        keys = [e["key"] for e in entries]
        by_key = {e["key"]: e for e in entries}
        first = model.spec.first_run.image
        default = first if first in by_key else keys[0]
        k = init_state(key(model_name, "image"), default)
        if st.session_state[k] not in by_key:
            st.session_state[k] = default
        chosen = st.selectbox("Example image", keys, key=k,
                              format_func=lambda s: f"{by_key[s]['label_name']} — {by_key[s]['source']}")
        return chosen, None, by_key[chosen]["label"]
    up = st.file_uploader(f"PNG, JPEG, WebP, BMP or GIF (max {IMAGE_UPLOAD_MAX_MB:g} MB)",
                          type=["png", "jpg", "jpeg", "webp", "bmp", "gif"],
                          key=P + "upload")
    if up is None:
        st.info("Upload an image, or switch back to the example gallery.")
        return None
    data = up.getvalue()
    if len(data) > IMAGE_UPLOAD_MAX_MB * 2**20:
        st.error(f"Cannot use {up.name}: it is {len(data) / 2**20:.1f} MB, over the {IMAGE_UPLOAD_MAX_MB:g} MB limit "
                 "for an image.")
        return None
    try:
        x = load_upload(model_name, data)
    except InputError as exc:
        st.error(f"Cannot use {up.name}: {exc}")
        return None
    st.image(tensor_to_png_bytes(x), caption=f"{up.name} as the model sees it", width=120)
    lk = init_state(key(model_name, "upload_label"), -1)
    label = st.selectbox("True class (optional; enables nip-oracle)", list(range(-1, num_classes)), key=lk,
                         format_func=lambda c: "unknown" if c < 0 else f"{c}: {class_names[c]}")
    return f"upload:{up.name}", data, (None if label < 0 else int(label))


def attack_inputs(model, attack: str) -> dict:
    unit = ATTACKS[attack]
    defaults = unit.params_for(model)
    out = {}
    for p in unit.spec.params:
        high = model.num_classes - 1 if p.name == "target" else None
        out[p.name] = param_input(p, defaults[p.name], key(model.name, "a", attack, p.name), high=high)
    return out


def defense_inputs(model, defense: str) -> dict:
    """The defense's parameters that apply to this model: the common ones, then (label-free ``nip``
    with a calibration only) its internals in an "Advanced" expander. Returns the values shown."""
    unit = DEFENSES[defense]
    defaults = unit.params_for(model)
    if is_label_free(defense) and not has_calibration(model.name):
        st.caption("No parameters apply: without a calibration `nip` passes inputs through unchanged.")
        return {}
    shown = [p for p in unit.spec.params if p.name not in NIP_SHARED
             and (p.name not in TOPK_PARAMS or defense == "nip-topk" or is_label_free(defense))]
    common = [p for p in shown if not is_label_free(defense) or p.name in COMMON_PARAMS]
    advanced = [p for p in shown if p not in common]
    out = {p.name: param_widget(model, defense, p, defaults[p.name]) for p in common}
    if advanced:
        with st.expander("Advanced: label-free internals"):
            st.caption("How `nip` detects an attack and votes for the class NIP aims at. The defaults are the "
                       "tuned ones; see the Method page.")
            out |= {p.name: param_widget(model, defense, p, defaults[p.name]) for p in advanced}
    return out


def param_widget(model, defense: str, p, default):
    choices = None
    if p.name == "select_layers":   # only the layer sets this model has
        choices = [c for c in p.choices if c == "auto" or all(part in model.spec.layers for part in c.split("+"))]
    return param_input(p, default, key(model.name, "d", defense_group(defense), p.name), choices=choices)


def settings(model_name: str, model):
    """The sidebar's run settings; returns (picked image or None, the form's values, Run pressed)."""
    picked = choose_image(model_name, model.num_classes, model.class_names)
    attacks = sorted(a for a in ATTACKS if ATTACKS[a].applies_to(model))
    ak = key(model_name, "attack")
    if st.session_state.get(ak) not in (None, *attacks):  # e.g. a link's nip-aware on an ImageNet model
        st.session_state[ak] = model.spec.first_run.attack
    attack = st.selectbox("Attack", attacks, key=init_state(ak, model.spec.first_run.attack),
                          format_func=lambda a: f"{a} — {ATTACKS[a].spec.summary}",
                          help=f"{ATTACKS[attack_name(ak, model)].access}, {ATTACKS[attack_name(ak, model)].norm}.")
    est = expected_attack_seconds(model_name, attack, ATTACKS[attack].params_for(model))
    if est is not None and est >= SLOW_ATTACK_SECONDS:
        st.caption(f"Slow: `{attack}` may take up to about {est:.0f} s for one image here.",
                   help="Scaled from the bench on a 2-core CPU (docs/bench.json). Fewer iterations make it faster.")
    if attack == "nip-aware":
        st.caption("`nip-aware` knows the label-free `nip` and attacks its vote too.",
                   help="It fools the model and nip's neighbour vote at once (through the binarisation, trying up to "
                        f"3 wrong classes). Paired with the `nip` defense: {aware_note()}, and loses the rest.")
    dk = init_state(key(model_name, "defense"), model.spec.first_run.defense)
    shown = st.session_state[dk] if st.session_state[dk] in DEFENSES else model.spec.first_run.defense
    defense = st.selectbox("Defense", list(DEFENSES), key=dk,
                           format_func=lambda d: d + ("" if DEFENSES[d].deployable else " (NOT deployable)"),
                           help=f"`{shown}`: {MODE_NOTES.get(shown, DEFENSES[shown].spec.summary)}. "
                                "All modes: “About the defense modes” below.")
    if DEFENSES[defense].needs_labels:
        st.warning(ORACLE_LINE.format(defense=defense))
        st.button("Try the deployable `nip` (no true label)", key=P + "to_nip", on_click=switch_to_nip,
                  args=(model_name,), width="stretch")
    elif not DEFENSES[defense].deployable:
        st.warning(f"`{defense}` is not deployable: analysis only.")
    elif is_label_free(defense) and not has_calibration(model_name):
        st.caption(f":orange[`{defense}` has no calibration for this model: it passes inputs through.]",
                   help=calibration_hint(model_name))
    with st.form(P + "form", border=False):
        values = {"attack": attack, "defense": defense}
        with st.expander(f"Attack and defense settings ({attack}, {defense})"):
            values["attack_params"] = attack_inputs(model, attack)
            values["defense_params"] = defense_inputs(model, defense)
        with st.expander("Influence: layer, method, k, seed"):
            st.caption("Where influence is measured; NIP acts at the same layer, method and k.")
            values["layer"] = st.selectbox("layer", list(model.spec.layers),
                                           key=init_state(key(model_name, "layer"), model.spec.default_layer))
            values["method"] = st.selectbox("method", list(METHODS),
                                            key=init_state(key(model_name, "method"), "conductance"))
            values["k"] = st.slider("k (front/tail share of live neurons)", 0.05, 0.5, step=0.05,
                                    key=init_state(key(model_name, "k"), 0.2))
            values["seed"] = int(st.number_input("seed", 0, 2**31 - 1, step=1,
                                                 key=init_state(key(model_name, "seed"), 0)))
        submitted = st.form_submit_button("Run", type="primary", width="stretch")
    return picked, values, submitted


def attack_name(ak: str, model) -> str:
    name = st.session_state.get(ak, model.spec.first_run.attack)
    return name if name in ATTACKS else model.spec.first_run.attack


def current_run(model_name: str, picked, values) -> Run | None:
    """The run the settings above describe now (None when they do not make one)."""
    if picked is None:
        return None
    image_key, image_bytes, label = picked
    try:
        return build_run(model_name, image_key, image_bytes, label, values["attack"], values["attack_params"],
                         values["defense"], values["defense_params"], values["layer"], values["method"],
                         float(values["k"]), values["seed"])
    except Exception:  # noqa: BLE001 - the Run press reports it
        return None


# ----------------------------------------------------------------------------- results

DETECTOR_TEXT = {"abnormal": "{layer} out-of-range share",
                 "no_support": "votes against prediction",
                 "low_margin": "close call (−top-2 gap)"}


def detector_name(key: str) -> str:
    base, _, layer = key.partition(":")
    return DETECTOR_TEXT.get(base, key).format(layer=layer)


def show_decision(expl) -> None:
    """The label-free NIP's own account: detectors, gate, vote, and where NIP was pointed."""
    st.subheader(f"Why `{expl.defense}` acted as it did")
    cols = st.columns(2)
    for v, col in zip(("benign", "adversarial"), cols):
        d = expl.decision[v]
        with col:
            st.markdown(f"**{v} input**")
            shown = [e for i, e in enumerate(d["vote"]) if i == 0 or e["share"] >= 0.005]
            vote = ", ".join(f"{expl.class_names[e['class']]} ({e['share'] * 100:.0f}%)" for e in shown)
            pocket = d.get("pocket") or {}
            if d["flagged"]:
                fired = "; ".join(detector_name(k) for k, e in d["detectors"].items() if e["fired"])
                why = f"neighbour vote: {vote}"
                if pocket.get("applied"):
                    why = (f"pocket rule: a small perturbation, and under ±{pocket['amp']:g} noise the model "
                           f"predicts {expl.class_names[pocket['smoothed_class']]} "
                           f"({pocket['smoothed_share'] * 100:.0f}%); neighbour vote: {vote}")
                st.markdown(f":orange[Flagged by {fired}] → NIP toward class "
                            f"**{expl.class_names[d['nip_target']]}** ({why}).")
            else:
                st.markdown(f":green[Not flagged] → passed through unchanged (neighbour vote: {vote}).")
            rows = [{"detector": detector_name(k), "score": e["score"], "threshold": e["threshold"],
                     "fires": "yes" if e["fired"] else ("above, gated off" if e["above"] else "no")}
                    for k, e in d["detectors"].items()]
            # Three rows: a static table (no data-grid component for the browser to load).
            st.table(pd.DataFrame(rows).set_index("detector").style.format(
                {"score": "{:.4f}", "threshold": lambda v: "—" if v is None or v != v else f"{v:.4f}"}))
    first = expl.decision["benign"]
    vote_input = (f"the input binarised at {first['vote_binarize']:g} (an L∞ attack of size ε flips only pixels "
                  f"within ε of {first['vote_binarize']:g}, so it can hardly move this vote)"
                  if first["vote_binarize"] > 0 else "the raw input")
    st.caption("Detectors: the share of the layer's neurons outside their benign range; the share of benign "
               "neighbours voting against the prediction; minus the top-2 softmax gap.",
               help=f"Thresholds flag {first['false_alarm'] * 100:g}% of held-out benign images per detector "
                    f"(calibrated on {first['calibration_digits']} images of the calib split). The vote and margin "
                    "detectors count only when the abnormal-neuron share is also high (the gate). "
                    f"The vote compares the conv1 maps of {vote_input} with those of benign training images. "
                    f"Pocket rule: when few neurons are abnormal (share ≤ {first['small_level']:g}, a small "
                    "perturbation such as DeepFool's) and the model's average prediction under small random-sign "
                    "noise differs from its prediction, NIP is pointed at that smoothed class instead of the vote's. "
                    "An attacker who knows all this can still win sometimes: pick the `nip-aware` attack to try it, "
                    "or see the Benchmark page's defense-aware numbers.")


@st.cache_data(show_spinner=False, max_entries=48)
def result_pngs(run: Run, quantity: str) -> dict:
    """The first view's pictures of a run (``nip_core.figures.raster``), cached with the run."""
    return explanation_pngs(explanation(run), quantity)


def verdict(expl) -> str:
    """One sentence from the run's predictions (what the attack did, what the defense did)."""
    ref, names = expl.reference_class, expl.class_names
    b, a, d = (expl.prediction(v) for v in VARIANTS)
    if b != ref:      # nothing to restore: say so first
        return (f"The model gets this image wrong even without an attack ({names[b]}, not {names[ref]})"
                + ("." if a == b else f"; the attack turns it into {names[a]}.")
                + ("" if d == a else f" After the defense: {names[d]}."))
    if a == b:
        return f"The attack did not change the prediction ({names[b]})."
    attack = f"The attack turned {names[b]} into **{names[a]}**"
    if expl.defense == "none":
        return attack + " (no defense)."
    if d == a:
        return attack + "; the defense did not change it back."
    if d == ref:
        return attack + f"; the defense brought back **{names[ref]}**."
    return attack + f"; after the defense the model says {names[d]}."


def show_results(run: Run, expl, stale: list[str]) -> None:
    ref = expl.reference_class
    ref_name = expl.class_names[ref]
    with st.container(key="explore-result", border=True):
        if stale:
            st.warning(f"**Stale:** the settings changed since this result ({'; '.join(stale)}). Press **Run**.",
                       icon=":material/history:")
        if DEFENSES[expl.defense].needs_labels:
            st.warning(ORACLE_LINE.format(defense=expl.defense))
        label_text = (f"true label {expl.class_names[expl.label]}" if expl.label is not None else
                      "no true label (reference = benign prediction)")
        st.caption(f"{run.model} · attack {expl.attack} · defense {expl.defense} · {label_text} · neurons of "
                   f"{expl.layer}, influence toward {ref_name}",
                   help=f"Influence: {expl.method} (k = {expl.k:g}), measured toward class {ref} ({ref_name}), the "
                        "reference class.")
        st.markdown(verdict(expl))
        quantity = st.session_state.get(P + "quantity", "influence")
        pngs = result_pngs(run, quantity)
        what = "influence" if quantity == "influence" else "activation"
        cols = st.columns(5, gap="small")
        for v, col in zip(VARIANTS, cols):
            with col:
                c, name, p = expl.top(v, 1)[0]
                st.image(tensor_to_png_bytes(expl.images[v]), width=96)
                st.metric(f"{v} prediction", f"{name}")
                colour = "green" if c == ref else "red"
                st.markdown(f":{colour}[{p * 100:.0f}% · {'right' if c == ref else 'wrong'}]")
                st.image(pngs["grids"][v], width="stretch", caption=f"{v}: {what} per neuron")
        for (name, png), col in zip(pngs["diffs"].items(), cols[3:]):
            with col:
                st.markdown(f"**{'What the attack changed' if name.startswith('adv') else 'Left after the defense'}**",
                            help=f"{name}: the change in each neuron's {what}; float noise is drawn as zero.")
                zero = pngs["diff_zero"][name]
                st.image(png, width="stretch", caption=f"{name}" + (" (all zero)" if zero else ""))
        cols = st.columns([3, 2], gap="small")
        cols[0].image(pngs["bar"], width=300)
        cols[1].image(pngs["diff_bar"], width=300)
        st.caption("One cell per neuron, row by row: red above zero, blue below, grey dead; □ front, • tail "
                   "(marked where the cells are large enough).",
                   help="Front neurons: the class's strongest "
                        f"{expl.k:g} of live neurons by benign influence toward {ref_name}; tail: the weakest "
                        f"{expl.k:g} (the Method page). The three maps share one scale; the two changes another.")
        g = expl.group_means("activations")
        st.caption(f"{F.signature_verdict(expl.signature())} Front neurons' mean activation {g['benign']['front']:.3g} → "
                   f"{g['adversarial']['front']:.3g} → {g['defended']['front']:.3g}; tail {g['benign']['tail']:.3g} → "
                   f"{g['adversarial']['tail']:.3g} → {g['defended']['tail']:.3g} (benign → attacked → defended).")
    c = st.columns([1, 1, 2])
    c[0].radio("Neurons show", ["influence", "activations"], horizontal=True, key=init_state(P + "quantity", "influence"),
               help="influence: Captum layer attribution toward the reference class; activations: the layer's "
                    "mean output per neuron", label_visibility="collapsed")
    interactive = c[1].toggle("Interactive charts", key=init_state(P + "interactive", False),
                              help="The same results as Plotly charts with hover values, the perturbations and the top-5 "
                                   "predictions (slower to draw).")
    if interactive:
        show_interactive(expl, quantity)
    if expl.decision:
        with st.expander(f"Why `{expl.defense}` acted as it did"):
            show_decision(expl)


def show_interactive(expl, quantity: str) -> None:
    for v, col in zip(VARIANTS, st.columns(3)):
        with col:
            if v != "benign":
                st.plotly_chart(F.perturbation_figure(expl, v), key=P + f"fig.pert.{v}", width="stretch")
            # The bars print their values: a static chart, cheaper for every open tab to draw.
            st.plotly_chart(F.prediction_bars(expl, v), key=P + f"fig.top.{v}", width="stretch",
                            config={"staticPlot": True})
    st.plotly_chart(F.influence_heatmaps(expl, quantity), key=P + "fig.heatmaps", width="stretch")
    st.plotly_chart(F.difference_heatmaps(expl, quantity), key=P + "fig.diff", width="stretch")
    st.plotly_chart(F.group_chart(expl, "activations"), key=P + "fig.groups", width="stretch")


def show_panels(run: Run, expl) -> None:
    st.markdown("**Go deeper**")
    for panel in (*PANELS, *added_panels()):
        with st.container(key="panel-" + getattr(panel, "__name__", panel.PREFIX.strip(".")).rsplit(".", 1)[-1]):
            panel.section(run, expl)
    secs = ", ".join(f"{k} {v:.2f} s" for k, v in expl.seconds.items())
    c = st.columns([1, 3], vertical_alignment="center")
    c[0].download_button("Download summary (JSON)", json.dumps(expl.summary(), indent=2, default=float),
                         file_name="nip_explanation.json", mime="application/json", key=P + "download",
                         icon=":material/download:")
    c[1].caption(f"Time: {secs}.")


def scroll_to_tour_panel() -> None:
    """A tour step about a panel (surgery) brings that panel into sight once, after its run."""
    tour = st.session_state.get(P + "tour")
    if not tour or st.session_state.get(P + "scrolled") == tour["step"]:
        return
    step = T.BY_KEY[tour["step"]]
    target = "surgery_panel" if step.surgery else "compare_panel" if step.pair else None
    if target is None:
        return
    st.session_state[P + "scrolled"] = tour["step"]
    import streamlit.components.v1 as components

    components.html("""<script>
      const go = (n) => { const el = window.parent.document.querySelector('.st-key-panel-""" + target + """');
        if (el) el.scrollIntoView({behavior: 'smooth', block: 'start'}); else if (n > 0) setTimeout(() => go(n - 1), 300); };
      go(20);</script>""", height=0)


# ----------------------------------------------------------------------------- page

def main() -> None:
    load_query_params()
    top = st.sidebar.container()                 # the run settings, above what follows
    with st.sidebar.expander("About the defense modes"):
        st.markdown("\n".join(f"- `{k}`: {v}" for k, v in MODE_NOTES.items()))
        st.info(label_free_note())
    byom_panel()                                 # first: a model loaded here is offered in the Model box
    with top:
        picked_model = model_picker(P + "model", DEFAULT_MODEL, on_change=carry_settings)
        if picked_model is not None:
            model_name, model = picked_model
            st.session_state[P + "model_prev"] = model_name
            picked, values, submitted = settings(model_name, model)
            share_slot = st.empty()
    if picked_model is None:
        return
    header(model_name)
    if P + "query_warning" in st.session_state:
        st.warning(st.session_state.pop(P + "query_warning"))
    if P + "carry_note" in st.session_state:
        st.info(st.session_state.pop(P + "carry_note"), icon=":material/swap_horiz:")
    claim_slot = show_tour_step()

    # The first visit runs the default view at once (the server warmed it): the first screen is the demo.
    first_visit = not st.session_state.get(P + "visited")
    st.session_state[P + "visited"] = True
    autorun = st.session_state.pop(P + "autorun", False) or (first_visit and P + "request" not in st.session_state)
    compute = (submitted or autorun) and picked is not None
    # A run that computes holds one queue slot until its view is drawn (first come, first served).
    with page_turn(active=compute):
        if compute:
            image_key, image_bytes, label = picked
            try:
                run = build_run(model_name, image_key, image_bytes, label, values["attack"], values["attack_params"],
                                values["defense"], values["defense_params"], values["layer"], values["method"],
                                float(values["k"]), values["seed"])
                run_with_progress("Running attack, defense and influence", explanation, run)
                st.session_state[P + "request"] = run
                save_query_params(run)
            except Exception as exc:
                show_error(exc, "explain")
                return
        elif submitted:
            st.error("Choose an example or upload a valid image first.")

        run = st.session_state.get(P + "request")
        share_slot.caption(SHARE_UPLOAD if run is not None and run.image_bytes is not None else SHARE_LINK)
        if run is None:
            st.info("Pick an image, an attack and a defense in the sidebar, then press **Run**.")
            return
        now = current_run(model_name, picked, values)
        stale = run.differences(now) if now is not None and now != run else []
        if now is None and picked is None:
            stale = ["no image chosen"]
        with guarded("showing results"):
            expl = explanation(run)
            tour = st.session_state.get(P + "tour")
            if claim_slot is not None and tour and tour["view"] == (run.model, run.attack, run.defense):
                claim_slot.markdown(T.step_claim(expl))
            show_results(run, expl, stale)
            show_panels(run, expl)
            scroll_to_tour_panel()


main()
