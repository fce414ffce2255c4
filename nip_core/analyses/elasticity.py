"""Elasticity: accuracy after each defense as the attack's budget ε grows.

The paper calls NIP "elastic": it keeps defending as perturbations grow. ``evaluate --eps-grid``
measures it on a split. Every L∞ gradient attack of the grid (an attack whose registry entry
declares ``eps_sweep``: FGSM, BIM, PGD, MI-FGSM, APGD) is **expanded** into one unit per
strength of the grid (:func:`expand_eps_grid`); its step size ``eps_step``, where it has one, is
scaled with ε so that the chosen step/ε ratio stays (:func:`scaled_params`). Attacks without a
budget (C&W, DeepFool, …) stay single units, and the adaptive and black-box columns keep the
dataset's main ε: the grid changes what is attacked, not how defenses are attacked adaptively.

One **sweep** is one attack at every strength: several units of the same attack that differ only
in ε (``fgsm[eps=0.1]``, ``fgsm[eps=0.2]``) become one sweep. :func:`elasticity_block` reads each
sweep's curves from the evaluation's rows: per defense, the count of images still classified right
at each ε (the per-image ``correct`` bits) with its 95% Wilson interval. Rows are the same serial or
on Ray, so the block is too.

Every function here works on plain values (names, parameter dicts, result rows), so the CLI, the
app and the tests share them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from nip_core.attacks import ATTACKS
from nip_core.errors import InputError
from nip_core.models.base import LoadedModel
from nip_core.params import unit_label
from nip_core.stats import wilson_interval

STEP = "eps_step"


def _tidy(v: float) -> float:
    """12 significant digits: ``0.05 * 0.1`` is ``0.005``, so a scaled step reads (and keys a cache) cleanly."""
    return float(f"{v:.12g}")


def parse_eps_grid(text: Any) -> list[float]:
    """The strengths of ``--eps-grid``: ``"0.02,0.05,0.1"`` (or a list of numbers) → sorted, distinct
    floats in (0, 1]. Anything else raises :class:`InputError` with one line."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        if not any(parts):
            raise InputError("--eps-grid is empty; give strengths in (0, 1], e.g. 0.02,0.05,0.1,0.2,0.3.")
    elif isinstance(text, Iterable):
        parts = list(text)
    else:
        raise InputError(f"the ε grid must be a list of numbers in (0, 1]; got {text!r}.")
    if not parts:
        raise InputError("the ε grid is empty; give strengths in (0, 1], e.g. 0.02,0.05,0.1,0.2,0.3.")
    out = []
    for p in parts:
        try:
            if isinstance(p, bool) or p == "":
                raise ValueError
            v = float(p)
        except (TypeError, ValueError):
            raise InputError(f"every ε of the grid must be a number in (0, 1]; got {p!r}.") from None
        if not math.isfinite(v) or not 0 < v <= 1:
            raise InputError(f"every ε of the grid must be in (0, 1] ([0,1] pixel units); got {p!r}.")
        out.append(v)
    return sorted(set(out))


def sweeps_eps(name: str) -> bool:
    """Whether ``--eps-grid`` expands attack ``name``: an L∞ attack whose strength is its budget."""
    a = ATTACKS.get_unit(name)
    return a.eps_sweep and a.norm == "Linf"


def step_ratio(params: dict[str, Any]) -> float | None:
    """``eps_step / eps`` of an attack's parameters (None when it has no step, or ε is 0)."""
    if STEP not in params or not params.get("eps"):
        return None
    return _tidy(params[STEP] / params["eps"])


def scaled_params(model: LoadedModel, name: str, params: dict[str, Any], eps: float) -> dict[str, Any]:
    """``params`` of attack ``name`` at budget ``eps``, the step scaled to keep ``eps_step / eps``;
    validated. A strength (or the step it implies) outside the attack's range raises InputError.

    Example: PGD with ``eps=0.3, eps_step=0.01`` at ``eps=0.15`` gets ``eps_step=0.005``.
    """
    attack = ATTACKS.get_unit(name)
    if not attack.eps_sweep:
        raise InputError(f"attack '{name}' has no budget to sweep; choose one of: "
                         f"{', '.join(a for a in ATTACKS if ATTACKS[a].eps_sweep)}.")
    base = attack.params_for(model, params)
    ratio = step_ratio(base)
    new = dict(base, eps=_tidy(float(eps)))
    if ratio is not None:
        new[STEP] = _tidy(new["eps"] * base[STEP] / base["eps"])
    try:
        return attack.params_for(model, new)
    except InputError as e:
        step = f" (step {new[STEP]:.4g} = ε × {ratio:.4g})" if ratio is not None else ""
        raise InputError(f"ε = {eps:g} is out of range for {unit_label(name, _shown(base))}{step}: {e}") from None


def _shown(params: dict[str, Any]) -> dict[str, Any]:
    # How the evaluation labels an attack: an untargeted `target=-1` is left out.
    return {k: v for k, v in params.items() if k != "target" or v >= 0}


