"""Plotly figures for the Explore, Benchmark and Profiles views (pure functions, no Streamlit).

Every function takes engine results (:class:`~nip_core.explain.Explanation`,
:class:`~nip_core.influence.InfluenceProfile`, an ``evaluate`` result dict, tensors) and returns
a ``plotly.graph_objects.Figure`` with a title, axis labels and a colour-bar title that says
what is shown and in which unit. The CLI, the tests and the app share them.

Conventions:

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


# ----------------------------------------------------------------------------- helpers

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


def _panel_heatmaps(panels: list[tuple[str, np.ndarray]], dead: np.ndarray | None, groups: Sequence[str],
                    title: str, colourbar_title: str, value_name: str) -> go.Figure:
    """Side-by-side neuron-grid heatmaps on one symmetric colour scale."""
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
    _neuron_grid_axes(fig, len(panels), rows, cols)
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left"),
        coloraxis=dict(colorscale=DIVERGING, cmin=-lim, cmax=lim, cmid=0.0,
                       colorbar=dict(title=dict(text=colourbar_title, side="right"), thickness=14)),
        margin=dict(l=50, r=20, t=80, b=40), height=380, plot_bgcolor="white",
    )
    return fig


def _influence_unit(expl) -> str:
    return "conductance, logit units" if expl.method == "conductance" else "gradient × activation, logit units"


def _ref_name(expl) -> str:
    return _class_label(expl.class_names, expl.reference_class)


# ----------------------------------------------------------------------------- Explore figures

def influence_heatmaps(expl, quantity: str = "influence") -> go.Figure:
    """Benign / adversarial / defended neuron influence (or activation) on one shared scale.

    Args:
        expl: an :class:`~nip_core.explain.Explanation`.
        quantity: ``"influence"`` (toward the reference class) or ``"activations"``.
    """
    n = len(getattr(expl, quantity)["benign"])
    groups = neuron_groups(n, expl.front, expl.tail, expl.dead)
    panels = [(v, _np(getattr(expl, quantity)[v])) for v in VARIANTS]
    if quantity == "influence":
        title = (f"Neuron influence toward class {_ref_name(expl)} — layer {expl.layer} "
                 f"({n} neurons, grey = dead)")
        cbar, vname = f"influence<br>({_influence_unit(expl)})", "influence"
    else:
        title = f"Neuron activation — layer {expl.layer} ({n} neurons, grey = dead)"
        cbar, vname = "mean activation<br>(layer output units)", "activation"
    return _panel_heatmaps(panels, _np(expl.dead), groups, title, cbar, vname)


def difference_heatmaps(expl, quantity: str = "influence") -> go.Figure:
    """Adversarial − benign and defended − benign, on one shared symmetric scale."""
    n = len(getattr(expl, quantity)["benign"])
    groups = neuron_groups(n, expl.front, expl.tail, expl.dead)
    src = getattr(expl, quantity)
    b = _np(src["benign"])
    panels = [("adversarial − benign", _np(src["adversarial"]) - b), ("defended − benign", _np(src["defended"]) - b)]
    what = f"influence toward class {_ref_name(expl)}" if quantity == "influence" else "activation"
    unit = _influence_unit(expl) if quantity == "influence" else "layer output units"
    fig = _panel_heatmaps(panels, _np(expl.dead), groups,
                          f"Change in neuron {what} — layer {expl.layer} (red = higher than benign)",
                          f"Δ {quantity}<br>({unit})", f"Δ {quantity}")
    fig.update_layout(height=400)
    return fig


def group_chart(expl, quantity: str = "activations") -> go.Figure:
    """Mean of ``quantity`` over front / middle / tail neurons for each variant (grouped bars).

    An attack that works as the paper describes lowers the front bar and raises the tail bar
    (adversarial vs benign); NIP should push them back (defended vs adversarial).
    """
    g = expl.group_means(quantity)
    fig = go.Figure()
    sizes = {"front": len(expl.front), "middle": len(expl.middle), "tail": len(expl.tail)}
    xs = [f"{grp} ({sizes[grp]} neurons)" for grp in ("front", "middle", "tail")]
    for v in VARIANTS:
        vals = [g[v][grp] for grp in ("front", "middle", "tail")]
        fig.add_trace(go.Bar(name=v, x=xs, y=vals, marker_color=VARIANT_COLOURS[v],
                             text=[f"{x:.3g}" for x in vals], textposition="outside",
                             hovertemplate="%{x}<br>" + v + ": %{y:.4g}<extra></extra>"))
    unit = "layer output units" if quantity == "activations" else _influence_unit(expl)
    fig.update_layout(
        barmode="group",
        title=dict(text=f"Mean neuron {quantity[:-1] if quantity.endswith('s') else quantity} by group "
                        f"(groups from the class-{_ref_name(expl)} profile, k = {expl.k:g})", x=0.0),
        xaxis_title="neuron group (by benign influence profile)",
        yaxis_title=f"mean {quantity} ({unit})",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0, title_text="input"),
        margin=dict(l=50, r=20, t=80, b=40), height=380,
    )
    return fig


def signature_verdict(sig: dict[str, bool]) -> str:
    """One sentence from :meth:`Explanation.signature`."""
    att = []
    att.append("suppressed the front neurons" if sig["attack_front_down"] else "did not suppress the front neurons")
    att.append("enhanced the tail neurons" if sig["attack_tail_up"] else "did not enhance the tail neurons")
    d_up, d_down = sig["defense_front_up"], sig["defense_tail_down"]
    if d_up and d_down:
        dtext = "the defense reversed both (front up, tail down)"
    elif d_up or d_down:
        dtext = "the defense reversed it only partly (" + ("front up" if d_up else "tail down") + ")"
    else:
        dtext = "the defense did not reverse it"
    return f"The attack {att[0]} and {att[1]}; {dtext}."


def prediction_bars(expl, variant: str, n: int = 5) -> go.Figure:
    """Top-``n`` predicted classes with softmax confidence for one variant."""
    top = expl.top(variant, n)[::-1]
    ref = expl.reference_class
    colours = ["#16a34a" if c == ref else VARIANT_COLOURS[variant] for c, _, _ in top]
    fig = go.Figure(go.Bar(
        x=[p * 100 for _, _, p in top], y=[_short(_class_label(expl.class_names, c), 24) for c, _, _ in top],
        orientation="h", marker_color=colours, text=[f"{p * 100:.1f}%" for _, _, p in top], textposition="auto",
        hovertemplate="%{y}: %{x:.2f}%<extra></extra>",
    ))
    c0, name0, p0 = expl.top(variant, 1)[0]
    fig.update_layout(
        title=dict(text=f"{variant}: top-{n} (green = class {_short(_ref_name(expl), 20)})", x=0.0,
                   font=dict(size=13)),
        xaxis=dict(title="softmax confidence (%)", range=[0, 100]), yaxis=dict(title="class", type="category"),
        margin=dict(l=10, r=10, t=40, b=40), height=260, showlegend=False,
    )
    return fig


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


def image_figure(image: Any, title: str = "image") -> go.Figure:
    """A ``[C,H,W]`` image in [0,1] as a figure (pixel coordinates on the axes)."""
    arr = _np(image)
    if arr.shape[0] == 1:
        fig = go.Figure(go.Heatmap(z=_f32(arr[0]), colorscale="gray", zmin=0, zmax=1, showscale=False,
                                   hovertemplate="x %{x}, y %{y}<br>grey %{z:.3f}<extra></extra>"))
    else:
        fig = go.Figure(go.Image(source=_png_source(arr), hoverinfo="x+y"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", title_text="y (pixel)", showgrid=False)
    fig.update_xaxes(title_text="x (pixel)", showgrid=False, constrain="domain")
    fig.update_layout(title=dict(text=title, x=0.0), margin=dict(l=40, r=10, t=40, b=40), height=300)
    return fig


PERTURBATION_MAX_SIDE = 112   # larger images are shown as means of square pixel blocks


def _block_mean(d: np.ndarray, max_side: int) -> tuple[np.ndarray, int]:
    """``[H,W]`` → means of ``f×f`` blocks (``f`` the smallest factor with ``H/f ≤ max_side``), and ``f``."""
    f = 1
    while d.shape[0] / f > max_side or d.shape[1] / f > max_side:
        f += 1
    if f == 1:
        return d, 1
    h, w = d.shape[0] // f * f, d.shape[1] // f * f
    return d[:h, :w].reshape(h // f, f, w // f, f).mean((1, 3)), f


def perturbation_figure(expl, variant: str = "adversarial") -> go.Figure:
    """The perturbation ``x_variant − x_benign`` (channel mean), amplified to fill the colour scale.

    Images larger than ``PERTURBATION_MAX_SIDE`` pixels a side are drawn as means of ``f×f``
    pixel blocks (a 224×224 photo: 2×2), a quarter of the cells to send and draw; the norms in the
    title are those of the full perturbation.
    """
    d, f = _block_mean(_np(expl.perturbation(variant)).mean(0), PERTURBATION_MAX_SIDE)
    lim = float(np.abs(d).max()) or 1.0
    norms = expl.norms(variant)
    axis = np.arange(d.shape[1]) * f + (f - 1) / 2, np.arange(d.shape[0]) * f + (f - 1) / 2
    fig = go.Figure(go.Heatmap(
        z=_f32(d), x=axis[0] if f > 1 else None, y=axis[1] if f > 1 else None,
        colorscale=DIVERGING, zmin=-lim, zmax=lim, zmid=0,
        colorbar=dict(title=dict(text="Δ pixel<br>([0,1] units)", side="right"), thickness=10),
        hovertemplate=("x %{x}, y %{y}<br>Δ %{z:.4f}" + (f" (mean of {f}×{f} pixels)" if f > 1 else "")
                       + "<extra></extra>"),
    ))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", title_text="y (pixel)", showgrid=False)
    fig.update_xaxes(title_text="x (pixel)", showgrid=False, constrain="domain")
    fig.update_layout(title=dict(text=f"{variant} − benign (×{1 / lim:.0f}): L∞ {norms['linf']:.4f}, "
                                      f"L2 {norms['l2']:.3f}", x=0.0, font=dict(size=12)),
                      margin=dict(l=40, r=10, t=40, b=40), height=300)
    return fig


def spatial_overlay(image: Any, activation_map: Any, title: str = "activation map",
                    zmax: float | None = None, value_label: str = "activation<br>(layer output units)") -> go.Figure:
    """An image with one neuron's map (``[H,W]``, e.g. ``influence.spatial_map``) drawn over it.

    ``value_label`` names the map's values: a conv channel's activation, or for a fully connected
    neuron the normalised input-gradient magnitude.
    """
    arr = _np(image)
    m = _np(activation_map)
    if arr.shape[0] == 1:
        rgb = np.repeat(arr, 3, axis=0)
    else:
        rgb = arr
    fig = go.Figure(go.Image(source=_png_source(rgb), hoverinfo="skip"))
    top = float(zmax if zmax is not None else (np.nanmax(m) if np.isfinite(m).any() else 1.0)) or 1.0
    fig.add_trace(go.Heatmap(
        z=_f32(m), colorscale="Inferno", zmin=0, zmax=top, opacity=0.55,
        colorbar=dict(title=dict(text=value_label, side="right"), thickness=10),
        hovertemplate="x %{x}, y %{y}<br>value %{z:.4g}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", title_text="y (pixel)", showgrid=False)
    fig.update_xaxes(title_text="x (pixel)", showgrid=False, constrain="domain")
    fig.update_layout(title=dict(text=title, x=0.0, font=dict(size=13)), margin=dict(l=40, r=10, t=40, b=40),
                      height=300)
    return fig


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


SURGERY_VARIANTS = ("benign", "adversarial", "patched")
SURGERY_COLOURS = {"benign": VARIANT_COLOURS["benign"], "adversarial": VARIANT_COLOURS["adversarial"],
                   "patched": "#7c3aed"}


def recovery_text(r: float | None) -> str:
    """A recovery share as shown: two decimals (never "-0.00"), or n/a when undefined."""
    if r is None:
        return "n/a"
    text = f"{r:.2f}"
    return "0.00" if text == "-0.00" else text


def surgery_bars(result, image: int = 0, n: int = 3) -> go.Figure:
    """Prediction bars of a neuron surgery: benign, adversarial and patched side by side.

    Args:
        result: a :class:`~nip_core.surgery.SurgeryResult`.
        image: which input of the batch.
        n: each variant's top-``n`` classes are shown (their union, ordered by class index), with
            every variant's confidence for each; the reference class is starred.
    Returns:
        Grouped bars, one colour per variant; the legend gives each variant's reference-class margin
        and the title the patch and the recovery share (n/a when the attack did not flip the prediction).
    """
    passes = {"benign": result.benign, "adversarial": result.adversarial, "patched": result.patched}
    ref = int(result.reference_class[image])
    k = min(n, passes["benign"].probabilities.shape[1])
    classes = sorted({ref} | {int(c) for p in passes.values() for c in p.probabilities[image].topk(k).indices})
    labels = [("★ " if c == ref else "") + _short(_class_label(result.class_names, c), 24) for c in classes]
    fig = go.Figure()
    for v, p in passes.items():
        probs = p.probabilities[image]
        margin = f" (margin {float(p.margins[image]):+.2f})" if p.margins is not None else ""
        fig.add_trace(go.Bar(
            name=f"{v}{margin}", x=labels, y=[100 * float(probs[c]) for c in classes],
            marker_color=SURGERY_COLOURS[v], text=[f"{100 * float(probs[c]):.1f}%" for c in classes],
            textposition="outside", textfont=dict(size=10), cliponaxis=False, hovertemplate=f"{v}<br>%{{x}}: %{{y:.2f}}%<extra></extra>",
        ))
    r = result.recovery(image)
    share = "n/a (the attack did not flip the prediction)" if r is None else recovery_text(r)
    n_sel = int(result.neurons[image].sum())
    fig.update_layout(
        title=dict(text=f"Surgery at {result.layer}: {result.selection} ({n_sel} neuron{'' if n_sel == 1 else 's'}) "
                        f"set to {result.value}"
                        f" — recovery share {share}", x=0.0, font=dict(size=13)),
        barmode="group", xaxis=dict(title="class (★ = reference class)", type="category"),
        yaxis=dict(title="softmax confidence (%)", range=[0, 115]),
        legend=dict(orientation="h", y=-0.25), margin=dict(l=50, r=20, t=60, b=90), height=380,
    )
    return fig


def surgery_verdict(result, image: int = 0) -> str:
    """One sentence on a neuron surgery: what the patched pass predicts, and whether the class came back.

    Args:
        result: a :class:`~nip_core.surgery.SurgeryResult`; image: which input of the batch.
    """
    names = result.class_names
    ref = int(result.reference_class[image])
    pred_a, pred_p = int(result.adversarial.predictions[image]), int(result.patched.predictions[image])
    n_sel = int(result.neurons[image].sum())
    what = f"With {n_sel} neuron{'s' if n_sel != 1 else ''} of {result.layer} set to {result.value}"
    r = result.recovery(image)
    pred_b = int(result.benign.predictions[image])
    if r is None and pred_b != ref:
        return (f"The model already gets the benign input wrong ({_class_label(names, pred_b)}, not "
                f"{_class_label(names, ref)}), so there is no class to bring back and the recovery share is n/a. "
                f"{what}, the model predicts {_class_label(names, pred_p)}.")
    if r is None:
        return (f"The attack did not flip this prediction (the adversarial input is still "
                f"{_class_label(names, pred_a)}), so there is no class to bring back and the recovery share is "
                f"n/a. {what}, the model predicts {_class_label(names, pred_p)}.")
    share = f"recovery share {recovery_text(r)}: 0 = the adversarial margin, 1 = the benign margin back"
    if pred_p == ref:
        return (f"The class returns. {what}, the adversarial input is classified as {_class_label(names, ref)} "
                f"again ({share}).")
    return (f"The class does not return. {what}, the adversarial input is classified as "
            f"{_class_label(names, pred_p)}, not {_class_label(names, ref)} ({share}).")


def surgery_picker(profile, reference_class: int, k: float, selected: Sequence[int],
                   class_names: Sequence[str] = ()) -> go.Figure:
    """The layer's neuron grid to pick neurons on: a heatmap of the benign influence profile toward
    the reference class, under one selectable marker per neuron (Plotly heatmaps return no
    selection to Streamlit, so the markers carry it: ``customdata`` is the neuron index).

    Args:
        profile: the layer's :class:`~nip_core.influence.InfluenceProfile`.
        reference_class: the class whose profile colours the cells and names the groups.
        k: the front/tail share that names each neuron's group in the hover.
        selected: the neurons patched now (drawn as filled markers).
    Returns:
        One heatmap (the grid of :func:`to_grid`), a grey heatmap of the dead neurons and one
        scatter trace of ``n`` markers, marker ``j`` on neuron ``j`` (Streamlit makes a click select
        a marker; the box and lasso tools select several).
    """
    scores = _np(profile.class_scores(reference_class))
    n = len(scores)
    front, _, tail = profile.groups(reference_class, k)
    dead = _np(profile.dead).astype(bool)
    groups = neuron_groups(n, front, tail, dead)
    _, cols = grid_shape(n)
    vals = scores.astype(float).copy()
    vals[dead] = np.nan
    grid = to_grid(vals)
    lim = _symmetric_limit(grid)
    chosen = np.zeros(n, bool)
    chosen[[int(j) for j in selected if 0 <= int(j) < n]] = True
    fig = go.Figure(go.Heatmap(z=_f32(grid), colorscale=DIVERGING, zmin=-lim, zmax=lim, zmid=0.0, xgap=1, ygap=1,
                               hoverinfo="skip", name="influence",
                               colorbar=dict(title=dict(text="benign influence<br>(logit units)", side="right"),
                                             thickness=10, xpad=4)))
    if dead.any():
        fig.add_trace(go.Heatmap(z=_f32(to_grid(np.where(dead, 1.0, np.nan))), colorscale=_DEAD_SCALE, showscale=False,
                                 xgap=1, ygap=1, hoverinfo="skip", name="dead"))
    j = np.arange(n)
    size = 9 if n <= 200 else (6 if n <= 500 else 4)
    fig.add_trace(go.Scatter(
        x=j % cols, y=j // cols, mode="markers", customdata=j, name="neurons",
        text=[f"neuron {i} · {groups[i]} · influence {scores[i]:.3g}" + (" · patched" if chosen[i] else "")
              for i in range(n)],
        hovertemplate="%{text}<extra></extra>",
        marker=dict(size=np.where(chosen, size + 3, size).tolist(), symbol="circle",
                    color=np.where(chosen, SURGERY_COLOURS["patched"], "rgba(0,0,0,0)").tolist(),
                    line=dict(width=np.where(chosen, 1.5, 0.8).tolist(),
                              color=np.where(chosen, "white", "rgba(60,60,60,0.45)").tolist())),
        selected=dict(marker=dict(color="#f59e0b")), unselected=dict(marker=dict(opacity=0.5)),
    ))
    fig.update_xaxes(title_text=f"neuron index mod {cols}", showgrid=False, zeroline=False, constrain="domain",
                     range=[-0.5, cols - 0.5])
    fig.update_yaxes(title_text=f"neuron index ÷ {cols}", autorange="reversed", showgrid=False, zeroline=False,
                     scaleanchor="x", constrain="domain")
    ref = _short(_class_label(class_names, reference_class), 24)
    fig.update_layout(
        title=dict(text=f"Pick neurons of {profile.layer} ({n}): influence toward {ref}", x=0.0, font=dict(size=13)),
        showlegend=False, plot_bgcolor="white",
        margin=dict(l=50, r=10, t=60, b=40), height=420,
    )
    return fig


def picked_neurons(points: Sequence[dict]) -> list[int]:
    """The neuron indices of the markers selected on :func:`surgery_picker` (Streamlit's
    ``event.selection.points``), sorted; points without a neuron index (other traces) are left out."""
    out = set()
    for p in points or ():
        c = p.get("customdata") if isinstance(p, dict) else None
        if isinstance(c, (list, tuple)):
            c = c[0] if c else None
        if isinstance(c, (int, float)) and float(c) == int(c):
            out.add(int(c))
    return sorted(out)


# ----------------------------------------------------------------------------- Benchmark figures

def bare_names(labels: Sequence[str], n: int = 30) -> list[str]:
    """``"nip[k=0.2;…]"`` → ``"nip"`` when that bare name is unambiguous, else the label shortened."""
    bare = [lab.split("[", 1)[0] for lab in labels]
    return [b if bare.count(b) == 1 else _short(lab, n) for b, lab in zip(bare, labels)]


def evaluation_heatmap(result: dict, metric: str = "defended_adv_accuracy", adaptive: bool = True) -> go.Figure:
    """Attacks × defenses ``metric`` from an ``evaluate`` result, plus a benign row and adaptive row.

    Rows are the attacks, then "benign (no attack)", "adaptive PGD-BPDA" and, when any defense has
    one, "defense-aware PGD"; columns are the defenses.
    """
    defenses = list(result.get("defenses") or dict.fromkeys(r["defense"] for r in result["rows"]))
    # Rows name attacks as the table does (``fgsm[eps=0.1]``); ``result["attacks"]`` may also carry
    # parameters the rows leave out (an untargeted ``target=-1``), so the rows' labels lead.
    attacks = list(dict.fromkeys(r["attack"] for r in result["rows"]))
    from nip_core.evaluate import wilson_interval

    def interval(bits: str | None) -> str:
        # Per-image correctness (newer results) gives the 95% Wilson interval of an accuracy.
        if not bits:
            return ""
        lo, hi = wilson_interval(bits.count("1"), len(bits))
        return f"<br>95% interval {100 * lo:.0f}–{100 * hi:.0f}% ({bits.count('1')}/{len(bits)} images)"

    cell = {(r["attack"], r["defense"]): r.get(metric) for r in result["rows"]}
    bits = {(r["attack"], r["defense"]): r.get("correct") for r in result["rows"]}
    z = [[cell.get((a, d)) for d in defenses] for a in attacks]
    hover = [[interval(bits.get((a, d))) if metric == "defended_adv_accuracy" else "" for d in defenses]
             for a in attacks]
    ylabels = list(attacks)
    if metric == "defended_adv_accuracy":
        z.append([result["summary"]["benign_accuracy"].get(d) for d in defenses])
        hover.append([interval(result.get("benign", {}).get(d, {}).get("correct")) for d in defenses])
        ylabels.append("benign (no attack)")
        if adaptive and result.get("adaptive"):
            z.append([result["adaptive"].get(d, {}).get("accuracy") for d in defenses])
            hover.append([""] * len(defenses))
            ylabels.append("adaptive PGD-BPDA")
            aware = [result["adaptive"].get(d, {}).get("aware", {}).get("accuracy") for d in defenses]
            if any(v is not None for v in aware):
                z.append(aware)
                hover.append([""] * len(defenses))
                ylabels.append("defense-aware PGD")
    zz = np.array([[np.nan if v is None else 100 * float(v) for v in row] for row in z], dtype=float)
    text = [["n/a" if not np.isfinite(v) else f"{v:.0f}%" for v in row] for row in zz]
    titles = {"defended_adv_accuracy": "accuracy after defense", "defense_success_rate": "defense success rate",
              "benign_accuracy": "benign accuracy after defense", "adv_accuracy": "accuracy with no defense"}
    label = titles.get(metric, metric)
    fig = go.Figure(go.Heatmap(
        z=zz, x=bare_names(defenses), y=bare_names(ylabels, 34), text=text, customdata=hover,
        texttemplate="%{text}", colorscale="Viridis", zmin=0, zmax=100,
        colorbar=dict(title=dict(text=f"{label} (%)", side="right")),
        hovertemplate="attack %{y}<br>defense %{x}<br>" + label + " %{text}%{customdata}<extra></extra>",
    ))
    return _grid_layout(fig, f"{label.capitalize()} — {result.get('model', '')}, N = {result.get('n_images', '?')}, "
                             f"seed {result.get('seed', '?')} (n/a = not applicable)",
                        "defense", "attack", height=max(300, 90 + 45 * len(ylabels)), bottom=60)


def per_class_figure(table: dict[str, Any], class_names: Sequence[str] | None = None, title: str = "") -> go.Figure:
    """:func:`nip_core.slices.per_class_accuracy` as a heatmap: defenses × true classes, each cell the accuracy
    with its count (``right/images``); the column labels give each class's number of images."""
    from nip_core.slices import class_label

    cols = [f"{class_label(c, class_names)} (n={n})" for c, n in zip(table["classes"], table["n"])]
    z = [[100 * a for a in row] for row in table["accuracy"]]
    text = [[f"{a:.0f}%<br>{k}/{n * table['repeats']}" for a, k, n in zip(zr, kr, table["n"])]
            for zr, kr in zip(z, table["correct"])]
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=bare_names(table["defenses"]), text=text, texttemplate="%{text}",
                               colorscale="Viridis", zmin=0, zmax=100,
                               colorbar=dict(title=dict(text="accuracy (%)", side="right")),
                               hovertemplate="defense %{y}<br>true class %{x}<br>%{text}<extra></extra>"))
    fig.update_layout(title=dict(text=title or f"Accuracy per true class — {table['inputs']}", x=0.0),
                      xaxis=dict(title="true class", type="category"),
                      yaxis=dict(title="defense", autorange="reversed", type="category"),
                      margin=dict(l=50, r=20, t=60, b=60), height=max(300, 90 + 32 * len(table["defenses"])))
    return fig


