"""Every layer at once (:mod:`nip_core.analyses.pathway`): the layer strip and its click events.
"""
from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nip_core.figures.common import VARIANTS, VARIANT_COLOURS, GROUP_COLOURS, DEAD_GREY, _class_label, _short


STRIP_COLOURS = {"attack": VARIANT_COLOURS["adversarial"], "defense": VARIANT_COLOURS["defended"],
                 "drives up": "#15803d", "holds down": "#7c3aed"}
_NEURON_COLOURS = dict(GROUP_COLOURS, dead=DEAD_GREY)


def layer_strip_figure(strip, current_layer: str | None = None, picked: tuple[str, int] | None = None) -> go.Figure:
    """Every layer at once: per layer, the attack's and the defense's change of the front and tail means
    (bars, bottom row, each layer on its own scale) and, above, the layer's most-changed neurons joined to
    the next layer's by activation × gradient edges on the adversarial input.

    Args:
        strip: a :class:`~nip_core.analyses.pathway.LayerStrip`.
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
