"""The computations the pages show: an Explore view, a neuron's maps, a neuron surgery, every layer at
once, an image's fragility, the defense comparison, an evaluation grid and the tour's demo image, plus
the plain-value key of an Explore view.

The computations are ``st.cache_data`` keyed on plain values only (names, numbers, tuples, image bytes, and
:class:`nip_core.run.Run`: a frozen dataclass of such values, which Streamlit hashes through its pickle
reduction), never on tensors or modules. The long ones take a turn of the run queue (``app.runqueue``) and report
progress through an optional ``_progress(fraction, message)`` argument (left out of the cache key)
instead of drawing: ``app.progress.run_with_progress`` draws it.
"""
from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from app.loaders import get_model, get_profile, load_upload, upload_on_disk, user_data
from app.runqueue import queued
from nip_core.errors import InputError
from nip_core.images import DRAWING_PREFIX
from nip_core.run import Run

ParamsKey = tuple[tuple[str, Any], ...]
INFLUENCE_GROUPS = ("front", "tail", "front+tail")   # surgery selections read from the layer's profile
COMPARE_DEFENSES = ("none", "jpeg", "bitdepth", "median", "gaussian", "random-sign", "nip-global", "nip",
                    "nip-oracle")


def _image(model_name: str, image_key: str, image_bytes: bytes | None):
    """The run's image and its gallery label: the uploaded bytes (no label), a drawing
    (``draw:<token>``, no label), a split image
    (``report:123``, with its true label; ``nip_core.evaluation.slices``) or a gallery entry."""
    from nip_core.data import gallery
    from nip_core.evaluation.slices import parse_image_key, split_image

    if image_bytes is not None:
        return load_upload(model_name, image_bytes), None
    if image_key.startswith(DRAWING_PREFIX):       # a drawing (Explore's canvas): the 28×28 image itself
        from nip_core.images import decode_drawing, drawing_to_tensor
        return drawing_to_tensor(decode_drawing(image_key[len(DRAWING_PREFIX):]),
                                 get_model(model_name).spec.input_channels), None
    if parse_image_key(image_key) is not None:
        image, label, _ = split_image(get_model(model_name), image_key)
        return image, label
    for it in gallery(get_model(model_name).spec.gallery):
        if it.key == image_key:
            return it.image, it.label
    raise InputError(f"no example image {image_key!r} for model {model_name!r}.")


@st.cache_data(show_spinner=False, max_entries=48)
def explanation(run: Run, _progress: Callable[[float, str], None] | None = None):
    """``nip_core.analyses.explain.explain`` for one run (a :class:`~nip_core.run.Run`)."""
    from nip_core.analyses.explain import explain
    from nip_core.evaluation.slices import parse_image_key, split_image

    with queued(_progress):
        image, gallery_label = _image(run.model, run.image_key, run.image_bytes)
        label = gallery_label if run.label is None else run.label
        # a split image named with its shard (report:123@64:128) re-runs the shard as evaluate did
        batch = split_image(get_model(run.model), run.image_key)[2] if parse_image_key(run.image_key) else None
        return explain(get_model(run.model), image, label, attack=run.attack, attack_params=run.attack_kwargs,
                       defense=run.defense, defense_params=run.defense_kwargs, layer=run.layer, method=run.method,
                       k=run.k, seed=run.seed, progress=_progress, batch=batch)


@st.cache_data(show_spinner=False, max_entries=256)
def drawing_preview(model_name: str, token: str, layer: str, method: str) -> dict[str, Any]:
    """What Explore's canvas shows beside a drawing (``nip_core.analyses.preview``, no attack): ``png``, the
    28×28 image; ``top``, the three likeliest (class, name, confidence); ``grid``, the layer's neuron
    influence toward the prediction as one image."""
    from nip_core.analyses.preview import preview
    from nip_core.figures import neuron_grids_png
    from nip_core.images import decode_drawing, drawing_to_tensor, tensor_to_png_bytes

    model = get_model(model_name)
    x = drawing_to_tensor(decode_drawing(token), model.spec.input_channels)
    with queued(None):
        view = preview(model, x, layer, method)
    name = model.class_names[view.prediction]
    return {"png": tensor_to_png_bytes(x), "top": view.top(model.class_names, 3),
            "grid": neuron_grids_png([(f"toward {name}", view.influence)], unit="influence", panel_px=220)}


@st.cache_data(show_spinner=False, max_entries=48)
def neuron_maps(run: Run, neuron: int):
    """Activation maps ``[3, H, W]`` of one neuron for benign / adversarial / defended."""
    import torch
    from nip_core.influence import spatial_map

    expl = explanation(run)
    x = torch.stack([expl.images[v] for v in ("benign", "adversarial", "defended")])
    with queued(None):
        return spatial_map(get_model(expl.model_name), x, expl.layer, neuron)


