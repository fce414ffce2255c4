"""Fragility: how small an attack flips this image, with and without each defense?

For one image, a model, an L∞ gradient attack (``pgd`` by default) and some defenses,
:func:`fragility` finds per defense the **flip ε**: the smallest budget on a grid at which the attack
on the model makes the *defended* prediction wrong. Wrong means different from the true class when
one is given, else from the model's benign prediction. The attack never sees the defense (it attacks
the model, as ``evaluate``'s attack rows do); each budget's adversarial is computed once and shared
by every defense.

**The grid** (:func:`flip_grid`): multiples of 1/255 up to 0.3 on one-channel (MNIST-like) data and
up to 16/255 on photos (0.3 itself is the last point on one channel; it lies between 76/255 and
77/255). The search first walks a coarse grid upwards (every 8/255 on one channel, every 4/255 on
photos, and the maximum). At the first coarse point that fails it walks every 1/255 step upwards
from the last coarse point that held, and the first failure found there is the flip ε
(:func:`find_flip`).

**What the refinement assumes.** Nothing about monotonicity *within* the refined interval: every
1/255 point of it is tried in order, and the smallest failing one is reported. But the points
*between two coarse points that both held* are never tried: if a larger attack can fail while a
smaller one holds (PGD is not monotone in ε), a failure hidden below the last coarse point that
held is missed, and the reported ε is the smallest failing ε *found*, an upper bound on the true
smallest. Where the failure set is monotone in ε, the search returns exactly what a scan of
every 1/255 step returns (tested).

A defense already wrong on the benign image flips at ε = 0; a defense that holds up to the maximum
has no flip ε (reported as ``None``, "held to the maximum"). An image the model already gets wrong
(label given) is not searched at all.

**Percentiles.** :func:`fragility_distribution` computes the flip ε of every image of a model's
report split (``none`` and ``jpeg`` by default); the CLI writes it to
``docs/results/fragility-<model>.json``. :func:`fragility` places the image's flip ε in that
distribution when one exists for the same model weights, attack settings and defense (
:func:`percentile`), and says why not otherwise. A user's model never has one.

Same seed, same image, same settings: the same flip ε (the attack and any random defense are seeded).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from nip_core.attacks import ATTACKS, run_attack
from nip_core.data import dataset_of, heldout_split
from nip_core.defenses import DEFENSES, apply_defense
from nip_core.analyses.elasticity import scaled_params, step_ratio, sweeps_eps
from nip_core.errors import InputError
from nip_core.models.base import LoadedModel
from nip_core.params import unit_label
from nip_core.runtime import REPO_ROOT, RESULTS_DIR

Progress = Callable[[float, str], None]
UnitList = Sequence[tuple[str, dict[str, Any]]]

TICK = 1 / 255
DEFAULT_DEFENSES = (("none", {}), ("jpeg", {}), ("nip", {}))
DISTRIBUTION_DEFENSES = (("none", {}), ("jpeg", {}))
FORMAT = 1


@dataclass(frozen=True)
class FlipGrid:
    """The budgets a search may try: ``eps`` ascending (1/255 steps, then the maximum if it is off
    that lattice) and ``coarse``, the indices into ``eps`` tried first (ending with the last)."""

    eps: tuple[float, ...]
    coarse: tuple[int, ...]

    @property
    def max_eps(self) -> float:
        return self.eps[-1]

    def to_json(self) -> dict[str, Any]:
        return {"max_eps": self.max_eps, "fine_step": TICK, "coarse": [self.eps[i] for i in self.coarse]}


def flip_grid(max_eps: float, stride: int) -> FlipGrid:
    """Multiples of 1/255 up to ``max_eps`` (plus ``max_eps`` itself when it is not one); the coarse
    points are every ``stride``-th of them and the last."""
    k = int(math.floor(max_eps * 255 + 1e-9))
    eps = [i * TICK for i in range(1, k + 1)]
    if not math.isclose(eps[-1], max_eps, abs_tol=1e-12):
        eps.append(float(max_eps))
    coarse = list(range(stride - 1, len(eps), stride))
    if coarse[-1] != len(eps) - 1:
        coarse.append(len(eps) - 1)
    return FlipGrid(tuple(eps), tuple(coarse))


def grid_for(model: LoadedModel) -> FlipGrid:
    """0.3 and a coarse step of 8/255 on one-channel data; 16/255 and 4/255 on photos."""
    return flip_grid(0.3, 8) if model.spec.input_channels == 1 else flip_grid(16 / 255, 4)


def find_flip(fails: Callable[[int], bool], grid: FlipGrid) -> int | None:
    """The index of the flip ε: walk ``grid.coarse`` upwards; at the first coarse index that fails,
    walk every index above the last coarse index that held (−1: none, i.e. only ε = 0 was checked)
    and return the first that fails (the coarse one if none before it does). None: nothing fails.

    ``fails(i)`` says whether budget ``grid.eps[i]`` makes the defended prediction wrong."""
    held = -1
    for c in grid.coarse:
        if fails(c):
            return next((i for i in range(held + 1, c) if fails(i)), c)
        held = c
    return None


def percentile(value: float | None, values: Sequence[float | None]) -> float:
    """Where ``value`` lies among ``values``: the percentage of them that are smaller, ties counted
    half (a mid-rank). ``None`` (no flip up to the maximum) counts as larger than every number."""
    def key(v):
        return math.inf if v is None else v
    x = key(value)
    below = sum(key(v) < x for v in values)
    same = sum(key(v) == x for v in values)
    return 100 * (below + 0.5 * same) / len(values)


@dataclass
class _Setup:
    attack: str
    params: dict[str, Any]          # the attack's settings (its own eps sets the step ratio)
    ratio: float | None
    defenses: list[tuple[str, str, dict[str, Any]]]   # (label, name, validated params)
    grid: FlipGrid


def _setup(model: LoadedModel, attack: str, attack_params: dict | None, defenses: UnitList,
           label: int | None) -> _Setup:
    """Every value checked before any work."""
    unit = ATTACKS.get_unit(attack)
    if not sweeps_eps(attack):
        raise InputError(f"fragility searches an L∞ budget; attack '{attack}' has none. Choose one of: "
                         f"{', '.join(a for a in ATTACKS if sweeps_eps(a))}.")
    if not unit.applies_to(model):
        raise InputError(f"attack '{attack}' does not apply to model '{model.name}'.")
    params = unit.params_for(model, attack_params)
    grid = grid_for(model)
    for e in (grid.eps[0], grid.max_eps):      # the step at both ends of the grid must be allowed
        scaled_params(model, attack, params, e)
    if not defenses:
        raise InputError("give at least one defense (e.g. none,jpeg,nip).")
    units = []
    for d, dp in defenses:
        du = DEFENSES.get_unit(d)
        if du.needs_labels and label is None:
            raise InputError(f"defense '{d}' needs the true label; give --label.")
        units.append((unit_label(d, dp), d, du.params_for(model, dp)))
    if len({lab for lab, _, _ in units}) < len(units):
        raise InputError("each defense may be given once.")
    return _Setup(attack, params, step_ratio(params), units, grid)


def _search(model: LoadedModel, x: torch.Tensor, ref: int, setup: _Setup, seed: int,
            say: Progress) -> tuple[dict[str, dict[str, Any]], dict[int, torch.Tensor]]:
    """Per defense label: flip ε and what was tried; and the adversarial of each budget tried."""
    y = torch.tensor([ref])
    grid = setup.grid
    adv: dict[int, torch.Tensor] = {}
    total = len(grid.coarse) + 8

    def adversarial(i: int) -> torch.Tensor:
        if i not in adv:
            say(min(0.95, len(adv) / total), f"attack at ε = {grid.eps[i]:.4g}")
            p = scaled_params(model, setup.attack, setup.params, grid.eps[i])
            adv[i] = run_attack(model, setup.attack, x, y, p, seed=seed).x_adv
        return adv[i]

    out: dict[str, dict[str, Any]] = {}
    for dl, d, dp in setup.defenses:
        needs_y = DEFENSES[d].needs_labels

        def prediction(xi: torch.Tensor) -> int:
            xd = apply_defense(model, d, xi, dp, y=y if needs_y else None, seed=seed, x_benign=x).x_def
            return int(model.predict(xd)[0])

        tried: list[list[float]] = []
        benign = prediction(x)
        tried.append([0.0, benign])
        if benign != ref:
            out[dl] = {"flip_eps": 0.0, "flip_eps_255": 0.0, "status": "wrong without attack", "prediction": benign,
                       "params": dp, "tried": tried}
            continue

        def fails(i: int) -> bool:
            pred = prediction(adversarial(i))
            tried.append([grid.eps[i], pred])
            return pred != ref

        i = find_flip(fails, grid)
        if i is None:
            out[dl] = {"flip_eps": None, "flip_eps_255": None, "status": "held to the maximum", "prediction": ref,
                       "params": dp, "tried": tried, "flip_index": None}
        else:
            e = grid.eps[i]
            out[dl] = {"flip_eps": e, "flip_eps_255": round(e * 255, 6), "status": "flipped",
                       "prediction": next(p for ee, p in reversed(tried) if ee == e), "params": dp, "tried": tried,
                       "flip_index": i}
    return out, adv


@dataclass
class Fragility:
    """What :func:`fragility` found: ``result`` (plain JSON-able values, see :func:`fragility`), the
    benign image and, per defense that flipped under attack, the adversarial at its flip ε."""

    result: dict[str, Any]
    image: torch.Tensor                                   # [C,H,W] in [0,1]
    adversarials: dict[str, torch.Tensor] = field(default_factory=dict)


def fragility(model: LoadedModel, image: torch.Tensor, label: int | None = None, *, attack: str = "pgd",
              attack_params: dict | None = None, defenses: UnitList = DEFAULT_DEFENSES, seed: int = 0,
              distribution: str | Path | None = None, progress: Progress | None = None) -> Fragility:
    """The flip ε of ``image`` per defense (see module doc), and its percentile where a distribution exists.

    Args:
        image: ``[C,H,W]`` in [0,1]; label: the true class when known (else the benign prediction).
        attack, attack_params: an L∞ gradient attack and its settings (dataset defaults otherwise);
            its step stays the same share ``eps_step/eps`` of every budget tried.
        defenses: ``(name, params)`` pairs; the result is keyed by their labels (``jpeg``,
            ``jpeg[quality=50]``).
        distribution: a file written by :func:`fragility_distribution` (default:
            ``docs/results/fragility-<model>.json`` when it exists).

    Returns:
        A :class:`Fragility` whose ``result`` has ``status`` ("searched" or "misclassified"), the
        reference class, the grid, and per defense ``flip_eps`` (None: held to the maximum),
        ``status``, the defended ``prediction`` at the flip, every ``tried`` budget with its
        prediction, and ``percentile`` (None, with ``percentile_note`` saying why).
    """
    say = progress or (lambda f, m: None)
    if image.dim() != 3 or image.shape[0] != model.spec.input_channels:
        raise InputError(f"image must have shape [{model.spec.input_channels}, H, W]; got {list(image.shape)}.")
    if label is not None and not 0 <= int(label) < model.num_classes:
        raise InputError(f"label must be a class in [0, {model.num_classes - 1}]; got {label}.")
    setup = _setup(model, attack, attack_params, defenses, label)
    t0 = time.perf_counter()
    x = image.unsqueeze(0).float()
    benign = int(model.predict(x)[0])
    ref = int(label) if label is not None else benign
    names = model.class_names
    result: dict[str, Any] = {
        "format": FORMAT, "model": model.name, "weights_sha256": model.weights_sha256, "seed": seed,
        "label": None if label is None else int(label), "reference_class": ref, "reference_name": names[ref],
        "reference": "the true class" if label is not None else "the model's benign prediction",
        "benign_prediction": benign, "benign_prediction_name": names[benign],
        "attack": attack, "attack_params": setup.params, "step_ratio": setup.ratio, "grid": setup.grid.to_json(),
        "defenses": {}}
    adversarials: dict[str, torch.Tensor] = {}
    if benign != ref:
        result["status"] = "misclassified"
        result["message"] = (f"the model already gets this image wrong: it predicts {names[benign]!r}, the label is "
                             f"{names[ref]!r}; there is no attack strength to search.")
    else:
        result["status"] = "searched"
        found, adv = _search(model, x, ref, setup, seed, say)
        for dl, cell in found.items():
            i = cell.pop("flip_index", None)
            if i is not None:
                adversarials[dl] = adv[i][0]
            cell["prediction_name"] = names[cell["prediction"]]
        result["defenses"] = found
        result["attacks_run"] = len(adv)
        _add_percentiles(model, result, setup, distribution)
    result["seconds"] = time.perf_counter() - t0
    say(1.0, "done")
    return Fragility(result, image.detach().cpu().float(), adversarials)


def distribution_path(model: LoadedModel) -> Path:
    """Where the shipped flip-ε distribution of a built-in model lives."""
    return RESULTS_DIR / f"fragility-{model.name}.json"


def shown_path(path: str | Path) -> str:
    """A distribution file as the result records it: relative to the repository when it lies inside
    it (``docs/results/fragility-lenet-mnist.json``), else its file name (never a machine's own
    absolute path)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(REPO_ROOT.resolve()).as_posix()
    except ValueError:
        return p.name


