"""CIFAR-10: class names and the 20 labelled test images that ship inside foolbox's wheel."""
from __future__ import annotations

import importlib.resources

import torch

from nip_core.errors import InputError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_SIDE = 32


def cifar10_samples() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The 20 CIFAR-10 test images in foolbox's wheel (``foolbox/data/cifar10_<i>_<label>.png``,
    pinned ``foolbox==3.3.4``), read from the installed package at run time: they are not
    redistributed here. The label is the last number in each file name.

    Returns:
        ``(x, y, names)``: ``x`` float32 ``[20, 3, 32, 32]`` in [0,1] (the PNG pixels / 255, no
        resampling), ``y`` int64 ``[20]`` class indices into :data:`CIFAR10_CLASSES`, and the file
        names, all in file-index order.
    """
    from nip_core.images import load_image_file

    folder = importlib.resources.files("foolbox").joinpath("data")
    files = sorted((f for f in folder.iterdir() if f.name.startswith("cifar10_") and f.name.endswith(".png")),
                   key=lambda f: int(f.name.split("_")[1]))
    if not files:
        raise InputError("foolbox's CIFAR-10 test images are missing; install foolbox==3.3.4 (requirements.txt).")
    images, labels = [], []
    for f in files:
        labels.append(int(f.name.rsplit("_", 1)[1].split(".")[0]))
        with importlib.resources.as_file(f) as path:
            # A 32×32 image passes through "natural" preprocessing unchanged (no resampling).
            images.append(load_image_file(path, channels=3, size=_SIDE, preprocess="natural"))
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), [f.name for f in files]
