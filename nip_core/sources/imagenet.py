"""ImageNet-1k class names, shipped as a small asset (``assets/classes/imagenet.json``).

They are torchvision's list (``ResNet18_Weights.IMAGENET1K_V1.meta["categories"]``), copied so that
loading EfficientNet-Lite0 does not import torchvision (about 2 s: its package import loads all
of its models and ``torch._dynamo``). ``tests/test_images.py`` checks the copy against torchvision.
"""
from __future__ import annotations

import json
from functools import lru_cache

from nip_core.runtime import ASSETS

CLASSES_FILE = ASSETS / "classes" / "imagenet.json"


@lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    return tuple(json.loads(CLASSES_FILE.read_text(encoding="utf-8"))["classes"])


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names in index order."""
    return list(_names())
