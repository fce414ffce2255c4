"""Pin and compare: two runs of one image side by side.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nip_core.figures.common import VARIANTS, DIVERGING, _DEAD_SCALE, _np, grid_shape, to_grid, neuron_groups, _hover_grid, _symmetric_limit, _ref_name, _f32


def compare_heatmaps(a, b, quantity: str = "influence", names: Sequence[str] = ("A (pinned)", "B")) -> go.Figure:
    """Two runs' benign / adversarial / defended neuron heatmaps, run A on top of run B, all six on
    ONE symmetric colour scale (equal colours mean equal values in both runs).

    Args:
        a, b: :class:`~nip_core.analyses.explain.Explanation` of one image (their layers may differ in width).
        quantity: ``"influence"`` (each run toward its reference class) or ``"activations"``.
        names: how the two rows are called.
    """
    runs = []
    for expl in (a, b):
        n = len(expl.influence["benign"])
        dead = _np(expl.dead).astype(bool)
        grids = []
        for v in VARIANTS:
            vals = _np(getattr(expl, quantity)[v]).astype(float).copy()
            vals[dead] = np.nan
            grids.append(to_grid(vals))
        runs.append((expl, n, dead, grids, _hover_grid(n, neuron_groups(n, expl.front, expl.tail, expl.dead))))
    lim = _symmetric_limit(*[g for r in runs for g in r[3]])
    # Each row says its run; the model and layer too where they differ between the runs.
    rows = [name + "".join(f" · {getattr(r[0], what)}" for what in ("model_name", "layer")
                           if getattr(a, what) != getattr(b, what)) for name, r in zip(names, runs)]
    titles = [f"{row}: {v}" for row in rows for v in VARIANTS]
    fig = make_subplots(rows=2, cols=3, subplot_titles=titles, horizontal_spacing=0.05, vertical_spacing=0.12)
    vname = "influence" if quantity == "influence" else "activation"
    for row, (name, (expl, n, dead, grids, hover)) in enumerate(zip(names, runs), start=1):
        cols = grid_shape(n)[1]
        for col, (v, g) in enumerate(zip(VARIANTS, grids), start=1):
            fig.add_trace(go.Heatmap(
                z=_f32(g), customdata=hover, coloraxis="coloraxis", xgap=1, ygap=1, name=f"{name} {v}",
                hovertemplate="%{customdata}<br>" + vname + " %{z:.4g}<extra>" + f"{name}: {v}</extra>",
            ), row=row, col=col)
            if dead.any():
                fig.add_trace(go.Heatmap(
                    z=_f32(to_grid(np.where(dead, 1.0, np.nan))), colorscale=_DEAD_SCALE, showscale=False,
                    xgap=1, ygap=1, name="dead", hovertemplate="dead neuron (never active on the benign "
                                                               "references)<extra></extra>"), row=row, col=col)
            i = (row - 1) * 3 + col
            fig.update_xaxes(showgrid=False, zeroline=False, constrain="domain", showticklabels=False, row=row, col=col)
            fig.update_yaxes(autorange="reversed", showgrid=False, zeroline=False, showticklabels=False,
                             scaleanchor=f"x{i if i > 1 else ''}", constrain="domain", row=row, col=col,
                             title_text=f"neuron ÷ {cols}" if col == 1 else None)
    where = f", layer {a.layer}" if a.layer == b.layer else ""
    if quantity == "influence":
        refs = {_ref_name(a), _ref_name(b)}
        toward = f"toward class {refs.pop()}" if len(refs) == 1 else \
            f"toward each run's reference class ({_ref_name(a)} in A, {_ref_name(b)} in B)"
        title = f"Neuron influence {toward}{where}: both runs on one colour scale"
        cbar = "influence<br>(logit units)"
    else:
        title = f"Neuron activation{where}: both runs on one colour scale"
        cbar = "mean activation<br>(layer output units)"
    fig.update_layout(
        title=dict(text=title + " (grey = dead)", x=0.0, xanchor="left"),
        coloraxis=dict(colorscale=DIVERGING, cmin=-lim, cmax=lim, cmid=0.0,
                       colorbar=dict(title=dict(text=cbar, side="right"), thickness=14)),
        margin=dict(l=50, r=20, t=80, b=40), height=620, plot_bgcolor="white",
    )
    return fig
