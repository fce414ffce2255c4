"""Neuron influence with Captum layer attribution, layer activations, and influence profiles.

A *neuron* is a unit of a fully connected layer or a channel of a convolutional layer. Its
influence on class ``c`` for input ``x`` is the Captum layer attribution toward ``c`` summed over
the neuron's spatial positions; its activation is the layer output averaged over positions.

Profiles aggregate influence over benign reference examples:

* per-class profile ``P_c[j]`` – mean influence of neuron ``j`` toward class ``c`` over benign
  examples of class ``c`` (MNIST), or over all reference photos when the dataset has no
  examples of ``c`` (ImageNet: only a handful of photos ship offline);
* global profile ``G[j]`` – mean influence of neuron ``j`` toward each example's own class.

Front neurons are the top ``k`` fraction of *live* neurons by profile score, tail neurons the
bottom ``k`` fraction; dead neurons (never active on the references) belong to neither.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
from captum.attr import LayerConductance, LayerGradientXActivation
from safetensors.torch import load_file, save_file

from nip_core.errors import InputError
from nip_core.models.base import LoadedModel
from nip_core.runtime import ASSETS, cache_dir

METHODS = ("conductance", "grad_x_act")
DEFAULT_STEPS = 16
INTERPOLANT_VALUES = 1 << 22  # input values per Captum internal batch (memory bound)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"unknown influence method {method!r}; choose one of: {', '.join(METHODS)}.")


def _per_neuron(t: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] → [N, C] by summing positions; [N, F] unchanged."""
    return t.flatten(2).sum(2) if t.dim() > 2 else t


