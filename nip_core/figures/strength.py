"""The attack-strength slider (:mod:`nip_core.analyses.strength`): the response over ε.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nip_core.figures.common import (VARIANTS, VARIANT_COLOURS, GROUP_COLOURS, _class_label, _np, _short,
                                     _symmetric_limit, neuron_grids_png)
from nip_core.figures.explore import group_chart


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
        sweep: a :class:`~nip_core.analyses.strength.StrengthSweep`.
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


@dataclass(frozen=True)
class StrengthFrame:
    """Everything the strength slider shows at one grid point, built before the slider moves.

    Attributes:
        eps: the grid point's ε.
        images: variant → PNG bytes of the image the model saw.
        top: variant → (predicted class, its name, its softmax confidence).
        reference_confidence: variant → the reference class's softmax confidence.
        groups: :func:`~nip_core.figures.explore.group_chart` of the point's activations.
        maps: PNG bytes of the three activation grids (benign / adversarial / defended) on the sweep's scale.
    """

    eps: float
    images: dict[str, bytes]
    top: dict[str, tuple[int, str, float]]
    reference_confidence: dict[str, float]
    groups: go.Figure
    maps: bytes


def strength_frames(sweep) -> list[StrengthFrame]:
    """One :class:`StrengthFrame` per grid point of ``sweep``, so a slider move only shows what is built.

    The activation grids of every point share one symmetric colour scale (the largest |activation| of
    live neurons over the whole sweep): scrubbing changes colours only where activations change.
    """
    from nip_core.images import tensor_to_png_bytes

    dead = _np(sweep.dead).ravel().astype(bool)
    acts = [_np(sweep.activations[v]).reshape(-1, dead.size)[:, ~dead] for v in VARIANTS]
    lim = _symmetric_limit(*[a for a in acts if a.size])
    benign_png = tensor_to_png_bytes(sweep.images["benign"])
    frames = []
    for i, eps in enumerate(sweep.eps):
        view = sweep.at(i)
        images = {v: benign_png if v == "benign" else tensor_to_png_bytes(view.images[v]) for v in VARIANTS}
        maps = neuron_grids_png([(v, view.activations[v]) for v in VARIANTS], dead=dead, lim=lim,
                                unit="activation")
        frames.append(StrengthFrame(
            eps=float(eps), images=images, top={v: view.top(v, 1)[0] for v in VARIANTS},
            reference_confidence={v: float(sweep.reference_confidence(v, i)) for v in VARIANTS},
            groups=group_chart(view, "activations"), maps=maps))
    return frames
