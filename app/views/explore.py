"""Explore: one image through an attack and a defense, with neuron influence side by side."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app import tour as T
from app.compute import build_request, defense_comparison, explanation, is_conv_layer, neuron_maps
from app.loaders import (BYOM_KEY, calibration_hint, gallery_entries, get_model, get_profile, has_calibration,
                         split_image_problem, with_split_image,
                         load_upload, visible_models)
from app.notes import aware_note, label_free_note
from app.progress import page_turn, run_with_progress
from app.views import canvas_input, compare_panel, fragility_panel, layers_panel, strength_panel, surgery_panel
from app.widgets import (byom_panel, guarded, init_state, model_picker, param_input, params_text, parse_params_text,
                         query_signature, show_error)
from nip_core import figures as F
from nip_core.attacks import ATTACKS
from nip_core.evaluation.bench import expected_attack_seconds
from nip_core.defenses import DEFENSES
from nip_core.errors import InputError
from nip_core.images import MAX_BYTES as MAX_IMAGE_BYTES, tensor_to_png_bytes
from nip_core.influence import METHODS

P = "explore."                      # session-state prefix of this page
DEFAULT_MODEL = "lenet-mnist"
# Each model's default image, attack and defense: ``ModelSpec.first_run`` (nip_core.models.base).
VARIANTS = F.VARIANTS
NIP_SHARED = ("layer", "method", "k", "n_steps")   # set in the influence section / kept at default
SLOW_ATTACK_SECONDS = 10.0   # warn before an attack expected to take longer than this per image
IMAGE_UPLOAD_MAX_MB = MAX_IMAGE_BYTES / 2**20   # the engine's one limit for an image (nip_core.images)
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


SHARE_LINK = "The page URL holds the configuration of the last run: copy it to share the view."
SHARE_UPLOAD = ("The page URL holds the configuration of the last run, but not its image: an upload cannot travel "
                "in a link (it opens the model's default image instead). Share the image file with the link.")
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
    sig = query_signature(qp.to_dict())
    if sig == st.session_state.get(P + "query_seen"):
        return
    st.session_state[P + "query_seen"] = sig
    if not any(k in qp for k in ("model", "image", "attack", "defense")):
        return
    tour_from_query(qp)
    problems: list[str] = []
    model = qp.get("model", DEFAULT_MODEL)
    if model not in visible_models(st.session_state.get(BYOM_KEY, [])):
        problems.append(f"unknown model {model!r}")
        model = DEFAULT_MODEL
    st.session_state[P + "model"] = model
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
    surgery_panel.from_query(qp, model, m)
    compare_panel.from_query(qp)
    layers_panel.from_query(qp)
    fragility_panel.from_query(qp, model)
    strength_panel.from_query(qp, model)
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
    if step in T.BY_KEY:
        st.session_state[P + "tour"] = {"step": step, "model": qp.get("tm", qp.get("model")),
                                        "view": (qp.get("model"), qp.get("attack"), qp.get("defense"))}
    else:
        st.session_state.pop(P + "tour", None)


def save_query_params(request: tuple) -> None:
    model, image_key, image_bytes, _, attack, ap, defense, dp, layer, method, k, seed = request
    drawing = canvas_input.token_of(image_key) if image_bytes is None else None
    params = {
        "model": model, "image": "upload" if image_bytes is not None else image_key,
        "attack": attack, "ap": params_text(dict(ap)), "defense": defense, "dp": params_text(dict(dp)),
        "layer": layer, "method": method, "k": f"{k:g}", "seed": str(seed),
    }
    if drawing is not None:                 # the drawing itself rides in the link, small (draw=)
        del params["image"]
        params["draw"] = drawing
    tour = st.session_state.get(P + "tour")
    if tour and tour["view"] == (model, attack, defense):   # still the step's view: the link keeps its step
        params["tour"] = tour["step"]
        if tour["model"] != model:
            params["tm"] = tour["model"]
    st.query_params.from_dict(params)
    st.session_state[P + "query_seen"] = query_signature(params)


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


# ----------------------------------------------------------------------------- setup widgets

def choose_image(model_name: str, num_classes: int, class_names: list[str]):
    """Gallery thumbnails, an upload or (28×28 models) a drawing; returns (image_key, image_bytes, label) or None."""
    entries = with_split_image(model_name, gallery_entries(model_name), st.session_state.get(key(model_name, "image")))
    sources = ["Example gallery", "Upload an image"]
    if canvas_input.applies(get_model(model_name)):
        sources.append(canvas_input.LABEL)
    if st.session_state.get(P + "source") not in (None, *sources):      # e.g. Draw, then a photo model
        st.session_state[P + "source"] = "Example gallery"
    source = st.radio("Image", sources, horizontal=True, key=init_state(P + "source", "Example gallery"))
    if source == canvas_input.LABEL:
        m = get_model(model_name)
        return canvas_input.source(model_name, st.session_state.get(key(model_name, "layer"), m.spec.default_layer),
                                   st.session_state.get(key(model_name, "method"), "conductance"))
    if source == "Example gallery":
        width = 72 if num_classes <= 10 else 92    # 52 px wrapped "Pullover" into "Pullove r"
        st.image([e["png"] for e in entries], caption=[e["label_name"] for e in entries], width=width)
        keys = [e["key"] for e in entries]
        by_key = {e["key"]: e for e in entries}
        first = get_model(model_name).spec.first_run.image
        default = first if first in by_key else keys[0]
        k = init_state(key(model_name, "image"), default)
        if st.session_state[k] not in by_key:
            st.session_state[k] = default
        chosen = st.selectbox("Example", keys, key=k,
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
    st.caption(f"**{attack}** — {unit.spec.summary}. {unit.access}, {unit.norm}.")
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
    if not out:
        st.caption("No parameters.")
    return out


def param_widget(model, defense: str, p, default):
    choices = None
    if p.name == "select_layers":   # only the layer sets this model has
        choices = [c for c in p.choices if c == "auto" or all(part in model.spec.layers for part in c.split("+"))]
    return param_input(p, default, key(model.name, "d", defense_group(defense), p.name), choices=choices)


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
    st.caption("Detectors: the share of the layer's neurons outside the range they take on benign training "
               "images; the share of the benign neighbours' votes against the model's prediction; minus the gap "
               "between the top two softmax scores. "
               f"Thresholds flag {first['false_alarm'] * 100:g}% of held-out benign images per detector "
               f"(calibrated on {first['calibration_digits']} images of the calib split). The vote and margin "
               "detectors count only when the abnormal-neuron share is also high (the gate). "
               f"The vote compares the conv1 maps of {vote_input} with those of benign training images. "
               f"Pocket rule: when few neurons are abnormal (share ≤ {first['small_level']:g}, a small "
               "perturbation such as DeepFool's) and the model's average prediction under small random-sign "
               "noise differs from its prediction, NIP is pointed at that smoothed class instead of the vote's. "
               "An attacker who knows all this can still win sometimes: pick the `nip-aware` attack to try it, "
               "or see the Benchmark page's defense-aware numbers.")


def show_results(request: tuple, expl) -> None:
    model_name = request[0]
    st.divider()
    compare_panel.section(request, expl)
    ref = expl.reference_class
    ref_name = expl.class_names[ref]
    label_text = f"true label {expl.label} ({expl.class_names[expl.label]})" if expl.label is not None else \
        "no true label (reference = benign prediction)"
    st.subheader("Benign · adversarial · defended")
    if DEFENSES[expl.defense].needs_labels:
        st.warning(ORACLE_LINE.format(defense=expl.defense))
    st.caption(f"{model_name} · attack {expl.attack} · defense {expl.defense} · layer {expl.layer} "
               f"({expl.method}, k = {expl.k:g}) · {label_text}; influence is measured toward class "
               f"{ref} ({ref_name}).")
    cols = st.columns(3)
    for v, col in zip(VARIANTS, cols):
        with col:
            c, name, p = expl.top(v, 1)[0]
            st.markdown(f"**{v}**")
            st.image(tensor_to_png_bytes(expl.images[v]), width=150)
            st.metric(f"{v} prediction", f"{name}")
            colour = "green" if c == ref else "red"
            st.markdown(f":{colour}[{p * 100:.1f}% confidence · {'matches' if c == ref else 'differs from'} "
                        f"class {ref}]")
            if v != "benign":
                st.plotly_chart(F.perturbation_figure(expl, v), key=P + f"fig.pert.{v}", width="stretch")
            # The bars print their values: a static chart, cheaper for every open tab to draw.
            st.plotly_chart(F.prediction_bars(expl, v), key=P + f"fig.top.{v}", width="stretch",
                            config={"staticPlot": True})

    if expl.decision:
        show_decision(expl)

    st.subheader("Neuron influence")
    quantity = st.radio("Show", ["influence", "activations"], horizontal=True,
                        key=init_state(P + "quantity", "influence"),
                        help="influence: Captum layer attribution toward the reference class; "
                             "activations: the layer's mean output per neuron")
    st.plotly_chart(F.influence_heatmaps(expl, quantity), key=P + "fig.heatmaps", width="stretch")
    st.plotly_chart(F.difference_heatmaps(expl, quantity), key=P + "fig.diff", width="stretch")
    st.plotly_chart(F.group_chart(expl, "activations"), key=P + "fig.groups", width="stretch")
    st.info(F.signature_verdict(expl.signature()))
    layers_panel.section(request, expl)

    st.subheader("Drill down: one neuron")
    # Off until asked for: four more charts that a class opening one link would each draw.
    if st.toggle("Show one neuron's activation maps and its profile across classes",
                 key=init_state(P + "drill", False)):
        show_neuron(request, expl)
    surgery_panel.section(request, expl)
    fragility_panel.section(request, expl)
    strength_panel.section(request, expl)
    secs = ", ".join(f"{k} {v:.2f} s" for k, v in expl.seconds.items())
    st.caption(f"Time: {secs}.")
    st.download_button("Download summary (JSON)", json.dumps(expl.summary(), indent=2, default=float),
                       file_name="nip_explanation.json", mime="application/json", key=P + "download")
    show_comparison(request, expl)


def show_neuron(request: tuple, expl) -> None:
    """One neuron: its activation map on the three inputs and its benign profile across classes."""
    model_name = request[0]
    ref = expl.reference_class
    n = len(expl.influence["benign"])
    groups = F.neuron_groups(n, expl.front, expl.tail, expl.dead)
    rank = {int(j): r for r, j in enumerate(expl.front)}
    order = [int(j) for j in expl.front] + [j for j in range(n) if j not in rank]
    nk = P + f"neuron.{model_name}.{expl.layer}"
    if nk in st.session_state and st.session_state[nk] not in order:
        del st.session_state[nk]
    neuron = st.selectbox("Neuron (front neurons first)", order, key=init_state(nk, order[0]),
                          format_func=lambda j: f"neuron {j} · {groups[j]}"
                          + (f" (front rank {rank[j] + 1})" if j in rank else ""))
    maps = neuron_maps(request, int(neuron))
    conv = is_conv_layer(model_name, expl.layer)
    st.caption("Conv layer: the channel's activation map, upsampled to the image." if conv else
               "Fully connected layer: no spatial layout, so the map is the input-gradient magnitude of the "
               "neuron's activation (where in the image it looks), normalised per image.")
    top = float(maps.max()) if float(maps.max()) > 0 else 1.0
    mcols = st.columns(3)
    for i, (v, col) in enumerate(zip(VARIANTS, mcols)):
        with col:
            st.plotly_chart(F.spatial_overlay(expl.images[v], maps[i], f"neuron {neuron} on the {v} input", zmax=top,
                                              value_label="activation<br>(layer output units)" if conv
                                              else "|∂a/∂x|<br>(normalised, 0–1)"),
                            key=P + f"fig.map.{v}", width="stretch")
    prof = get_profile(model_name, expl.layer, expl.method)
    classes = list(range(len(expl.class_names))) if len(expl.class_names) <= 20 else \
        sorted(set(prof.per_class) | {ref})[:30]
    st.plotly_chart(F.neuron_across_classes(prof, int(neuron), classes, expl.class_names, highlight=ref),
                    key=P + "fig.across", width="stretch")
    if len(expl.class_names) > 20:
        st.caption("ImageNet class profiles exist only for classes already computed over the few shipped photos.")


def show_comparison(request: tuple, expl) -> None:
    """The request's adversarial through every defense (on request)."""
    model_name = request[0]
    ref = expl.reference_class
    ref_name = expl.class_names[ref]
    st.subheader("Compare at a glance: every defense on this adversarial")
    big = len(expl.class_names) > 20
    # Off until asked for: it runs every defense again (a class opening one link at once pays for it 20 times).
    if not st.toggle("Run every defense on this adversarial" + (" (about a minute on CPU for EfficientNet)" if big else ""),
                     key=init_state(P + f"compare.{model_name}", False)):
        return
    nip_params = tuple(sorted(dict(request[7]).items()))
    rows = run_with_progress("Comparing defenses", defense_comparison, request, nip_params)
    done = [r for r in rows if "error" not in r]
    for r in rows:
        if "error" in r:
            st.warning(f"`{r['defense']}` could not run: {r['error']}")
    st.plotly_chart(F.defense_comparison(done, f"{ref} ({ref_name})"), key=P + "fig.compare", width="stretch")
    st.dataframe([{"defense": r["defense"], "deployable": r["deployable"],
                   "prediction": f"{r['prediction']}: {r['prediction_name']}",
                   "confidence (%)": round(100 * r["prediction_confidence"], 1),
                   f"confidence of class {ref} (%)": round(100 * r["reference_confidence"], 1),
                   "restored": r["correct"], "L∞ change": round(r["linf_change"], 4),
                   "seconds": round(r["seconds"], 3)} for r in done], hide_index=True, width="stretch")
    if expl.label is None:
        st.caption("nip-oracle is left out: this image has no known true label.")


