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

    from nip_core.analyses.explain import Explanation
    from nip_core.analyses.surgery import Selection, SurgeryResult, Value
    from nip_core.models.base import LoadedModel
    from nip_core.run import Run

__all__ = [
    # what is there
    "models", "attacks", "defenses", "catalogue",
    # models, images, runs
    "load", "load_image", "gallery_image", "make_run", "run_image", "png_bytes",
    # one image: explore, its figures, and the analyses on it
    "explore", "explain_image", "explore_figures", "run_pathway", "run_strength", "compare", "contrast_image",
    "neuron_maps", "layer_is_conv", "surgery_sources", "surgery_on", "compare_defenses", "preview_image",
    "demo_image",
    "run_surgery", "surgery_figure", "run_fragility", "fragility_report",
    # a split: evaluation, elasticity, mediation, slices, fragility's distribution
    "run_evaluation", "suite_blackbox_eps", "write_evaluation", "evaluation_figure", "elasticity", "mediation",
    "shipped_result", "facets", "per_class_accuracy", "row_images", "explore_link", "run_fragility_distribution",
    # models' data: calibration, profiles, training, robustness, split images, bench
    "calibrate_model", "forget_calibration", "labelled_data", "compute_profiles", "train_model", "run_robustness",
    "write_split_images", "run_bench",
]

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


def _gallery_item(m: LoadedModel, which: int | str):
    from nip_core.data import gallery
    from nip_core.errors import InputError

    items = gallery(m.spec.gallery)
    if isinstance(which, str):
        found = [it for it in items if it.key == which]
        if not found:
            raise InputError(f"no gallery image {which!r}; choose one of: {', '.join(it.key for it in items)}.")
        return found[0]
    if not -len(items) <= which < len(items):
        raise InputError(f"gallery position {which} is out of range; the gallery has {len(items)} images.")
    return items[which]


def gallery_image(model: ModelLike, which: int | str = 0) -> tuple[torch.Tensor, int]:
    """``(image [C,H,W], true label)`` of the model's gallery: by position or by key."""
    item = _gallery_item(_model(model), which)
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
                  defenses: Units | None = None, seed: int = 0, progress: Progress | None = None):
    """The smallest attack budget that flips each defense on one image (the CLI's ``fragility``):
    :func:`nip_core.analyses.fragility.fragility`, with its percentile over the model's shipped report split
    where a distribution ships (``docs/results/fragility-<model>.json``).

    Args:
        model: a model name or a loaded model; image: ``[C,H,W]`` in [0,1] or an image file path.
        label: the true class, when known (else the benign prediction is the reference).
        attack, attack_params: an L∞ gradient attack (``fgsm``, ``bim``, ``pgd``, ``mifgsm``, ``apgd``).
        defenses: as in :func:`run_evaluation` (``"none,jpeg,nip"`` or ``[("jpeg", {"quality": 75})]``);
            None for ``nip_core.analyses.fragility.DEFAULT_DEFENSES``.

    Returns:
        A :class:`~nip_core.analyses.fragility.Fragility`: ``result["defenses"][name]["flip_eps"]`` (None: held
        to the grid's maximum) and ``percentile``; ``figures.fragility_figure(result, image)`` draws it.
    """
    from nip_core.analyses.fragility import DEFAULT_DEFENSES, fragility
    from nip_core.defenses import DEFENSES

    m = _model(model)
    if not hasattr(image, "dim"):
        image = load_image(image, m)
    units = list(DEFAULT_DEFENSES) if defenses is None else _units(defenses, DEFENSES)
    return fragility(m, image, label, attack=attack, attack_params=attack_params, defenses=units, seed=seed,
                     progress=progress)


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


