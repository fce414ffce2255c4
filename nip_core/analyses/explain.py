"""One image through attack and defense, with everything the Explore view shows.

:func:`explain` returns an :class:`Explanation` (plain tensors and numbers): predictions,
neuron influence and activations for the benign, adversarial and defended input, the
front/middle/tail groups of the profile used, and perturbation norms. Figures are built from
it by ``nip_core.figures``; the CLI writes it to disk; the app lays it out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from nip_core.attacks import ATTACKS, run_attack
from nip_core.defenses import DEFENSES, apply_defense
from nip_core.errors import InputError
from nip_core.influence import influence_profile, neuron_activations, neuron_influence
from nip_core.models.base import LoadedModel

VARIANTS = ("benign", "adversarial", "defended")
Progress = Callable[[float, str], None]


@dataclass
class Explanation:
    model_name: str
    layer: str
    method: str
    k: float
    label: int | None                 # true label when known
    reference_class: int              # class the influence is measured toward
    images: dict[str, torch.Tensor]   # variant → [C,H,W] in [0,1]
    logits: dict[str, torch.Tensor]   # variant → [num_classes]
    influence: dict[str, torch.Tensor]
    activations: dict[str, torch.Tensor]
    front: torch.Tensor
    middle: torch.Tensor
    tail: torch.Tensor
    dead: torch.Tensor
    class_names: list[str]
    attack: str
    attack_params: dict[str, Any]
    defense: str
    defense_params: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    # Why the defense acted as it did on the benign and the adversarial input (defenses that
    # explain themselves, e.g. the label-free `nip`); None otherwise.
    decision: dict[str, dict] | None = None

    def top(self, variant: str, n: int = 5) -> list[tuple[int, str, float]]:
        p = self.logits[variant].softmax(0)
        v, i = p.topk(min(n, len(p)))
        return [(int(c), self.class_names[int(c)], float(s)) for s, c in zip(v, i)]

    def prediction(self, variant: str) -> int:
        return int(self.logits[variant].argmax())

    def perturbation(self, variant: str) -> torch.Tensor:
        return self.images[variant] - self.images["benign"]

    def norms(self, variant: str) -> dict[str, float]:
        d = self.perturbation(variant)
        return {"linf": float(d.abs().max()), "l2": float(d.norm()), "l0": int((d.abs() > 1e-6).sum())}

    def group_means(self, quantity: str = "activations") -> dict[str, dict[str, float]]:
        """Mean of ``quantity`` over front / middle / tail neurons, per variant."""
        src = getattr(self, quantity)
        return {v: {g: float(src[v][idx].mean()) if len(idx) else 0.0
                    for g, idx in (("front", self.front), ("middle", self.middle), ("tail", self.tail))}
                for v in VARIANTS}

    def signature(self) -> dict[str, bool]:
        """Did the attack suppress front and enhance tail neurons, and did the defense reverse it?"""
        g = self.group_means("activations")
        return {
            "attack_front_down": g["adversarial"]["front"] < g["benign"]["front"],
            "attack_tail_up": g["adversarial"]["tail"] > g["benign"]["tail"],
            "defense_front_up": g["defended"]["front"] > g["adversarial"]["front"],
            "defense_tail_down": g["defended"]["tail"] < g["adversarial"]["tail"],
        }

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model_name, "layer": self.layer, "influence_method": self.method, "k": self.k,
            "label": self.label, "reference_class": self.reference_class,
            "attack": self.attack, "attack_params": self.attack_params,
            "defense": self.defense, "defense_params": self.defense_params,
            "predictions": {v: {"class": self.prediction(v), "name": self.class_names[self.prediction(v)],
                                "top5": [{"class": c, "name": n, "p": round(p, 6)} for c, n, p in self.top(v)]}
                            for v in VARIANTS},
            "norms": {v: self.norms(v) for v in VARIANTS[1:]},
            "group_activation_means": self.group_means("activations"),
            "group_influence_means": self.group_means("influence"),
            "signature": self.signature(),
            "n_front": len(self.front), "n_tail": len(self.tail), "n_dead": int(self.dead.sum()),
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "defense_decision": self.decision,
        }


def check_run(model: LoadedModel, image: torch.Tensor, label: int | None, attack: str, attack_params: dict | None,
              defense: str, defense_params: dict | None, layer: str | None, k: float) -> tuple[str, dict, dict]:
    """Refuse a bad image, label, k, layer, unit or parameter with one :class:`InputError`, before any
    work; returns the layer (the model's default for None) and the attack's and defense's full parameters."""
    if image.dim() != 3 or image.shape[0] != model.spec.input_channels:
        raise InputError(f"image must have shape [{model.spec.input_channels}, H, W]; got {list(image.shape)}.")
    if label is not None and not 0 <= int(label) < model.num_classes:
        raise InputError(f"label must be a class in [0, {model.num_classes - 1}]; got {label}.")
    if not 0 < k <= 0.5:
        raise InputError(f"parameter 'k' must be float in (0, 0.5]; got {k!r}.")
    layer = layer or model.spec.default_layer
    model.layer(layer)
    attack_params = ATTACKS.get_unit(attack).params_for(model, attack_params)
    dunit = DEFENSES.get_unit(defense)
    defense_params = dunit.params_for(model, defense_params)
    if dunit.needs_labels and label is None:
        raise InputError(f"defense '{defense}' needs the true label; pick a gallery image or give a label.")
    return layer, attack_params, defense_params


def explain(model: LoadedModel, image: torch.Tensor, label: int | None = None, *, attack: str = "fgsm",
            attack_params: dict | None = None, defense: str = "nip", defense_params: dict | None = None,
            layer: str | None = None, method: str = "conductance", k: float = 0.2, n_steps: int = 16,
            seed: int = 0, progress: Progress | None = None,
            batch: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> Explanation:
    """Attack one image, defend the adversarial, and measure neuron influence on all three.

    Args:
        image: ``[C,H,W]`` in [0,1] (use ``nip_core.images.load_image`` for files).
        label: the true class when known; otherwise the benign prediction stands in for it
            (and the attack aims away from it).
        layer, method, k: where and how neuron influence is measured and grouped.
        batch: ``(images, labels, position)`` of the evaluation shard the image belongs to
            (``nip_core.evaluation.slices.split_image``): the attack and the defense then run on the whole
            shard with ``seed``, as ``evaluate`` ran them (random starts and random defenses draw
            their noise per shard), and the image at ``position`` is kept.
    """
    say = progress or (lambda f, m: None)
    # Refuse every bad value before any work (a cold profile costs minutes on ImageNet).
    layer, attack_params, defense_params = check_run(model, image, label, attack, attack_params, defense,
                                                     defense_params, layer, k)
    dunit = DEFENSES.get_unit(defense)
    secs: dict[str, float] = {}
    x = image.unsqueeze(0).float()

    say(0.05, "loading influence profile")
    t = time.perf_counter()
    prof = influence_profile(model, layer, method, n_steps)
    secs["profile"] = time.perf_counter() - t

    logits_b = model.logits(x)
    ref = int(label) if label is not None else int(logits_b.argmax())
    y = torch.tensor([ref])

    xs, ys, pos = x, y, 0
    if batch is not None:
        xs, ys, pos = batch[0].float(), batch[1].long(), int(batch[2])
        if not (0 <= pos < len(xs) and torch.equal(xs[pos], x[0]) and (label is None or int(ys[pos]) == int(label))):
            raise InputError("the image is not at its position in the batch it is said to come from.")
        y = ys[pos:pos + 1]
    say(0.2, f"running attack {attack}" + (f" on its shard of {len(xs)} images" if batch is not None else ""))
    ar = run_attack(model, attack, xs, ys, attack_params, seed=seed)
    secs["attack"] = ar.seconds
    x_adv = ar.x_adv[pos:pos + 1]

    say(0.5, f"applying defense {defense}")
    # On a shard, exactly as evaluate_shard: every defense gets the labels (the label-free ones ignore them).
    dr = apply_defense(model, defense, ar.x_adv, defense_params,
                       y=ys if dunit.needs_labels or batch is not None else None, seed=seed, x_benign=xs)
    secs["defense"] = dr.seconds
    x_def = dr.x_def[pos:pos + 1]
    decision = None
    if dunit.explain_decision is not None:
        with model.lease():
            why = dunit.explain_decision(model, torch.cat([x, x_adv]), dr.params, seed=seed)
        decision = dict(zip(VARIANTS[:2], why)) if why is not None else None

    say(0.7, "measuring neuron influence")
    t = time.perf_counter()
    batch = torch.cat([x, x_adv, x_def])
    logits = model.logits(batch)
    infl = neuron_influence(model, batch, ref, layer, method, n_steps, exact_affine=True)   # one pass at `head`
    acts = neuron_activations(model, batch, layer)
    secs["influence"] = time.perf_counter() - t
    front, middle, tail = prof.groups(ref, k)
    say(1.0, "done")
    return Explanation(
        model_name=model.name, layer=layer, method=method, k=k, label=label, reference_class=ref,
        images=dict(zip(VARIANTS, batch)), logits=dict(zip(VARIANTS, logits)),
        influence=dict(zip(VARIANTS, infl)), activations=dict(zip(VARIANTS, acts)),
        front=front, middle=middle, tail=tail, dead=prof.dead, class_names=model.class_names,
        attack=attack, attack_params=ar.params, defense=defense, defense_params=dr.params, seconds=secs,
        decision=decision,
    )


def demo_image(model: LoadedModel, attack: str = "fgsm", restore: tuple[str, ...] = ("nip-oracle",),
               defeat: tuple[str, ...] = (), seed: int = 0) -> str:
    """The key of the gallery image that shows a step of NIP's story best on ``model``.

    Wanted: an image the model classifies correctly, that ``attack`` (at its dataset defaults)
    fools, that each defense in ``restore`` classifies correctly again and that each defense in
    ``defeat`` does not (all at their defaults). Images are tried one at a time in gallery order
    and the first that meets every wish is returned; otherwise the one meeting the most important
    wishes (correct, then fooled, then the conditions in the order given), ties going to the
    earlier image. Used by the app's guided tour so that its presets work on every built-in model.

    Args:
        model: a built-in model (its gallery labels are its classes).
        attack: the attack's name; restore, defeat: defense names; seed: their seed.
    """
    from nip_core.data import gallery, least_short

    items = gallery(model.spec.gallery)
    if not items:
        raise InputError(f"model {model.name!r} has no example images.")
    wishes = [(d, True) for d in restore] + [(d, False) for d in defeat]
    worst = 2 ** (len(wishes) + 2)

    def shortfall(it) -> int:
        """0 when the image meets every wish; larger for more important misses."""
        x, y = it.image.unsqueeze(0), torch.tensor([it.label])
        if int(model.predict(x)[0]) != it.label:
            return worst
        xa = run_attack(model, attack, x, y, seed=seed).x_adv
        if int(model.predict(xa)[0]) == it.label:
            return worst // 2
        miss = 0
        for i, (d, want) in enumerate(wishes):
            xd = apply_defense(model, d, xa, y=y if DEFENSES.get_unit(d).needs_labels else None, seed=seed).x_def
            if (int(model.predict(xd)[0]) == it.label) != want:
                miss += 2 ** (len(wishes) - 1 - i)
        return miss

    return least_short(items, shortfall)
