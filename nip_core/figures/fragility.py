"""How fragile one image is (:mod:`nip_core.analyses.fragility`).
"""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nip_core.figures.common import _np, _short, _png_source, _f32


_FLIP_COLOURS = {"flipped": "#e76f51", "wrong without attack": "#7f1d1d", "held to the maximum": "#2a9d8f"}


def fragility_figure(result: dict, image: Any) -> go.Figure:
    """The benign image beside the flip ε of each defense (bars, in [0,1] pixel units; the dashed
    line is the grid's maximum). A defense that held up to the maximum is drawn to the line in
    green and labelled "held"; one already wrong without attack is a zero bar labelled "wrong at 0".

    Args:
        result: ``nip_core.analyses.fragility.fragility(...).result``; image: ``[C,H,W]`` in [0,1].
    """
    arr = _np(image)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.35, 0.65], horizontal_spacing=0.12,
                        subplot_titles=(f"benign: {_short(result.get('benign_prediction_name', ''), 24)}",
                                        "flip ε per defense"))
    if arr.shape[0] == 1:
        fig.add_trace(go.Heatmap(z=_f32(arr[0]), colorscale="gray", zmin=0, zmax=1, showscale=False,
                                 hovertemplate="x %{x}, y %{y}<br>grey %{z:.3f}<extra></extra>"), row=1, col=1)
    else:
        fig.add_trace(go.Image(source=_png_source(arr), hoverinfo="x+y"), row=1, col=1)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showgrid=False, showticklabels=False, row=1, col=1)
    fig.update_xaxes(showgrid=False, showticklabels=False, constrain="domain", row=1, col=1)
    top = result["grid"]["max_eps"]
    cells = result.get("defenses", {})
    names = list(cells)
    heights, texts, colours, hovers = [], [], [], []
    for d in names:
        c = cells[d]
        eps = c["flip_eps"]
        pct = c.get("percentile")
        where = "" if pct is None else f" · pct {pct:.0f}"
        if c["status"] == "held to the maximum":
            height, text = top, "held" + where
        elif c["status"] == "wrong without attack":
            height, text = 0.0, "wrong at 0"
        else:
            height, text = eps, f"{eps:.3f} ({eps * 255:.3g}/255){where}"
        heights.append(height)
        texts.append(text)
        colours.append(_FLIP_COLOURS.get(c["status"], "#9ca3af"))
        hovers.append(f"{c['status']}; defended prediction {c.get('prediction_name', '')}")
    fig.add_trace(go.Bar(x=names, y=heights, marker_color=colours, text=texts, textposition="outside",
                         customdata=hovers, showlegend=False,
                         hovertemplate="%{x}<br>flip ε %{y:.4f}<br>%{customdata}<extra></extra>"), row=1, col=2)
    fig.add_hline(y=top, line_dash="dash", line_color="#6b7280", row=1, col=2)
    fig.update_yaxes(title_text="flip ε ([0,1] pixel)", range=[0, 1.2 * top], row=1, col=2)
    fig.update_xaxes(title_text="defense", row=1, col=2)
    title = (result.get("message") if result.get("status") == "misclassified" else
             f"Smallest {result.get('attack', '')} budget that makes the defended prediction differ from "
             f"{_short(result.get('reference_name', ''), 20)} (dashed: the largest ε searched)")
    fig.update_layout(title=dict(text=title, x=0.0, font=dict(size=13)), margin=dict(l=30, r=20, t=80, b=50),
                      height=360)
    return fig
