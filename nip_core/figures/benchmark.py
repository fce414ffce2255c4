"""The Benchmark view: an evaluation's heatmap, per-class accuracy, mediation and (below) elasticity.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nip_core.figures.common import _short, _grid_layout


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
    from nip_core.stats import wilson_interval

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
    """:func:`nip_core.evaluation.slices.per_class_accuracy` as a heatmap: defenses × true classes, each cell the accuracy
    with its count (``right/images``); the column labels give each class's number of images."""
    from nip_core.evaluation.slices import class_label

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


_GROUP_COLOURS = {"front": "#2563eb", "tail": "#f59e0b", "front+tail": "#7c3aed", "random": "#9ca3af",
                  "random-2k": "#6b7280", "changed": "#16a34a"}


def _error_bars(values: Sequence[float | None], cis: Sequence[Sequence[float] | None]) -> dict:
    plus = [None if v is None or ci is None else 100 * (ci[1] - v) for v, ci in zip(values, cis)]
    minus = [None if v is None or ci is None else 100 * (v - ci[0]) for v, ci in zip(values, cis)]
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1.2, width=4)


def mediation_groups_figure(cell: dict, title: str = "") -> go.Figure:
    """The observation as a causal test, at one layer: for each neuron group put back to its benign
    values in the adversarial pass, the share of successful adversarials restored and the mean
    recovery share of the margin, with bootstrap 95% intervals (``nip_core.analyses.mediation``).

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