def _grid_layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int, bottom: int) -> go.Figure:
    """Layout shared by the labelled-grid heatmaps: left title, categorical y axis read top-down."""
    fig.update_layout(
        title=dict(text=title, x=0.0), xaxis_title=x_title,
        yaxis=dict(title=y_title, autorange="reversed", type="category"),
        margin=dict(l=50, r=20, t=60, b=bottom), height=height,
    )
    return fig


# ----------------------------------------------------------------------------- mediation (nip_core.mediation)

_GROUP_COLOURS = {"front": "#2563eb", "tail": "#f59e0b", "front+tail": "#7c3aed", "random": "#9ca3af",
                  "random-2k": "#6b7280", "changed": "#16a34a"}


def _error_bars(values: Sequence[float | None], cis: Sequence[Sequence[float] | None]) -> dict:
    plus = [None if v is None or ci is None else 100 * (ci[1] - v) for v, ci in zip(values, cis)]
    minus = [None if v is None or ci is None else 100 * (v - ci[0]) for v, ci in zip(values, cis)]
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1.2, width=4)


def mediation_groups_figure(cell: dict, title: str = "") -> go.Figure:
    """The observation as a causal test, at one layer: for each neuron group put back to its benign
    values in the adversarial pass, the share of successful adversarials restored and the mean
    recovery share of the margin, with bootstrap 95% intervals (``nip_core.mediation``).

    Args:
        cell: one ``mediation.by_attack[attack][layer]`` block of an evaluation result.
    """
    groups = [g for g in _GROUP_COLOURS if g in cell.get("groups", {})]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("adversarials restored (%)", "mean recovery share (%)"))
    for col, (key, ci) in enumerate((("restored", "restored_ci"), ("recovery", "recovery_ci")), start=1):
        vals = [cell["groups"][g][key] for g in groups]
        fig.add_trace(go.Bar(
            x=[f"{g} ({cell['groups'][g]['size']:.0f})" for g in groups], y=[100 * v for v in vals],
            marker_color=[_GROUP_COLOURS[g] for g in groups], showlegend=False,
            error_y=_error_bars(vals, [cell["groups"][g][ci] for g in groups]),
            hovertemplate="%{x}<br>%{y:.1f}%<extra></extra>"), row=1, col=col)
    fig.update_layout(title=dict(text=title or f"Neurons put back to their benign values "
                                 f"({cell.get('n_successful', 0)} successful adversarials; bars: 95% interval; "
                                 "in brackets: neurons per group)", x=0.0, font=dict(size=13)),
                      margin=dict(l=50, r=20, t=70, b=40), height=330)
    return fig


