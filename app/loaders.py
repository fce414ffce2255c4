"""Cached loaders: the shared models and profiles, galleries, users' models and uploads, calibrations.

Models and influence profiles are shared objects (``st.cache_resource``, never mutated here); what
is derived from them is ``st.cache_data`` keyed on plain values (names, image bytes).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import streamlit as st

from nip_core.errors import InputError


@st.cache_resource(show_spinner=False)
def get_model(name: str):
    """The loaded model (shared by every session; never mutate it)."""
    from nip_core.models import load_model
    return load_model(name)


@st.cache_resource(show_spinner=False)
def get_profile(model_name: str, layer: str, method: str):
    """The benign influence profile (shared; the engine locks its lazy per-class fills)."""
    from nip_core.influence import influence_profile
    return influence_profile(get_model(model_name), layer, method)


@st.cache_data(show_spinner=False)
def gallery_entries(model_name: str) -> list[dict[str, Any]]:
    """The model's example images as plain dicts (key, label, label_name, source, png)."""
    from nip_core.data import gallery
    from nip_core.images import tensor_to_png_bytes

    model = get_model(model_name)
    return [{"key": it.key, "label": it.label, "label_name": it.label_name, "source": it.source,
             "png": tensor_to_png_bytes(it.image)} for it in gallery(model.spec.gallery)]


@st.cache_data(show_spinner=False, max_entries=8)
def split_thumbnails(model_name: str, split: str) -> list[bytes]:
    """The images of the model's ``split`` as PNG bytes, in split order (``nip_core.evaluation.slices``: the
    shipped ``assets/splits`` file, else the data loaders)."""
    from nip_core.images import tensor_to_png_bytes
    from nip_core.evaluation.slices import split_images

    x, _ = split_images(get_model(model_name), split)
    return [tensor_to_png_bytes(im) for im in x]


@st.cache_data(show_spinner=False, max_entries=8)
def split_entry(model_name: str, image_key: str) -> dict[str, Any]:
    """A split image (``report:123``) as a gallery entry: key, label, label_name, source, png."""
    from nip_core.images import tensor_to_png_bytes
    from nip_core.evaluation.slices import parse_image_key, split_image

    model = get_model(model_name)
    image, label, batch = split_image(model, image_key)
    k = parse_image_key(image_key)
    shard = f", run in its evaluation shard (images {k.shard[0]}–{k.shard[1] - 1})" if batch is not None else ""
    return {"key": image_key, "label": label, "label_name": model.class_names[label],
            "source": f"{k.owner or model_name} {k.split} split, image {k.index}{shard}",
            "png": tensor_to_png_bytes(image)}


def split_image_problem(model_name: str, image_key: str, problems: list[str]) -> str | None:
    """Why a link's image cannot be opened as a split image (also appended to ``problems``), or None
    when it can (``report:123``, optionally with its shard: ``report:123@64:128``)."""
    from nip_core.evaluation.slices import parse_image_key

    if parse_image_key(image_key) is None:
        why = f"unknown example image {image_key!r}"
    else:
        try:
            split_entry(model_name, image_key)
            return None
        except InputError as exc:
            why = str(exc).rstrip(".")
    problems.append(why)
    return why


def with_split_image(model_name: str, entries: list[dict[str, Any]], image_key: str | None) -> list[dict[str, Any]]:
    """The gallery entries, led by the split image ``image_key`` names when it is one (a link from the
    Benchmark page opened it)."""
    from nip_core.evaluation.slices import parse_image_key

    if image_key is None or parse_image_key(image_key) is None:
        return entries
    try:
        return [split_entry(model_name, image_key)] + entries
    except InputError:
        return entries


def class_names_of(model_name: str) -> list[str] | None:
    """The class names of a registered model (None for a model this server does not know)."""
    from nip_core.models import MODELS

    return list(get_model(model_name).class_names) if model_name in MODELS else None


BYOM_KEY = "byom.models"   # session state: names of the custom models this session loaded


def load_custom(arch: str, weights: bytes, classes: bytes, input_size: int | None) -> str:
    """Register a user's safetensors classifier (never unpickled) and return its model name."""
    from nip_core.byom import load_custom_model
    return load_custom_model(arch, weights, classes, input_size=input_size).name


def visible_models(own: list[str]) -> list[str]:
    """Shipped models plus this session's own uploaded ones (never another session's)."""
    from nip_core.byom import is_custom
    from nip_core.models import MODELS
    return [m for m in MODELS if not is_custom(m)] + [m for m in own if m in MODELS]


def load_upload(model_name: str, data: bytes):
    """Decode uploaded bytes for the model through the one safe loader (raises InputError)."""
    from nip_core.images import load_image

    spec = get_model(model_name).spec
    return load_image(data, channels=spec.input_channels, size=spec.input_size, preprocess=spec.preprocess)


DATA_UPLOAD_MAX_MB = 50   # also Streamlit's server.maxUploadSize (.streamlit/config.toml)
DATA_MAX_IMAGES = 5000


@st.cache_data(show_spinner=False, max_entries=4)
def user_data(model_name: str, file_name: str, data: bytes):
    """The user's labelled images (an uploaded .zip holding an ImageFolder or a .npz, or a .npz) for
    the model: ``nip_core.sources.userdata.LabelledData``, with ``.skipped`` and ``.summary_line()``.

    The bytes are written to a private temporary folder under a fixed name; a .zip is extracted by
    ``safe_extract_zip`` (no path traversal, links or zip bombs) inside ``load_labelled_data``.
    Raises InputError for an unusable file.
    """
    from nip_core.sources.userdata import load_labelled_data

    spec = get_model(model_name).spec
    with upload_on_disk(file_name, data) as path:
        out = load_labelled_data(path, class_names=get_model(model_name).class_names,
                                 channels=spec.input_channels, size=spec.input_size, preprocess=spec.preprocess,
                                 max_images=DATA_MAX_IMAGES, max_bytes=4 * DATA_UPLOAD_MAX_MB * 2**20)
    out.source = file_name   # what the summary line names: the user's file, not the temporary path
    return out


@contextmanager
def upload_on_disk(file_name: str, data: bytes) -> Iterator[Any]:
    """The uploaded bytes as ``upload.zip``/``upload.npz`` in a private temporary folder (removed after)."""
    import tempfile
    from pathlib import Path

    if len(data) > DATA_UPLOAD_MAX_MB * 2**20:
        raise InputError(f"{file_name} is {len(data) / 2**20:.1f} MB, over the {DATA_UPLOAD_MAX_MB} MB limit for "
                         "uploaded data; upload a smaller subset.")
    suffix = Path(file_name).suffix.lower()
    if suffix not in (".zip", ".npz"):
        raise InputError(f"{file_name} is not a .zip or .npz file; upload a .zip of class folders of images, "
                         "or a .npz with arrays x and y.")
    with tempfile.TemporaryDirectory(prefix="nip-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        yield path


@st.cache_data(show_spinner=False, ttl=60)
def has_calibration(model_name: str) -> bool:
    """Whether the label-free ``nip`` has a calibration for the model (else it passes inputs through)."""
    from nip_core.calibration import calibration_for
    return calibration_for(get_model(model_name)) is not None


def calibration_hint(model_name: str) -> str:
    """One line: ``nip`` passes inputs through on this model, and how to calibrate it."""
    from nip_core.calibration import how_to_calibrate
    return how_to_calibrate(get_model(model_name))