def neuron_influence(model: LoadedModel, x: torch.Tensor, target: torch.Tensor | int, layer: str | None = None,
                     method: str = "conductance", n_steps: int = DEFAULT_STEPS,
                     batch_size: int = 64) -> torch.Tensor:
    """Influence of every neuron of ``layer`` toward ``target`` for each input.

    Args:
        x: inputs ``[N, C, H, W]`` in [0,1].
        target: one class index or ``[N]`` class indices.
        method: ``"conductance"`` (Captum ``LayerConductance``, baseline = black image,
            ``n_steps`` trapezoid steps) or ``"grad_x_act"`` (``LayerGradientXActivation``).
    Returns:
        ``[N, n_neurons]`` float tensor on CPU.
    """
    _check_method(method)
    module = model.layer(layer)
    target_t = torch.as_tensor(target).long().flatten()
    if target_t.numel() == 1:
        target_t = target_t.expand(len(x))
    outs = []
    with model.lock:
        if method == "conductance":
            algo = LayerConductance(model.net, module)
            # Captum evaluates n_steps + 1 interpolants per input. Bound the interpolants held at
            # once by input size (a few million input values) so ImageNet-sized inputs stay
            # within memory, while small inputs still go in big batches.
            per_image = n_steps + 1
            budget = max(per_image, INTERPOLANT_VALUES // max(1, x[0].numel()))
            chunk = max(1, min(batch_size, budget // per_image))
            for i in range(0, len(x), chunk):
                xb = x[i:i + chunk].to(model.device)
                # Trapezoid steps include both ends of the path, so the neuron scores sum to the
                # logit change (completeness); Gauss–Legendre nodes miss the end segments.
                a = algo.attribute(xb, baselines=torch.zeros_like(xb), target=target_t[i:i + chunk].to(model.device),
                                   n_steps=n_steps, method="riemann_trapezoid",
                                   internal_batch_size=max(len(xb), min(budget, len(xb) * per_image)))
                outs.append(_per_neuron(a.detach()).float().cpu())
        else:
            algo = LayerGradientXActivation(model.net, module)
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(model.device)
                a = algo.attribute(xb, target=target_t[i:i + batch_size].to(model.device))
                outs.append(_per_neuron(a.detach()).float().cpu())
    return torch.cat(outs)


class _StopForward(Exception):
    pass


def layer_output(model: LoadedModel, x: torch.Tensor, layer: str | None = None, *, grad: bool = False,
                 stop: bool = True) -> torch.Tensor:
    """Raw output of ``layer`` (``[N, C, h, w]`` or ``[N, F]``) for inputs on the model's device.

    With ``stop`` the forward pass ends at the layer (the rest of the network is not run).
    With ``grad`` the result stays on the autograd graph. Caller holds ``model.lock``
    or accepts that this call takes it.
    """
    module = model.layer(layer)
    box: list[torch.Tensor] = []
    owner = threading.get_ident()

    def hook(_m, _inp, out):
        if threading.get_ident() == owner:
            box.append(out)
            if stop:
                raise _StopForward

    with model.lock:
        handle = module.register_forward_hook(hook)
        try:
            with torch.set_grad_enabled(grad):
                try:
                    model.net(x)
                except _StopForward:
                    pass
        finally:
            handle.remove()
    return box[0]


def neuron_activations(model: LoadedModel, x: torch.Tensor, layer: str | None = None,
                       batch_size: int = 64) -> torch.Tensor:
    """Per-neuron activation (conv channels averaged over positions): ``[N, n_neurons]`` on CPU."""
    outs = []
    for i in range(0, len(x), batch_size):
        out = layer_output(model, x[i:i + batch_size].to(model.device), layer)
        outs.append((out.flatten(2).mean(2) if out.dim() > 2 else out).float().cpu())
    return torch.cat(outs)


def spatial_map(model: LoadedModel, x: torch.Tensor, layer: str | None, neuron: int) -> torch.Tensor:
    """Activation map of one conv channel, upsampled to the input size: ``[N, H, W]`` on CPU.

    For a fully connected layer there is no spatial layout; the map is the input-gradient
    magnitude of that neuron's activation (where in the image it looks), normalised per image.
    """
    xd = x.to(model.device)
    with model.lock:
        out = layer_output(model, xd, layer)
        if out.dim() > 2:
            out = out[:, neuron:neuron + 1]
            m = torch.nn.functional.interpolate(out.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
            return m[:, 0].detach().cpu()
        xg = xd.clone().requires_grad_(True)
        out = layer_output(model, xg, layer, grad=True)
        (g,) = torch.autograd.grad(out[:, neuron].sum(), xg)
    m = g.abs().sum(1)
    return (m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)).detach().cpu()


@dataclass
class InfluenceProfile:
    """Benign influence statistics of one layer.

    Attributes:
        per_class: class index → ``[n_neurons]`` mean influence toward that class.
        global_scores: ``[n_neurons]`` mean influence toward each reference's own class.
        activation_rate: ``[n_neurons]`` share of references on which the neuron is active (> 0).
        mean_activation: ``[n_neurons]`` mean activation over the references.
    """

    model_name: str
    layer: str
    method: str
    n_steps: int
    global_scores: torch.Tensor
    activation_rate: torch.Tensor
    mean_activation: torch.Tensor
    per_class: dict[int, torch.Tensor] = field(default_factory=dict)
    class_counts: dict[int, int] = field(default_factory=dict)
    _fill: Callable[[int], torch.Tensor] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n_neurons(self) -> int:
        return int(self.global_scores.numel())

    @property
    def dead(self) -> torch.Tensor:
        """Neurons that never fired on the benign references."""
        return self.activation_rate <= 0

    def class_scores(self, cls: int) -> torch.Tensor:
        """Per-class profile, computed on first use when the dataset lacks that class."""
        cls = int(cls)
        if cls not in self.per_class:
            if self._fill is None:
                raise InputError(f"no influence profile for class {cls}.")
            with self._lock:
                if cls not in self.per_class:
                    self.per_class[cls] = self._fill(cls)
        return self.per_class[cls]

    def scores(self, cls: int | None = None) -> torch.Tensor:
        return self.global_scores if cls is None else self.class_scores(cls)

    def groups(self, cls: int | None = None, k: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Indices of (front, middle, tail) neurons: top/bottom ``k`` of live neurons by score."""
        if not 0 < k <= 0.5:
            raise InputError(f"parameter 'k' must be float in (0, 0.5]; got {k!r}.")
        s = self.scores(cls)
        live = torch.nonzero(~self.dead).flatten()
        order = live[torch.argsort(s[live], descending=True, stable=True)]
        n = max(1, int(round(k * len(order))))
        return order[:n], order[n:len(order) - n], order[len(order) - n:]

    def masks(self, cls: int | None = None, k: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
        front, _, tail = self.groups(cls, k)
        fm = torch.zeros(self.n_neurons, dtype=torch.bool)
        tm = torch.zeros(self.n_neurons, dtype=torch.bool)
        fm[front] = True
        tm[tail] = True
        return fm, tm

    def class_matrix(self, classes: list[int] | None = None) -> tuple[list[int], torch.Tensor]:
        classes = sorted(self.per_class) if classes is None else classes
        return classes, torch.stack([self.class_scores(c) for c in classes])


_PROFILES: dict[str, InfluenceProfile] = {}
_PROFILES_LOCK = threading.Lock()


def _profile_key(model: LoadedModel, layer: str, method: str, n_steps: int, per_class: int) -> str:
    blob = json.dumps({"w": model.weights_sha256, "layer": layer, "method": method, "n_steps": n_steps,
                       "per_class": per_class, "v": 2}, sort_keys=True)
    return f"{model.name}-{layer}-{method}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def shipped_profile_dir():
    return ASSETS / "profiles"


def influence_profile(model: LoadedModel, layer: str | None = None, method: str = "conductance",
                      n_steps: int = DEFAULT_STEPS, per_class: int = 100, use_cache: bool = True,
                      progress: Callable[[float, str], None] | None = None) -> InfluenceProfile:
    """The benign influence profile of ``layer``, from memory, disk, shipped assets or computed.

    The disk cache key covers the weights hash, layer, method and parameters, so a retrained
    model or a different method never reuses a stale profile.
    """
    from nip_core.data import benign_reference

    _check_method(method)
    layer = layer or model.spec.default_layer
    model.layer(layer)
    key = _profile_key(model, layer, method, n_steps, per_class)
    with _PROFILES_LOCK:
        if use_cache and key in _PROFILES:
            return _PROFILES[key]
    x_ref, y_ref = benign_reference(model, per_class)
    labelled = model.spec.gallery == "mnist"

    def fill(cls: int) -> torch.Tensor:
        # Classes with no benign examples: influence toward cls over every reference image.
        return neuron_influence(model, x_ref, cls, layer, method, n_steps).mean(0)

    files = [shipped_profile_dir() / f"{key}.safetensors", cache_dir() / "profiles" / f"{key}.safetensors"]
    prof = None
    if use_cache:
        for f in files:
            if f.exists():
                prof = _read(f, model, layer, method, n_steps)
                break
    if prof is None:
        if progress:
            progress(0.0, f"profiling {layer} ({method}) on {len(x_ref)} benign images")
        infl = neuron_influence(model, x_ref, y_ref, layer, method, n_steps)
        acts = neuron_activations(model, x_ref, layer)
        prof = InfluenceProfile(model.name, layer, method, n_steps, global_scores=infl.mean(0),
                                activation_rate=(acts > 0).float().mean(0), mean_activation=acts.mean(0))
        if labelled:
            for c in range(model.num_classes):
                sel = y_ref == c
                if sel.any():
                    prof.per_class[c] = infl[sel].mean(0)
                    prof.class_counts[c] = int(sel.sum())
        if use_cache:
            _write(files[1], prof)
        if progress:
            progress(1.0, "profile ready")
    if not labelled:
        prof._fill = fill
    with _PROFILES_LOCK:
        if use_cache:
            _PROFILES[key] = prof
    return prof


def _write(path, prof: InfluenceProfile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = sorted(prof.per_class)
    tensors = {"global": prof.global_scores, "activation_rate": prof.activation_rate,
               "mean_activation": prof.mean_activation,
               "classes": torch.tensor(classes, dtype=torch.long),
               "counts": torch.tensor([prof.class_counts.get(c, 0) for c in classes], dtype=torch.long)}
    if classes:
        tensors["per_class"] = torch.stack([prof.per_class[c] for c in classes])
    tmp = path.with_suffix(f".tmp{threading.get_ident()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def _read(path, model, layer, method, n_steps) -> InfluenceProfile:
    t = load_file(str(path))
    prof = InfluenceProfile(model.name, layer, method, n_steps, global_scores=t["global"],
                            activation_rate=t["activation_rate"], mean_activation=t["mean_activation"])
    for i, c in enumerate(t["classes"].tolist()):
        prof.per_class[c] = t["per_class"][i]
        prof.class_counts[c] = int(t["counts"][i])
    return prof


def save_profile_to_assets(prof: InfluenceProfile, model: LoadedModel, per_class: int = 100) -> None:
    """Ship a computed profile in ``assets/profiles`` (used for the shipped models)."""
    key = _profile_key(model, prof.layer, prof.method, prof.n_steps, per_class)
    _write(shipped_profile_dir() / f"{key}.safetensors", prof)