def mediation_defenses_figure(cell: dict, title: str = "") -> go.Figure:
    """Does each defense work through the neurons? The share of its margin recovery carried by the
    true class's front+tail neurons (their defended values patched into the adversarial pass),
    beside a random group of the same size; a defense that passes inputs through is marked n/a."""
    names = list(cell.get("defenses", {}))
    carried = [cell["defenses"][d].get("carried") for d in names]
    rand = [cell["defenses"][d].get("random") for d in names]
    fig = go.Figure()
    for label, vals, key, colour in (("front+tail neurons", carried, "carried_ci", _GROUP_COLOURS["front+tail"]),
                                     ("random neurons, same number", rand, "random_ci", _GROUP_COLOURS["random"])):
        fig.add_trace(go.Bar(
            name=label, x=[d + ("" if v is not None else " (n/a)") for d, v in zip(names, vals)],
            y=[None if v is None else 100 * v for v in vals], marker_color=colour,
            error_y=_error_bars(vals, [cell["defenses"][d].get(key) for d in names]),
            hovertemplate="%{x}<br>" + label + ": %{y:.1f}% of the defense's margin recovery<extra></extra>"))
    fig.update_layout(barmode="group", title=dict(text=title or "Share of each defense's margin recovery carried "
                                                  "by neurons (n/a: the defense passes inputs through)",
                                                  x=0.0, font=dict(size=13)),
                      yaxis_title="share of margin recovery (%)", legend=dict(orientation="h", y=-0.2),
                      margin=dict(l=50, r=20, t=60, b=60), height=340)
    return fig


