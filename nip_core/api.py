"""The engine for notebooks: load a model, explain an image, evaluate, calibrate.

A thin facade over the modules the CLI and the app use, so a notebook gets the same numbers and
the same figures. Nothing here computes anything of its own. ``import nip_core`` stays light:
this module is loaded on first access (``nip_core.api`` or ``from nip_core import api``), and
torch, ART and plotly are imported only when a function needs them. A worked example is in
``docs/api.md``::

    from nip_core import api

    model = api.load("lenet-mnist")
    image, label = api.gallery_image(model, 0)
    e = api.explain_image(model, image, label, attack="fgsm", defense="nip")
    api.explore_figures(e)["influence_heatmaps"].show()   # the Explore view's figures
    result = api.run_evaluation(model, "fgsm", "none,jpeg,nip", n=20)

Names are verbs on things (``explain_image``, ``run_evaluation``) so they never shadow the engine's
modules ``nip_core.analyses.explain`` and ``nip_core.evaluation.evaluate``. Units (attacks, defenses) are given as the
CLI writes them, ``"pgd[eps=0.1;max_iter=20]"``, or as ``(name, params)`` pairs.

Neuron surgery is ``run_surgery`` (the CLI's ``surgery``); how fragile one image is, ``run_fragility``
(the CLI's ``fragility``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import torch

    from nip_core.calibration import Calibration
    from nip_core.analyses.explain import Explanation
    from nip_core.models.base import LoadedModel
    from nip_core.analyses.surgery import Selection, SurgeryResult, Value

__all__ = ["models", "attacks", "defenses", "load", "load_image", "gallery_image", "explain_image",
           "explore_figures", "run_surgery", "surgery_figure", "run_fragility", "run_evaluation", "evaluation_figure",
           "calibrate_model"]

ModelLike = Union[str, "LoadedModel"]
Units = Union[str, Sequence[Union[str, tuple[str, dict[str, Any]]]]]
Progress = Callable[[float, str], None]


def models() -> list[str]:
    """Names of the registered models (the shipped ones and any you loaded this session)."""
    from nip_core.models import model_names
    return model_names()


def attacks() -> list[str]:
    """Names of the registered attacks (``python -m nip_core list attacks`` for their parameters)."""
    from nip_core.attacks import ATTACKS
    return list(ATTACKS)


def defenses() -> list[str]:
    """Names of the registered defenses, analysis modes and ablations."""
    from nip_core.defenses import DEFENSES
    return list(DEFENSES)


def load(name: str | None = None, *, arch: str | None = None, weights: str | os.PathLike | bytes | None = None,
         classes: str | os.PathLike | Sequence[str] | None = None, input_size: int | None = None) -> LoadedModel:
    """A model, ready to use: a registered one by ``name``, or your own.

    Args:
        name: a registered model (``models()``), e.g. ``"lenet-mnist"``.
        arch, weights, classes, input_size: your own classifier instead of ``name``: an
            architecture (``nip_core.byom.ARCHITECTURES``), a ``.safetensors`` state dict (path or
            bytes; pickled checkpoints are refused unopened) and its class names (a list, or a
            text/JSON file). As ``--arch/--weights/--classes`` on the command line.

    Raises:
        InputError: an unknown name, or weights that do not fit the architecture.
    """
    from nip_core.errors import InputError
    from nip_core.models import load_model

    if weights is not None:
        if name is not None:
            raise InputError("give either a model name or weights (your own model), not both.")
        if arch is None or classes is None:
            raise InputError("your own model needs arch, weights and classes.")
        from nip_core.byom import load_custom_model
        return load_custom_model(arch, weights, classes, input_size=input_size)
    if name is None:
        raise InputError("give a model name, or arch, weights and classes for your own model.")
    from nip_core.models.base import get_spec

    get_spec(name)
    return load_model(name)


def _model(model: ModelLike) -> LoadedModel:
    return load(model) if isinstance(model, str) else model


def load_image(path: str | os.PathLike | bytes, model: ModelLike) -> torch.Tensor:
    """An image file (or its bytes) as the model's input ``[C,H,W]`` in [0,1], preprocessed like an
    upload in the app (the same size limits and decoder)."""
    from nip_core.images import load_image as from_bytes, load_image_file

    m = _model(model)
    geometry = dict(channels=m.spec.input_channels, size=m.spec.input_size, preprocess=m.spec.preprocess)
    if isinstance(path, (bytes, bytearray)):
        return from_bytes(bytes(path), **geometry)
    return load_image_file(path, **geometry)


def gallery_image(model: ModelLike, which: int | str = 0) -> tuple[torch.Tensor, int]:
    """``(image [C,H,W], true label)`` of the model's gallery: by position or by key."""
    from nip_core.data import gallery
    from nip_core.errors import InputError

    items = gallery(_model(model).spec.gallery)
    if isinstance(which, str):
        found = [it for it in items if it.key == which]
        if not found:
            raise InputError(f"no gallery image {which!r}; choose one of: {', '.join(it.key for it in items)}.")
        item = found[0]
    else:
        if not -len(items) <= which < len(items):
            raise InputError(f"gallery position {which} is out of range; the gallery has {len(items)} images.")
        item = items[which]
    return item.image, item.label


