"""Mediation: do attacks and defenses work through the neurons that influence names?

The paper's observation (``nip_core.analyses.analysis``) is correlational: on successful adversarials the
true class's high-influence ("front") neurons go down. But the top contributors to a logit that an
attack lowers will go down almost by construction. An intervention answers the causal question:
put some neurons back and see whether the prediction returns.

For a successful adversarial ``x'`` of a benign ``x`` with true class ``y``, a layer ``L`` and a
group ``G`` of its neurons (a conv neuron is a whole channel map), the **patched pass** runs ``x'``
with the neurons of ``G`` replaced by their values on a source input. With the margin
``m(z) = z_y − max_{c≠y} z_c`` of the logits:

1. **Observation as a causal test.** Source = the benign ``x``. We report the share of adversarials
   whose prediction returns to ``y`` and the mean **recovery share**

       r = (m_patched − m_adv) / (m_benign − m_adv)

   for ``front``, ``tail`` and ``front+tail`` (the true class's influence groups, share ``k``),
   beside ``random`` groups of the same sizes drawn from the same live neurons (the control:
   ``random`` matches ``front``, ``random-2k`` matches ``front+tail``) and ``changed`` (the ``front+tail``-sized group the
   attack moved most: an upper reference).
2. **Does a defense work through neurons?** Source = the defended input ``D(x')``. The share of
   the defense's margin recovery that the front+tail neurons carry,

       carried = Σ_i (m_patched,i − m_adv,i) / Σ_i (m_def,i − m_adv,i),

   beside a random group of the same size. A defense that passes inputs through has no recovery
   to carry (n/a).

Everything an evaluation shard computes is per image (:func:`mediation_parts`), so shards merge
in order and give the same numbers serial or on Ray (:func:`mediation_from_parts`), with seeded
bootstrap 95% intervals over images.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from nip_core.hooks import neuron_means
from nip_core.influence import influence_profile, layer_output
from nip_core.models.base import LoadedModel
from nip_core.analyses.surgery import layer_output_and_logits, margins, patch, random_mask

# The defenses whose mechanism is tested (issue 19): NIP and its ablation, each label-free and
# oracle, the random control and the strongest simple image-space baseline.
MEDIATION_DEFENSES = ("nip", "nip-oracle", "counter-attack", "counter-attack-oracle", "random-sign", "jpeg")
GROUPS = ("front", "tail", "front+tail", "random", "random-2k", "changed")
DEFAULT_K = 0.2
BOOTSTRAP = 1000


def layer_values(model: LoadedModel, x: torch.Tensor, layer: str, batch_size: int = 64) -> torch.Tensor:
    """The raw output of ``layer`` (``[N, C, h, w]`` or ``[N, F]``) for ``x``, on CPU."""
    outs = []
    for i in range(0, len(x), batch_size):
        outs.append(layer_output(model, x[i:i + batch_size].to(model.device), layer).detach().float().cpu())
    return torch.cat(outs)


def patched_logits(model: LoadedModel, x: torch.Tensor, layer: str, mask: torch.Tensor, source: torch.Tensor
                   ) -> torch.Tensor:
    """Logits of ``x`` with neuron ``j`` of sample ``i`` at ``layer`` set to ``source[i, j]`` wherever
    ``mask[i, j]`` (:func:`nip_core.analyses.surgery.patch`, a forward hook; the model is never copied)."""
    return patch(model, x, layer, mask, "benign", source=source).logits



def group_masks(model: LoadedModel, layer: str, classes: torch.Tensor, act_benign: torch.Tensor,
                act_adv: torch.Tensor, k: float = DEFAULT_K, seed: int = 0) -> dict[str, torch.Tensor]:
    """The neuron groups of :data:`GROUPS` per sample, as ``[N, n_neurons]`` bool masks.

    Args:
        classes: the class whose influence groups are taken, per sample (the true class).
        act_benign, act_adv: per-neuron values ``[N, n_neurons]`` (for ``changed``).
        seed: the random groups' seed.
    """
    prof = influence_profile(model, layer, "conductance")
    prof.prefill(classes.tolist())
    pairs = [prof.masks(int(c), k) for c in classes]
    front = torch.stack([p[0] for p in pairs]) if pairs else torch.zeros(0, prof.n_neurons, dtype=torch.bool)
    tail = torch.stack([p[1] for p in pairs]) if pairs else torch.zeros(0, prof.n_neurons, dtype=torch.bool)
    both = front | tail
    gen = torch.Generator().manual_seed(int(seed))
    moved = (act_adv - act_benign).abs()
    order = torch.argsort(moved, dim=1, descending=True, stable=True)
    changed = torch.zeros_like(both)
    for i, s in enumerate(both.sum(1).tolist()):
        changed[i, order[i, :s]] = True
    live, n = ~prof.dead, prof.n_neurons
    return {"front": front, "tail": tail, "front+tail": both,
            "random": random_mask(front.sum(1), n, live=live, generator=gen),
            "random-2k": random_mask(both.sum(1), n, live=live, generator=gen), "changed": changed}


def mediation_parts(model: LoadedModel, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, layer: str,
                    defended: dict[str, torch.Tensor], k: float = DEFAULT_K, seed: int = 0) -> dict[str, Any]:
    """Per-image mediation numbers of one batch at one layer (JSON-able; merged by :func:`mediation_from_parts`).

    Only successful adversarials count (benign right, adversarial wrong): the recovery share's
    denominator ``m_benign − m_adv`` is then positive.

    Args:
        x, x_adv: benign and adversarial images ``[N, C, H, W]``; y: true labels ``[N]``.
        defended: defense name → its output on ``x_adv`` ``[N, C, H, W]``.
    """
    lb, la = model.logits(x), model.logits(x_adv)
    ok = (lb.argmax(1) == y) & (la.argmax(1) != y)
    out: dict[str, Any] = {"n": int(ok.sum()), "groups": {}, "defenses": {}}
    if not ok.any():
        return out
    xb, xa, yy = x[ok], x_adv[ok], y[ok]
    mb, ma = margins(lb[ok], yy), margins(la[ok], yy)
    vb, va = layer_values(model, xb, layer), layer_values(model, xa, layer)
    masks = group_masks(model, layer, yy, neuron_means(vb), neuron_means(va), k, seed)
    out["group_size"] = {g: float(m.sum(1).double().mean()) for g, m in masks.items()}
    for g, m in masks.items():
        lp = patched_logits(model, xa, layer, m, vb)
        mp = margins(lp, yy)
        out["groups"][g] = {"restored": _bits(lp.argmax(1) == yy), "recovery": _floats((mp - ma) / (mb - ma))}
    ft, rnd = masks["front+tail"], masks["random-2k"]
    for name, xd in defended.items():
        xd = xd[ok]
        if bool((xd == xa).all()):
            out["defenses"][name] = {"passes_through": True}
            continue
        vd, ld = layer_output_and_logits(model, xd, layer)      # one pass: the layer's values and the logits
        md = margins(ld, yy)
        out["defenses"][name] = {
            "passes_through": False,
            "total": _floats(md - ma),
            "front+tail": _floats(margins(patched_logits(model, xa, layer, ft, vd), yy) - ma),
            "random": _floats(margins(patched_logits(model, xa, layer, rnd, vd), yy) - ma),
        }
    return out


def _bits(ok: torch.Tensor) -> str:
    return "".join("1" if b else "0" for b in ok.tolist())


def _floats(v: torch.Tensor) -> list[float]:
    return [float(f"{t:.7g}") for t in v.double().tolist()]


def _interval(stat, arrays: list[np.ndarray], seed: int) -> list[float] | None:
    """Percentile bootstrap 95% interval of ``stat(*arrays)`` over images (seeded)."""
    n = len(arrays[0])
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, n, n)
        v = stat(*(a[idx] for a in arrays))
        if v is not None and math.isfinite(v):
            vals.append(v)
    if not vals:
        return None
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return [float(lo), float(hi)]


def _ratio(num: np.ndarray, den: np.ndarray) -> float | None:
    d = float(den.sum())
    return float(num.sum()) / d if d > 0 else None


def mediation_from_parts(parts: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Merge :func:`mediation_parts` of disjoint batches (in shard order) into the reported numbers:
    per group the share restored and the mean recovery share, per defense the carried share and
    its random control, each with a bootstrap 95% interval (seed ``seed``)."""
    n = sum(p["n"] for p in parts)
    out: dict[str, Any] = {"n_successful": n, "groups": {}, "defenses": {}}
    have = [p for p in parts if p["n"]]
    if not have:
        return out
    sizes = {g: sum(p["group_size"][g] * p["n"] for p in have) / n for g in GROUPS}
    for g in GROUPS:
        restored = np.array([c == "1" for p in have for c in p["groups"][g]["restored"]], dtype=float)
        rec = np.array([r for p in have for r in p["groups"][g]["recovery"]], dtype=float)
        out["groups"][g] = {
            "size": sizes[g],
            "restored": float(restored.mean()), "restored_ci": _interval(lambda a: float(a.mean()), [restored], seed),
            "recovery": float(rec.mean()), "recovery_ci": _interval(lambda a: float(a.mean()), [rec], seed),
        }
    for name in have[0]["defenses"]:
        cells = [p["defenses"][name] for p in have]
        if all(c["passes_through"] for c in cells):
            out["defenses"][name] = {"carried": None, "random": None,
                                     "note": "passes inputs through (no calibration): nothing to carry"}
            continue
        # Images the defense passed through recover nothing and carry nothing: zeros.
        def col(key: str) -> np.ndarray:
            return np.array([v for p, c in zip(have, cells)
                             for v in (c[key] if not c["passes_through"] else [0.0] * p["n"])], dtype=float)
        total, ft, rnd = col("total"), col("front+tail"), col("random")
        out["defenses"][name] = {
            "margin_recovery": float(total.mean()),
            "carried": _ratio(ft, total), "carried_ci": _interval(_ratio, [ft, total], seed),
            "random": _ratio(rnd, total), "random_ci": _interval(_ratio, [rnd, total], seed),
        }
    return out


