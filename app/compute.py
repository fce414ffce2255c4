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

from app.loaders import get_model, load_upload, upload_on_disk, user_data
from app.runqueue import queued
from nip_core import api
from nip_core.images import DRAWING_PREFIX
from nip_core.run import Run

ParamsKey = tuple[tuple[str, Any], ...]
INFLUENCE_GROUPS = ("front", "tail", "front+tail")   # surgery selections read from the layer's profile


def _image(model_name: str, image_key: str, image_bytes: bytes | None):
    """The run's image and its gallery label (``nip_core.api.run_image``): the uploaded bytes (no label;
    decoded once per session, :func:`app.loaders.load_upload`), a drawing (``draw:<token>``), a split image
    (``report:123``) or a gallery entry."""
    if image_bytes is not None:
        return load_upload(model_name, image_bytes), None
    return api.run_image(Run(model_name, image_key))


@st.cache_data(show_spinner=False, max_entries=48)
def explanation(run: Run, _progress: Callable[[float, str], None] | None = None):
    """``nip_core.api.explore`` of one run (a :class:`~nip_core.run.Run`): the Explore view's result."""
    with queued(_progress):
        return api.explore(run, progress=_progress)


@st.cache_data(show_spinner=False, max_entries=256)
def drawing_preview(model_name: str, token: str, layer: str, method: str) -> dict[str, Any]:
    """What Explore's canvas shows beside a drawing (``nip_core.api.preview_image``, no attack): ``png``, the
    28×28 image; ``top``, the three likeliest (class, name, confidence); ``grid``, the layer's neuron
    influence toward the prediction as one image."""
    from nip_core.figures import neuron_grids_png

    model = get_model(model_name)
    x, _ = api.run_image(Run(model_name, DRAWING_PREFIX + token))
    with queued(None):
        view = api.preview_image(model, x, layer, method)
    name = model.class_names[view.prediction]
    return {"png": api.png_bytes(x), "top": view.top(model.class_names, 3),
            "grid": neuron_grids_png([(f"toward {name}", view.influence)], unit="influence", panel_px=220)}


@st.cache_data(show_spinner=False, max_entries=48)
def neuron_maps(run: Run, neuron: int):
    """Activation maps ``[3, H, W]`` of one neuron for benign / adversarial / defended (``api.neuron_maps``)."""
    expl = explanation(run)
    with queued(None):
        return api.neuron_maps(expl, neuron)


@st.cache_resource(show_spinner=False, max_entries=16)
def surgery_sources(run: Run, layer: str):
    """``nip_core.api.surgery_sources`` of a view at ``layer``: one unpatched pass each, kept (shared, never
    mutated) so that every surgery of the view at this layer costs one patched forward pass."""
    expl = explanation(run)
    with queued(None):
        return api.surgery_sources(expl, layer)


@st.cache_data(show_spinner=False, max_entries=256)
def surgery_view(run: Run, layer: str, selection: str, value: str, seed: int):
    """``nip_core.api.surgery_on`` a view's images: ``selection`` of ``layer`` set to ``value`` (texts as the
    CLI takes them), the reference class the view's; a ``SurgeryResult``."""
    expl = explanation(run)
    sources = surgery_sources(run, layer)
    with queued(None):
        return api.surgery_on(expl, layer, selection, value, seed=seed, sources=sources)


@st.cache_data(show_spinner=False, max_entries=32)
def layer_strip(run: Run, top: int = 3, _progress: Callable[[float, str], None] | None = None):
    """``nip_core.api.run_pathway`` of a view: every layer at once, toward the view's reference class; a
    ``LayerStrip``."""
    expl = explanation(run)
    with queued(_progress):
        return api.run_pathway(expl, top=top, progress=_progress)


@st.cache_data(show_spinner=False, max_entries=32)
def fragility_check(model_name: str, image_key: str, image_bytes: bytes | None, label: int | None,
                    defenses: tuple[tuple[str, ParamsKey], ...], seed: int,
                    _progress: Callable[[float, str], None] | None = None):
    """``nip_core.api.run_fragility`` of a view's image (PGD at the model's defaults, as the shipped
    distributions): per defense ``(name, params)``, the smallest budget that flips it; a ``Fragility``.

    ``label``: the true class; None takes a gallery example's label on a built-in model (the gallery's
    labels are not a user's model's classes: there the benign prediction is the reference)."""
    model = get_model(model_name)
    with queued(_progress):
        image, gallery_label = _image(model_name, image_key, image_bytes)
        if label is None and getattr(model.spec, "gallery_labels", True):
            label = gallery_label
        return api.run_fragility(model, image, label, defenses=[(d, dict(p)) for d, p in defenses], seed=seed,
                                 progress=_progress)