def run_evaluation(model: ModelLike | None = None, attacks: Units | None = None, defenses: Units | None = None,
                   n: int | None = None, *, suite: str | None = None, seed: int = 0, split: str = "all",
                   adaptive: bool = True, data: str | os.PathLike | None = None, data_seed: int = 0,
                   blackbox: dict[str, Any] | None = None, mediation: Sequence[str] | None = None,
                   eps_grid: str | Sequence[float] | None = None, images_of: str | None = None,
                   ray: str | None = None, workers: int | None = None, threads: int | None = None,
                   shard_size: int | None = None, cache: str | os.PathLike | None = None, fresh: bool = False,
                   model_source: dict[str, Any] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """The model × attacks × defenses grid on held-out images (or ``data``): ``evaluate`` of the CLI.

    Args:
        model: a model name or a loaded model (your own too); with ``suite``, None for the suite's model.
        attacks, defenses: ``"fgsm[eps=0.1],pgd"`` as on the command line, or a list of such
            strings or ``(name, params)`` pairs; with ``suite``, None for the suite's.
        n: images (default 100; with ``suite``, 10,000, i.e. the whole split); split: ``"all"``,
            ``"tune"`` or ``"report"``; seed: the base seed.
        suite: a named grid (``paper-mnist``, ``paper-fashion``, …; ``nip_core.evaluation.evaluate.SUITES``).
        adaptive: add the adaptive columns (BPDA PGD through each deployable defense, and the
            defense-aware attack where one is registered).
        data, data_seed: your labelled images (ImageFolder, .zip or .npz) and their split's seed.
        blackbox: ``{"eps", "max_iter", "n"}`` adds the black-box (Square) column.
        mediation: layers of the causal mediation test (``[]``: every hookable layer; None: none).
        eps_grid: elasticity, every L∞ gradient attack at each ε (``"0.02,0.05,0.1"`` or numbers).
        images_of: measure on another model's report images (same dataset).
        ray, workers, threads, shard_size: distributed evaluation (``docs/cluster.md``).
        cache: a folder of finished shards to reuse and fill (default: none); fresh: recompute them.

    Returns:
        The JSON-able result the CLI writes (``rows``, ``benign``, ``adaptive``, ``summary`` …);
        ``evaluation_figure(result)`` draws it.

    Raises:
        InputError: an unknown suite, model, unit or option combination, before any work.
    """
    from nip_core.analyses.elasticity import parse_eps_grid
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES
    from nip_core.errors import InputError
    from nip_core.evaluation.evaluate import SHARD_SIZE, SUITES, evaluate
    from nip_core.models.base import get_spec

    name = None if model is None else (model if isinstance(model, str) else model.name)
    if suite is not None:
        if suite not in SUITES:
            raise InputError(f"unknown suite {suite!r}; choose one of: {', '.join(SUITES)}.")
        spec = SUITES[suite]
        name = name or spec["model"]
        other = get_spec(name)
        if name != spec["model"] and (other.gallery != get_spec(spec["model"]).gallery
                                      or not getattr(other, "gallery_labels", True)):
            raise InputError(f"suite {suite!r} is for {get_spec(spec['model']).gallery} models such as "
                             f"{spec['model']!r}, not {name!r}.")
        att = spec["attacks"] if attacks is None else _units(attacks, ATTACKS)
        dfs = spec["defenses"] if defenses is None else _units(defenses, DEFENSES)
        n = 10_000 if n is None else n
    else:
        if name is None or attacks is None or defenses is None:
            raise InputError("evaluate needs a model, attacks and defenses (or a suite).")
        get_spec(name)
        att, dfs = _units(attacks, ATTACKS), _units(defenses, DEFENSES)
        n = 100 if n is None else n
    get_spec(name)
    if ray is None and workers is not None:
        raise InputError("workers need ray (local, or a cluster address).")
    grid = None if eps_grid is None else parse_eps_grid(eps_grid)
    result = evaluate(name, att, dfs, n=n, seed=seed, split=split, adaptive=adaptive, progress=progress,
                      ray_address=ray, workers=workers, threads_per_worker=threads,
                      shard_size=SHARD_SIZE if shard_size is None else shard_size, cache=cache, fresh=fresh,
                      model_source=model_source, data=data, data_seed=data_seed, blackbox=blackbox,
                      mediation=None if mediation is None else list(mediation), eps_grid=grid, images_of=images_of)
    if suite is not None:
        result["suite"] = suite
    return result


def suite_blackbox_eps(suite: str) -> float | None:
    """The black-box column's ε that a suite asks for (None: it has none, or no such suite)."""
    from nip_core.evaluation.evaluate import SUITES
    return SUITES.get(suite, {}).get("blackbox_eps")


def write_evaluation(result: dict[str, Any], path: str | os.PathLike) -> tuple[str, str]:
    """Write an evaluation result as JSON at ``path`` and CSV beside it; returns both paths."""
    from nip_core.evaluation.evaluate import write_result
    return write_result(result, path)


def evaluation_figure(result: dict[str, Any], metric: str = "defended_adv_accuracy", adaptive: bool = True) -> go.Figure:
    """The Benchmark view's heatmap of an evaluation result (``run_evaluation`` or a results JSON)."""
    from nip_core.figures import evaluation_heatmap
    return evaluation_heatmap(result, metric, adaptive)


def calibrate_model(model: ModelLike, data: str | os.PathLike | None = None, *, seed: int = 0, ship: bool = False,
                    return_path: bool = False):
    """Give the label-free ``nip`` a calibration for ``model`` (``calibrate --data`` of the CLI).

    Args:
        data: labelled benign images in the model's classes (ImageFolder, .zip or .npz); None for
            the model's own dataset (MNIST, Fashion-MNIST).
        seed: the seed of the data's split (its ``calib`` part is used).
        ship: write it into ``assets/calibration`` (the shipped models' own data only).
        return_path: return ``(calibration, where it is stored, the data read or None)``.

    The calibration is cached on disk and used by ``nip`` from then on, in this process and later
    ones; ``forget_calibration(model)`` goes back to the built-in one.
    """
    from nip_core.calibration import calibrate

    m = _model(model)
    labelled = None if data is None else labelled_data(m, data)[0]
    cal, path = calibrate(m, labelled, seed=seed, ship=ship)
    return (cal, path, labelled) if return_path else cal


# ----------------------------------------------------------------------------- one run (nip_core.run.Run)

def make_run(model: ModelLike, image: str | int = 0, label: int | None = None, *, image_bytes: bytes | None = None,
             attack: str = "fgsm", attack_params: dict[str, Any] | None = None, defense: str = "none",
             defense_params: dict[str, Any] | None = None, layer: str | None = None, method: str = "conductance",
             k: float = 0.2, seed: int = 0) -> Run:
    """The :class:`~nip_core.run.Run` of Explore's settings, validated: the request every function below
    that takes a ``run`` understands, hashable (a cache key) and the same value however it was made.

    Args:
        image: a gallery key or position, a report-split image ``"report:12"``, or a name for
            ``image_bytes`` (an upload's file bytes).
        attack, defense: names, optionally with parameters in brackets (``"pgd[eps=0.1]"``);
            ``attack_params`` / ``defense_params`` add to or override them.
    """
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES
    from nip_core.run import Run

    m = _model(model)
    if isinstance(image, int):
        image = _gallery_item(m, image).key
    a, ap = _unit(attack, ATTACKS)
    d, dp = _unit(defense, DEFENSES)
    return Run.build(m, image, image_bytes=image_bytes, label=label, attack=a, attack_params=ap | dict(attack_params or {}),
                     defense=d, defense_params=dp | dict(defense_params or {}), layer=layer, method=method, k=k,
                     seed=seed)


def run_image(run: Run) -> tuple[torch.Tensor, int | None]:
    """``(image [C,H,W], label)`` of a run: its upload, drawing (``draw:<token>``), gallery image or
    report-split image; the label is the run's, else the gallery's (None for an upload or a drawing without one)."""
    from nip_core.errors import InputError
    from nip_core.evaluation.slices import parse_image_key, split_image

    from nip_core.images import DRAWING_PREFIX, decode_drawing, drawing_to_tensor

    m = load(run.model)
    if run.image_bytes is not None:
        return load_image(run.image_bytes, m), run.label
    if run.image_key.startswith(DRAWING_PREFIX):       # a drawing on Explore's canvas: the 28×28 image itself
        return drawing_to_tensor(decode_drawing(run.image_key[len(DRAWING_PREFIX):]), m.spec.input_channels), run.label
    if parse_image_key(run.image_key):
        x, y, _ = split_image(m, run.image_key)
        return x, y if run.label is None else run.label
    try:
        x, y = gallery_image(m, run.image_key)
    except InputError:
        raise InputError(f"no image {run.image_key!r} for {run.model}: give a gallery key, a position or "
                         "report:<index>.") from None
    return x, y if run.label is None else run.label


def explore(run: Run, *, n_steps: int = 16, progress: Progress | None = None) -> Explanation:
    """The Explore view's result of ``run``: attack, defense and neuron influence on all three images.
    ``explore_figures`` draws it. A report-split image named with its shard (``report:123@64:128``)
    re-runs the shard as ``evaluate`` ran it."""
    from nip_core.analyses.explain import explain
    from nip_core.evaluation.slices import parse_image_key, split_image

    m = load(run.model)
    image, label = run_image(run)
    batch = split_image(m, run.image_key)[2] if run.image_bytes is None and parse_image_key(run.image_key) else None
    return explain(m, image, label, attack=run.attack, attack_params=run.attack_kwargs, defense=run.defense,
                   defense_params=run.defense_kwargs, layer=run.layer, method=run.method, k=run.k, n_steps=n_steps,
                   seed=run.seed, progress=progress, batch=batch)


def run_pathway(e: Explanation, *, top: int = 3, layers: Sequence[str] | None = None,
                progress: Progress | None = None):
    """Every hookable layer of one explored run at once (Explore's layer strip): each layer's front,
    middle and tail changes under the attack and the defense, and the ``top`` neurons the attack moved
    most, joined by activation × gradient. Returns a :class:`~nip_core.analyses.pathway.LayerStrip`."""
    from nip_core.analyses.pathway import layer_strip

    return layer_strip(load(e.model_name), e.images["benign"], e.images["adversarial"], e.images["defended"],
                       e.reference_class, method=e.method, k=e.k, top=top, layers=layers, progress=progress)


def neuron_maps(e: Explanation, neuron: int) -> torch.Tensor:
    """The activation maps ``[3, H, W]`` of one conv neuron (channel) on an explored run's benign,
    adversarial and defended images (``layer_is_conv`` says whether the run's layer has maps)."""
    import torch

    from nip_core.influence import spatial_map

    x = torch.stack([e.images[v] for v in ("benign", "adversarial", "defended")])
    return spatial_map(load(e.model_name), x, e.layer, neuron)


def layer_is_conv(model: ModelLike, layer: str | None = None) -> bool:
    """Whether ``layer``'s neurons are conv channels, with spatial activation maps."""
    from nip_core.influence import is_conv_layer
    return is_conv_layer(_model(model), layer)


def surgery_sources(e: Explanation, layer: str):
    """The unpatched passes of an explored run's benign, adversarial and defended images at ``layer``
    (one each), which every :func:`surgery_on` of that run and layer reuses."""
    from nip_core.analyses.surgery import source_activations

    return source_activations(load(e.model_name), e.images["benign"], e.images["adversarial"], layer,
                              e.images["defended"])


def surgery_on(e: Explanation, layer: str, select: str = "front:0.2", value: str = "benign", *, seed: int = 0,
               sources=None) -> SurgeryResult:
    """Neuron surgery on an explored run's own images (Explore's surgery panel; ``run_surgery`` attacks
    afresh): ``select`` of ``layer`` set to ``value`` in the adversarial pass, toward the run's reference
    class. ``sources``: :func:`surgery_sources` of this run and layer, to skip the unpatched passes."""
    from nip_core.analyses.surgery import INFLUENCE_SELECTIONS, parse_selection, surgery
    from nip_core.influence import influence_profile

    m = load(e.model_name)
    sel = parse_selection(select)
    profile = influence_profile(m, layer, e.method) if sel.kind in INFLUENCE_SELECTIONS else None
    return surgery(m, e.images["benign"], e.images["adversarial"], layer, sel, value, label=e.label,
                   x_def=e.images["defended"], seed=seed, profile=profile, sources=sources)


def compare_defenses(e: Explanation, nip_params: dict[str, Any] | None = None, *, seed: int = 0,
                     progress: Progress | None = None) -> list[dict[str, Any]]:
    """An explored run's adversarial through every baseline defense, the control and NIP's modes, side by
    side (Explore's defenses panel): one row per defense with its prediction and whether it is right."""
    from nip_core.analyses.compare import defense_comparison
    return defense_comparison(load(e.model_name), e, dict(nip_params or {}), seed=seed, progress=progress)


def preview_image(model: ModelLike, image: torch.Tensor, layer: str | None = None, method: str = "conductance"):
    """Prediction and neuron influence of one image with no attack (Explore's canvas follows a drawing
    with it); a :class:`~nip_core.analyses.preview.Preview`."""
    from nip_core.analyses.preview import preview
    return preview(_model(model), image, layer, method)


def demo_image(model: ModelLike, attack: str = "fgsm", restore: Sequence[str] = ("nip-oracle",),
               defeat: Sequence[str] = (), seed: int = 0) -> str:
    """The gallery key of the image that shows a step of NIP's story on ``model`` best (the tour's
    steps): ``attack`` fools it, each of ``restore`` brings the class back, each of ``defeat`` does not."""
    from nip_core.analyses.explain import demo_image as pick
    return pick(_model(model), attack=attack, restore=tuple(restore), defeat=tuple(defeat), seed=seed)


def run_strength(run: Run, n: int | None = None, *, progress: Progress | None = None):
    """The run's attack at ``n`` strengths from 0 to twice its ε, each defended (Explore's strength
    slider); a :class:`~nip_core.analyses.strength.StrengthSweep`. Attacks without a budget are refused
    with the reason (``nip_core.analyses.strength.no_sweep_reason``)."""
    from nip_core.analyses.strength import DEFAULT_N, strength_sweep

    image, label = run_image(run)
    return strength_sweep(load(run.model), image, label, attack=run.attack, attack_params=run.attack_kwargs,
                          defense=run.defense, defense_params=run.defense_kwargs, layer=run.layer, method=run.method,
                          k=run.k, seed=run.seed, n=DEFAULT_N if n is None else n, progress=progress)


def compare(a: Explanation, b: Explanation):
    """Two explored runs of one image side by side (Explore's pin and compare): which front neurons fell
    in each, or between two models their groups' statistics; a
    :class:`~nip_core.analyses.compare.RunComparison`. Raises InputError for runs of different images."""
    from nip_core.analyses.compare import compare_runs
    return compare_runs(a, b)


def contrast_image(model_a: ModelLike, model_b: ModelLike, attack: str = "fgsm", seed: int = 0) -> str:
    """The gallery key of the image that shows two models of one dataset apart best (``attack`` fools
    ``model_a`` and not ``model_b``; both right when clean)."""
    from nip_core.analyses.compare import contrast_image as pick
    return pick(_model(model_a), _model(model_b), attack=attack, seed=seed)


# ----------------------------------------------------------------------------- fragility, elasticity, mediation, slices

def run_fragility_distribution(model: ModelLike, *, split: str = "report", n: int | None = None, attack: str = "pgd",
                               attack_params: dict[str, Any] | None = None, defenses: Units | None = None,
                               seed: int = 0, progress: Progress | None = None) -> dict[str, Any]:
    """The flip ε of every image of a report split, per defense (``fragility --distribution``): the
    distribution that ``run_fragility`` places one image in."""
    from nip_core.analyses.fragility import DISTRIBUTION_DEFENSES, fragility_distribution
    from nip_core.defenses import DEFENSES

    units = list(DISTRIBUTION_DEFENSES) if defenses is None else _units(defenses, DEFENSES)
    return fragility_distribution(_model(model), split=split, n=n, attack=attack, attack_params=attack_params,
                                  defenses=units, seed=seed, progress=progress)


def fragility_report(frag, settings: dict[str, Any] | None = None) -> str:
    """A fragility (``run_fragility``) as a self-contained HTML page: verdicts, figure, images, settings."""
    from nip_core.reports.fragility import fragility_report as page
    return page(frag, settings)


def elasticity(result: dict[str, Any]) -> dict[str, Any]:
    """The accuracy-against-ε curves (with Wilson bands) of an evaluation run with ``eps_grid``;
    ``nip_core.figures.elasticity_figure(block, attack)`` draws one attack's."""
    from nip_core.errors import InputError

    block = result.get("elasticity")
    if not block:
        raise InputError("this result has no elasticity block: evaluate with eps_grid (--eps-grid).")
    return block


def mediation(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The causal mediation table of an evaluation run with ``mediation``: per attack × layer, the share of
    successful adversarials each neuron group restores, and each defense's carried share beside its
    random control."""
    from nip_core.analyses.mediation import mediation_table
    return mediation_table(result)


def per_class_accuracy(result: dict[str, Any], inputs: str) -> dict[str, Any]:
    """A result's accuracy per true class and defense (the Benchmark's facet) on ``inputs``: the benign
    images or one attack's adversarials (``facets(result)`` lists them)."""
    from nip_core.evaluation.slices import per_class_accuracy as table
    return table(result, inputs)


def facets(result: dict[str, Any]) -> list[str]:
    """The inputs a result with per-image records can be faceted on by class: benign, then each attack."""
    from nip_core.evaluation.slices import facets as of
    return of(result)


def shipped_result(file_name: str) -> dict[str, Any]:
    """A shipped result file (``docs/results/<file_name>``: the Benchmark's tables) as a dict."""
    from nip_core.evaluation.results import shipped_result as read
    return read(file_name)


def row_images(result: dict[str, Any], attack: str, defense: str) -> list[dict[str, Any]]:
    """The images of one (attack, defense) row of a result with per-image records: each one's
    position, label and whether the defended prediction was right."""
    from nip_core.evaluation.slices import row_images as images
    return images(result, attack, defense)


def explore_link(result: dict[str, Any], attack: str, defense: str, position: int) -> dict[str, str]:
    """Explore's query parameters that re-run one image of a row as ``evaluate`` ran it."""
    from nip_core.evaluation.slices import explore_link as link
    return link(result, attack, defense, position)


# ----------------------------------------------------------------------------- models, profiles, calibration

def catalogue(what: str) -> list[dict[str, Any]]:
    """The registry of ``"models"``, ``"attacks"`` or ``"defenses"`` as JSON-able dicts (``list --json``)."""
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES
    from nip_core.errors import InputError
    from nip_core.models import MODELS

    tables = {"models": MODELS, "attacks": ATTACKS, "defenses": DEFENSES}
    if what not in tables:
        raise InputError(f"list what? choose one of: {', '.join(tables)}; got {what!r}.")
    return [u.to_json() for u in tables[what].values()]


def forget_calibration(model: ModelLike) -> None:
    """Back to the model's built-in calibration (if any), forgetting one made with ``calibrate_model(data=…)``."""
    from nip_core.calibration import forget_user_calibration
    forget_user_calibration(_model(model))


def labelled_data(model: ModelLike, path: str | os.PathLike, split: str = "all", seed: int = 0):
    """Your labelled images (ImageFolder, .zip or .npz) read in the model's classes and geometry:
    ``(LabelledData, x, y)`` of ``split`` (``all``, ``tune``, ``calib`` or ``report``, by ``seed``)."""
    import torch

    from nip_core.sources.userdata import load_labelled_data, split_indices

    m = _model(model)
    data = load_labelled_data(Path(path), class_names=m.class_names, channels=m.spec.input_channels,
                              size=m.spec.input_size, preprocess=m.spec.preprocess)
    idx = torch.from_numpy(split_indices(len(data.y), split, seed).copy())
    return data, data.x[idx], data.y[idx]


def compute_profiles(model: ModelLike, layer: str | None = None, *, method: str = "conductance", n_steps: int = 16,
                     data: str | os.PathLike | tuple | None = None, split: str = "all", seed: int = 0, fresh: bool = False,
                     ship: bool = False, out: str | os.PathLike | None = None) -> list[tuple[Any, Path | None]]:
    """Influence profiles of ``model`` at ``layer`` (``"all"``: every hookable layer; None: the default
    one), on its own benign references or on ``data``; ``ship`` writes them into ``assets/profiles``,
    ``out`` into a folder. Returns ``(profile, written path or None)`` per layer."""
    from nip_core.errors import InputError
    from nip_core.influence import gallery_candidate_classes, influence_profile, save_profile_to_assets, write_profile

    m = _model(model)
    layers = list(m.spec.layers) if layer == "all" else [layer or m.spec.default_layer]
    for name in layers:
        m.layer(name)                       # an unknown layer is refused before any work
    own = None
    if data is not None:
        if ship:
            raise InputError("ship writes the shipped profiles of the model's own data; not with your data.")
        d, x, y = data if isinstance(data, tuple) else labelled_data(m, data, split, seed)
        own = (x, y, f"{d.data_sha256}-{split}-{seed}")
    out_list = []
    for name in layers:
        prof = influence_profile(m, name, method, n_steps, data=own, use_cache=not fresh)
        if ship:
            if prof._fill is not None:   # classes filled on demand (CIFAR-10, ImageNet): ship the gallery's
                prof.prefill(gallery_candidate_classes(m))
            save_profile_to_assets(prof, m)
        path = write_profile(prof, m, out, data=own[2] if own else None) if out else None
        out_list.append((prof, path))
    return out_list


TRAINABLE = ("lenet-mnist", "lenet-fashion", "lenet-fashion-at")


def train_model(name: str, *, seed: int = 0, epochs: int | None = None, out: str | os.PathLike | None = None,
                ship: bool = False) -> dict[str, Any]:
    """Retrain a shipped LeNet reproducibly: its weights and card into folder ``out``, or over the shipped
    files with ``ship``. Returns the card's training record."""
    from nip_core.errors import InputError
    from nip_core import train

    trainers = {"lenet-mnist": train.train_lenet, "lenet-fashion": train.train_lenet_fashion,
                "lenet-fashion-at": train.train_lenet_fashion_at}
    if name not in trainers:
        raise InputError(f"only {', '.join(TRAINABLE)} can be trained here; got {name!r}.")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise InputError(f"epochs must be at least 1; got {epochs}.")
    if out is None and not ship:
        raise InputError(f"give out (a folder) for the new weights and card, or ship to overwrite the shipped {name}.")
    kw: dict[str, Any] = {} if epochs is None else {"epochs": epochs}
    if out is not None:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"out {str(out)!r} is a file; give a folder for the weights and their card.")
        folder.mkdir(parents=True, exist_ok=True)
        kw |= {"out": folder / f"{name}.safetensors", "card": folder / f"{name}.json"}
    return trainers[name](seed=seed, **kw)


