"""Explore's first view as images: neuron-grid heatmaps drawn as PNG bytes with PIL (no Plotly).

A Plotly heatmap costs the browser about a second of main-thread CPU to draw (docs/performance.md);
a PNG of the same grid costs almost nothing. These pictures carry what the first view needs to read:
one cell per neuron in the grid of :func:`~nip_core.figures.common.grid_shape` (row-major), the
diverging colour scale of the interactive figures (red above zero, blue below, white at zero), dead
neurons grey, the class's **front** neurons outlined in black and its **tail** neurons marked with a
black dot. The interactive Plotly figures (hover values) stay one switch away.
"""
from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nip_core.figures.common import VARIANTS, _np, grid_shape

# Plotly's RdBu reversed (DIVERGING): blue (low) → white → red (high).
_RDBU_R = np.array([(5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
                    (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43), (103, 0, 31)], dtype=float)
_DEAD = (189, 189, 189)
_GAP = (255, 255, 255)
MARK_MIN_CELL = 10      # front/tail marks only where a cell is this many pixels wide (else they hide the colours)
ZERO_TOLERANCE = 1e-6   # |Δ| at most this share of the largest |value| shown is float noise: drawn as zero


def diverging_rgb(values: np.ndarray, lim: float) -> np.ndarray:
    """``values`` in [-lim, lim] → ``[..., 3]`` uint8 colours on the diverging scale (clipped)."""
    t = (np.clip(np.asarray(values, dtype=float) / (lim if lim > 0 else 1.0), -1, 1) + 1) / 2 * (len(_RDBU_R) - 1)
    t = np.nan_to_num(t, nan=(len(_RDBU_R) - 1) / 2)
    lo = np.floor(t).astype(int).clip(0, len(_RDBU_R) - 2)
    frac = (t - lo)[..., None]
    return (_RDBU_R[lo] * (1 - frac) + _RDBU_R[lo + 1] * frac).round().astype(np.uint8)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def neuron_grid_png(values: Any, lim: float, dead: Any = None, front: Sequence[int] = (),
                    tail: Sequence[int] = (), width: int = 240) -> bytes:
    """One layer's neurons as a heatmap grid (PNG bytes), about ``width`` pixels wide.

    Args:
        values: ``[n]`` one value per neuron; lim: the colour scale's half range (shared by the
            panels that are compared); dead: ``[n]`` truthy for dead neurons (grey);
        front, tail: neuron indices outlined (front) or dotted (tail).
    """
    v = _np(values).ravel()
    n = len(v)
    rows, cols = grid_shape(n)
    cell = max(3, width // cols)
    gap = 1 if cell >= 5 else 0
    img = Image.new("RGB", (cols * cell + gap, rows * cell + gap), _GAP)
    draw = ImageDraw.Draw(img)
    colours = diverging_rgb(v, lim)
    dead_mask = _np(dead).ravel() > 0 if dead is not None else np.zeros(n, bool)
    front_set, tail_set = {int(j) for j in _np(front).ravel()}, {int(j) for j in _np(tail).ravel()}
    for j in range(n):
        r, c = divmod(j, cols)
        box = (c * cell + gap, r * cell + gap, (c + 1) * cell - 1, (r + 1) * cell - 1)
        draw.rectangle(box, fill=_DEAD if dead_mask[j] else tuple(int(x) for x in colours[j]))
        if j in front_set and cell >= MARK_MIN_CELL:
            draw.rectangle(box, outline=(0, 0, 0), width=max(1, cell // 8))
        elif j in tail_set and cell >= MARK_MIN_CELL:
            cx, cy, rad = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(1.0, cell / 7)
            draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=(0, 0, 0))
    if img.width < width:        # small layers: blow the cells up (nearest neighbour keeps them sharp)
        s = width / img.width
        img = img.resize((width, max(1, round(img.height * s))), Image.NEAREST)
    return _png(img)


def colour_bar_png(lim: float, label: str, width: int = 240) -> bytes:
    """A horizontal colour bar from −lim to +lim with its three values and ``label`` under it."""
    h_bar, h_text = 12, 16
    img = Image.new("RGB", (width, h_bar + 2 * h_text), (255, 255, 255))
    ramp = diverging_rgb(np.linspace(-lim, lim, width), lim)
    img.paste(Image.fromarray(np.repeat(ramp[None], h_bar, axis=0)), (0, 0))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(11)
    for text, anchor, x in ((f"-{lim:.3g}", "la", 0), ("0", "ma", width // 2), (f"+{lim:.3g}", "ra", width - 1)):
        draw.text((x, h_bar + 1), text, fill=(40, 40, 40), font=font, anchor=anchor)
    draw.text((width // 2, h_bar + h_text), label, fill=(40, 40, 40), font=font, anchor="ma")
    return _png(img)


def shared_limit(*arrays: np.ndarray) -> float:
    """Half range of one symmetric scale for ``arrays`` (1 when all are zero)."""
    vals = [float(np.nanmax(np.abs(a))) for a in arrays if len(a) and np.isfinite(a).any()]
    m = max(vals) if vals else 0.0
    return m if m > 0 else 1.0


def without_noise(diff: np.ndarray, scale: float) -> np.ndarray:
    """``diff`` with values within float tolerance of zero (≤ ZERO_TOLERANCE × ``scale``) set to zero."""
    d = np.asarray(diff, dtype=float).copy()
    d[np.abs(d) <= ZERO_TOLERANCE * max(scale, 1e-30)] = 0.0
    return d


def explanation_pngs(expl, quantity: str = "influence", width: int = 240) -> dict[str, Any]:
    """The first view's pictures of one run: per variant its neuron grid (one shared scale), the two
    difference grids (their own symmetric scale; float noise drawn as zero), and both colour bars.

    Returns ``{"grids": {variant: png}, "diffs": {"adversarial − benign": png, "defended − benign": png},
    "bar": png, "diff_bar": png, "lim": float, "diff_lim": float, "diff_zero": {name: bool}}``.
    """
    src = {v: _np(getattr(expl, quantity)[v]) for v in VARIANTS}
    dead = _np(expl.dead)
    live = dead <= 0
    lim = shared_limit(*(src[v][live] for v in VARIANTS))
    grids = {v: neuron_grid_png(src[v], lim, dead, expl.front, expl.tail, width) for v in VARIANTS}
    diffs = {f"{v} − benign": without_noise(src[v] - src["benign"], lim) for v in ("adversarial", "defended")}
    diff_lim = shared_limit(*(d[live] for d in diffs.values()))
    unit = "influence" if quantity == "influence" else "mean activation"
    return {
        "grids": grids,
        "diffs": {k: neuron_grid_png(d, diff_lim, dead, expl.front, expl.tail, width) for k, d in diffs.items()},
        "bar": colour_bar_png(lim, unit, width),
        "diff_bar": colour_bar_png(diff_lim, f"change in {unit}", width),
        "lim": lim, "diff_lim": diff_lim,
        "diff_zero": {k: not np.any(d[live]) for k, d in diffs.items()},
    }
