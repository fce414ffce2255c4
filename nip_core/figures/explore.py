"""Explore's figures of one run (:class:`~nip_core.analyses.explain.Explanation`): heatmaps, group means,
predictions, the images and their perturbations.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from nip_core.figures.common import VARIANTS, VARIANT_COLOURS, DIVERGING, _np, neuron_groups, _class_label, _short, _panel_heatmaps, _influence_unit, _ref_name, _png_source, _f32, snap_to_zero


def influence_heatmaps(expl, quantity: str = "influence") -> go.Figure:
    """Benign / adversarial / defended neuron influence (or activation) on one shared scale.

    Args:
        expl: an :class:`~nip_core.analyses.explain.Explanation`.
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
    # Differences within float rounding of zero are drawn as zero: no colour scale stretched to noise.
    panels = [(f"{v} − benign", snap_to_zero(_np(src[v]) - b, b, _np(src[v]))) for v in ("adversarial", "defended")]
    panels = [(t + (" (no change)" if not np.any(d) else ""), d) for t, d in panels]
    what = f"influence toward class {_ref_name(expl)}" if quantity == "influence" else "activation"
    unit = _influence_unit(expl) if quantity == "influence" else "layer output units"
    # Where nothing changed the scale spans the benign values themselves, so white reads as "no change".
    fig = _panel_heatmaps(panels, _np(expl.dead), groups,
                          f"Change in neuron {what} — layer {expl.layer} (red = higher than benign)",
                          f"Δ {quantity}<br>({unit})", f"Δ {quantity}", limit=float(np.abs(b).max()) or 1.0)
    fig.update_layout(height=420)
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


def explanation_figures(expl) -> dict[str, go.Figure]:
    """Every figure the CLI's ``explain`` writes, by file stem: the influence, difference and
    group charts and one prediction chart per variant."""
    return {"influence_heatmaps": influence_heatmaps(expl), "difference_heatmaps": difference_heatmaps(expl),
            "group_chart": group_chart(expl), **{f"predictions_{v}": prediction_bars(expl, v) for v in VARIANTS}}