# ----------------------------------------------------------------------------- fragility (nip_core.fragility)

_FLIP_COLOURS = {"flipped": "#e76f51", "wrong without attack": "#7f1d1d", "held to the maximum": "#2a9d8f"}


def fragility_figure(result: dict, image: Any) -> go.Figure:
    """The benign image beside the flip ε of each defense (bars, in [0,1] pixel units; the dashed
    line is the grid's maximum). A defense that held up to the maximum is drawn to the line in
    green and labelled "held"; one already wrong without attack is a zero bar labelled "wrong at 0".

    Args:
        result: ``nip_core.fragility.fragility(...).result``; image: ``[C,H,W]`` in [0,1].
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


# ----------------------------------------------------------------------------- elasticity (nip_core.elasticity)

def elasticity_figure(block: dict, attack: str, defenses: Sequence[str] | None = None) -> go.Figure:
    """Accuracy against attack strength ε for each defense, with Wilson 95% bands (``evaluate --eps-grid``).

    Args:
        block: an evaluation result's ``elasticity`` block.
        attack: a key of ``block["by_attack"]``.
        defenses: the defenses to draw (default: all; the undefended model is always drawn, dashed).
    """
    sweep = block["by_attack"][attack]
    eps = sweep["eps"]
    names = [d for d in sweep["defenses"] if defenses is None or d in defenses]
    fig = go.Figure()
    palette = ["#2563eb", "#16a34a", "#dc2626", "#7c3aed", "#f59e0b", "#0891b2", "#db2777", "#65a30d",
               "#9333ea", "#ea580c", "#0d9488", "#4b5563", "#be123c"]
    short = dict(zip(sweep["defenses"], bare_names(list(sweep["defenses"]))))
    curves = [("no defense", sweep["undefended"], "#111827", "dash")] + [
        (short[d], sweep["defenses"][d], palette[i % len(palette)], "solid") for i, d in enumerate(names) if d != "none"]
    for label, c, colour, dash in curves:
        band = [100 * v for v in c["ci_high"]] + [100 * v for v in c["ci_low"][::-1]]
        fig.add_trace(go.Scatter(x=eps + eps[::-1], y=band, fill="toself", fillcolor=colour, opacity=0.12, line=dict(width=0), hoverinfo="skip",
                                 showlegend=False, legendgroup=label))
        fig.add_trace(go.Scatter(x=eps, y=[100 * v for v in c["accuracy"]], mode="lines+markers",
                                 name=_short(label, 26), line=dict(color=colour, dash=dash), legendgroup=label,
                                 customdata=[f"{k}/{c['n']}" for k in c["correct"]],
                                 hovertemplate=f"{label}<br>ε %{{x:.3g}}: %{{y:.1f}}% (%{{customdata}})<extra></extra>"))
    fig.update_layout(title=dict(text=f"Accuracy against attack strength — {attack} (bands: 95% Wilson intervals)",
                                 x=0.0, font=dict(size=13)),
                      xaxis_title="ε (L∞, [0,1] pixel units)", yaxis=dict(title="accuracy (%)", range=[0, 102]),
                      margin=dict(l=50, r=20, t=60, b=40), height=420)
    return fig


# ----------------------------------------------------------------------------- pin and compare (issue 21)

def compare_heatmaps(a, b, quantity: str = "influence", names: Sequence[str] = ("A (pinned)", "B")) -> go.Figure:
    """Two runs' benign / adversarial / defended neuron heatmaps, run A on top of run B, all six on
    ONE symmetric colour scale (equal colours mean equal values in both runs).

    Args:
        a, b: :class:`~nip_core.explain.Explanation` of one image (their layers may differ in width).
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


