"""Explore's fragility panel: how small an attack flips this image, with and without each defense
(``nip_core.analyses.fragility``; issue 20 §4).

Opened on run under a run, for the run's image (an upload or a gallery example). A button
searches, per chosen defense, the smallest PGD budget at which the defended prediction is wrong
(``app.compute.fragility_check``, with a progress bar), then shows the engine's figure, the flip-ε
table with each defense's percentile among the model's report split (the shipped distribution), and
the downloads the CLI writes (``fragility.json``, the self-contained ``fragility.html``). The panel
is a fragment: choosing defenses re-runs only the panel, and a result already computed is read back
from the cache. For gallery images the chosen defenses ride in the share link (``fragility=none,jpeg``),
which reopens the panel with the result.
"""
from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from app.compute import fragility_check
from app.loaders import get_model
from app.progress import run_with_progress
from app import links
from app.views.panel import link_value
from app.widgets import guarded, init_state, show_error
from nip_core.analyses.strength import DEFAULT_N
from nip_core import figures as F
from nip_core.run import Run
from nip_core.attacks import ATTACKS
from nip_core.defenses import DEFENSES
from nip_core.errors import InputError
from nip_core.analyses.fragility import grid_for, grid_text
from nip_core.reports.fragility import fragility_report

P = PREFIX = "explore.fragility."
LINK_KEY = "fragility"
LINK_KEYS = (LINK_KEY,)
LINK_ERROR = P + "link_error"
PENDING = P + "pending"              # the link's defenses, until the panel has its options
BASELINE = ("none", "jpeg")          # always offered first: the shipped distributions cover these two


FLIP_EPS_DIFFERS = (f"Why the strength slider's \"flips at ε\" can differ: it is the first of its {DEFAULT_N + 1} "
                    "strengths (0 to twice the run's ε) that flips, with this run's attack; here the budget is "
                    "searched in 1/255 steps with this panel's attack, so the two agree only to the slider's "
                    "spacing.")


def key(model_name: str, *parts: str) -> str:
    return P + ".".join((model_name,) + parts)


def open_key(model_name: str) -> str:
    return key(model_name, "open")


def defaults(run_defense: str) -> list[str]:
    """No defense, JPEG, and the run's defense when it is deployable."""
    extra = [run_defense] if DEFENSES[run_defense].deployable and run_defense not in BASELINE else []
    return [*BASELINE, *extra]


# ----------------------------------------------------------------------------- the share link

def from_link(qp, model_name: str, model) -> None:
    """A link's ``fragility=none,jpeg`` opens the panel with those defenses and shows their result
    (the view's seed and image); a link without it closes the panel."""
    text = link_value(qp, LINK_KEY, open_key(model_name), (LINK_ERROR, PENDING))
    if text is None:
        return
    names = [n.strip() for n in text.split(",") if n.strip()]
    st.session_state[PENDING] = names


def write_link(run: Run, chosen: list[str]) -> None:
    """Put the chosen defenses in the page's link (gallery images only: an upload's link cannot
    reopen the image)."""
    if run.image_bytes is not None:
        return
    links.update({LINK_KEY: ",".join(chosen)})


def drop_link() -> None:
    links.drop(LINK_KEYS)


def share_link() -> str | None:
    """The page's address with its query (for the report); None when the browser did not say."""
    base = st.context.url
    if not base:
        return None
    from urllib.parse import urlencode
    return f"{base}?{urlencode(st.query_params.to_dict())}"


# ----------------------------------------------------------------------------- the panel

def section(run: Run, expl) -> None:
    """The panel's heading and its switch (off until asked for: the first view stays light)."""
    model_name = run.model
    if not st.toggle("How fragile is this image?", key=init_state(open_key(model_name), False),
                     help="Find the smallest attack that flips this image, with and without each defense."):
        drop_link()
        return
    panel(run, expl)


@st.fragment
def panel(run: Run, expl) -> None:
    """The defenses to try, the button, and the result once asked for; re-runs alone on a change."""
    with guarded("fragility"):      # a fragment re-run has no page around it to catch errors
        _panel(run, expl)


