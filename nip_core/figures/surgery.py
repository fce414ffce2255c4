"""Neuron surgery (:mod:`nip_core.analyses.surgery`): bars, verdict, the neuron picker and its click events.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from nip_core.figures.common import VARIANT_COLOURS, DIVERGING, _DEAD_SCALE, _np, grid_shape, to_grid, neuron_groups, _symmetric_limit, _class_label, _short, _f32


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
        result: a :class:`~nip_core.analyses.surgery.SurgeryResult`.
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
        barmode="group", xaxis=dict(title="class (★ = reference class)", type="category", automargin=True),
        yaxis=dict(title="softmax confidence (%)", range=[0, 115]),
        # The legend sits above the bars: below them, long (ImageNet) class names tilt their tick labels
        # down into it, and the axis title landed on the legend.
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0),
        margin=dict(l=50, r=20, t=90, b=40), height=400,
    )
    return fig


def surgery_verdict(result, image: int = 0) -> str:
    """One sentence on a neuron surgery: what the patched pass predicts, and whether the class came back.

    Args:
        result: a :class:`~nip_core.analyses.surgery.SurgeryResult`; image: which input of the batch.
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