def _add_percentiles(model: LoadedModel, result: dict[str, Any], setup: _Setup, path: str | Path | None) -> None:
    import json

    def none(note: str) -> None:
        result["distribution"] = {"file": None if path is None else shown_path(path), "note": note}
        for cell in result["defenses"].values():
            cell["percentile"], cell["percentile_note"] = None, note

    if not getattr(model.spec, "gallery_labels", True):
        return none("no distribution exists for a user's model: its percentiles would need a labelled split "
                    "of its own data")
    path = Path(path) if path is not None else distribution_path(model)
    try:
        dist = json.loads(path.read_text())
    except FileNotFoundError:
        return none(f"no distribution exists for {model.name} ({path.name} is not there; "
                    f"`python -m nip_core fragility --distribution --model {model.name}` computes it)")
    except (OSError, ValueError) as e:
        return none(f"the distribution {shown_path(path)} cannot be read ({type(e).__name__})")
    why = _mismatch(model, setup, dist)
    if why:
        return none(f"the distribution {path.name} is not comparable: {why}")
    result["distribution"] = {"file": shown_path(path), "split": dist["split"], "n_images": dist["n_images"],
                              "note": f"percent of the {dist['n_images']} {dist['split']}-split images that flip "
                                      "at a smaller ε (ties counted half): low = more fragile than most"}
    for dl, cell in result["defenses"].items():
        theirs = dist["defenses"].get(dl)
        if theirs is None:
            cell["percentile"], cell["percentile_note"] = None, f"the distribution has no '{dl}'"
        elif theirs["params"] != cell["params"]:
            cell["percentile"], cell["percentile_note"] = None, f"the distribution's '{dl}' has other settings"
        else:
            cell["percentile"] = percentile(cell["flip_eps"], theirs["flip_eps"])