def _panel(run: Run, expl) -> None:
    model_name = run.model
    model = get_model(model_name)
    attack_params = ATTACKS["pgd"].params_for(model)
    grid = grid_for(model).to_json()
    label = true_label(run, model)
    options = [d for d in DEFENSES if label is not None or not DEFENSES[d].needs_labels]
    dk = key(model_name, "defenses", expl.defense)
    pending = st.session_state.pop(PENDING, None)
    if pending is not None:
        bad = [n for n in pending if n not in options]
        if bad:
            st.session_state[LINK_ERROR] = (
                f"The link's fragility defenses could not all be used: {', '.join(map(repr, bad))} "
                + ("is" if len(bad) == 1 else "are") + " not a defense that can run on this image"
                + (" (one needing the true label, and this image has none)" if label is None else "") + ".")
        good = [n for n in pending if n in options]
        st.session_state[dk] = good or defaults(expl.defense)
        st.session_state[key(model_name, "asked")] = "link"
    if LINK_ERROR in st.session_state:
        show_error(InputError(st.session_state.pop(LINK_ERROR)), "fragility link")
    st.caption(
        "For each defense, the smallest PGD budget ε that makes the defended prediction wrong.",
        help=f"PGD at this model's defaults: {attack_params['max_iter']} steps of "
             f"{attack_params['eps_step'] / attack_params['eps']:.2g} × ε; it attacks the model, not the defense. "
             "Wrong: the defended prediction differs from "
             + (f"class {model.class_names[label]} (the true class)" if label is not None else
                "the model's prediction on the image") + f". Budgets tried: {grid_text(grid)}. Seed {run.seed}, as "
             "the run above.")
    cols = st.columns([3, 1.3])
    chosen = cols[0].multiselect(
        "Defenses", options, key=init_state(dk, defaults(expl.defense)),
        format_func=lambda d: d + ("" if DEFENSES[d].deployable else " (NOT deployable)"),
        help="Default: no defense, JPEG and the run's defense (when deployable). The run's defense keeps the "
             "run's settings; the others take their defaults.")
    cols[1].markdown("&nbsp;")      # the button level with the box
    pressed = cols[1].button("Find the smallest attack that flips it", key=key(model_name, "go"), type="primary",
                             disabled=not chosen, width="stretch")
    if not chosen:
        st.info("Choose at least one defense.")
        drop_link()
        return
    args = check_args(run, label, chosen)
    ak = key(model_name, "asked")
    if pressed or st.session_state.get(ak) == "link":
        st.session_state[ak] = args
    if st.session_state.get(ak) != args:
        st.caption("Press the button to search: usually a few seconds (NIP defenses on photos take longer); a "
                   "progress bar shows how far it is.")
        drop_link()
        return
    try:
        frag = run_with_progress("How fragile is this image?", fragility_check, *args)
    except Exception as exc:        # a defense that refuses: one message, the run above stays
        show_error(exc, "fragility")
        drop_link()
        return
    write_link(run, chosen)
    show_result(run, frag)


def true_label(run: Run, model) -> int | None:
    """The image's true class: an upload's as the user gave it; a gallery example's on a built-in
    model (the gallery's labels are not a user's model's classes)."""
    if run.image_bytes is not None or getattr(model.spec, "gallery_labels", True):
        return run.label
    return None


def check_args(run: Run, label: int | None, chosen: list[str]) -> tuple:
    """``fragility_check``'s plain-value arguments: the view's image, ``label`` and seed; the run's
    defense with the run's settings (those that differ from its defaults), the others with their
    defaults."""
    model_name, image_key, image_bytes = run.model, run.image_key, run.image_bytes
    run_defense, run_params = run.defense, dict(run.defense_params)
    model = get_model(model_name)
    units = []
    for d in chosen:
        p: dict[str, Any] = {}
        if d == run_defense:
            base = DEFENSES[d].params_for(model)
            if base.get("layer") == "default":     # NIP's "default" layer is the model's default layer
                base["layer"] = model.spec.default_layer
            p = {n: v for n, v in run_params.items() if base.get(n) != v}
        units.append((d, tuple(sorted(p.items()))))
    return model_name, image_key, image_bytes, label, tuple(units), int(run.seed)


def show_result(run: Run, frag) -> None:
    """The verdict (or the one message for an image the model already gets wrong), the figure, the
    table with percentiles, and the downloads."""
    r = frag.result
    if r["status"] == "misclassified":     # one message, no search, nothing to draw
        st.warning(r["message"][:1].upper() + r["message"][1:])
        return
    st.plotly_chart(F.fragility_figure(r, frag.image), key=P + "fig", width="stretch")
    note = r.get("distribution", {}).get("note", "")
    st.table(pd.DataFrame(table_rows(r, note)).set_index("defense"))
    dist = r.get("distribution", {})
    if dist.get("n_images"):
        st.caption(f"Percentile: {note} (the shipped {dist['file']}, PGD at the same settings). Flip ε is the "
                   "smallest budget found: budgets between two coarse points that both held are not tried, so "
                   "where a larger attack fails while a smaller one holds, a smaller flip ε may exist.")
    st.caption(FLIP_EPS_DIFFERS)
    if not dist.get("n_images"):
        st.info(f"No percentiles: {note}.")
    image_name = (run.image_key.removeprefix("upload:") if run.image_bytes is not None else run.image_key)
    body = json.dumps(r | {"image": image_name}, indent=2) + "\n"
    settings = {"image": image_name}
    link = share_link() if run.image_bytes is None else None
    if link:
        settings["share link"] = link
    d = st.columns([1, 1, 3])
    d[0].download_button("fragility.json", body, file_name="fragility.json", mime="application/json",
                         key=P + "json", on_click="ignore", icon=":material/download:")
    # The report carries plotly.js inline (a few MB): made only when asked for.
    d[1].download_button("fragility.html (report)", lambda: fragility_report(frag, settings),
                         file_name="fragility.html", mime="text/html", key=P + "html", on_click="ignore",
                         icon=":material/download:",
                         help="One self-contained page (it opens offline): the verdict, this figure, the images, "
                              "the numbers and the settings" + (", and this view's share link." if link else "."))


def table_rows(r: dict, note: str) -> list[dict[str, str]]:
    """One row per defense: its flip ε, what happened, the defended prediction there, its percentile."""
    rows = []
    for d, c in r["defenses"].items():
        if c["status"] == "held to the maximum":
            eps = f"none up to {r['grid']['max_eps']:.4g}"
        else:
            eps = f"{c['flip_eps']:.4f} ({c['flip_eps_255']:g}/255)"
        pct = c.get("percentile")
        pct_text = (f"{pct:.0f}" if pct is not None else
                    "—" if c.get("percentile_note") in (None, note) else c["percentile_note"])
        rows.append({"defense": d, "flip ε": eps, "what happened": c["status"],
                     "defended prediction at that ε": c["prediction_name"], "percentile (low = fragile)": pct_text})
    return rows
