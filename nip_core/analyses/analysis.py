"""The paper's observation, measured: do attacks suppress front neurons and enhance tail ones?

For each successful adversarial ``x'`` of a benign ``x`` with true class ``y``, and groups
F (front) and T (tail) from a benign profile (the true class's, or the global one):

    Δa_F = mean_{j∈F} a_j(x') − mean_{j∈F} a_j(x)      Δa_T likewise
    ΔI_F, ΔI_T: the same for influence toward ``y``

We report the means of these changes and the share of images where Δa_F < 0 and Δa_T > 0
("front down, tail up"). The **control** is a random group R of the same size as F (seeded):
drawn from the live neurons like F; its Δa_R and the share where Δa_R < 0 say how often *any* group of that size goes down, so the
front group's share reads against it rather than against zero. (The causal test, which puts
neurons back and watches the prediction, is ``nip_core.analyses.mediation``.)
"""
from __future__ import annotations

from typing import Any

import torch

from nip_core.influence import influence_profile, neuron_activations, neuron_influence
from nip_core.analyses.surgery import random_mask
from nip_core.models.base import LoadedModel


def _group_mean(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    m = masks.float()
    return (values * m).sum(1) / m.sum(1).clamp_min(1)


def suppression_stats(model: LoadedModel, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                      layer: str | None = None, k: float = 0.2, method: str = "conductance",
                      n_steps: int = 16, seed: int = 0) -> dict[str, Any]:
    """Front/tail changes between benign and adversarial inputs (successful adversarials only)."""
    return suppression_from_sums([suppression_sums(model, x, x_adv, y, layer, k, method, n_steps, seed)])


_CHANGES = ("front_activation_change", "tail_activation_change", "front_influence_change", "tail_influence_change",
            "random_activation_change")
_SHARES = ("share_front_down_tail_up", "share_front_down", "share_tail_up", "share_random_down")


def suppression_sums(model: LoadedModel, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                     layer: str | None = None, k: float = 0.2, method: str = "conductance",
                     n_steps: int = 16, seed: int = 0) -> dict[str, Any]:
    """What :func:`suppression_stats` averages, as sums and counts over the successful adversarials
    of this batch: batches (evaluation shards) combine exactly with :func:`suppression_from_sums`.

    Args:
        x, x_adv: benign and adversarial images ``[N,C,H,W]`` in [0,1]; y: true labels ``[N]``.
        seed: the random control group's seed (one group per image, the size of its front group).
    """
    layer = layer or model.spec.default_layer
    fooled = model.predict(x_adv) != y
    out: dict[str, Any] = {"layer": layer, "k": k, "method": method, "n_successful": int(fooled.sum())}
    if not fooled.any():
        return out
    xb, xa, yy = x[fooled], x_adv[fooled], y[fooled]
    prof = influence_profile(model, layer, method, n_steps)
    act_b, act_a = neuron_activations(model, xb, layer), neuron_activations(model, xa, layer)
    inf_b = neuron_influence(model, xb, yy, layer, method, n_steps)
    inf_a = neuron_influence(model, xa, yy, layer, method, n_steps)
    for kind in ("true_class", "global"):
        if kind == "true_class":
            pairs = [prof.masks(int(c), k) for c in yy]
            fm, tm = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        else:
            f, t = prof.masks(None, k)
            fm, tm = f.expand(len(yy), -1), t.expand(len(yy), -1)
        rm = random_mask(fm.sum(1), fm.shape[1], seed, live=~prof.dead)
        daf = _group_mean(act_a, fm) - _group_mean(act_b, fm)
        dar = _group_mean(act_a, rm) - _group_mean(act_b, rm)
        dat = _group_mean(act_a, tm) - _group_mean(act_b, tm)
        dif = _group_mean(inf_a, fm) - _group_mean(inf_b, fm)
        dit = _group_mean(inf_a, tm) - _group_mean(inf_b, tm)
        sums = {name: float(v.double().sum()) for name, v in zip(_CHANGES, (daf, dat, dif, dit, dar))}
        counts = {name: int(v.sum()) for name, v in zip(_SHARES, ((daf < 0) & (dat > 0), daf < 0, dat > 0,
                                                                    dar < 0))}
        out[kind] = {"sums": sums, "counts": counts}
    return out


def suppression_from_sums(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine :func:`suppression_sums` of disjoint batches (same layer, k, method) into the
    means and shares of :func:`suppression_stats`, as if measured on all images at once."""
    first = parts[0]
    n = sum(p["n_successful"] for p in parts)
    out: dict[str, Any] = {"layer": first["layer"], "k": first["k"], "method": first["method"], "n_successful": n}
    if n == 0:
        return out
    for kind in ("true_class", "global"):
        have = [p[kind] for p in parts if kind in p]
        out[kind] = {name: sum(h["sums"][name] for h in have) / n for name in _CHANGES}
        out[kind] |= {name: sum(h["counts"][name] for h in have) / n for name in _SHARES}
    return out