def run_robustness(model: ModelLike, *, pgd_n: int = 10_000, autoattack_n: int = 1_000, seed: int = 0,
                   write_card: bool = False, progress: Progress | None = None) -> tuple[dict[str, Any], str, Path | None]:
    """A card's robust figures: clean accuracy, PGD-20 and AutoAttack on the official test images
    (``robustness`` of the CLI). Returns ``(result, the command that reproduces it, the card written or None)``."""
    from nip_core.evaluation import robustness as R

    m = _model(model)
    R.official_test_set(m)              # a model without one is refused before any work
    if write_card:
        R.check_card(m)
    result = R.robust_accuracy(m, pgd_n=pgd_n, autoattack_n=autoattack_n, seed=seed, progress=progress)
    command = R.robustness_command(m.name, pgd_n, autoattack_n, seed)
    return result, command, (R.write_card(m, result, command) if write_card else None)


def write_split_images(models: str | Sequence[str], split: str = "report",
                       out: str | os.PathLike | None = None) -> list[Path]:
    """Write each model's report-split images as a small uint8 ``.npz`` (``assets/splits/``, or ``out`` for
    one model), which Explore opens as ``image=report:<index>``."""
    from nip_core.errors import InputError
    from nip_core.evaluation.slices import split_asset_path, write_split_asset

    names = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    names = [n for n in names if n]
    if out is not None and len(names) != 1:
        raise InputError("out takes one model; leave it out to write assets/splits/<model>-<split>.npz each.")
    return [write_split_asset(load(n), split, out or split_asset_path(n, split)) for n in names]


def run_bench(out: str | os.PathLike, *, quick: bool = False, models: Sequence[str] | None = None,
              tiny: bool = False) -> dict[str, Any]:
    """Time the engine (forward, influence, NIP, attacks) per model against its compute floors and write
    ``out`` (JSON); ``quick`` finishes in about a minute on 2 cores, ``tiny`` in seconds (for tests)."""
    from nip_core.errors import InputError
    from nip_core.evaluation.bench import run_bench as bench
    from nip_core.models import MODELS

    if models is not None:
        models = [m for m in models if m]
        if not models:
            raise InputError("models is empty; give model names.")
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise InputError(f"unknown model {unknown[0]!r}; choose one of: {', '.join(MODELS)}.")
    path = Path(out)
    if path.is_dir():
        raise InputError(f"out {str(out)!r} is a folder; give a JSON file path.")
    path.parent.mkdir(parents=True, exist_ok=True)      # refuse an unwritable place before minutes of timing
    return bench(quick=quick, out=path, models=models, tiny=tiny)


def png_bytes(image: torch.Tensor) -> bytes:
    """An image ``[C,H,W]`` in [0,1] as PNG bytes."""
    from nip_core.images import tensor_to_png_bytes
    return tensor_to_png_bytes(image)