def _mismatch(model: LoadedModel, setup: _Setup, dist: dict[str, Any]) -> str | None:
    """Why a distribution does not describe this search (None: it does)."""
    if dist.get("format") != FORMAT:
        return "it was written by another version"
    if dist.get("weights_sha256") != model.weights_sha256:
        return "it was measured on other weights"
    fixed = {k: v for k, v in setup.params.items() if k not in ("eps", "eps_step")}
    theirs = {k: v for k, v in dist.get("attack_params", {}).items() if k not in ("eps", "eps_step")}
    if dist.get("attack") != setup.attack or theirs != fixed or dist.get("step_ratio") != setup.ratio:
        return f"it used {unit_label(dist.get('attack', '?'), dist.get('attack_params', {}))}"
    if dist.get("grid") != setup.grid.to_json():
        return "it used another grid"
    return None


def fragility_distribution(model: LoadedModel, *, split: str = "report", n: int | None = None, attack: str = "pgd",
                           attack_params: dict | None = None, defenses: UnitList = DISTRIBUTION_DEFENSES,
                           seed: int = 0, progress: Progress | None = None) -> dict[str, Any]:
    """The flip ε of every image of ``split`` (the first ``n``), per defense: what :func:`fragility`
    with the image's label and these settings reports for it, image by image.

    Returns a JSON-able dict: the settings (model weights, attack, step ratio, grid, seed), and per
    defense label its ``params`` and ``flip_eps`` (one per image, in split order; None: held to the
    maximum); ``attacks_run`` counts the attacks computed.
    """
    from nip_core.runtime import environment

    say = progress or (lambda f, m: None)
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise InputError(f"parameter 'n' must be an integer ≥ 1; got {n!r}.")
    if not getattr(model.spec, "gallery_labels", True):
        raise InputError("a distribution needs the model's own labelled report split; a user's model has none.")
    setup = _setup(model, attack, attack_params, defenses, label=0)
    x, y = heldout_split(model, split)
    x, y = x[:n], y[:n]
    if len(y) == 0:
        raise InputError(f"split {split!r} has no images for {model.name}.")
    t0 = time.perf_counter()
    flips: dict[str, list[float | None]] = {dl: [] for dl, _, _ in setup.defenses}
    runs = 0
    for j in range(len(y)):
        found, adv = _search(model, x[j:j + 1], int(y[j]), setup, seed, lambda f, m: None)
        runs += len(adv)
        for dl in flips:
            flips[dl].append(found[dl]["flip_eps"])
        say((j + 1) / len(y), f"{j + 1}/{len(y)} images")
    return {"format": FORMAT, "model": model.name, "weights_sha256": model.weights_sha256,
            "dataset": dataset_of(model).name, "split": split, "n_images": len(y), "seed": seed,
            "attack": attack, "attack_params": setup.params, "step_ratio": setup.ratio,
            "grid": setup.grid.to_json(),
            "defenses": {dl: {"params": dp, "flip_eps": flips[dl]} for dl, _, dp in setup.defenses},
            "attacks_run": runs, "seconds_total": time.perf_counter() - t0, "environment": environment()}


def grid_text(grid: dict[str, Any]) -> str:
    """``FlipGrid.to_json()`` in words: ``coarse 8/255, 16/255, …, 0.3; then every 1/255 (max 0.3)``
    (``… (max 16/255)`` on photos)."""
    def tick(e: float) -> str:
        k = e * 255
        return f"{k:.0f}/255" if abs(k - round(k)) < 1e-6 else f"{e:g}"
    c = [tick(e) for e in grid["coarse"]]
    shown = ", ".join(c if len(c) <= 4 else c[:2] + ["…"] + c[-2:])
    return f"coarse {shown}; then every 1/255 (max {tick(grid['max_eps'])})"