@st.cache_data(show_spinner=False)
def is_conv_layer(model_name: str, layer: str) -> bool:
    """Whether the layer's neurons are conv channels (``nip_core.api.layer_is_conv``)."""
    return api.layer_is_conv(get_model(model_name), layer)


@st.cache_data(show_spinner=False, max_entries=32)
def defense_comparison(run: Run, nip_params: ParamsKey,
                       _progress: Callable[[float, str], None] | None = None) -> list[dict[str, Any]]:
    """The run's adversarial through each baseline defense, the control and NIP's modes
    (``nip_core.api.compare_defenses``)."""
    expl = explanation(run)
    with queued(_progress):
        return api.compare_defenses(expl, dict(nip_params), seed=run.seed, progress=_progress)




@st.cache_data(show_spinner=False, max_entries=16)
def evaluation(model_name: str, attacks: tuple, defenses: tuple, n: int, seed: int, adaptive: bool,
               split: str = "all", upload: tuple[str, bytes] | None = None,
               _progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """``nip_core.api.run_evaluation`` keyed on plain values (attacks/defenses: (name, params) tuples).

    ``upload``: (file name, bytes) of the user's labelled data (see :func:`user_data`); ``split``
    then applies to it (the engine's seeded 30/40/30 split, ``data_seed`` 0 as in the CLI).
    """
    units = ([(a, dict(p)) for a, p in attacks], [(d, dict(p)) for d, p in defenses])
    with queued(_progress):
        if upload is None:
            return api.run_evaluation(model_name, *units, n=n, seed=seed, split=split, adaptive=adaptive,
                                      progress=_progress)
        user_data(model_name, *upload)             # refuse an unusable file before any work, with its reason
        with upload_on_disk(*upload) as path:      # evaluate reads it (safe_extract_zip for a .zip)
            result = api.run_evaluation(model_name, *units, n=n, seed=seed, split=split, adaptive=adaptive,
                                        progress=_progress, data=str(path))
        block = result.get("data")
        if isinstance(block, dict):                # name the user's file, not the temporary path
            block.update({k: str(v).replace(str(path), upload[0]) for k, v in block.items()
                          if isinstance(v, str) and str(path) in v})
        return result


@st.cache_data(show_spinner=False)
def demo_image(model_name: str, attack: str = "fgsm", restore: tuple[str, ...] = ("nip-oracle",),
               defeat: tuple[str, ...] = ()) -> str:
    """A gallery image that shows a step of the guided tour (``nip_core.api.demo_image``)."""
    with queued(None):
        return api.demo_image(get_model(model_name), attack=attack, restore=restore, defeat=defeat)


@st.cache_data(show_spinner=False)
def contrast_image(model_a: str, model_b: str, attack: str = "fgsm") -> str:
    """A gallery image that ``attack`` fools on ``model_a`` and not on ``model_b`` (``nip_core.api.contrast_image``)."""
    with queued(None):
        return api.contrast_image(get_model(model_a), get_model(model_b), attack=attack)


def build_run(model_name: str, image_key: str, image_bytes: bytes | None, label: int | None, attack: str,
              attack_params: dict[str, Any], defense: str, defense_params: dict[str, Any], layer: str,
              method: str, k: float, seed: int) -> Run:
    """The run of one Explore view (:func:`explanation`'s key): ``nip_core.api.make_run`` on the loaded
    model, which validates the settings and keeps only parameters that differ from the units' defaults
    (shorter share links, one cache entry however the defaults were reached)."""
    return api.make_run(get_model(model_name), image_key, label, image_bytes=image_bytes, attack=attack,
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
    """``nip_core.api.run_strength`` of an Explore view's run at ``n`` strengths: a ``StrengthSweep``, kept
    (shared, never mutated) so that scrubbing its grid copies nothing."""
    with queued(_progress):
        return api.run_strength(run, n, progress=_progress)