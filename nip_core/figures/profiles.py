"""The Profiles view: a neuron across classes, a layer's influence profile, a defense comparison.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from nip_core.figures.common import DIVERGING, _DEAD_SCALE, _np, _symmetric_limit, _class_label, _short, _grid_layout


def neuron_across_classes(profile, neuron: int, classes: Sequence[int] | None = None,
                          class_names: Sequence[str] | None = None, highlight: int | None = None) -> go.Figure:
    """Benign profile influence of one neuron toward each class (bars)."""
    classes = sorted(profile.per_class) if classes is None else list(classes)
    vals = [float(profile.class_scores(c)[neuron]) for c in classes]
    names = class_names or []
    labels = [_short(_class_label(names, c), 22) for c in classes]
    colours = ["#16a34a" if c == highlight else ("#2563eb" if v >= 0 else "#dc2626") for c, v in zip(classes, vals)]
    fig = go.Figure(go.Bar(x=labels, y=vals, marker_color=colours,
                           hovertemplate="class %{x}<br>influence %{y:.4g}<extra></extra>"))
    dead = bool(profile.dead[neuron])
    fig.update_layout(
        title=dict(text=f"Neuron {neuron} of {profile.layer}: mean benign influence per class"
                        + (" (dead neuron)" if dead else ""), x=0.0),
        xaxis=dict(title="class (green = reference class)", type="category"),
        yaxis_title=f"mean influence ({profile.method}, logit units)",
        margin=dict(l=50, r=20, t=60, b=60), height=340,
    )
    return fig


def profile_heatmap(profile, classes: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                    include_global: bool = True) -> go.Figure:
    """Classes × neurons benign influence profile (plus the global row); dead neurons grey."""
    classes = sorted(profile.per_class) if classes is None else list(classes)
    names = class_names or []
    rows = [(_short(_class_label(names, c), 22), _np(profile.class_scores(c))) for c in classes]
    if include_global:
        rows.append(("global", _np(profile.global_scores)))
    z = np.stack([r[1] for r in rows])
    dead = _np(profile.dead).astype(bool)
    z[:, dead] = np.nan
    lim = _symmetric_limit(z)
    ylabels = [r[0] for r in rows]
    fig = go.Figure(go.Heatmap(
        z=z, y=ylabels, x=list(range(z.shape[1])), colorscale=DIVERGING, zmin=-lim, zmax=lim, zmid=0,
        colorbar=dict(title=dict(text=f"mean influence<br>({profile.method}, logit units)", side="right")),
        hovertemplate="class %{y}<br>neuron %{x}<br>influence %{z:.4g}<extra></extra>",
    ))
    if dead.any():
        dz = np.where(np.broadcast_to(dead, z.shape), 1.0, np.nan)
        fig.add_trace(go.Heatmap(z=dz, y=ylabels, x=list(range(z.shape[1])), colorscale=_DEAD_SCALE, showscale=False,
                                 hovertemplate="neuron %{x}: dead (never active on the references)<extra></extra>"))
    return _grid_layout(fig, f"Benign influence profile — {profile.model_name}, layer {profile.layer} "
                             f"({profile.n_neurons} neurons, {int(dead.sum())} dead in grey)",
                        "neuron index", "class profile", height=max(300, 40 + 28 * len(rows)), bottom=40)


def defense_comparison(rows: Sequence[dict], reference_name: str = "reference") -> go.Figure:
    """Confidence of the reference class after each defense (bars; green = predicted correctly).

    Args:
        rows: dicts with ``defense``, ``reference_confidence`` (0–1), ``correct`` and ``prediction_name``.
    """
    fig = go.Figure(go.Bar(
        x=[r["defense"] for r in rows], y=[100 * r["reference_confidence"] for r in rows],
        marker_color=["#16a34a" if r["correct"] else "#dc2626" for r in rows],
        text=[_short(str(r["prediction_name"]), 14) for r in rows], textposition="outside",
        hovertemplate="%{x}<br>confidence of reference class %{y:.1f}%<br>predicted: %{text}<extra></extra>",
    ))
    fig.update_layout(
        title=dict(text=f"Same adversarial through each defense: confidence of class {_short(reference_name, 24)} "
                        "(green = restored; label = predicted class)", x=0.0, font=dict(size=13)),
        xaxis_title="defense", yaxis=dict(title="confidence of reference class (%)", range=[0, 115]),
        margin=dict(l=50, r=20, t=60, b=40), height=340,
    )
    return fig