# ----------------------------------------------------------------------------- every layer (nip_core.pathway)

STRIP_COLOURS = {"attack": VARIANT_COLOURS["adversarial"], "defense": VARIANT_COLOURS["defended"],
                 "drives up": "#15803d", "holds down": "#7c3aed"}
_NEURON_COLOURS = dict(GROUP_COLOURS, dead=DEAD_GREY)


def layer_strip_figure(strip, current_layer: str | None = None, picked: tuple[str, int] | None = None) -> go.Figure:
    """Every layer at once: per layer, the attack's and the defense's change of the front and tail means
    (bars, bottom row, each layer on its own scale) and, above, the layer's most-changed neurons joined to
    the next layer's by activation × gradient edges on the adversarial input.

    Args:
        strip: a :class:`~nip_core.pathway.LayerStrip`.
        current_layer: the layer the run's influence is measured at (its name is starred).
        picked: ``(layer, neuron)`` drawn with a ring (the neuron open in the drill-down).
    Returns:
        Row 1: one selectable scatter trace of neuron markers (``customdata`` = ``[layer, neuron]``;
        colour: the neuron's group in its layer; ▲ raised / ▼ lowered by the attack), one line trace per
        edge (width: |strength| relative to the strongest edge between the same two layers; colour:
        its sign) and an invisible trace of edge midpoints that carries the edges' hover.
        Row 2: per layer, bars ``adversarial − benign`` and ``defended − adversarial`` of the front and
        tail mean activation (the single-layer group chart's numbers, as differences).
    """
    cols = strip.columns
    n = len(cols)
    row_of = {c.layer: {j: r for r, j in enumerate(c.top)} for c in cols}
    x_of = {c.layer: i for i, c in enumerate(cols)}
    names = [f"{'★ ' if c.layer == current_layer else ''}{c.layer}<br>({c.n_neurons} "
             f"{'channels' if c.conv else 'units'})" for c in cols]
    gap = 0.45 / max(n, 2)
    fig = make_subplots(rows=2, cols=n, specs=[[{"colspan": n}] + [None] * (n - 1), [{} for _ in cols]],
                        row_heights=[0.56, 0.44], vertical_spacing=0.16, horizontal_spacing=gap)
    # Put layer i of the top row over the centre of its bar cell: cell i spans [i(w+gap), i(w+gap)+w].
    step = (1 + gap) / n
    first = (1 - (n - 1) * gap) / (2 * n)
    # Edges: one line trace each (Plotly draws one width per trace); width relative within a layer pair.
    strongest: dict[tuple[str, str], float] = {}
    for e in strip.edges:
        pair = (e.upstream, e.downstream)
        strongest[pair] = max(strongest.get(pair, 0.0), abs(e.strength))
    mid_x, mid_y, mid_text = [], [], []
    for e in strip.edges:
        top = strongest[(e.upstream, e.downstream)]
        rel = abs(e.strength) / top if top > 0 else 0.0
        colour = STRIP_COLOURS["drives up" if e.strength >= 0 else "holds down"]
        x0, x1 = x_of[e.upstream], x_of[e.downstream]
        y0, y1 = row_of[e.upstream][e.source], row_of[e.downstream][e.target]
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color=colour if rel > 0 else DEAD_GREY, width=0.6 + 7.4 * rel,
                                           dash="solid" if rel > 0 else "dot"),
                                 opacity=0.35 + 0.45 * rel), row=1, col=1)
        mid_x.append(x0 + 0.5 * (x1 - x0))
        mid_y.append(y0 + 0.5 * (y1 - y0))
        mid_text.append(f"{e.upstream} #{e.source} → {e.downstream} #{e.target}<br>strength {e.strength:+.3g} "
                        f"({e.downstream} activation units; {rel:.0%} of the strongest edge here)"
                        + ("<br>0: the downstream neuron does not respond here (e.g. a ReLU that is off)"
                           if e.strength == 0 else ""))
    if mid_x:
        fig.add_trace(go.Scatter(x=mid_x, y=mid_y, mode="markers", text=mid_text, hovertemplate="%{text}<extra></extra>",
                                 marker=dict(size=12, opacity=0), showlegend=False, name="edges"), row=1, col=1)
    # Legend entries for the edge colours (no data).
    for label, colour in (("edge: upstream drives it up", STRIP_COLOURS["drives up"]),
                          ("edge: upstream holds it down", STRIP_COLOURS["holds down"])):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=colour, width=4), name=label),
                      row=1, col=1)
    # Neurons: one selectable trace.
    xs, ys, colours, symbols, sizes, lines, texts, hovers, custom = [], [], [], [], [], [], [], [], []
    for c in cols:
        for r, (j, grp) in enumerate(zip(c.top, c.top_groups)):
            b, a, d = (c.top_activations[v][r] for v in VARIANTS)
            ring = picked is not None and picked[0] == c.layer and int(picked[1]) == j
            xs.append(x_of[c.layer])
            ys.append(r)
            colours.append(_NEURON_COLOURS.get(grp, GROUP_COLOURS["middle"]))
            symbols.append("triangle-up" if a >= b else "triangle-down")
            sizes.append(22 if ring else 17)
            lines.append("#f59e0b" if ring else "white")
            texts.append(f"#{j}")
            custom.append([c.layer, j])
            hovers.append(f"<b>{c.layer} neuron {j}</b> · {grp}<br>benign {b:.3g} → adversarial {a:.3g} "
                          f"(Δ {a - b:+.3g}) → defended {d:.3g}<br>click: open it in the drill-down and in surgery")
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=texts, textposition="top center",
                             textfont=dict(size=12, color="#111827"), customdata=custom, hovertext=hovers,
                             hovertemplate="%{hovertext}<extra></extra>", name="neurons", showlegend=False,
                             marker=dict(size=sizes, color=colours, symbol=symbols,
                                         line=dict(width=[3 if c == "#f59e0b" else 1 for c in lines], color=lines)),
                             selected=dict(marker=dict(opacity=1.0)), unselected=dict(marker=dict(opacity=1.0))),
                  row=1, col=1)
    for grp in ("front", "middle", "tail", "dead"):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"neuron in its layer's {grp} group",
                                 marker=dict(size=11, color=_NEURON_COLOURS[grp], symbol="square")), row=1, col=1)
    for label, symbol in (("▲ the attack raised it", "triangle-up"), ("▼ the attack lowered it", "triangle-down")):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=label,
                                 marker=dict(size=11, color="#6b7280", symbol=symbol)), row=1, col=1)
    fig.update_xaxes(tickvals=list(range(n)), ticktext=names, range=[-first / step, (1 - first) / step],
                     showgrid=False, zeroline=False,
                     side="top", row=1, col=1)
    fig.update_yaxes(tickvals=list(range(strip.top)), ticktext=[f"{r + 1}." for r in range(strip.top)],
                     range=[strip.top - 0.5, -0.85], title_text="most changed", showgrid=False, zeroline=False,
                     row=1, col=1)
    # Bars: per layer, on its own scale (layers' activations differ in size).
    for i, c in enumerate(cols):
        for what, vals, colour in (("attack: adversarial − benign", (c.attack_front, c.attack_tail),
                                    STRIP_COLOURS["attack"]),
                                   ("defense: defended − adversarial", (c.defense_front, c.defense_tail),
                                    STRIP_COLOURS["defense"])):
            fig.add_trace(go.Bar(
                x=[f"front ({c.group_sizes['front']})", f"tail ({c.group_sizes['tail']})"], y=list(vals),
                name=what, marker_color=colour, legendgroup=what, showlegend=i == 0,
                text=[f"{v:+.2g}" for v in vals], textposition="outside", textfont=dict(size=9), cliponaxis=False,
                hovertemplate=f"{c.layer} · %{{x}} neurons<br>{what}: %{{y:+.4g}}<extra></extra>"),
                row=2, col=i + 1)
        fig.update_yaxes(zeroline=True, zerolinecolor="#374151", zerolinewidth=1, tickfont=dict(size=9),
                         title_text="Δ mean activation" if i == 0 else None, row=2, col=i + 1)
        fig.update_xaxes(tickfont=dict(size=10), title_text=c.layer, title_font=dict(size=11), title_standoff=4,
                         row=2, col=i + 1)
    ref = _short(_class_label([strip.class_name if i == strip.reference_class else "" for i in
                               range(strip.reference_class + 1)], strip.reference_class), 28)
    fig.update_layout(
        title=dict(text=f"Every layer at once · class {ref} · front/tail: each layer's top/bottom {strip.k:g} by "
                        f"benign influence<br><sup>above: the {strip.top} neurons per layer the attack changed most, "
                        "joined by activation × gradient on the adversarial input · below: how the attack and the "
                        "defense move each layer's front and tail mean</sup>", x=0.0, font=dict(size=13)),
        barmode="group", plot_bgcolor="white", clickmode="event+select",
        legend=dict(orientation="h", yanchor="top", y=-0.13, x=0.0, font=dict(size=11), traceorder="normal"),
        margin=dict(l=60, r=20, t=120, b=90), height=640,
    )
    return fig