@st.cache_resource(show_spinner=False, max_entries=16)
def surgery_sources(run: Run, layer: str):
    """``nip_core.analyses.surgery.source_activations`` of a view's benign, adversarial and defended images at
    ``layer``: one unpatched pass each, kept (shared, never mutated) so that every surgery of the view
    at this layer costs one patched forward pass."""
    from nip_core.analyses.surgery import source_activations

    expl = explanation(run)
    model = get_model(expl.model_name)
    with queued(None):
        return source_activations(model, expl.images["benign"], expl.images["adversarial"], layer,
                                  expl.images["defended"])


@st.cache_data(show_spinner=False, max_entries=256)
def surgery_view(run: Run, layer: str, selection: str, value: str, seed: int):
    """``nip_core.analyses.surgery.surgery`` on a view's images: ``selection`` of ``layer`` set to ``value``
    (texts as the CLI takes them), the reference class the view's; a ``SurgeryResult``."""
    from nip_core.analyses.surgery import parse_selection, surgery

    expl = explanation(run)
    model = get_model(expl.model_name)
    sources = surgery_sources(run, layer)
    sel = parse_selection(selection)
    profile = get_profile(expl.model_name, layer, expl.method) if sel.kind in INFLUENCE_GROUPS else None
    with queued(None):
        return surgery(model, expl.images["benign"], expl.images["adversarial"], layer, sel, value,
                       label=expl.label, x_def=expl.images["defended"], seed=seed, profile=profile, sources=sources)


@st.cache_data(show_spinner=False, max_entries=32)
def layer_strip(run: Run, top: int = 3, _progress: Callable[[float, str], None] | None = None):
    """``nip_core.analyses.pathway.layer_strip`` of a view's benign, adversarial and defended images at every
    layer, with the view's reference class, influence method and k; a ``LayerStrip``."""
    from nip_core.analyses.pathway import layer_strip as strip

    expl = explanation(run)
    with queued(_progress):
        return strip(get_model(expl.model_name), expl.images["benign"], expl.images["adversarial"],
                     expl.images["defended"], expl.reference_class, method=expl.method, k=expl.k, top=top,
                     progress=_progress)


@st.cache_data(show_spinner=False, max_entries=32)
def fragility_check(model_name: str, image_key: str, image_bytes: bytes | None, label: int | None,
                    defenses: tuple[tuple[str, ParamsKey], ...], seed: int,
                    _progress: Callable[[float, str], None] | None = None):
    """``nip_core.analyses.fragility.fragility`` of a view's image (PGD at the model's defaults, as the shipped
    distributions): per defense ``(name, params)``, the smallest budget that flips it; a ``Fragility``.

    ``label``: the true class; None takes a gallery example's label on a built-in model (the gallery's
    labels are not a user's model's classes: there the benign prediction is the reference)."""
    from nip_core.analyses.fragility import fragility

    model = get_model(model_name)
    with queued(_progress):
        image, gallery_label = _image(model_name, image_key, image_bytes)
        if label is None and getattr(model.spec, "gallery_labels", True):
            label = gallery_label
        return fragility(model, image, label, defenses=[(d, dict(p)) for d, p in defenses], seed=seed,
                         progress=_progress)


@st.cache_data(show_spinner=False)
def is_conv_layer(model_name: str, layer: str) -> bool:
    """Whether the layer's neurons are conv channels (they have a spatial activation map)."""
    import torch
    from nip_core.influence import layer_output

    model = get_model(model_name)
    s = model.spec
    return layer_output(model, torch.zeros(1, s.input_channels, s.input_size, s.input_size), layer).dim() > 2


@st.cache_data(show_spinner=False, max_entries=32)
def defense_comparison(run: Run, nip_params: ParamsKey,
                       _progress: Callable[[float, str], None] | None = None) -> list[dict[str, Any]]:
    """The run's adversarial through each baseline defense, the control and NIP's modes."""
    with queued(_progress):
        return _defense_comparison(run, nip_params, _progress)


def _defense_comparison(run: Run, nip_params: ParamsKey,
                        _progress: Callable[[float, str], None] | None) -> list[dict[str, Any]]:
    from nip_core.defenses import DEFENSES, apply_defense
    import torch

    expl = explanation(run)
    model = get_model(expl.model_name)
    x_adv = expl.images["adversarial"].unsqueeze(0)
    ref = expl.reference_class
    names = [d for d in COMPARE_DEFENSES if d != "nip-oracle" or expl.label is not None]
    rows = []
    for i, name in enumerate(names):
        if _progress:
            _progress(i / len(names), f"defense {name}")
        unit = DEFENSES[name]
        known = {p.name for p in unit.spec.params}
        params = {k: v for k, v in nip_params if k in known} if unit.family in ("nip", "control") else {}
        y = torch.tensor([expl.label]) if unit.needs_labels else None
        try:
            dr = apply_defense(model, name, x_adv, params, y=y, seed=run.seed,
                               x_benign=expl.images["benign"].unsqueeze(0))
        except InputError as exc:  # one refusing defense must not hide the others
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
    if _progress:
        _progress(1.0, "done")
    return rows


