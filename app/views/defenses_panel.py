"""Explore's "every defense on this adversarial": the run's adversarial through each baseline defense, the
control and NIP's modes (off until asked for: it runs every defense again)."""
from __future__ import annotations

import streamlit as st

from app.compute import defense_comparison
from app.progress import run_with_progress
from app.widgets import init_state
from nip_core import figures as F
from nip_core.run import Run

PREFIX = "explore.compare."
LINK_KEYS: tuple[str, ...] = ()


def from_link(qp, model_name: str, model) -> None:
    """The comparison has no link parameters."""


def section(run: Run, expl) -> None:
    ref = expl.reference_class
    big = len(expl.class_names) > 20
    if not st.toggle("Every defense on this adversarial", key=init_state(PREFIX + run.model, False),
                     help="Runs the adversarial through every baseline defense, the random-sign control and NIP's "
                          "modes" + (" (about a minute on CPU for EfficientNet)." if big else ".")):
        return
    rows = run_with_progress("Comparing defenses", defense_comparison, run, run.defense_params)
    done = [r for r in rows if "error" not in r]
    for r in rows:
        if "error" in r:
            st.warning(f"`{r['defense']}` could not run: {r['error']}")
    st.plotly_chart(F.defense_comparison(done, f"{ref} ({expl.class_names[ref]})"), key="explore.fig.compare",
                    width="stretch")
    st.dataframe([{"defense": r["defense"], "deployable": r["deployable"],
                   "prediction": f"{r['prediction']}: {r['prediction_name']}",
                   "confidence (%)": round(100 * r["prediction_confidence"], 1),
                   f"confidence of class {ref} (%)": round(100 * r["reference_confidence"], 1),
                   "restored": r["correct"], "L∞ change": round(r["linf_change"], 4),
                   "seconds": round(r["seconds"], 3)} for r in done], hide_index=True, width="stretch")
    if expl.label is None:
        st.caption("nip-oracle is left out: this image has no known true label.")