def _unit(text: str, registry) -> tuple[str, dict[str, Any]]:
    from nip_core.evaluation.evaluate import parse_units

    units = parse_units(text, registry)
    if len(units) != 1:
        from nip_core.errors import InputError
        raise InputError(f"give one {registry.kind}, not {len(units)}: {text!r}.")
    return units[0]


def run_fragility(model: ModelLike, image: torch.Tensor | str | os.PathLike, label: int | None = None, *,
                  attack: str = "pgd", attack_params: dict[str, Any] | None = None,
                  defenses: Units = "none,jpeg,nip", seed: int = 0):
    """The smallest attack budget that flips each defense on one image (the CLI's ``fragility``):
    :func:`nip_core.analyses.fragility.fragility`, with its percentile over the model's shipped report split
    where a distribution ships (``docs/results/fragility-<model>.json``).

    Args:
        model: a model name or a loaded model; image: ``[C,H,W]`` in [0,1] or an image file path.
        label: the true class, when known (else the benign prediction is the reference).
        attack, attack_params: an L∞ gradient attack (``fgsm``, ``bim``, ``pgd``, ``mifgsm``, ``apgd``).
        defenses: as in :func:`run_evaluation` (``"none,jpeg,nip"`` or ``[("jpeg", {"quality": 75})]``).

    Returns:
        A :class:`~nip_core.analyses.fragility.Fragility`: ``result["defenses"][name]["flip_eps"]`` (None: held
        to the grid's maximum) and ``percentile``; ``figures.fragility_figure(result, image)`` draws it.
    """
    from nip_core.defenses import DEFENSES
    from nip_core.analyses.fragility import fragility

    m = _model(model)
    if not hasattr(image, "dim"):
        image = load_image(image, m)
    return fragility(m, image, label, attack=attack, attack_params=attack_params,
                     defenses=_units(defenses, DEFENSES), seed=seed)


def explain_image(model: ModelLike, image: torch.Tensor | str | os.PathLike, label: int | None = None, *,
                  attack: str = "fgsm", attack_params: dict[str, Any] | None = None, defense: str = "nip",
                  defense_params: dict[str, Any] | None = None, layer: str | None = None,
                  method: str = "conductance", k: float = 0.2, n_steps: int = 16, seed: int = 0,
                  progress: Progress | None = None) -> Explanation:
    """Attack one image, defend it, and measure neuron influence: the Explore view's run.

    Args:
        model: a model name or a loaded model (``load``).
        image: ``[C,H,W]`` in [0,1] (``gallery_image``, ``load_image``) or an image file path.
        label: the true class, when known (else the benign prediction stands in for it).
        attack, defense: names, optionally with parameters in brackets (``"pgd[eps=0.1]"``);
            ``attack_params`` / ``defense_params`` add to or override them.
        layer, method, k, n_steps: where and how influence is measured and neurons grouped.
        seed: seeds every random draw (the same seed gives the same explanation).

    Returns:
        The :class:`~nip_core.analyses.explain.Explanation` the app lays out; :func:`explore_figures`
        draws it (each figure alone: ``nip_core.figures.influence_heatmaps(e)`` and the others of
        :mod:`nip_core.figures.explore`).
    """
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES
    from nip_core.analyses.explain import explain

    m = _model(model)
    if not hasattr(image, "dim"):
        image = load_image(image, m)
    a, ap = _unit(attack, ATTACKS)
    d, dp = _unit(defense, DEFENSES)
    return explain(m, image, label, attack=a, attack_params=ap | dict(attack_params or {}), defense=d,
                   defense_params=dp | dict(defense_params or {}), layer=layer, method=method, k=k,
                   n_steps=n_steps, seed=seed, progress=progress)


