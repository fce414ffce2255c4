"""Shared model types: the spec, the loaded bundle, the registry and a normalising wrapper."""
from __future__ import annotations

import copy
import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from nip_core.errors import InputError
from nip_core.params import Registry
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


class _Replica:
    """A copy of a model's module tree that shares its parameters and buffers (no weights copied):
    somewhere one thread can attach hooks without touching anyone else's passes."""

    def __init__(self, net: nn.Module, layers: dict[str, nn.Module]) -> None:
        shared = {id(t): t for t in (*net.parameters(), *net.buffers())}
        memo = dict(shared)
        self.net, self.layers = copy.deepcopy((net, layers), memo)
        # primary module -> its copy, for a module a caller looked up before its lease began
        self.counterpart = {id(m): memo[id(m)] for m in net.modules() if id(m) in memo}

    def clean(self) -> bool:
        return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                       or getattr(m, "_backward_pre_hooks", None) for m in self.net.modules())


class LoadedModel:
    """A ready model: the network (eval mode, on the device), its hookable layers and metadata.

    Several threads compute on one model at once. A plain forward pass (:meth:`logits`) runs on the
    shared network, which nobody hooks. Every computation that attaches hooks (Captum, NIP, surgery,
    attacks, defenses) runs inside :meth:`lease`: for that block the thread's ``net``, ``layers``
    and :meth:`layer` are its own replica's, a copy of the module tree that shares the weights, so
    sessions never see each other's hooks and never wait for each other. Never mutate the weights.

    ``lock`` no longer guards computation: it is a plain re-entrant lock for state that belongs
    to the model (the fill of an influence profile that grows on demand).
    """

    def __init__(self, spec: ModelSpec, net: nn.Module, class_names: list[str], layers: dict[str, nn.Module],
                 weights_sha256: str, device: torch.device, lock: threading.RLock | None = None) -> None:
        self.spec, self.class_names, self.weights_sha256, self.device = spec, class_names, weights_sha256, device
        self._net, self._layers = net, layers
        self.lock = lock if lock is not None else threading.RLock()
        self._free: list[_Replica] = []        # replicas no thread holds
        self._replicas = 0                      # replicas made (for tests and the docs)
        self._leaked = 0                        # replicas retired with a hook left on them (a bug)
        self._pool_lock = threading.Lock()
        self._bound = threading.local()         # .replica, .depth: the calling thread's lease

    def __repr__(self) -> str:
        return f"LoadedModel({self.spec.name!r})"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _replica(self) -> _Replica | None:
        return getattr(self._bound, "replica", None)

    @property
    def net(self) -> nn.Module:
        """The calling thread's replica inside :meth:`lease`, else the shared (never hooked) network."""
        r = self._replica()
        return self._net if r is None else r.net

    @property
    def shared_net(self) -> nn.Module:
        """The network every thread shares for plain passes; never hook it (use :meth:`lease`)."""
        return self._net

    @property
    def layers(self) -> dict[str, nn.Module]:
        r = self._replica()
        return self._layers if r is None else r.layers

    def local(self, module: nn.Module) -> nn.Module:
        """``module`` as the calling thread sees it: inside a lease, its replica's copy."""
        r = self._replica()
        return module if r is None else r.counterpart.get(id(module), module)

    @contextmanager
    def lease(self) -> Iterator[nn.Module]:
        """Hold a replica of the network for the block (re-entrant per thread; never waits: a new
        replica is made when every existing one is held). Yields the thread's ``net``."""
        b = self._bound
        depth = getattr(b, "depth", 0)
        if depth:
            b.depth = depth + 1
            try:
                yield b.replica.net
            finally:
                b.depth = depth
            return
        with self._pool_lock:
            r = self._free.pop() if self._free else None
        if r is None:
            r = _Replica(self._net, self._layers)
            with self._pool_lock:
                self._replicas += 1
        b.replica, b.depth = r, 1
        try:
            yield r.net
        finally:
            b.replica, b.depth = None, 0
            clean = r.clean()                   # a hook left behind (a bug) retires the replica
            with self._pool_lock:
                if clean:
                    self._free.append(r)
                else:
                    self._leaked += 1

    def leftover_hooks(self) -> int:
        """Forward hooks left on the shared network and on the free replicas, plus the replicas retired
        because a lease ended with a hook on them: 0 unless some computation leaked a hook."""
        with self._pool_lock:
            nets = [self._net] + [r.net for r in self._free]
            leaked = self._leaked
        return leaked + sum(len(m._forward_hooks) for net in nets for m in net.modules())

    def layer(self, name: str | None) -> nn.Module:
        name = name or self.spec.default_layer
        layers = self.layers
        if name not in layers:
            raise InputError(f"model '{self.name}' has no layer {name!r}; choose one of: {', '.join(layers)}.")
        return layers[name]

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Logits for a batch in [0,1] pixel space (returned on CPU). No lock: the shared network
        carries no hooks (inside a lease, the thread's replica with its own)."""
        net = self.net
        outs = [net(x[i:i + batch_size].to(self.device)).float().cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(1)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).softmax(1)


MODELS: Registry = Registry("model", name_of=lambda spec: spec.name, sort=False)
_LOADED: dict[str, LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


register_model = MODELS.register


def unregister_model(name: str) -> None:
    """Forget a (user-registered) model and its loaded instance."""
    with _LOAD_LOCK:
        MODELS.pop(name, None)
        _LOADED.pop(name, None)


def model_names() -> list[str]:
    return list(MODELS)


get_spec = MODELS.get_unit


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
