"""Neuron-level Inverse Perturbation (NIP), as implemented here.

Given benign influence profiles (``nip_core.influence``), NIP adds to the input an *inverse
perturbation* that strengthens the front (high-influence) neurons and weakens the tail
(low-influence) neurons of one layer:

    J(x) = mean_{j ∈ F} a_j(x) − mean_{j ∈ T} a_j(x)
    δ_{t+1} = Π_{‖δ‖∞ ≤ ε, x+δ ∈ [0,1]} ( δ_t + α · sign ∇_δ J(x + δ_t) ),   t = 0 … T−1

where ``a_j`` is neuron ``j``'s activation (conv channels averaged over positions), ``F`` and
``T`` the front and tail groups, ε the budget, α the step size and T the number of steps.

Which groups? The true class is unknown at defense time, so:

* ``oracle`` – groups of the true class's profile (analysis only; **not deployable**);
* ``global`` – groups of the global (all-class) profile;
* ``topk``   – class-conditional: run NIP once per top-K candidate class of the input and keep
  the candidate whose defended input scores best under the selection rule (``margin``: its
  logit minus the best other logit; ``confidence``: its softmax probability).

Label-free NIP is hard: the measured numbers in ``docs/method.md`` and ``docs/nip-research.md``
show how far it falls behind the oracle.
"""
from __future__ import annotations

import torch

from nip_core.errors import InputError
from nip_core.hooks import StopForward, capture_hook, hooked, neuron_means
from nip_core.influence import InfluenceProfile
from nip_core.models.base import LoadedModel

NIP_VALUES = 1 << 23  # input values per NIP pass: ≤ 55 ImageNet images, 10,699 MNIST digits



def inverse_perturbation(model: LoadedModel, x: torch.Tensor, front: torch.Tensor, tail: torch.Tensor,
                         layer: str | None, budget: float, steps: int, step_size: float) -> torch.Tensor:
    """Signed-gradient ascent on J(x) = mean front activation − mean tail activation.

    Args:
        x: ``[N, C, H, W]`` inputs in [0,1].
        front, tail: ``[N, n_neurons]`` (or ``[n_neurons]``) boolean masks of the groups.
        budget: L∞ radius ε of the inverse perturbation, in [0,1] pixel units.
    Returns:
        Defended inputs ``[N, C, H, W]`` in [0,1] (CPU).
    """
    dev = model.device
    x0 = x.to(dev)
    f = front.to(dev).float().expand(len(x0), -1)
    t = tail.to(dev).float().expand(len(x0), -1)
    # Front and tail are disjoint, so one weight vector gives the same gradient as the two
    # group means: ∂J/∂a = f/|F| − t/|T|, exactly.
    w = f / f.sum(1, keepdim=True).clamp_min(1) - t / t.sum(1, keepdim=True).clamp_min(1)
    module = model.layer(layer)
    box: list[torch.Tensor] = []
    hook = capture_hook(box, stop=True)  # the rest of the network does not affect J
    outs = []
    with model.lease(), torch.enable_grad():
        # One hook for all steps and chunks (not one per step); chunks bound the autograd
        # graph held at once, and every image's steps are independent of the other images.
        with hooked(model.local(module), hook):
            for sl in _chunks(x0):
                xc, wc = x0[sl], w[sl]
                delta = torch.zeros_like(xc)
                for _ in range(steps):
                    xd = (xc + delta).requires_grad_(True)
                    box.clear()
                    try:
                        model.net(xd)
                    except StopForward:
                        pass
                    objective = (neuron_means(box[0]) * wc).sum()
                    (g,) = torch.autograd.grad(objective, xd)
                    delta = (delta + step_size * g.sign()).clamp(-budget, budget)
                    delta = (xc + delta).clamp(0, 1) - xc
                box.clear()
                outs.append((xc + delta).detach().cpu())
    return torch.cat(outs) if outs else x0.detach().cpu()