def run_surgery(model: ModelLike, image: torch.Tensor | str | os.PathLike, label: int | None = None, *,
                attack: str = "fgsm", attack_params: dict[str, Any] | None = None, defense: str | None = None,
                defense_params: dict[str, Any] | None = None, layer: str | None = None,
                select: str | Selection | Sequence[int] = "front:0.2", value: str | Value = "benign",
                seed: int = 0) -> SurgeryResult:
    """Attack one image, set chosen neurons of a layer in the adversarial pass, and re-run it:
    ``surgery`` of the CLI (:func:`nip_core.analyses.surgery.surgery` after the attack, and the defense).

    Args:
        model: a model name or a loaded model (your own too).
        image: ``[C,H,W]`` in [0,1] (``gallery_image``, ``load_image``) or an image file path.
        label: the true class, when known: the reference class whose margin is restored (else the
            benign prediction), and the class the attack aims away from.
        attack, defense: names, optionally with parameters in brackets (``"pgd[eps=0.1]"``);
            ``attack_params`` / ``defense_params`` add to or override them. The defense is optional:
            its input is what ``value="defended"`` copies, and its pass is reported.
        layer: the layer whose neurons are set (None: the model's default layer).
        select: ``front:K``, ``tail:K``, ``front+tail:K``, ``changed:N``, ``random:N``, ``none``, or
            neuron indices (``"3,17,42"`` or ``[3, 17, 42]``).
        value: ``benign``, ``defended``, ``zero``, ``scale:A`` (A in [-10, 10]) or ``mean``.
        seed: seeds the attack, the defense and ``random:N``.

    Returns:
        The :class:`~nip_core.analyses.surgery.SurgeryResult`: benign, adversarial and patched passes, the
        patched neurons (``selected()``), the recovery share (``recovery()``) and ``to_json()``;
        ``surgery_figure(result)`` draws it. Its ``seconds`` also hold the attack's (and the
        defense's) time.

    Raises:
        InputError: a bad selection, value, layer, label or unit, before the attack runs.
    """
    import torch

    from nip_core.attacks import ATTACKS, run_attack
    from nip_core.defenses import DEFENSES, apply_defense
    from nip_core.errors import InputError
    from nip_core.analyses.surgery import check_selection, layer_output_and_logits, parse_selection, parse_value, surgery

    m = _model(model)
    if not hasattr(image, "dim"):
        image = load_image(image, m)
    if image.dim() != 3 or image.shape[0] != m.spec.input_channels:
        raise InputError(f"image must have shape [{m.spec.input_channels}, H, W]; got {list(image.shape)}.")
    layer = layer or m.spec.default_layer
    m.layer(layer)
    val = parse_value(value)
    parse_selection(select)
    a, ap = _unit(attack, ATTACKS)
    ap = ATTACKS.get_unit(a).params_for(m, ap | dict(attack_params or {}))
    d = dunit = dp = None
    if defense is not None:
        d, dp = _unit(defense, DEFENSES)
        dunit = DEFENSES.get_unit(d)
        dp = dunit.params_for(m, dp | dict(defense_params or {}))
        if dunit.needs_labels and label is None:
            raise InputError(f"defense '{d}' needs the true label (--label, or label= in Python).")
    elif val.kind == "defended":
        raise InputError("value 'defended' needs a defended input: give a defense (--defense, or defense= in Python).")
    if label is not None and not 0 <= int(label) < m.num_classes:
        raise InputError(f"label must be a class in [0, {m.num_classes - 1}]; got {label}.")
    x = image.unsqueeze(0).float()
    # Refuse a bad selection before the attack runs: the layer's width needs one pass.
    acts, logits = layer_output_and_logits(m, x, layer)
    check_selection(select, int(acts.shape[1]), layer)
    y = torch.tensor([int(label) if label is not None else int(logits.argmax(1)[0])])
    ar = run_attack(m, a, x, y, ap, seed=seed)
    seconds = {"attack": ar.seconds}
    x_def = None
    if d is not None:
        dr = apply_defense(m, d, ar.x_adv, dp, y=y if dunit.needs_labels else None, seed=seed, x_benign=x)
        x_def, seconds["defense"] = dr.x_def, dr.seconds
    result = surgery(m, x, ar.x_adv, layer, select, val, label=label, x_def=x_def, seed=seed)
    result.seconds = seconds | result.seconds
    result.inputs = {"attack": a, "attack_params": ar.params, "defense": d,
                     "defense_params": dr.params if d is not None else None}
    return result