@st.cache_data(show_spinner=False, max_entries=16)
def evaluation(model_name: str, attacks: tuple, defenses: tuple, n: int, seed: int, adaptive: bool,
               split: str = "all", upload: tuple[str, bytes] | None = None,
               _progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """``nip_core.evaluation.evaluate.evaluate`` keyed on plain values (attacks/defenses: (name, params) tuples).

    ``upload``: (file name, bytes) of the user's labelled data (see :func:`user_data`); ``split``
    then applies to it (the engine's seeded 30/40/30 split, ``data_seed`` 0 as in the CLI).
    """
    from nip_core.evaluation.evaluate import evaluate

    units = ([(a, dict(p)) for a, p in attacks], [(d, dict(p)) for d, p in defenses])
    with queued(_progress):
        if upload is None:
            return evaluate(model_name, *units, n=n, seed=seed, split=split, adaptive=adaptive, progress=_progress)
        if not evaluate_takes_data():
            raise InputError("this version of the engine cannot evaluate on uploaded data yet "
                             "(nip_core.evaluation.evaluate.evaluate has no data= argument); use the built-in images.")
        user_data(model_name, *upload)             # refuse an unusable file before any work, with its reason
        with upload_on_disk(*upload) as path:      # evaluate reads it (safe_extract_zip for a .zip)
            result = evaluate(model_name, *units, n=n, seed=seed, split=split, adaptive=adaptive,
                              progress=_progress, data=str(path))
        block = result.get("data")
        if isinstance(block, dict):                # name the user's file, not the temporary path
            block.update({k: str(v).replace(str(path), upload[0]) for k, v in block.items()
                          if isinstance(v, str) and str(path) in v})
        return result


def evaluate_takes_data() -> bool:
    """Whether the engine's ``evaluate`` accepts ``data=LabelledData`` (the user's own images)."""
    import inspect

    from nip_core.evaluation.evaluate import evaluate
    return "data" in inspect.signature(evaluate).parameters


@st.cache_data(show_spinner=False)
def demo_image(model_name: str, attack: str = "fgsm", restore: tuple[str, ...] = ("nip-oracle",),
               defeat: tuple[str, ...] = ()) -> str:
    """A gallery image that shows a step of the guided tour (``nip_core.analyses.explain.demo_image``)."""
    from nip_core.analyses.explain import demo_image as pick

    with queued(None):
        return pick(get_model(model_name), attack=attack, restore=restore, defeat=defeat)


@st.cache_data(show_spinner=False)
def contrast_image(model_a: str, model_b: str, attack: str = "fgsm") -> str:
    """A gallery image that ``attack`` fools on ``model_a`` and not on ``model_b`` (``nip_core.analyses.compare``)."""
    from nip_core.analyses.compare import contrast_image as pick

    with queued(None):
        return pick(get_model(model_a), get_model(model_b), attack=attack)


def build_run(model_name: str, image_key: str, image_bytes: bytes | None, label: int | None, attack: str,
              attack_params: dict[str, Any], defense: str, defense_params: dict[str, Any], layer: str,
              method: str, k: float, seed: int) -> Run:
    """The run of one Explore view (:func:`explanation`'s key): :meth:`nip_core.run.Run.build` on the
    loaded model, which validates the settings and keeps only parameters that differ from the units'
    defaults (shorter share links, one cache entry however the defaults were reached)."""
    return Run.build(get_model(model_name), image_key, image_bytes=image_bytes, label=label, attack=attack,
                     attack_params=attack_params, defense=defense, defense_params=defense_params, layer=layer,
                     method=method, k=float(k), seed=int(seed))


@st.cache_resource(show_spinner=False, max_entries=16)
def strength_frames(run: Run, n: int):
    """``nip_core.figures.strength_frames`` of :func:`strength_view`: every grid point's images, figures and
    maps, built once when the panel opens (shared, never mutated), so a slider move only shows them."""
    from nip_core.figures.strength import strength_frames as frames

    return frames(strength_view(run, n))


@st.cache_resource(show_spinner=False, max_entries=16)
def strength_view(run: Run, n: int, _progress: Callable[[float, str], None] | None = None):
    """``nip_core.analyses.strength.strength_sweep`` of an Explore view's run at ``n`` strengths: a
    ``StrengthSweep``, kept (shared, never mutated) so that scrubbing its grid copies nothing."""
    from nip_core.analyses.strength import strength_sweep

    r = run
    with queued(_progress):
        image, gallery_label = _image(r.model, r.image_key, r.image_bytes)
        label = gallery_label if r.label is None else r.label
        return strength_sweep(get_model(r.model), image, label, attack=r.attack, attack_params=r.attack_kwargs,
                              defense=r.defense, defense_params=r.defense_kwargs, layer=r.layer, method=r.method,
                              k=r.k, seed=r.seed, n=n, progress=_progress)