def picked_layer_neuron(points: Sequence[dict]) -> tuple[str, int] | None:
    """The ``(layer, neuron)`` of the neuron marker picked on :func:`layer_strip_figure` (Streamlit's
    ``event.selection.points``; the last one when several); None when no neuron marker is among them."""
    out = None
    for p in points or ():
        c = p.get("customdata") if isinstance(p, dict) else None
        if isinstance(c, (list, tuple)) and len(c) == 2 and isinstance(c[0], str) \
                and isinstance(c[1], (int, float)) and not isinstance(c[1], bool) and float(c[1]) == int(c[1]):
            out = (c[0], int(c[1]))
    return out


# ----------------------------------------------------------------------------- attack strength (nip_core.strength)

STRENGTH_COLOURS = {"adversarial": VARIANT_COLOURS["adversarial"], "defended": VARIANT_COLOURS["defended"]}
_HIT, _MISS = "#16a34a", "#dc2626"      # the defended prediction is / is not the reference class


def eps_text(eps: float, norm: str = "Linf") -> str:
    """``0.0314 (8/255)`` for an L∞ budget (pixel levels are how photos' budgets are quoted); ``1.5`` for L2."""
    if norm == "Linf" and eps > 0:
        return f"{eps:.4g} ({eps * 255:.3g}/255)"
    return f"{eps:.4g}"


