"""Research loop: run NIP toward EVERY class on cached adversarials, store per-candidate features.

For each input x and class c: x_c = NIP(x; profile of c). Stored per (set, c): predicted class of
x_c, its logits, per-layer standardised distances of x_c's activations to class c's benign mean
(channel means 'n' and full maps 'm'), J achieved, and the same distances for the undefended x.
Selection rules are then scored offline (research/round1/rules.py). Reads and writes the research
cache (research/common.py); needs the cached adversarials of the split (cache_adversarials.py).

Usage: PYTHONPATH=. .venv/bin/python research/round1/features.py LAYERS BUDGET STEPS STEP_SIZE [K] [split]
e.g.   PYTHONPATH=. .venv/bin/python research/round1/features.py fc1 0.3 20 0.03
"""
from __future__ import annotations

import sys
import time

import torch

from nip_core.data import benign_reference
from nip_core.influence import influence_profile
from nip_core.models import load_model
from nip_core.hooks import neuron_means
from nip_core.label_free import layer_outputs
from research.common import cache_path, load_adversarials

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def class_stats(model, per_class=400):
    p = cache_path(f"stats-{per_class}.pt")
    if p.exists():
        return torch.load(p)
    x, y = benign_reference(model, per_class)
    with torch.no_grad(), model.lock:
        outs, _ = layer_outputs(model, x, LAYERS)
    st = {}
    for L in LAYERS:
        for kind, a in (("n", neuron_means(outs[L])), ("m", outs[L].flatten(1))):
            mu = torch.stack([a[y == c].mean(0) for c in range(10)])
            resid = a - mu[y]
            sd = resid.std(0).clamp_min(1e-3 * float(a.std()) + 1e-6)
            st[L + kind] = (mu, sd)
    torch.save(st, p)
    return st


def fits(model, x, st, cls):
    """[N] standardised sq distance of x's activations to mean of class cls, per layer rep."""
    with torch.no_grad(), model.lock:
        outs, logits = layer_outputs(model, x, LAYERS)
    res = {}
    for L in LAYERS:
        for kind, a in (("n", neuron_means(outs[L])), ("m", outs[L].flatten(1))):
            mu, sd = st[L + kind]
            res[L + kind] = (((a - mu[cls]) / sd) ** 2).mean(1)
    return res, logits


def nip_multi(model, x, fms, tms, layers, budget, steps, step_size):
    x0 = x
    delta = torch.zeros_like(x0)
    with model.lock, torch.enable_grad():
        for _ in range(steps):
            xd = (x0 + delta).requires_grad_(True)
            outs, _ = layer_outputs(model, xd, layers, grad=True)
            obj = 0
            for L in layers:
                a = neuron_means(outs[L])
                f, t = fms[L], tms[L]
                obj = obj + ((a * f).sum(1) / f.sum(1) - (a * t).sum(1) / t.sum(1)).sum()
            (g,) = torch.autograd.grad(obj, xd)
            delta = (delta + step_size * g.sign()).clamp(-budget, budget)
            delta = (x0 + delta).clamp(0, 1) - x0
    return (x0 + delta).detach()


def main(layers="fc1", budget=0.3, steps=20, step_size=0.03, k=0.2, split="tune"):
    torch.set_num_threads(1)
    layers = layers.split("+")
    model = load_model("lenet-mnist")
    st = class_stats(model)
    data = load_adversarials(split, 150 if split == "tune" else 350)
    sets = {"benign": data["x"]} | data["adv"]
    y = data["y"]
    profs = {L: influence_profile(model, L) for L in layers}
    tag = f"{'+'.join(layers)}-b{budget}-s{steps}-a{step_size}-k{k}-{split}"
    out = {"y": y, "sets": {}}
    for name, xs in sets.items():
        t0 = time.perf_counter()
        n = len(xs)
        cls = torch.arange(10).repeat(n)             # input-major: [x0c0, x0c1, ...]
        xr = xs.repeat_interleave(10, 0)
        fms, tms = {}, {}
        for L in layers:
            m = [profs[L].masks(c, k) for c in range(10)]
            fms[L] = torch.stack([m[c][0] for c in cls.tolist()]).float()
            tms[L] = torch.stack([m[c][1] for c in cls.tolist()]).float()
        xd = nip_multi(model, xr, fms, tms, layers, budget, steps, step_size)
        f_def, lg_def = fits(model, xd, st, cls)
        f_in, lg_in = fits(model, xr, st, cls)
        out["sets"][name] = {
            "logits_def": lg_def.view(n, 10, 10), "logits_in": lg_in[::10],
            "fit_def": {k2: v.view(n, 10) for k2, v in f_def.items()},
            "fit_in": {k2: v.view(n, 10) for k2, v in f_in.items()},
            "l2": (xd - xr).flatten(1).norm(dim=1).view(n, 10),
        }
        acc_in = float((lg_in[::10].argmax(1) == y).float().mean())
        orc = float((lg_def.view(n, 10, 10)[torch.arange(n), y].argmax(1) == y).float().mean())
        print(f"{tag} {name}: undefended {acc_in:.3f} oracle {orc:.3f} ({time.perf_counter() - t0:.1f}s)", flush=True)
    torch.save(out, cache_path(f"feat-{tag}.pt"))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a else "fc1", float(a[1]) if len(a) > 1 else 0.3, int(a[2]) if len(a) > 2 else 20,
         float(a[3]) if len(a) > 3 else 0.03, float(a[4]) if len(a) > 4 else 0.2, a[5] if len(a) > 5 else "tune")
