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


# ----------------------------------------------------------------------------- neuron grids as one image
# A Plotly heatmap costs the browser over a second to draw (docs/STYLE: first screens); views that redraw
# on every slider move or pen stroke show their neuron grids as one PNG instead (no hover, same layout
# and colours as :func:`_panel_heatmaps`).

_LUT: np.ndarray | None = None


def _diverging_lut() -> np.ndarray:
    """``[256, 3]`` uint8: the DIVERGING colour scale sampled evenly (blue = low, white = 0, red = high)."""
    global _LUT
    if _LUT is None:
        from plotly.colors import sample_colorscale

        cols = sample_colorscale(DIVERGING, list(np.linspace(0.0, 1.0, 256)))
        _LUT = np.array([[float(c) for c in s[s.index("(") + 1:-1].split(",")] for s in cols]).round().astype(np.uint8)
    return _LUT


def neuron_grids_png(panels: Sequence[tuple[str, Any]], dead: Any | None = None, lim: float | None = None,
                     unit: str = "", panel_px: int = 180) -> bytes:
    """Side-by-side neuron grids (layout of :func:`to_grid`) on ONE symmetric colour scale, as PNG bytes.

    Args:
        panels: (title, ``[n]`` values) per panel, all the same ``n``.
        dead: ``[n]`` mask of dead neurons (drawn grey), or None.
        lim: the colour scale's half-range (``±lim``); None: the largest |value| shown.
        unit: written after the scale's end values.
        panel_px: about how wide each panel is drawn, in pixels.

    Returns:
        PNG bytes: a title row, the panels and a colour bar with its end values.
    """
    import io

    from PIL import Image, ImageDraw, ImageFont

    values = [_np(v).ravel() for _, v in panels]
    n = len(values[0])
    if n == 0 or any(len(v) != n for v in values):
        raise ValueError("neuron_grids_png needs panels of one non-zero length")
    mask = _np(dead).ravel().astype(bool) if dead is not None else np.zeros(n, bool)
    rows, cols = grid_shape(n)
    cell = max(3, panel_px // cols)
    gap = 1 if cell >= 5 else 0
    pw, ph = cols * cell, rows * cell
    if lim is None:
        shown = [v[~mask] for v in values]
        lim = _symmetric_limit(*[s for s in shown if s.size])
    lim = float(lim) if lim and np.isfinite(lim) and lim > 0 else 1.0
    lut = _diverging_lut()
    font = ImageFont.load_default(size=13)
    top, pad, bar_w = 20, 14, 12
    width = len(panels) * pw + (len(panels) - 1) * pad + pad + bar_w + 90
    img = np.full((top + ph + 4, width, 3), 255, np.uint8)
    for p, v in enumerate(values):
        idx = np.clip(np.rint((v / lim + 1.0) * 127.5), 0, 255).astype(int)
        colours = lut[idx]
        colours[mask] = (189, 189, 189)
        colours[~np.isfinite(v)] = (189, 189, 189)
        x0 = p * (pw + pad)
        for j in range(n):
            r, c = divmod(j, cols)
            y, x = top + r * cell, x0 + c * cell
            img[y:y + cell - gap, x:x + cell - gap] = colours[j]
    bx = len(panels) * pw + (len(panels) - 1) * pad + pad
    ramp = lut[np.linspace(255, 0, ph).round().astype(int)]
    img[top:top + ph, bx:bx + bar_w] = ramp[:, None, :]
    out = Image.fromarray(img)
    draw = ImageDraw.Draw(out)
    for p, (title, _) in enumerate(panels):
        draw.text((p * (pw + pad), 2), title, fill=(31, 41, 55), font=font)
    for y, text in ((top, f"+{lim:.3g}"), (top + ph // 2 - 7, "0"), (top + ph - 14, f"-{lim:.3g}")):
        draw.text((bx + bar_w + 4, y), text, fill=(31, 41, 55), font=font)
    if unit:
        draw.text((bx + bar_w + 4, top + ph // 4), unit, fill=(107, 114, 128), font=font)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
