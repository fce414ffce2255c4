"""Shared pieces of the engine's figures: colours, the neuron grid layout, heatmap panels.

Conventions (every figure of this package follows them):

* neuron heatmaps lay the ``n`` neurons of a layer out row-major in a near-square grid
  (neuron ``j`` at row ``j // cols``, column ``j % cols``); cells past ``n`` are blank;
* variants compared side by side share ONE symmetric colour scale centred on zero, so equal
  colours mean equal values across panels;
* dead neurons (never active on the benign references) are drawn grey, not as a value.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots


VARIANTS = ("benign", "adversarial", "defended")
VARIANT_COLOURS = {"benign": "#2a9d8f", "adversarial": "#e76f51", "defended": "#264653"}
GROUP_COLOURS = {"front": "#1d4ed8", "middle": "#9ca3af", "tail": "#b91c1c"}
DIVERGING = "RdBu_r"
DEAD_GREY = "#bdbdbd"
_DEAD_SCALE = [[0.0, DEAD_GREY], [1.0, DEAD_GREY]]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the near-square grid holding ``n`` neurons."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def to_grid(values: Any, fill: float = np.nan) -> np.ndarray:
    """``[n]`` → ``[rows, cols]`` row-major, padded with ``fill``."""
    v = _np(values).ravel()
    rows, cols = grid_shape(len(v))
    out = np.full(rows * cols, fill, dtype=float)
    out[: len(v)] = v
    return out.reshape(rows, cols)


def neuron_groups(n: int, front: Any, tail: Any, dead: Any | None = None) -> list[str]:
    """Group name of each neuron: front / middle / tail / dead."""
    names = ["middle"] * n
    for i in _np(front).astype(int).ravel():
        names[i] = "front"
    for i in _np(tail).astype(int).ravel():
        names[i] = "tail"
    if dead is not None:
        for i in np.nonzero(_np(dead).ravel() > 0)[0]:
            names[i] = "dead"
    return names


def _hover_grid(n: int, groups: Sequence[str]) -> np.ndarray:
    labels = [f"neuron {j} · {groups[j]}" for j in range(n)]
    rows, cols = grid_shape(n)
    out = np.full(rows * cols, "", dtype=object)
    out[:n] = labels
    return out.reshape(rows, cols)


def _symmetric_limit(*arrays: np.ndarray) -> float:
    vals = [np.nanmax(np.abs(a)) for a in arrays if np.isfinite(a).any()]
    m = float(max(vals)) if vals else 0.0
    return m if m > 0 else 1.0


def _class_label(names: Sequence[str], c: int) -> str:
    return f"{c}: {names[c]}" if names and 0 <= c < len(names) and names[c] != str(c) else str(c)


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _neuron_grid_axes(fig: go.Figure, n_panels: int, rows: int, cols: int) -> None:
    for i in range(1, n_panels + 1):
        fig.update_xaxes(title_text=f"neuron index mod {cols}", showgrid=False, zeroline=False, row=1, col=i,
                         constrain="domain")
        fig.update_yaxes(title_text=f"neuron index ÷ {cols}" if i == 1 else None, autorange="reversed",
                         showgrid=False, zeroline=False, scaleanchor=f"x{i if i > 1 else ''}", row=1, col=i,
                         constrain="domain")


# Front and tail neurons are marked on every neuron heatmap (issue 26): an open square (front) and
# an open circle (tail) in the group's colour, over the cell.
GROUP_MARKERS = {"front": "square-open", "tail": "circle-open"}


def snap_to_zero(diff: np.ndarray, *scales: np.ndarray) -> np.ndarray:
    """``diff`` with entries within float32 rounding of zero set to exactly 0.

    The tolerance is 64 float32 epsilons (≈ 7.6e-6) of the largest magnitude among ``scales`` (the
    values the difference was taken between): two passes over the same input can differ by a few
    units in the last place, and a heatmap scaled to that noise shows a saturated cell where nothing
    changed (ε = 0: ±6e-8).
    """
    d = np.asarray(diff, dtype=float).copy()
    mags = [float(np.nanmax(np.abs(a))) for a in scales if np.size(a) and np.isfinite(a).any()]
    tol = 64 * float(np.finfo(np.float32).eps) * (max(mags) if mags else 0.0)
    d[np.abs(d) <= tol] = 0.0
    return d


def _group_markers(fig: go.Figure, groups: Sequence[str], cols: int, n_panels: int) -> None:
    """Outline the front and tail neurons on each of the ``n_panels`` heatmaps."""
    size = float(np.clip(260 / cols, 3, 12))
    for g, symbol in GROUP_MARKERS.items():
        idx = np.array([j for j, name in enumerate(groups) if name == g], dtype=int)
        if not len(idx):
            continue
        for i in range(1, n_panels + 1):
            fig.add_trace(go.Scatter(
                x=idx % cols, y=idx // cols, mode="markers", name=f"{g} neurons", legendgroup=g,
                showlegend=(i == 1), hoverinfo="skip",
                marker=dict(symbol=symbol, size=size, color=GROUP_COLOURS[g], line=dict(width=1.5)),
            ), row=1, col=i)


def _panel_heatmaps(panels: list[tuple[str, np.ndarray]], dead: np.ndarray | None, groups: Sequence[str],
                    title: str, colourbar_title: str, value_name: str, limit: float | None = None,
                    mark_groups: bool = True) -> go.Figure:
    """Side-by-side neuron-grid heatmaps on one symmetric colour scale, front and tail neurons marked.

    ``limit``: the colour scale's half-width when every value is 0 (default 1).
    """
    n = len(panels[0][1])
    rows, cols = grid_shape(n)
    hover = _hover_grid(n, groups)
    dead_mask = dead.astype(bool) if dead is not None else np.zeros(n, bool)
    grids = []
    for _, v in panels:
        vv = v.astype(float).copy()
        vv[dead_mask] = np.nan
        grids.append(to_grid(vv))
    lim = _symmetric_limit(*grids)
    if limit is not None and not any(np.nanmax(np.abs(g)) > 0 for g in grids if np.isfinite(g).any()):
        lim = limit
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=0.06)
    dead_grid = to_grid(np.where(dead_mask, 1.0, np.nan)) if dead_mask.any() else None
    for i, g in enumerate(grids, start=1):
        fig.add_trace(go.Heatmap(
            z=_f32(g), customdata=hover, coloraxis="coloraxis", xgap=1, ygap=1, name=panels[i - 1][0],
            hovertemplate="%{customdata}<br>" + value_name + " %{z:.4g}<extra>" + panels[i - 1][0] + "</extra>",
        ), row=1, col=i)
        if dead_grid is not None:
            fig.add_trace(go.Heatmap(
                z=_f32(dead_grid), colorscale=_DEAD_SCALE, showscale=False, xgap=1, ygap=1,
                name="dead", showlegend=(i == 1),
                hovertemplate=f"neuron %{{y}}×{cols} + %{{x}}: dead, never active on the benign "
                              "references<extra></extra>",
            ), row=1, col=i)
    if mark_groups:
        _group_markers(fig, groups, cols, len(panels))
    _neuron_grid_axes(fig, len(panels), rows, cols)
    fig.update_layout(
        legend=dict(orientation="h", yanchor="top", y=-0.26, xanchor="left", x=0.0),   # below the axis titles
        title=dict(text=title, x=0.0, xanchor="left"),
        coloraxis=dict(colorscale=DIVERGING, cmin=-lim, cmax=lim, cmid=0.0,
                       colorbar=dict(title=dict(text=colourbar_title, side="right"), thickness=14)),
        margin=dict(l=50, r=20, t=80, b=70), height=400, plot_bgcolor="white",
    )
    return fig


def _influence_unit(expl) -> str:
    return "conductance, logit units" if expl.method == "conductance" else "gradient × activation, logit units"


def _ref_name(expl) -> str:
    return _class_label(expl.class_names, expl.reference_class)

def _png_source(rgb: np.ndarray) -> str:
    """``[3,H,W]`` in [0,1] → a PNG data URI for ``go.Image(source=...)``: a 224×224 photo travels
    to the browser as a few dozen kB instead of 150,000 JSON numbers."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(rgb.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

def _f32(a: np.ndarray) -> np.ndarray:
    """Half the bytes sent per heatmap cell; float32 keeps far more digits than the hover shows."""
    return np.asarray(a, dtype=np.float32)

def _grid_layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int, bottom: int) -> go.Figure:
    """Layout shared by the labelled-grid heatmaps: left title, categorical y axis read top-down."""
    fig.update_layout(
        title=dict(text=title, x=0.0), xaxis_title=x_title,
        yaxis=dict(title=y_title, autorange="reversed", type="category"),
        margin=dict(l=50, r=20, t=60, b=bottom), height=height,
    )
    return fig
