"""NIP Explorer — Streamlit entry point: page setup and navigation only.

Run from the repository root:
    python -m app.serve --server.fileWatcherType=none      (make run: the engine warms at launch)
    streamlit run app/streamlit_app.py --server.fileWatcherType=none
"""
from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/streamlit_app.py` puts app/ (not the repo root) on sys.path.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

# Not "pages/": with that name Streamlit falls back to its legacy directory-based navigation
# whenever a page URL (e.g. a shared /explore?... link) is the first request the server sees.
PAGES = Path(__file__).resolve().parent / "views"

from app import warmup  # noqa: E402

warmup.want(st.query_params.get("model"))   # the launch preload loads this link's model next
warmup.wait_for_engine()   # python -m app.serve imports the engine at launch: not twice, not in two threads
from app.progress import quiet_running_indicator  # noqa: E402
from app.runqueue import ACTIVITY, configure_torch  # noqa: E402

configure_torch()

st.set_page_config(page_title="NIP Explorer", page_icon=":material/shield:", layout="wide")
# Once per server process, in the background: load the models, galleries and profiles every session
# shares and run each model's default view, the model of this first link first. Never waited for.
warmup.start(first=st.query_params.get("model"))
quiet_running_indicator()
page = st.navigation([
    st.Page(PAGES / "explore.py", title="Explore", icon=":material/search:", default=True),  # the default page is served at /
    st.Page(PAGES / "tour.py", title="Tour", icon=":material/school:", url_path="tour"),
    st.Page(PAGES / "benchmark.py", title="Benchmark", icon=":material/table_chart:", url_path="benchmark"),
    st.Page(PAGES / "profiles.py", title="Profiles", icon=":material/hub:", url_path="profiles"),
    st.Page(PAGES / "method.py", title="Method", icon=":material/menu_book:", url_path="method"),
])
with ACTIVITY.page_run():   # the warm-up waits while visitors' pages run
    page.run()