def _changes(names: Sequence[str]) -> list[str]:
    """``predicts <class>`` where the class differs from the one at the point before; blank elsewhere."""
    return [f"predicts {n}" if i > 0 and n != names[i - 1] else "" for i, n in enumerate(names)]


def _eps_tick(eps: float, top: float, norm: str) -> str:
    """A short axis label: k/255 for photo-sized L∞ budgets (how they are quoted), else the number."""
    if norm == "Linf" and 0 < top <= 32 / 255:
        return "0" if eps == 0 else f"{eps * 255:.2g}/255"
    return f"{eps:.3g}"


def strength_response(sweep, current: int | None = None) -> go.Figure:
    """What the attack does to the reference class as ε grows, without and with the defense.

    Three rows against ε: the reference class's softmax confidence (%), its margin (its logit minus the
    largest other; below 0 the model predicts another class) and the mean activation of the layer's
    front and tail neurons (groups as in :func:`group_chart`). Solid: no defense; dashed: defended.
    The defended markers are green where the defended prediction is the reference class, red where not,
    and name the defended prediction wherever it changes. Dotted vertical lines mark the flip points
    (the smallest ε that changes the prediction); the grey band marks grid point ``current`` (the slider).

    Args:
        sweep: a :class:`~nip_core.strength.StrengthSweep`.
        current: the grid index the slider is on (None: no band).
    """
    eps = list(sweep.eps)
    ref, names = sweep.reference_class, sweep.class_names
    ref_name = _class_label(names, ref)
    norm = getattr(sweep, "norm", "Linf")
    ticks = [eps_text(e, norm) for e in eps]
    short_ref = _short(ref_name, 30)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=(f"confidence in class {short_ref} (markers: green = predicts it, red = "
                                        "another class)",
                                        f"margin of class {short_ref} (below 0: another class wins)",
                                        f"mean activation of the front and tail neurons (layer {sweep.layer})"))
    label = {"adversarial": "no defense", "defended": f"defended ({sweep.defense})"}
    dash = {"adversarial": "solid", "defended": "dash"}
    for v in ("adversarial", "defended"):
        preds = [_short(_class_label(names, c), 22) for c in sweep.predictions(v)]
        hits = [c == ref for c in sweep.predictions(v)]
        custom = [[t, p] for t, p in zip(ticks, preds)]
        marker = dict(color=[_HIT if h else _MISS for h in hits], size=9, line=dict(color="white", width=1),
                      symbol="circle" if v == "defended" else "diamond")
        fig.add_trace(go.Scatter(
            x=eps, y=[100 * c for c in sweep.confidence[v]], name=label[v], legendgroup=v,
            mode="lines+markers+text" if v == "defended" else "lines+markers",
            text=_changes(preds) if v == "defended" else None, textposition="top center",
            textfont=dict(size=11, color=STRENGTH_COLOURS[v]),
            line=dict(color=STRENGTH_COLOURS[v], dash=dash[v]), marker=marker, customdata=custom,
            hovertemplate=f"{label[v]}<br>ε %{{customdata[0]}}<br>predicts %{{customdata[1]}}<br>"
                          f"confidence in {_short(ref_name, 20)}: %{{y:.1f}}%<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(
            x=eps, y=sweep.margin[v], name=label[v], legendgroup=v, showlegend=False, mode="lines+markers",
            line=dict(color=STRENGTH_COLOURS[v], dash=dash[v]), marker=marker, customdata=custom,
            hovertemplate=f"{label[v]}<br>ε %{{customdata[0]}}<br>predicts %{{customdata[1]}}<br>"
                          "margin %{y:.3g} (logit units)<extra></extra>"), row=2, col=1)
        for g in ("front", "tail"):
            fig.add_trace(go.Scatter(
                x=eps, y=sweep.group_means[v][g], name=f"{g} neurons, {label[v]}", legendgroup=f"{g}.{v}",
                mode="lines+markers", line=dict(color=GROUP_COLOURS[g], dash=dash[v]),
                marker=dict(size=6, color=GROUP_COLOURS[g]), customdata=ticks,
                hovertemplate=f"{g} neurons ({len(getattr(sweep, g))}), {label[v]}<br>ε %{{customdata}}<br>"
                              "mean activation %{y:.4g}<extra></extra>"), row=3, col=1)
    fig.add_hline(y=0, line_color="#6b7280", line_width=1, row=2, col=1)
    if current is not None:
        half = (eps[1] - eps[0]) / 3 if len(eps) > 1 else 0.01
        fig.add_vrect(x0=eps[current] - half, x1=eps[current] + half, fillcolor="#9ca3af", opacity=0.25,
                      line_width=0, row="all", col=1)
    # Labels in the empty band above 100% of the top row (left of their line for the flips, right for the run).
    fig.add_vline(x=sweep.chosen_eps, line_dash="dash", line_color="#9ca3af", line_width=1, row="all", col=1)
    fig.add_annotation(x=sweep.chosen_eps, y=107, xref="x", yref="y", text=" run's ε", showarrow=False,
                       xanchor="left", font=dict(size=10, color="#6b7280"))
    flips = []
    for row, (v, words) in enumerate((("adversarial", "attack flips"), ("defended", "defended flips")), start=1):
        i = sweep.flip[v]
        if i is None:
            flips.append(f"{label[v]}: never flips up to ε {ticks[-1]}")
            continue
        flips.append(f"{label[v]}: flips at ε {ticks[i]}")
        fig.add_vline(x=eps[i], line_dash="dot", line_width=2, line_color=STRENGTH_COLOURS[v], row="all", col=1)
        fig.add_annotation(x=eps[i], y=107 if row == 1 else 0.97, xref="x", yref="y" if row == 1 else "y2 domain",
                           yanchor="middle" if row == 1 else "top", text=f"{words} ", showarrow=False,
                           xanchor="right", font=dict(size=10, color=STRENGTH_COLOURS[v]))
    step = "" if sweep.step_ratio is None else f", step = ε × {sweep.step_ratio:.3g}"
    fig.update_layout(
        title=dict(text=f"{sweep.attack} from ε = 0 to {ticks[-1]}{step} · " + " · ".join(flips), x=0.0,
                   font=dict(size=13)),
        legend=dict(orientation="h", yanchor="top", y=-0.1, xanchor="left", x=0.0),
        margin=dict(l=60, r=20, t=70, b=110), height=720, hovermode="closest",
    )
    fig.update_yaxes(title_text="%", range=[-5, 112], row=1, col=1)
    fig.update_yaxes(title_text="logit units", row=2, col=1)
    fig.update_yaxes(title_text="layer output units", row=3, col=1)
    fig.update_xaxes(tickvals=eps, ticktext=[_eps_tick(e, eps[-1], norm) for e in eps], tickangle=0)
    fig.update_xaxes(title_text=f"ε ({'L∞, [0,1] pixel units' if norm == 'Linf' else norm + ' budget'}; "
                                "one tick per computed strength)", row=3, col=1)
    return fig
