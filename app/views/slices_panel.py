"""Benchmark's slices: any table faceted by true class, and the images behind one (attack, defense)
row as thumbnails, each opening in Explore as its shard ran it (``nip_core.evaluation.slices``; issue 21).

Opened on request under a result. The panel is a fragment: choosing inputs, a row, a filter or a
page re-runs only the panel, and nothing is computed (the records are in the result file; the
thumbnails are the shipped split images, ``app.loaders.split_thumbnails``).
"""
from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from app.loaders import class_names_of, split_thumbnails
from app.widgets import guarded, init_state
from nip_core.evaluation import slices as S
from nip_core import figures as F
from nip_core.figures import bare_names

P = "benchmark.slices."
PAGE_SIZE = 40
COLUMNS = 8
FILTERS = {"all": "all", "wrong": "wrong only", "right": "right only"}


def section(result: dict, where: str) -> None:
    """The panel's heading and its switch (off until asked for); ``where`` keys its widgets."""
    st.markdown("**Slice by true class, and the images behind a number**")
    if not st.toggle("Facet by true class and list a row's images (each opens in Explore)",
                     key=init_state(P + where + ".open", False)):
        return
    if not S.has_per_image(result):
        st.info(S.NO_RECORDS[0].upper() + S.NO_RECORDS[1:] + ".")
        return
    panel(result, P + where + ".")


@st.fragment
def panel(result: dict, k: str) -> None:
    with guarded("slicing the result"):
        names = class_names_of(result["model"])
        facet(result, k, names)
        images(result, k, names)


def facet(result: dict, k: str, names: list[str] | None) -> None:
    """Per-class accuracy of every defense on one set of inputs, as a heatmap and a table."""
    options = S.facets(result)
    short = dict(zip(options, bare_names(options, 40)))
    inputs = st.selectbox("Facet by true class: inputs", options, key=init_state(k + "inputs", options[0]),
                          format_func=short.get)
    table = S.per_class_accuracy(result, inputs)
    st.plotly_chart(F.per_class_figure(table, names), key=k + "fig", width="stretch")
    cols = [S.class_label(c, names) for c in table["classes"]]
    rows = [{"defense": d} | dict(zip(cols, acc)) for d, acc in zip(table["defenses"], table["accuracy"])]
    st.dataframe(rows, hide_index=True, width="stretch", key=k + "table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in cols})
    repeats = f" × {table['repeats']} attacks" if table["repeats"] > 1 else ""
    st.caption("Images per true class: " + ", ".join(f"{c} {n}" for c, n in zip(cols, table["n"]))
               + f" (sum {sum(table['n'])} of {result['n_images']}){repeats}. A class with few images has a wide "
               "interval: read its cell as a count.")


def images(result: dict, k: str, names: list[str] | None) -> None:
    """The images of one (attack, defense) row, 40 to a page, each with an "open in Explore" link."""
    st.markdown("**The images behind a row**")
    attacks, defenses = S.attacks(result), S.defenses(result)
    c = st.columns([2, 2, 2])
    short = dict(zip(defenses, bare_names(defenses, 40)))
    attack = c[0].selectbox("Attack", attacks, key=init_state(k + "attack", attacks[0]))
    defense = c[1].selectbox("Defense", defenses, key=init_state(k + "defense", defenses[-1]), format_func=short.get)
    which = c[2].radio("Show", list(FILTERS), format_func=FILTERS.get, horizontal=True,
                       key=init_state(k + "filter", "all"))
    listed = [im for im in S.row_images(result, attack, defense)
              if which == "all" or im["correct"] == (which == "right")]
    wrong = sum(not im["correct"] for im in S.row_images(result, attack, defense))
    if not listed:
        st.info(f"No {FILTERS[which].split()[0]} images in this row ({wrong} of {result['n_images']} wrong).")
        return
    pages = (len(listed) + PAGE_SIZE - 1) // PAGE_SIZE
    pk = init_state(k + "page", 1)
    if st.session_state[pk] > pages:
        st.session_state[pk] = 1
    page = int(st.number_input(f"Page (of {pages})", 1, pages, step=1, key=pk))
    shown = listed[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
    st.caption(f"{len(listed)} images ({wrong} of {result['n_images']} wrong after `{short[defense]}`); "
               f"showing {(page - 1) * PAGE_SIZE + 1}–{(page - 1) * PAGE_SIZE + len(shown)}. Per image: its index "
               "in the split, true class, the adversarial's prediction with no defense, and after the defense.")
    if (result.get("data") or {}).get("source", "heldout") != "heldout":
        st.info("This result was measured on uploaded data: its images are not kept, so they cannot be shown or "
                "opened in Explore; the per-class table above still applies.")
        return
    pngs = split_thumbnails(S.images_owner(result), S.split_name(result))
    try:
        S.explore_link(result, attack, defense, shown[0]["position"])
        linked = True
    except Exception as exc:  # noqa: BLE001 - the thumbnails still show, without links
        st.caption(f"No Explore links for this row: {exc}")
        linked = False
    for lo in range(0, len(shown), COLUMNS):
        for col, im in zip(st.columns(COLUMNS), shown[lo:lo + COLUMNS]):
            with col:
                st.image(pngs[im["index"]], width=56)
                mark = ":green[right]" if im["correct"] else ":red[wrong]"
                st.markdown(f"#{im['index']} · true {S.class_label(im['label'], names)}  \n"
                            f"adv {S.class_label(im['adv_pred'], names)} → {S.class_label(im['pred'], names)} "
                            f"{mark}")
                if linked:   # a new tab: the Benchmark's file, facet and row stay as they are here
                    q = urlencode(S.explore_link(result, attack, defense, im["position"]))
                    st.markdown(f"[open in Explore ↗](./?{q})", help="Opens in a new tab.")
