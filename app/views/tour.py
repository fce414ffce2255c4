"""Tour: NIP's story in a few one-click Explore presets, each a link a teacher can share."""
from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from app import tour as T
from app.progress import run_with_progress
from app.widgets import guarded, init_state
from nip_core.models import MODELS

P = "tour."


def base_url() -> str:
    """The app's address as the browser sees it (for links to copy), or "" when unknown."""
    try:
        url = str(st.context.url or "")
    except Exception:   # no browser context (tests)
        return ""
    return url.split("?", 1)[0].rsplit("/", 1)[0] if url.startswith("http") else ""


def main() -> None:
    st.title("Guided tour")
    st.markdown(f"A tour in {len(T.STEPS)} stops through *Fight Perturbations with Perturbations*: what a model's "
                "neurons do, how an attack bends them, how NIP bends them back, where the label-free defense stands, "
                "whether the class choice or the neurons do the work, and why photos are harder. Each step opens "
                "Explore with its settings and runs it; the link under each step opens the same view for anyone (a "
                "class can open it at once).")
    models = T.tour_models()
    model = st.selectbox("Model for the tour", models, key=init_state(P + "model", models[0]),
                         format_func=lambda m: f"{m} — {MODELS[m].summary}")
    with guarded("the tour"):
        run_with_progress("Choosing the example images", _prepare, model)
        base = base_url()
        for i, step in enumerate(T.STEPS, 1):
            with st.container(border=True):
                st.markdown(f"**Step {i}. {step.title}**")
                st.markdown(step.sentence)
                reason = T.why_not(step, model)
                if reason is not None:
                    st.caption(f"Not on this model: {reason}")
                    continue
                q = T.step_query(step, model)
                target = q["model"]
                pinned = f"{q['pin_model']} pinned beside " if step.pair else ""
                st.caption(f"{pinned}{target} · image {q['image']} · attack {step.attack} · defense {step.defense}")
                cols = st.columns([1, 4])
                if cols[0].button(f"Open step {i}", key=P + f"open.{step.key}", type="primary"):
                    st.switch_page(T.EXPLORE_PAGE, query_params=q)
                link = f"{base}/?{urlencode(q)}" if base else T.step_link(step, model)
                cols[1].code(link, language=None, wrap_lines=True)


def _prepare(model: str, _progress=None) -> None:
    """The steps' example images (cached; the first visitor of a model waits for them)."""
    steps = [s for s in T.STEPS if T.why_not(s, model) is None]
    for i, step in enumerate(steps):
        if _progress:
            _progress(i / len(steps), f"example image for step {step.title!r}")
        T.step_image(step, T.step_model(step, model))


main()
