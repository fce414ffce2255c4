"""Shared model types: the spec, the loaded bundle, the registry and a normalising wrapper."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from nip_core.errors import InputError
from nip_core.runtime import get_device


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; keeps user-visible tensors in [0,1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class FirstRun:
    """What a first run on a model shows by default (issue 26): an image of its gallery, an attack that
    flips it and a defense that restores it, so that a newcomer's first view shows NIP acting.

    Where the deployable, label-free ``nip`` restores the default image, it is the default; where it
    cannot (no calibration, or it does not flag this input), the default is ``nip-oracle``, the
    paper's protocol, which picks the influence profile with the TRUE label: the page says so in one
    line and offers ``nip`` one click away. ``tests/test_first_run.py`` checks on every built-in
    model that the default run flips and restores.
    """

    attack: str = "fgsm"
    defense: str = "nip"
    image: str | None = None   # a gallery key; None: the gallery's first image


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model is, before it is loaded."""

    name: str
    summary: str
    input_channels: int
    input_size: int
    preprocess: str          # name understood by nip_core.images.to_model_input
    gallery: str             # 'mnist', 'fashion' or 'imagenet'
    layers: tuple[str, ...]  # influence layers, in forward order
    default_layer: str
    factory: Callable[[], "LoadedModel"] = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    # Layers whose output reaches the logits through an affine map only (average pooling, a linear
    # classifier): there the logit's gradient is the same at every input, so layer conductance is
    # exactly gradient × (activation − baseline activation), one pass instead of n_steps + 1.
    affine_layers: tuple[str, ...] = ()
    # The model's JSON card (training settings, accuracy, robust figures), for models trained here.
    card: Path | None = field(default=None, compare=False)
    # The default image, attack and defense of a first run on this model (``FirstRun``).
    first_run: FirstRun = field(default_factory=FirstRun, compare=False)

    def to_json(self) -> dict:
        return {
            "name": self.name, "summary": self.summary, "input_channels": self.input_channels,
            "input_size": self.input_size, "gallery": self.gallery, "layers": list(self.layers),
            "default_layer": self.default_layer,
        }


@dataclass(eq=False)
class LoadedModel:
    """A ready model: the network (eval mode, on the device), its hookable layers and metadata.

    ``lock`` serialises every computation that attaches hooks (Captum, NIP, attacks) so that
    sessions sharing one cached model never see each other's hooks. Never mutate ``net``.
    """

    spec: ModelSpec
    net: nn.Module
    class_names: list[str]
    layers: dict[str, nn.Module]
    weights_sha256: str
    device: torch.device
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def layer(self, name: str | None) -> nn.Module:
        name = name or self.spec.default_layer
        if name not in self.layers:
            raise InputError(f"model '{self.name}' has no layer {name!r}; choose one of: {', '.join(self.layers)}.")
        return self.layers[name]

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Logits for a batch in [0,1] pixel space (returned on CPU)."""
        outs = []
        with self.lock:
            for i in range(0, len(x), batch_size):
                outs.append(self.net(x[i:i + batch_size].to(self.device)).float().cpu())
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(1)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).softmax(1)


MODELS: dict[str, ModelSpec] = {}
_LOADED: dict[str, LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise RuntimeError(f"model {spec.name!r} registered twice")
    MODELS[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    """Forget a (user-registered) model and its loaded instance."""
    with _LOAD_LOCK:
        MODELS.pop(name, None)
        _LOADED.pop(name, None)


def model_names() -> list[str]:
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}.")
    return MODELS[name]


def load_model(name: str) -> LoadedModel:
    """Load (once per process) and return the named model."""
    spec = get_spec(name)
    with _LOAD_LOCK:
        if name not in _LOADED:
            _LOADED[name] = spec.factory()
        return _LOADED[name]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finish(spec: ModelSpec, net: nn.Module, class_names: list[str], layers: dict[str, nn.Module],
           sha: str) -> LoadedModel:
    device = get_device()
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return LoadedModel(spec=spec, net=net, class_names=class_names, layers=layers,
                       weights_sha256=sha, device=device)