def mediation_layers(model: LoadedModel, names: list[str] | None = None) -> list[str]:
    """The layers a mediation runs at: ``names`` (checked) or every hookable layer of the model."""
    if not names:
        return list(model.spec.layers)
    for name in names:
        model.layer(name)
    return list(dict.fromkeys(names))


def mediation_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per attack × layer of an evaluation's ``mediation`` block: the share of successful
    adversarials restored by each group put back, and each defense's carried share beside its
    random control (``None`` where not applicable)."""
    block = result.get("mediation") or {}
    rows = []
    for attack, by_layer in (block.get("by_attack") or {}).items():
        for layer in block.get("layers", []):
            cell = by_layer.get(layer) or {}
            row: dict[str, Any] = {"attack": attack, "layer": layer, "n_successful": cell.get("n_successful", 0)}
            for g in GROUPS:
                row[f"restored: {g}"] = (cell.get("groups", {}).get(g) or {}).get("restored")
            for d, v in (cell.get("defenses") or {}).items():
                row[f"{d}: carried"] = v.get("carried")
                row[f"{d}: random"] = v.get("random")
            rows.append(row)
    return rows


def mediation_default_layer(result: dict[str, Any]) -> str:
    """The layer a result's mediation is first shown at: the model's influence layer when it was
    mediated (a registered model), else the last mediated layer."""
    from nip_core.models.base import MODELS

    layers = (result.get("mediation") or {}).get("layers") or [""]
    spec = MODELS.get(result.get("model", ""))
    return spec.default_layer if spec is not None and spec.default_layer in layers else layers[-1]

