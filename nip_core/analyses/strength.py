"""Attack strength: one image under the same attack at a grid of budgets ε, each through the defense.

Explore answers one question per run: this attack at this ε. :func:`strength_sweep` answers it at
about a dozen strengths at once, so a slider can scrub them without computing anything (issue 20 §1;
Bluff's precomputed strengths). It returns a :class:`StrengthSweep` of plain tensors and numbers.

**The grid** (:func:`eps_grid`): ``n`` strengths above 0, evenly spaced from 0 to ``min(2ε, the
attack's largest ε)``, with the chosen ε itself exactly on it (below ε the spacing is ε/a, above it
(top − ε)/b, ``a + b = n``; with the default ``n = 12`` and no clipping both are ε/6), and ε = 0:
the benign image itself, not attacked. At each strength the step size ``eps_step`` (where the
attack has one) is scaled to keep the chosen step/ε ratio (:func:`nip_core.analyses.elasticity.scaled_params`);
at the chosen ε the chosen parameters are used as they are, so that point is exactly Explore's run
(:func:`nip_core.analyses.explain.explain` with the same settings and seed).

**At each strength**: the adversarial (the attack on the model, seeded by ``seed`` as in
``explain``), the defended input (the defense on it, same seed), their logits and the layer's
per-neuron activations, the front/middle/tail group means of those activations (groups from the
layer's influence profile toward the reference class with share ``k``, the same groups and the
same means as ``explain``'s group chart: :meth:`StrengthSweep.at` is an
:class:`~nip_core.analyses.explain.Explanation` and its ``group_means`` computes them), and the reference
class's softmax confidence and margin (its logit minus the largest other). The **flip point** of
the undefended (``adversarial``) and the ``defended`` prediction is the smallest grid ε at which
it is not the reference class (None: it never leaves it on the grid; 0: already wrong unattacked).

Attacks without a budget to sweep (:func:`no_sweep_reason`) are refused with one line of why.
Same inputs and seed: the same numbers (every unit is seeded).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from nip_core.attacks import ATTACKS, run_attack
from nip_core.defenses import DEFENSES, apply_defense
from nip_core.analyses.elasticity import scaled_params, step_ratio
from nip_core.errors import InputError
from nip_core.analyses.explain import Explanation, check_run
from nip_core.influence import influence_profile, neuron_activations
from nip_core.models.base import LoadedModel
from nip_core.analyses.surgery import margins

Progress = Callable[[float, str], None]
DEFAULT_N = 12          # strengths above 0 (the grid has one more point: ε = 0)
N_RANGE = (2, 40)
GROUPS = ("front", "middle", "tail")
SWEPT = ("adversarial", "defended")

# Why an attack has no slider: one line each (the rest get the generic line of no_sweep_reason).
_REASONS = {
    "cw-l2": "C&W searches for the smallest perturbation that fools the model itself: it has no budget ε to sweep.",
    "ead": "EAD searches for the smallest L1/L2 perturbation itself: it has no budget ε to sweep.",
    "deepfool": "DeepFool takes the smallest step to the nearest decision boundary itself: it has no budget ε "
                "to sweep.",
    "hsj": "HopSkipJump is a decision-based black-box attack that shrinks its own perturbation along the "
           "boundary: it has no budget ε to sweep.",
    "square": "Square is a query-based black-box attack: its outcome hinges on its random queries rather than on "
              "a gradient step scaled with ε, and a sweep would repeat its whole search at every strength.",
    "autoattack": "AutoAttack keeps the worst of four attacks per image (one of them DeepFool, which has no "
                  "budget): a sweep would run the whole ensemble at every strength.",
    "jsma": "JSMA changes a share of the pixels (an L0 attack), not a budget ε.",
    "pixel": "The pixel attack changes a few pixels (an L0 attack), not a budget ε.",
    "simba": "SimBA's ε is the size of each random query step, not a budget.",
    "universal": "A universal perturbation is one δ fitted to a whole batch of images, not to this image.",
    "nip-aware": "nip-aware is tuned against the nip defense at one budget (see the Benchmark page's "
                 "defense-aware numbers); it is not swept.",
}


def sweepable() -> list[str]:
    """The attacks with a budget ε to sweep (the registry's ``eps_sweep``)."""
    return [a for a in ATTACKS if ATTACKS[a].eps_sweep]


def no_sweep_reason(attack: str) -> str | None:
    """One line saying why ``attack`` has no strength slider; None when it has one."""
    unit = ATTACKS.get_unit(attack)
    if unit.eps_sweep:
        return None
    return _REASONS.get(attack, f"{attack} has no budget ε to sweep.") + (
        f" The strength slider covers the gradient attacks with a budget: {', '.join(sweepable())}.")


def _tidy(v: float) -> float:
    return float(f"{v:.12g}")


def eps_grid(eps: float, high: float, n: int = DEFAULT_N) -> list[float]:
    """``n + 1`` budgets: 0, then ``n`` strengths up to ``min(2 eps, high)`` with ``eps`` exactly on the grid.

    Below ``eps`` the spacing is ``eps / a``, above it ``(top − eps) / b``, where ``a + b = n`` and ``a``
    is ``n``'s share of the interval below ``eps`` (rounded, at least 1; ``b`` at least 1 when ``top > eps``).

    Example: ``eps_grid(0.3, 1.0, 12)`` → 0, 0.05, 0.1, …, 0.3, …, 0.6.
    """
    _check_n(n)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise InputError(f"the attack's ε must be above 0 to sweep its strength; got {eps!r}.")
    top = min(2 * eps, high)
    if top < eps:
        raise InputError(f"ε = {eps:g} is above the attack's largest budget {high:g}.")
    if top == eps:
        a, b = n, 0
    else:
        a = min(n - 1, max(1, round(n * eps / top)))
        b = n - a
    below = [0.0] + [_tidy(eps * i / a) for i in range(1, a)] + [float(eps)]
    above = [_tidy(eps + (top - eps) * j / b) for j in range(1, b)] + ([float(top)] if b else [])
    return below + above


def _check_n(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not N_RANGE[0] <= n <= N_RANGE[1]:
        raise InputError(f"the number of strengths n must be a whole number in [{N_RANGE[0]}, {N_RANGE[1]}]; "
                         f"got {n!r}.")


def _budget_high(attack: str) -> float:
    [p] = [p for p in ATTACKS.get_unit(attack).spec.params if p.name == "eps"]
    return float(p.high)


@dataclass
class StrengthSweep:
    """One image under one attack at every strength of a grid, each through one defense.

    Index ``i`` runs over :attr:`eps` (``eps[0] == 0``: the benign image; ``eps[chosen]``: the run's ε).

    Attributes:
        images: ``benign`` ``[C,H,W]``; ``adversarial``, ``defended`` ``[n+1, C,H,W]`` in [0,1].
        logits: ``benign`` ``[classes]``; ``adversarial``, ``defended`` ``[n+1, classes]``.
        activations: the layer's per-neuron activations, shaped as ``logits``.
        params: the attack's parameters at each strength (``None`` at ε = 0: no attack).
        norm: the attack's norm (``Linf``, ``L2``): what ε measures.
        group_means: variant → group (front/middle/tail) → mean activation per ε (benign: constant).
        confidence, margin: variant (adversarial/defended) → the reference class's softmax confidence
            and margin (its logit minus the largest other) per ε.
        flip: variant → index of the smallest ε whose prediction is not the reference class (None: never).
        defense_change: per ε, the largest pixel change the defense made (L∞ of defended − adversarial;
            0 where it passed the input through).
    """

    model_name: str
    layer: str
    method: str
    k: float
    label: int | None
    reference_class: int
    class_names: list[str]
    attack: str
    attack_params: dict[str, Any]
    defense: str
    defense_params: dict[str, Any]
    seed: int
    eps: list[float]
    chosen: int
    step_ratio: float | None
    params: list[dict[str, Any] | None]
    images: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]
    activations: dict[str, torch.Tensor]
    front: torch.Tensor
    middle: torch.Tensor
    tail: torch.Tensor
    dead: torch.Tensor
    norm: str = "Linf"
    group_means: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    confidence: dict[str, list[float]] = field(default_factory=dict)
    margin: dict[str, list[float]] = field(default_factory=dict)
    flip: dict[str, int | None] = field(default_factory=dict)
    defense_change: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.eps)

    @property
    def chosen_eps(self) -> float:
        return self.eps[self.chosen]

    def flip_eps(self, variant: str) -> float | None:
        i = self.flip[variant]
        return None if i is None else self.eps[i]

    def reference_confidence(self, variant: str, i: int) -> float:
        """The reference class's softmax confidence for ``variant`` (benign, adversarial, defended) at point ``i``."""
        return self.confidence["adversarial"][0] if variant == "benign" else self.confidence[variant][i]

    def predictions(self, variant: str) -> list[int]:
        """The predicted class at each ε (``variant``: adversarial or defended)."""
        return [int(c) for c in self.logits[variant].argmax(1)]

    def index(self, eps: float) -> int:
        """The grid point nearest to ``eps``."""
        return min(range(len(self.eps)), key=lambda i: (abs(self.eps[i] - eps), i))

    def at(self, i: int) -> Explanation:
        """Grid point ``i`` as an :class:`~nip_core.analyses.explain.Explanation` (benign / adversarial at ε / defended
        at ε), for the Explore figures of activations (``influence_heatmaps(e, "activations")``, ``group_chart``,
        ``prediction_bars``). Influence is not measured per ε: its dict is empty."""
        if not 0 <= i < len(self.eps):
            raise InputError(f"grid point {i} is outside the sweep's {len(self.eps)} strengths.")
        pick = {"benign": lambda d: d["benign"], "adversarial": lambda d: d["adversarial"][i],
                "defended": lambda d: d["defended"][i]}
        return Explanation(
            model_name=self.model_name, layer=self.layer, method=self.method, k=self.k, label=self.label,
            reference_class=self.reference_class,
            images={v: f(self.images) for v, f in pick.items()}, logits={v: f(self.logits) for v, f in pick.items()},
            influence={}, activations={v: f(self.activations) for v, f in pick.items()},
            front=self.front, middle=self.middle, tail=self.tail, dead=self.dead, class_names=self.class_names,
            attack=self.attack, attack_params=self.params[i] or dict(self.params[self.chosen], eps=0.0),
            defense=self.defense, defense_params=self.defense_params)

    def summary(self) -> dict[str, Any]:
        """Plain numbers (JSON-ready): the grid, per-ε predictions, confidence, margin, group means, flips."""
        names = self.class_names
        return {
            "model": self.model_name, "layer": self.layer, "k": self.k, "label": self.label,
            "reference_class": self.reference_class, "attack": self.attack, "attack_params": self.attack_params,
            "defense": self.defense, "defense_params": self.defense_params, "seed": self.seed,
            "eps": self.eps, "chosen_eps": self.chosen_eps, "step_ratio": self.step_ratio,
            "predictions": {v: [names[c] for c in self.predictions(v)] for v in SWEPT},
            "confidence": self.confidence, "margin": self.margin, "group_means": self.group_means,
            "flip_eps": {v: self.flip_eps(v) for v in SWEPT}, "defense_change": self.defense_change,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


def strength_sweep(model: LoadedModel, image: torch.Tensor, label: int | None = None, *, attack: str = "fgsm",
                   attack_params: dict | None = None, defense: str = "nip", defense_params: dict | None = None,
                   layer: str | None = None, method: str = "conductance", k: float = 0.2, n_steps: int = 16,
                   seed: int = 0, n: int = DEFAULT_N, progress: Progress | None = None) -> StrengthSweep:
    """Attack ``image`` at ``n`` strengths from 0 to twice the chosen ε and defend each.

    Args:
        image: ``[C,H,W]`` in [0,1]; label: the true class when known, else the benign prediction stands in
            (as in :func:`~nip_core.analyses.explain.explain`, whose arguments these are).
        attack, attack_params: an attack with a budget (:func:`no_sweep_reason` says why others have none);
            its ``eps`` is the chosen strength, its step/ε ratio is kept at every strength.
        n: strengths above 0 (:data:`DEFAULT_N`; the grid has ``n + 1`` points, see :func:`eps_grid`).
        progress: ``progress(fraction, message)``.
    Raises:
        InputError: an attack without a budget, a bad value, or a strength out of the attack's range.
    """
    say = progress or (lambda f, m: None)
    reason = no_sweep_reason(attack)
    if reason is not None:
        raise InputError(reason)
    _check_n(n)
    layer, chosen, defense_params = check_run(model, image, label, attack, attack_params, defense, defense_params,
                                              layer, k)
    grid = eps_grid(chosen["eps"], _budget_high(attack), n)
    at = grid.index(chosen["eps"])
    # Every strength's parameters are checked before any work; the chosen ε runs as Explore ran it.
    params: list[dict | None] = [None] + [chosen if i == at else scaled_params(model, attack, chosen, e)
                                          for i, e in enumerate(grid) if i > 0]
    secs = {"profile": 0.0, "attack": 0.0, "defense": 0.0, "activations": 0.0}
    t_all = time.perf_counter()

    say(0.02, "loading influence profile")
    t = time.perf_counter()
    prof = influence_profile(model, layer, method, n_steps)
    secs["profile"] = time.perf_counter() - t

    x = image.unsqueeze(0).float()
    ref = int(label) if label is not None else int(model.logits(x).argmax())
    y = torch.tensor([ref])
    y_def = y if DEFENSES.get_unit(defense).needs_labels else None
    adv, dfd = [x], []
    for i, (e, p) in enumerate(zip(grid, params)):
        say(0.05 + 0.9 * i / len(grid), f"ε = {e:.4g} ({i + 1} of {len(grid)})")
        if p is not None:
            ar = run_attack(model, attack, x, y, p, seed=seed)
            secs["attack"] += ar.seconds
            adv.append(ar.x_adv)
        dr = apply_defense(model, defense, adv[i], defense_params, y=y_def, seed=seed, x_benign=x)
        secs["defense"] += dr.seconds
        dfd.append(dr.x_def)

    say(0.96, "measuring the layer's activations")
    t = time.perf_counter()
    batch = torch.cat([x, *adv[1:], *dfd])          # benign, adversarial at ε > 0, defended at every ε
    logits = model.logits(batch)
    acts = neuron_activations(model, batch, layer)
    secs["activations"] = time.perf_counter() - t
    m = len(grid)

    def split(t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"benign": t[0], "adversarial": torch.cat([t[:1], t[1:m]]), "defended": t[m:]}

    front, middle, tail = prof.groups(ref, k)
    sweep = StrengthSweep(
        model_name=model.name, layer=layer, method=method, k=k, label=label, reference_class=ref,
        class_names=model.class_names, attack=attack, attack_params=chosen, defense=defense,
        defense_params=defense_params, seed=seed, eps=grid, chosen=at, step_ratio=step_ratio(chosen),
        params=params, images=split(batch), logits=split(logits), activations=split(acts),
        front=front, middle=middle, tail=tail, dead=prof.dead, norm=ATTACKS.get_unit(attack).norm)
    views = [sweep.at(i).group_means("activations") for i in range(m)]
    sweep.group_means = {v: {g: [gm[v][g] for gm in views] for g in GROUPS} for v in ("benign", *SWEPT)}
    for v in SWEPT:
        lg = sweep.logits[v]
        sweep.confidence[v] = [float(c) for c in lg.softmax(1)[:, ref]]
        sweep.margin[v] = [float(c) for c in margins(lg, ref)]
        sweep.flip[v] = next((i for i, c in enumerate(sweep.predictions(v)) if c != ref), None)
    sweep.defense_change = [float(d) for d in (sweep.images["defended"] - sweep.images["adversarial"]).abs()
                            .flatten(1).amax(1)]
    secs["total"] = time.perf_counter() - t_all
    sweep.seconds = secs
    say(1.0, "done")
    return sweep
