"""What every Explore panel is: one module that satisfies :class:`Panel`.

Explore reads a link's settings into each panel (``from_link``) and draws each panel's section under
the run, in the order of its ``PANELS`` list (``app/views/explore.py``); a new panel is one new
module plus one line there. Panels keep their widget state under their own ``PREFIX`` and write their
part of the share link (``LINK_KEYS``) through :mod:`app.links`.
"""
from __future__ import annotations

from typing import Any, Protocol

from nip_core.run import Run


class Panel(Protocol):
    PREFIX: str                      # session-state prefix of the panel's widgets
    LINK_KEYS: tuple[str, ...]       # the query parameters the panel reads and writes

    def from_link(self, qp: Any, model_name: str, model: Any) -> None:
        """Copy a link's settings into the panel's state (a link without them closes the panel)."""

    def section(self, run: Run, expl: Any) -> None:
        """The panel's heading, its switch, and (when open) its content, under the run."""


def link_value(qp: Any, link_key: str, open_state: str, transient: tuple[str, ...] = ()) -> str | None:
    """The panel's value in a link, and the panel opened (or closed when the link has none): what every
    panel's ``from_link`` starts with. ``transient``: state keys of the last link, dropped first."""
    import streamlit as st

    for k in transient:
        st.session_state.pop(k, None)
    st.session_state[open_state] = link_key in qp
    return qp[link_key] if link_key in qp else None


_ADDED: list = []


def add_panel(panel: Panel) -> None:
    """A panel added from outside the app's own list (a plug-in, a notebook's experiment, a test): Explore
    draws it after its built-in panels, in every session of this server process."""
    if not all(hasattr(panel, name) for name in ("PREFIX", "LINK_KEYS", "from_link", "section")):
        raise TypeError("a panel needs PREFIX, LINK_KEYS, from_link(qp, model_name, model) and section(run, expl)")
    if panel not in _ADDED:
        _ADDED.append(panel)


def added_panels() -> tuple:
    return tuple(_ADDED)