def logit_perturbation(model: LoadedModel, x: torch.Tensor, target: torch.Tensor, budget: float, steps: int,
                       step_size: float) -> torch.Tensor:
    """The ablation of NIP without neurons: signed-gradient *descent* on the cross-entropy of the
    logits toward ``target`` (a targeted PGD, no random start), with NIP's budget, steps and step
    size. Same projection as :func:`inverse_perturbation`; returns defended inputs (CPU).

    Args:
        x: ``[N, C, H, W]`` inputs in [0,1]; target: ``[N]`` classes to move toward.
    """
    dev = model.device
    x0, t0 = x.to(dev), torch.as_tensor(target).long().view(-1).to(dev)
    outs = []
    with model.lease(), torch.enable_grad():
        for sl in _chunks(x0):
            xc, tc = x0[sl], t0[sl]
            delta = torch.zeros_like(xc)
            for _ in range(steps):
                xd = (xc + delta).requires_grad_(True)
                loss = torch.nn.functional.cross_entropy(model.net(xd), tc, reduction="sum")
                (g,) = torch.autograd.grad(loss, xd)
                delta = (delta - step_size * g.sign()).clamp(-budget, budget)
                delta = (xc + delta).clamp(0, 1) - xc
            outs.append((xc + delta).detach().cpu())
    return torch.cat(outs) if outs else x0.detach().cpu()


def nip_chunk(x: torch.Tensor) -> int:
    """Most images per NIP pass: about ``NIP_VALUES`` input values (bounds the autograd graph)."""
    return max(1, NIP_VALUES // max(1, x[0].numel()))


def _chunks(x: torch.Tensor) -> list[slice]:
    """Even slices of at most :func:`nip_chunk` images."""
    n = len(x)
    if n == 0:
        return []
    parts = -(-n // nip_chunk(x))
    size = -(-n // parts)
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def selection_scores(logits: torch.Tensor, cls: torch.Tensor, rule: str) -> torch.Tensor:
    """How well a defended input supports candidate ``cls`` (higher is better)."""
    own = logits.gather(1, cls.view(-1, 1)).squeeze(1)
    if rule == "confidence":
        return logits.softmax(1).gather(1, cls.view(-1, 1)).squeeze(1)
    if rule == "margin":
        other = logits.scatter(1, cls.view(-1, 1), float("-inf")).amax(1)
        return own - other
    raise InputError(f"parameter 'rule' must be one of margin, confidence; got {rule!r}.")


def nip_defend(model: LoadedModel, x: torch.Tensor, profile: InfluenceProfile, *, mode: str, k: float,
               budget: float, steps: int, step_size: float, candidates: int = 3, rule: str = "margin",
               y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply NIP in ``mode``; returns (defended inputs, class whose profile was used per input).

    The used class is -1 for the global profile.
    """
    n = len(x)
    if mode == "global":
        fm, tm = profile.masks(None, k)
        xd = inverse_perturbation(model, x, fm, tm, profile.layer, budget, steps, step_size)
        return xd, torch.full((n,), -1, dtype=torch.long)
    if mode == "oracle":
        if y is None:
            raise InputError("NIP oracle mode needs the true labels; it is an analysis mode, not a deployable defense.")
        cls = torch.as_tensor(y).long().view(-1)
        profile.prefill(cls.unique().tolist())
        masks = [profile.masks(int(c), k) for c in cls]
        fm = torch.stack([m[0] for m in masks])
        tm = torch.stack([m[1] for m in masks])
        return inverse_perturbation(model, x, fm, tm, profile.layer, budget, steps, step_size), cls
    if mode != "topk":
        raise InputError(f"parameter 'mode' must be one of topk, global, oracle; got {mode!r}.")
    kk = min(candidates, model.num_classes)
    cand = model.logits(x).topk(kk, dim=1).indices            # [N, K]
    flat = cand.reshape(-1)                                   # candidate-major within each input
    profile.prefill(flat.unique().tolist())                   # new classes share one profiling pass
    masks = {int(c): profile.masks(int(c), k) for c in flat.unique()}
    fm = torch.stack([masks[int(c)][0] for c in flat])
    tm = torch.stack([masks[int(c)][1] for c in flat])
    xs = x.repeat_interleave(kk, dim=0)
    xd_all = inverse_perturbation(model, xs, fm, tm, profile.layer, budget, steps, step_size)
    scores = selection_scores(model.logits(xd_all), flat, rule).view(n, kk)
    best = scores.argmax(1)
    pick = torch.arange(n) * kk + best
    return xd_all[pick], flat[pick]
