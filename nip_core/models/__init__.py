"""Model registry: each entry is a small factory that returns a :class:`LoadedModel`.

All models take inputs in [0,1] pixel space; normalisation lives inside the wrapper. Each
declares its input geometry, class names, hookable influence layers (modules that run exactly
once per forward) and the gallery its example images come from.
"""
from __future__ import annotations

from nip_core.models.base import LoadedModel, ModelSpec, MODELS, load_model, model_names
from nip_core.models import lenet as _lenet  # noqa: F401  (registers lenet-mnist)
from nip_core.models import efficientnet as _efficientnet  # noqa: F401  (registers efficientnet-lite0)
from nip_core.models import resnet8 as _resnet8  # noqa: F401  (registers resnet8-cifar10)

__all__ = ["LoadedModel", "ModelSpec", "MODELS", "load_model", "model_names"]
