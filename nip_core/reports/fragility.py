"""Fragility as a self-contained HTML report (plotly.js inline): the ``fragility.html`` the CLI writes and
the app offers for download."""
from __future__ import annotations

import base64
import html
from typing import Any

import torch

from nip_core.analyses.fragility import Fragility, grid_text
from nip_core.figures.fragility import fragility_figure
from nip_core.images import tensor_to_png_bytes
from nip_core.params import unit_label


def fragility_report(frag: Fragility, settings: dict[str, Any] | None = None) -> str:
    """:func:`fragility_html` with ``figures.fragility_figure`` drawn in (plotly.js inline): the
    ``fragility.html`` the CLI writes and the app offers for download."""
    fig = fragility_figure(frag.result, frag.image)
    return fragility_html(frag, fig.to_html(full_html=False, include_plotlyjs=True), settings)


def fragility_html(frag: Fragility, figure_html: str, settings: dict[str, Any] | None = None) -> str:
    """A self-contained HTML report: the verdict per defense, the figure (``figure_html``: the
    figure's HTML with plotly.js inline), the benign image and each flipping adversarial, the settings."""
    r = frag.result

    def png(t: torch.Tensor, alt: str) -> str:
        src = "data:image/png;base64," + base64.b64encode(tensor_to_png_bytes(t)).decode("ascii")
        return (f'<figure><img src="{src}" alt="{html.escape(alt)}" style="width:160px;image-rendering:pixelated">'
                f"<figcaption>{html.escape(alt)}</figcaption></figure>")

    note = r.get("distribution", {}).get("note", "")
    rows = []
    for dl, c in r["defenses"].items():
        eps = ("—" if c["flip_eps"] is None else f"{c['flip_eps']:.4f} ({c['flip_eps_255']:g}/255)")
        pct = (f"{c['percentile']:.0f}" if c.get("percentile") is not None else
               "—" if c.get("percentile_note") == note else html.escape(c.get("percentile_note", "")))
        rows.append(f"<tr><td>{html.escape(dl)}</td><td>{eps}</td><td>{html.escape(c['status'])}</td>"
                    f"<td>{html.escape(c['prediction_name'])}</td><td>{pct}</td></tr>")
    table = ("<table><tr><th>defense</th><th>flip ε</th><th>status</th><th>defended prediction at the flip</th>"
             "<th>percentile</th></tr>" + "".join(rows) + "</table>") if rows else ""
    images = [png(frag.image, f"benign: {r['benign_prediction_name']}")]
    images += [png(a, f"{dl} flips at ε = {r['defenses'][dl]['flip_eps']:.4f}") for dl, a in frag.adversarials.items()]
    settings = {"model": r["model"], "weights sha256": r["weights_sha256"][:16],
                "attack": unit_label(r["attack"], r["attack_params"]), "step / ε": r["step_ratio"],
                "grid": grid_text(r["grid"]), "seed": r["seed"], "label": r["label"], "reference": r["reference"],
                **(settings or {})}
    verdict = (html.escape(r["message"]) if r["status"] == "misclassified" else
               f"Reference: class {html.escape(r['reference_name'])} ({html.escape(r['reference'])}). "
               "Flip ε: the smallest budget found at which the attack on the model makes the defended prediction "
               "wrong. Budgets between two coarse points that both held are not tried, so where a larger attack "
               "can fail while a smaller one holds, a smaller flip ε may exist.")
    note = html.escape(note)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Fragility — "
            f"{html.escape(r['model'])}</title><style>body{{font-family:sans-serif;max-width:960px;margin:auto}}"
            "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}"
            "figure{display:inline-block;margin:6px}</style></head><body>"
            f"<h1>How fragile is this image? — {html.escape(r['model'])}</h1><p>{verdict}</p>{table}"
            f"<p><small>{note}</small></p>{figure_html}<h2>Images</h2>{''.join(images)}<h2>Settings</h2><table>"
            + "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                      for k, v in settings.items())
            + "</table></body></html>")