@dataclass
class Sweep:
    """One attack at every strength of the grid.

    Attributes:
        attack: the attack's name.
        fixed: its parameters but ``eps`` and ``eps_step`` (validated).
        ratio: ``eps_step / eps`` kept across the grid (None: the attack has no step).
        sources: labels of the units of the grid it replaces (e.g. ``fgsm[eps=0.1]``, ``fgsm[eps=0.2]``).
        units: the positions of its units, one per ε, in the expanded attack list.
    """

    attack: str
    fixed: dict[str, Any]
    ratio: float | None
    sources: list[str] = field(default_factory=list)
    units: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``fgsm``, ``pgd[eps_step/eps=0.03333;max_iter=40]``: the attack with everything but ε."""
        ratio = {} if self.ratio is None else {"eps_step/eps": self.ratio}
        return unit_label(self.attack, ratio | _shown(self.fixed))


def expand_eps_grid(model: LoadedModel, att_units: Sequence[tuple[str, dict[str, Any]]], eps_grid: Sequence[float]
                    ) -> tuple[list[tuple[str, dict[str, Any]]], list[Sweep]]:
    """Replace each L∞ gradient attack of ``att_units`` (validated ``(name, params)``) by one unit
    per ε of ``eps_grid`` (:func:`scaled_params`); other attacks stay as they are, in place.

    Units of one attack that differ only in ε share one sweep, placed where the first of them was.
    Returns the expanded units and the sweeps (in order). Raises InputError when the grid has no
    such attack or an ε is out of an attack's range.
    """
    grid = parse_eps_grid(eps_grid)
    units: list[tuple[str, dict[str, Any]]] = []
    sweeps: dict[tuple, Sweep] = {}
    for name, params in att_units:
        if not sweeps_eps(name):
            units.append((name, dict(params)))
            continue
        fixed = {k: v for k, v in params.items() if k not in ("eps", STEP)}
        ratio = step_ratio(params)
        key = (name, tuple(sorted(fixed.items())), ratio)
        source = unit_label(name, _shown(params))
        if key in sweeps:
            if source not in sweeps[key].sources:
                sweeps[key].sources.append(source)
            continue
        sweep = sweeps[key] = Sweep(name, fixed, ratio, [source])
        for eps in grid:
            sweep.units.append(len(units))
            units.append((name, scaled_params(model, name, params, eps)))
    if not sweeps:
        names = ", ".join(a for a in ATTACKS if sweeps_eps(a))
        raise InputError(f"--eps-grid sweeps the L∞ gradient attacks ({names}); the grid has none of them.")
    return units, list(sweeps.values())


def curve(correct: Sequence[int], n: int) -> dict[str, Any]:
    """Accuracy per ε from the count of images right at each ε (of ``n``), with 95% Wilson intervals."""
    ci = [wilson_interval(k, n) for k in correct]
    return {"accuracy": [k / n if n else float("nan") for k in correct], "correct": list(correct), "n": n,
            "ci_low": [lo for lo, _ in ci], "ci_high": [hi for _, hi in ci]}


def elasticity_block(sweeps: Sequence[Sweep], eps_grid: Sequence[float], attack_labels: Sequence[str],
                     rows: Sequence[dict[str, Any]], defense_labels: Sequence[str],
                     adaptive: dict[str, Any]) -> dict[str, Any]:
    """The result JSON's ``elasticity``: per sweep and defense, accuracy against ε with Wilson bands.

    Args:
        sweeps: from :func:`expand_eps_grid`; ``attack_labels``: the evaluation's label of each unit.
        rows: the evaluation's rows (``attack``, ``defense``, ``correct`` bits, ``n_successful_adv``).
        adaptive: the adaptive column's attack parameters (its ε does not follow the grid).
    """
    cells = {(r["attack"], r["defense"]): r for r in rows}
    out: dict[str, Any] = {}
    for s in sweeps:
        labels = [attack_labels[i] for i in s.units]
        first = [cells[(lab, defense_labels[0])] for lab in labels]
        n = first[0]["n"]
        out[s.label] = {
            "attack": s.attack, "from": list(s.sources), "step_ratio": s.ratio, "units": labels,
            "eps": list(eps_grid),
            # the attack alone: images it did not fool (every row of a unit carries the same count)
            "undefended": curve([n - r["n_successful_adv"] for r in first], n),
            "defenses": {dl: curve([cells[(lab, dl)]["correct"].count("1") for lab in labels], n)
                         for dl in defense_labels},
        }
    return {"eps_grid": list(eps_grid), "adaptive_eps": adaptive.get("eps"),
            "note": "each L∞ gradient attack at every ε of the grid, its step scaled to keep eps_step/eps; "
                    "adaptive and black-box columns at the dataset's main ε; bands: 95% Wilson intervals",
            "by_attack": out}
