"""The page's share link: the one owner of Explore's query parameters and of the record of the link
Explore last read or wrote.

Explore re-reads its link only when the query differs from the one it last saw (a tour step, a pasted
link); every page part that writes to the link goes through here, so that record stays true.
"""
from __future__ import annotations

from typing import Iterable

import streamlit as st

from app.widgets import query_signature

SEEN = "explore.query_seen"          # the signature of the link Explore last read or wrote


def is_new(params: dict[str, str]) -> bool:
    """Whether ``params`` is another link than the one last read or written (and remember it)."""
    sig = query_signature(params)
    if sig == st.session_state.get(SEEN):
        return False
    st.session_state[SEEN] = sig
    return True


def mark_seen() -> None:
    """The page's current query is one Explore wrote: not a new link to read."""
    st.session_state[SEEN] = query_signature(st.query_params.to_dict())


def replace(params: dict[str, str]) -> None:
    """The link becomes exactly ``params``."""
    st.query_params.from_dict(params)
    mark_seen()


def update(params: dict[str, str]) -> None:
    """Set ``params`` in the link (the rest stays); nothing happens when they are there already."""
    if all(st.query_params.get(k) == v for k, v in params.items()):
        return
    st.query_params.update(params)
    mark_seen()


def drop(keys: Iterable[str]) -> None:
    """Take ``keys`` out of the link (those present)."""
    present = [k for k in keys if k in st.query_params]
    if not present:
        return
    for k in present:
        st.query_params.pop(k, None)
    mark_seen()


def forget() -> None:
    """The next run reads the page's link again (e.g. a pasted link equal to the last one)."""
    st.session_state.pop(SEEN, None)