def explore_figures(e: Explanation) -> dict[str, go.Figure]:
    """The Explore view's figures of an explanation (``explain_image``), by the file stem the CLI's
    ``explain`` writes them under: influence, difference and group charts, one prediction chart per variant."""
    from nip_core.figures import explanation_figures
    return explanation_figures(e)


def surgery_figure(result: SurgeryResult, image: int = 0, n: int = 3) -> go.Figure:
    """The prediction bars of a surgery (``run_surgery``): benign, adversarial and patched side by
    side, each variant's top-``n`` classes, the recovery share in the title (``surgery.html`` of the CLI)."""
    from nip_core.figures import surgery_bars
    return surgery_bars(result, image, n)


def _units(units: Units, registry) -> list[tuple[str, dict[str, Any]]]:
    from nip_core.evaluation.evaluate import parse_units

    if isinstance(units, str):
        return parse_units(units, registry)
    out: list[tuple[str, dict[str, Any]]] = []
    for u in units:
        if isinstance(u, str):
            out += parse_units(u, registry)
        else:
            registry.get_unit(u[0])
            out.append((u[0], dict(u[1])))
    return out


def run_evaluation(model: ModelLike, attacks: Units, defenses: Units, n: int = 100, *, seed: int = 0,
                   split: str = "all", adaptive: bool = True, data: str | os.PathLike | None = None,
                   data_seed: int = 0, blackbox: dict[str, Any] | None = None,
                   cache: str | os.PathLike | None = None, fresh: bool = False,
                   progress: Progress | None = None) -> dict[str, Any]:
    """The model × attacks × defenses grid on held-out images (or ``data``): ``evaluate`` of the CLI.

    Args:
        model: a model name or a loaded model (your own too).
        attacks, defenses: ``"fgsm[eps=0.1],pgd"`` as on the command line, or a list of such
            strings or ``(name, params)`` pairs.
        n: images; split: ``"all"``, ``"tune"`` or ``"report"``; seed: the base seed.
        adaptive: add the adaptive columns (BPDA PGD through each deployable defense, and the
            defense-aware attack where one is registered).
        data, data_seed: your labelled images (ImageFolder, .zip or .npz) and their split's seed.
        blackbox: ``{"eps", "max_iter", "n"}`` adds the black-box (Square) column.
        cache: a folder of finished shards to reuse and fill (default: none); fresh: recompute them.

    Returns:
        The JSON-able result the CLI writes (``rows``, ``benign``, ``adaptive``, ``summary`` …);
        ``evaluation_figure(result)`` draws it.
    """
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES
    from nip_core.evaluation.evaluate import evaluate

    m = _model(model)
    return evaluate(m.name, _units(attacks, ATTACKS), _units(defenses, DEFENSES), n=n, seed=seed, split=split,
                    adaptive=adaptive, progress=progress, data=data, data_seed=data_seed, blackbox=blackbox,
                    cache=cache, fresh=fresh)


def evaluation_figure(result: dict[str, Any], metric: str = "defended_adv_accuracy", adaptive: bool = True) -> go.Figure:
    """The Benchmark view's heatmap of an evaluation result (``run_evaluation`` or a results JSON)."""
    from nip_core.figures import evaluation_heatmap
    return evaluation_heatmap(result, metric, adaptive)


def calibrate_model(model: ModelLike, data: str | os.PathLike | None = None, *, seed: int = 0) -> Calibration:
    """Give the label-free ``nip`` a calibration for ``model`` (``calibrate --data`` of the CLI).

    Args:
        data: labelled benign images in the model's classes (ImageFolder, .zip or .npz); None for
            the model's own dataset (MNIST, Fashion-MNIST).
        seed: the seed of the data's split (its ``calib`` part is used).

    The calibration is cached on disk and used by ``nip`` from then on, in this process and later
    ones; ``nip_core.calibration.forget_user_calibration(model)`` goes back to the built-in one.
    """
    from nip_core.calibration import calibrate

    m = _model(model)
    labelled = None
    if data is not None:
        from nip_core.sources.userdata import load_labelled_data
        labelled = load_labelled_data(Path(data), class_names=m.class_names, channels=m.spec.input_channels,
                                      size=m.spec.input_size, preprocess=m.spec.preprocess)
    return calibrate(m, labelled, seed=seed)[0]