# ----------------------------------------------------------------------------- page

def main() -> None:
    st.title("Explore: fight perturbations with perturbations")
    load_query_params()
    if P + "query_warning" in st.session_state:
        st.warning(st.session_state.pop(P + "query_warning"))
    claim_slot = show_tour_step()
    with st.sidebar:
        st.markdown("### About the defense modes")
        st.markdown("\n".join(f"- `{k}`: {v}" for k, v in MODE_NOTES.items()))
        st.info(label_free_note())
        share_slot = st.empty()

    byom_panel()
    picked = model_picker(P + "model", DEFAULT_MODEL)
    if picked is None:
        return
    model_name, model = picked

    top = st.columns([3, 2])
    with top[0]:
        picked = choose_image(model_name, model.num_classes, model.class_names)
    with top[1]:
        attacks = sorted(a for a in ATTACKS if ATTACKS[a].applies_to(model))
        ak = key(model_name, "attack")
        if st.session_state.get(ak) not in (None, *attacks):  # e.g. a link's nip-aware on an ImageNet model
            st.session_state[ak] = model.spec.first_run.attack
        attack = st.selectbox("Attack", attacks, key=init_state(ak, model.spec.first_run.attack),
                              format_func=lambda a: f"{a} — {ATTACKS[a].spec.summary}")
        defense = st.selectbox("Defense", list(DEFENSES),
                               key=init_state(key(model_name, "defense"), model.spec.first_run.defense),
                               format_func=lambda d: d + ("" if DEFENSES[d].deployable else " (NOT deployable)"))
        est = expected_attack_seconds(model_name, attack, ATTACKS[attack].params_for(model))
        if est is not None and est >= SLOW_ATTACK_SECONDS:
            st.caption(f"Slow: with its default settings `{attack}` may take up to about {est:.0f} s for one image "
                       "here (scaled from the bench on a 2-core CPU, docs/bench.json). Fewer iterations make it "
                       "faster.")
        if attack == "nip-aware":
            st.caption("`nip-aware` knows the label-free `nip`: it fools the model and nip's neighbour vote at "
                       "once (through the binarisation, and trying up to 3 wrong classes). Pair it with the `nip` "
                       f"defense: {aware_note()}, and loses the rest.")
        note = MODE_NOTES.get(defense, DEFENSES[defense].spec.summary)
        if DEFENSES[defense].needs_labels:
            st.warning(ORACLE_LINE.format(defense=defense))
            st.button("Try the deployable `nip` (no true label)", key=P + "to_nip", on_click=switch_to_nip,
                      args=(model_name,))
        else:
            (st.warning if not DEFENSES[defense].deployable else st.caption)(f"`{defense}`: {note}.")
        if is_label_free(defense) and not has_calibration(model_name):
            st.info(calibration_hint(model_name))

    with st.form(P + "form"):
        fc = st.columns(3)
        with fc[0]:
            st.markdown("**Attack parameters**")
            attack_params = attack_inputs(model, attack)
        with fc[1]:
            st.markdown(f"**Defense parameters** ({defense})")
            defense_params = defense_inputs(model, defense)
        with fc[2]:
            st.markdown("**Influence** (measured here; NIP uses the same layer, method and k)")
            layer = st.selectbox("layer", list(model.spec.layers),
                                 key=init_state(key(model_name, "layer"), model.spec.default_layer))
            method = st.selectbox("method", list(METHODS), key=init_state(key(model_name, "method"), "conductance"))
            k = st.slider("k (front/tail share of live neurons)", 0.05, 0.5, step=0.05,
                          key=init_state(key(model_name, "k"), 0.2))
            seed = int(st.number_input("seed", 0, 2**31 - 1, step=1, key=init_state(key(model_name, "seed"), 0)))
        submitted = st.form_submit_button("Run", type="primary")

    autorun = st.session_state.pop(P + "autorun", False)
    compute = (submitted or autorun) and picked is not None
    # A run that computes holds one queue slot until its view is drawn (first come, first served).
    with page_turn(active=compute):
        if compute:
            image_key, image_bytes, label = picked
            try:
                request = build_request(model_name, image_key, image_bytes, label, attack, attack_params, defense,
                                        defense_params, layer, method, float(k), seed)
                run_with_progress("Running attack, defense and influence", explanation, *request)
                st.session_state[P + "request"] = request
                save_query_params(request)
            except Exception as exc:
                show_error(exc, "explain")
                return
        elif submitted:
            st.error("Choose an example or upload a valid image first.")

        request = st.session_state.get(P + "request")
        share_slot.caption(SHARE_UPLOAD if request is not None and request[2] is not None else SHARE_LINK)
        if request is None:
            st.info("Pick an image, an attack and a defense, then press **Run**.")
            return
        with guarded("showing results"):
            expl = explanation(*request)
            tour = st.session_state.get(P + "tour")
            if claim_slot is not None and tour and tour["view"] == (request[0], request[4], request[6]):
                claim_slot.markdown(T.step_claim(expl))
            show_results(request, expl)


main()
