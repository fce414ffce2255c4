"""Two runs on one image, side by side: which front neurons the attack suppressed in each, and how
each run's neuron groups moved (issue 21, Explore's "Pin and compare").

A run is an :class:`~nip_core.analyses.explain.Explanation`. :func:`compare_runs` answers two questions:

* **Same model and layer** (another attack, ε, defense or seed): the neurons are the same units,
  so the front neurons whose activation *fell* under attack (adversarial below benign) are compared
  by identity: A only, B only, both, and their Jaccard overlap.
* **Two models** (for example ``lenet-fashion`` and its adversarially trained ``lenet-fashion-at``),
  or two layers: neuron ``j`` of one is not neuron ``j`` of the other, so identities mean nothing.
  Each run's own groups are compared instead: the share of its front neurons that fell, the
  relative fall of their mean activation, the rise of its tail, the defense's recovery and the
  predictions (:class:`RunStats`; these are given for every comparison).

The figure is ``nip_core.figures.compare_heatmaps`` (both runs on one colour scale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from nip_core.errors import InputError

VARIANTS = ("benign", "adversarial", "defended")
NAMES = ("A", "B")
# Below this the attack barely moved the front group's mean (layer output units): a recovery share
# (a ratio over that movement) would be noise.
MIN_DROP = 1e-6


def signed_percent(share: float) -> str:
    """A share as a signed whole percentage, "0%" where it rounds to zero (never "-0%")."""
    r = round(share * 100)
    return "0%" if r == 0 else f"{r:+d}%"


@dataclass(frozen=True)
class Overlap:
    """Two sets of neuron indices: only in A, only in B, in both, and |A ∩ B| / |A ∪ B| (None when
    both are empty: nothing to overlap)."""

    a_only: tuple[int, ...]
    b_only: tuple[int, ...]
    both: tuple[int, ...]
    jaccard: float | None


def overlap(a: Sequence[int], b: Sequence[int]) -> Overlap:
    """:class:`Overlap` of two index sets (duplicates ignored; each part sorted)."""
    sa, sb = {int(i) for i in a}, {int(i) for i in b}
    union = sa | sb
    return Overlap(tuple(sorted(sa - sb)), tuple(sorted(sb - sa)), tuple(sorted(sa & sb)),
                   len(sa & sb) / len(union) if union else None)


def _mean(t: torch.Tensor, idx: torch.Tensor) -> float:
    return float(t[idx].mean()) if len(idx) else 0.0


def _share(part: float, whole: float) -> float | None:
    return part / whole if abs(whole) > MIN_DROP else None


@dataclass(frozen=True)
class RunStats:
    """What one run did to its own neuron groups (layer output units unless said otherwise).

    Attributes:
        front: the run's front neurons (its profile's top ``k`` toward the reference class).
        front_fell: front neurons whose adversarial activation is below their benign one.
        tail_rose: tail neurons whose adversarial activation is above their benign one.
        front_drop: mean front activation, benign minus adversarial (> 0: the front fell).
        front_drop_share: ``front_drop`` over the benign front mean (scale-free, comparable
            across models); None when the benign front mean is 0.
        tail_rise: mean tail activation, adversarial minus benign; tail_rise_share: over the
            benign front mean (the tail's own benign mean is often 0).
        recovery: (defended − adversarial) / (benign − adversarial) front mean: 0 = the defense
            left the front where the attack put it, 1 = back to benign; None when the attack
            moved the front mean by less than ``MIN_DROP``.
        predictions: variant → (class, class name, softmax confidence); correct: variant →
            prediction equals the reference class.
    """

    model_name: str
    layer: str
    k: float
    attack: str
    attack_params: dict[str, Any]
    defense: str
    reference_class: int
    reference_name: str
    front: tuple[int, ...]
    n_tail: int
    front_fell: tuple[int, ...]
    tail_rose: tuple[int, ...]
    front_drop: float
    front_drop_share: float | None
    tail_rise: float
    tail_rise_share: float | None
    recovery: float | None
    predictions: dict[str, tuple[int, str, float]]
    correct: dict[str, bool]

    @property
    def n_front(self) -> int:
        return len(self.front)

    @property
    def flipped(self) -> bool:
        """The attack changed a correct prediction (the benign one was the reference class)."""
        return self.correct["benign"] and not self.correct["adversarial"]


def run_stats(expl) -> RunStats:
    """:class:`RunStats` of one :class:`~nip_core.analyses.explain.Explanation`."""
    act = {v: expl.activations[v].float() for v in VARIANTS}
    front, tail = expl.front.long(), expl.tail.long()
    g = {v: (_mean(act[v], front), _mean(act[v], tail)) for v in VARIANTS}
    fell = front[act["adversarial"][front] < act["benign"][front]]
    rose = tail[act["adversarial"][tail] > act["benign"][tail]]
    drop = g["benign"][0] - g["adversarial"][0]
    rise = g["adversarial"][1] - g["benign"][1]
    ref = int(expl.reference_class)
    preds = {v: expl.top(v, 1)[0] for v in VARIANTS}
    return RunStats(
        model_name=expl.model_name, layer=expl.layer, k=float(expl.k), attack=expl.attack,
        attack_params=dict(expl.attack_params), defense=expl.defense, reference_class=ref,
        reference_name=expl.class_names[ref], front=tuple(int(i) for i in front), n_tail=len(tail),
        front_fell=tuple(int(i) for i in fell), tail_rose=tuple(int(i) for i in rose),
        front_drop=drop, front_drop_share=_share(drop, g["benign"][0]),
        tail_rise=rise, tail_rise_share=_share(rise, g["benign"][0]),
        recovery=(g["defended"][0] - g["adversarial"][0]) / drop if abs(drop) > MIN_DROP else None,
        predictions=preds, correct={v: preds[v][0] == ref for v in VARIANTS},
    )


def comparable(a, b) -> str | None:
    """Why runs ``a`` and ``b`` cannot be compared (None when they can): they must show one image."""
    xa, xb = a.images["benign"], b.images["benign"]
    if xa.shape != xb.shape or not torch.equal(xa, xb):
        return ("the two runs use different images; pin and compare shows two runs of ONE image (pick the pinned "
                "run's image again, on this model or another model of the same dataset)")
    return None


def _value_text(v: Any) -> str:
    """A parameter's value; a pixel step that is a whole number of grey levels also as ``n/255``."""
    if not isinstance(v, float):
        return str(v)
    levels = v * 255
    if 0 < v < 1 and abs(levels - round(levels)) < 1e-4 and f"{v:g}" != f"{v:.3g}":
        return f"{round(levels)}/255"
    return f"{v:g}"


def _params_text(params: dict[str, Any]) -> str:
    """``eps 0.1, max_iter 10`` (an untargeted attack's ``target -1`` left out; ``eps 2/255``)."""
    return ", ".join(f"{k} {_value_text(v)}" for k, v in sorted(params.items()) if not (k == "target" and v == -1))


def changed_settings(a, b) -> list[str]:
    """What run B changed against run A, one phrase per setting (``"attack fgsm → pgd"``)."""
    out = []
    for name, va, vb in (("model", a.model_name, b.model_name), ("layer", a.layer, b.layer),
                         ("attack", a.attack, b.attack), ("defense", a.defense, b.defense),
                         ("influence method", a.method, b.method), ("k", f"{a.k:g}", f"{b.k:g}")):
        if va != vb:
            out.append(f"{name} {va} → {vb}")
    if a.attack == b.attack:
        for p in sorted(set(a.attack_params) | set(b.attack_params)):
            pa, pb = a.attack_params.get(p), b.attack_params.get(p)
            if pa != pb:
                out.append(f"{a.attack} {p} {_value_text(pa)} → {_value_text(pb)}")
    if a.defense == b.defense:
        shared = ("layer", "method", "k")       # NIP's copies of the influence settings, said above
        for p in sorted((set(a.defense_params) | set(b.defense_params)) - set(shared)):
            pa, pb = a.defense_params.get(p), b.defense_params.get(p)
            if pa != pb:
                out.append(f"{a.defense} {p} {_value_text(pa)} → {_value_text(pb)}")
    return out


def run_title(expl) -> str:
    """One line naming a run: model, attack and its parameters, defense, layer."""
    return (f"{expl.model_name} · {expl.attack} ({_params_text(expl.attack_params)}) · defense {expl.defense} · "
            f"layer {expl.layer}")


@dataclass(frozen=True)
class RunComparison:
    """Two runs of one image (:func:`compare_runs`).

    Attributes:
        a, b: each run's :class:`RunStats`.
        neurons_match: same model and layer, so neuron ``j`` is the same unit in both runs.
        why_groups: when they do not match, why identities are not compared (one sentence).
        fell: :class:`Overlap` of the two runs' fallen front neurons (None when neurons differ).
        delta: run name → ``[n_neurons]`` adversarial − benign activation (for the identity table).
        changed: :func:`changed_settings`.
    """

    a: RunStats
    b: RunStats
    neurons_match: bool
    why_groups: str | None
    fell: Overlap | None
    delta: dict[str, torch.Tensor]
    changed: list[str]

    def identity_rows(self) -> list[dict[str, Any]]:
        """One row per front neuron that fell in A or B: where it fell and how far in each run
        (rows: both, then A only, then B only; within each, the largest fall in A and B together
        first, ties by neuron index). When the runs' front
        groups differ (another k), two more columns say which run counts the neuron as front."""
        if self.fell is None:
            return []
        front_a, front_b = set(self.a.front), set(self.b.front)
        rows = []
        for where, idx in (("both", self.fell.both), ("A only", self.fell.a_only), ("B only", self.fell.b_only)):
            for j in sorted(idx, key=lambda j: (float(self.delta["A"][j] + self.delta["B"][j]), j)):
                row = {"neuron": j, "fell in": where,
                       "Δ activation A": float(self.delta["A"][j]), "Δ activation B": float(self.delta["B"][j])}
                if front_a != front_b:      # another k: say which run counts the neuron as front
                    row |= {"front in A": j in front_a, "front in B": j in front_b}
                rows.append(row)
        return rows

    def stats_rows(self) -> list[dict[str, Any]]:
        """The group statistics as rows (statistic, A, B): texts ready to show."""
        def pct(v: float | None) -> str:
            return "n/a" if v is None else signed_percent(v)

        def pred(s: RunStats, v: str) -> str:
            c, name, p = s.predictions[v]
            return f"{name} ({p * 100:.0f}%) {'✓ correct' if s.correct[v] else '✗ wrong'}"

        spec = [
            ("model · layer", lambda s: f"{s.model_name} · {s.layer}"),
            ("attack", lambda s: f"{s.attack} ({_params_text(s.attack_params)})"),
            ("defense", lambda s: s.defense),
            ("benign prediction", lambda s: pred(s, "benign")),
            ("adversarial prediction", lambda s: pred(s, "adversarial")),
            ("defended prediction", lambda s: pred(s, "defended")),
            ("front neurons that fell", lambda s: f"{len(s.front_fell)} of {s.n_front}"),
            ("front mean activation change", lambda s: pct(None if s.front_drop_share is None
                                                           else -s.front_drop_share)),
            ("tail neurons that rose", lambda s: f"{len(s.tail_rose)} of {s.n_tail}"),
            ("tail mean activation change (in % of the benign front mean)", lambda s: pct(s.tail_rise_share)),
            ("defense recovery of the front mean", lambda s: "no defense" if s.defense == "none" else
             "n/a" if s.recovery is None else f"{s.recovery * 100:.0f}%"),
        ]
        return [{"statistic": name, "A (pinned)": f(self.a), "B": f(self.b)} for name, f in spec]

    def verdict(self) -> str:
        """One or two sentences a student can read first."""
        fooled = {n: s.flipped for n, s in zip(NAMES, (self.a, self.b))}
        wrong = [n for n, s in zip(NAMES, (self.a, self.b)) if not s.correct["benign"]]
        if wrong:
            head = f"{' and '.join(wrong)}: the model is wrong even without the attack."
        elif all(fooled.values()):
            head = "The attack fooled both runs."
        elif not any(fooled.values()):
            head = "The attack fooled neither run."
        else:
            head = "The attack fooled A but not B." if fooled["A"] else "The attack fooled B but not A."
        if self.fell is not None:
            o = self.fell
            j = "n/a" if o.jaccard is None else f"{o.jaccard:.2f}"
            return (f"{head} Same model and layer, so the neurons are the same units: {len(o.both) + len(o.a_only)} "
                    f"front neurons fell in A and {len(o.both) + len(o.b_only)} in B, {len(o.both)} of them in "
                    f"both (Jaccard overlap {j}).")

        def fell(s: RunStats) -> str:
            share = "" if s.front_drop_share is None else f" (mean activation {signed_percent(-s.front_drop_share)})"
            return f"{len(s.front_fell)} of {s.n_front}{share}"
        return f"{head} {self.why_groups} Front neurons that fell: A {fell(self.a)}; B {fell(self.b)}."


def compare_runs(a, b) -> RunComparison:
    """Compare two :class:`~nip_core.analyses.explain.Explanation` of one image (see the module's docstring).

    Raises:
        InputError: the runs show different images (:func:`comparable`).
    """
    reason = comparable(a, b)
    if reason is not None:
        raise InputError(f"cannot compare: {reason}.")
    sa, sb = run_stats(a), run_stats(b)
    if a.model_name != b.model_name:
        why = (f"The runs use two models ({a.model_name}, {b.model_name}): neuron j of one is not neuron j of the "
               "other, so their identities cannot be matched; the table compares each model's own front and tail "
               "groups instead.")
    elif a.layer != b.layer:
        why = (f"The runs measure two layers ({a.layer}, {b.layer}): their neurons are different units, so the "
               "table compares each layer's own front and tail groups instead.")
    else:
        why = None
    delta = {}
    if why is None:
        delta = {"A": (a.activations["adversarial"] - a.activations["benign"]).float(),
                 "B": (b.activations["adversarial"] - b.activations["benign"]).float()}
    return RunComparison(a=sa, b=sb, neurons_match=why is None, why_groups=why,
                         fell=overlap(sa.front_fell, sb.front_fell) if why is None else None,
                         delta=delta, changed=changed_settings(a, b))


def contrast_image(model_a, model_b, attack: str = "fgsm", seed: int = 0) -> str:
    """The key of the gallery image that shows two models of one dataset apart best: both classify
    it correctly, ``attack`` (at its dataset defaults) fools ``model_a`` and does not fool ``model_b``
    (a standard model beside an adversarially trained one).

    Images are tried in gallery order and the first that meets every wish is returned; otherwise the
    one meeting the most important wishes (both correct, then A fooled, then B held), ties going to
    the earlier image. Used by the guided tour's robust-model step.

    Raises:
        InputError: the models do not share a gallery (dataset), or it is empty.
    """
    from nip_core.attacks import run_attack
    from nip_core.data import gallery, least_short

    if model_a.spec.gallery != model_b.spec.gallery:
        raise InputError(f"models {model_a.name!r} and {model_b.name!r} have different example images "
                         f"({model_a.spec.gallery}, {model_b.spec.gallery}); pick two models of one dataset.")
    items = gallery(model_a.spec.gallery)
    if not items:
        raise InputError(f"model {model_a.name!r} has no example images.")

    def shortfall(it) -> int:
        x, y = it.image.unsqueeze(0), torch.tensor([it.label])
        if int(model_a.predict(x)[0]) != it.label or int(model_b.predict(x)[0]) != it.label:
            return 4
        fooled_a = int(model_a.predict(run_attack(model_a, attack, x, y, seed=seed).x_adv)[0]) != it.label
        held_b = int(model_b.predict(run_attack(model_b, attack, x, y, seed=seed).x_adv)[0]) == it.label
        return 2 * (not fooled_a) + (not held_b)

    return least_short(items, shortfall)


COMPARE_DEFENSES = ("none", "jpeg", "bitdepth", "median", "gaussian", "random-sign", "nip-global", "nip",
                    "nip-oracle")


def defense_comparison(model, expl, nip_params: dict[str, Any], seed: int = 0,
                       defenses: Sequence[str] = COMPARE_DEFENSES,
                       progress: Callable[[float, str], None] | None = None) -> list[dict[str, Any]]:
    """One explored run's adversarial through each of ``defenses`` (the baselines, the control and NIP's
    modes; ``nip-oracle`` only when the run has a true label): per defense its prediction, its
    confidence in it and in the reference class, whether it is right, how far it moved the input and its
    time. NIP-family defenses and the control take ``nip_params`` (those they have); a defense that
    refuses the input is a row with its ``error``, so it hides none of the others."""
    from nip_core.defenses import DEFENSES, apply_defense

    x_adv = expl.images["adversarial"].unsqueeze(0)
    ref = expl.reference_class
    names = [d for d in defenses if d != "nip-oracle" or expl.label is not None]
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        if progress:
            progress(i / len(names), f"defense {name}")
        unit = DEFENSES.get_unit(name)
        known = {p.name for p in unit.spec.params}
        params = {k: v for k, v in nip_params.items() if k in known} if unit.family in ("nip", "control") else {}
        y = torch.tensor([expl.label]) if unit.needs_labels else None
        try:
            dr = apply_defense(model, name, x_adv, params, y=y, seed=seed, x_benign=expl.images["benign"].unsqueeze(0))
        except InputError as exc:
            rows.append({"defense": name, "deployable": unit.deployable, "family": unit.family, "error": str(exc)})
            continue
        p = model.probabilities(dr.x_def)[0]
        pred = int(p.argmax())
        rows.append({
            "defense": name, "deployable": unit.deployable, "family": unit.family,
            "prediction": pred, "prediction_name": expl.class_names[pred],
            "prediction_confidence": float(p[pred]), "reference_confidence": float(p[ref]),
            "correct": pred == ref, "linf_change": float((dr.x_def - x_adv).abs().max()),
            "seconds": dr.seconds,
        })
    if progress:
        progress(1.0, "done")
    return rows
