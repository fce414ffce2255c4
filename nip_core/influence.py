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
from pathlib import Path
from typing import Callable

import torch
from captum.attr import LayerGradientXActivation
from safetensors.torch import load_file, save_file

from nip_core.errors import InputError
from nip_core.hooks import StopForward, capture_hook, hooked, leaf_hook, neuron_means, neuron_sums
from nip_core.models.base import LoadedModel
from nip_core.runtime import ASSETS, cache_dir

METHODS = ("conductance", "grad_x_act")
DEFAULT_STEPS = 16
INTERPOLANT_VALUES = 1 << 22  # input values per conductance pass (memory bound)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"unknown influence method {method!r}; choose one of: {', '.join(METHODS)}.")



def neuron_influence(model: LoadedModel, x: torch.Tensor, target: torch.Tensor | int, layer: str | None = None,
                     method: str = "conductance", n_steps: int = DEFAULT_STEPS,
                     batch_size: int = 64, exact_affine: bool = False) -> torch.Tensor:
    """Influence of every neuron of ``layer`` toward ``target`` for each input.

    Args:
        x: inputs ``[N, C, H, W]`` in [0,1].
        target: one class index or ``[N]`` class indices.
        method: ``"conductance"`` (Captum's ``LayerConductance`` formula, baseline = black image,
            ``n_steps`` trapezoid steps) or ``"grad_x_act"`` (``LayerGradientXActivation``).
        batch_size: most inputs per pass (conductance: see :func:`conductance_chunk`).
        exact_affine: at a layer in ``ModelSpec.affine_layers``, compute the ``n_steps`` sum in its
            closed form, one pass (:func:`conductance_steps`; equal up to float rounding). Off by
            default: evaluations keep the n-step integral so that their numbers are bitwise the same
            on every path (serial and Ray); the app's single-image Explore view turns it on.
    Returns:
        ``[N, n_neurons]`` float tensor on CPU.
    """
    _check_method(method)
    module = model.layer(layer)
    target_t = torch.as_tensor(target).long().flatten()
    if target_t.numel() == 1:
        target_t = target_t.expand(len(x))
    if method == "conductance":
        steps = conductance_steps(model, layer, n_steps) if exact_affine else n_steps
        return _conductance(model, module, x, target_t.view(1, -1), steps, batch_size)[0]
    outs = []
    with model.lease() as net:
        algo = LayerGradientXActivation(net, model.local(module))
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(model.device)
            a = algo.attribute(xb, target=target_t[i:i + batch_size].to(model.device))
            outs.append(neuron_sums(a.detach()).float().cpu())
    return torch.cat(outs)


def conductance_steps(model: LoadedModel, layer: str | None, n_steps: int) -> int:
    """Integration steps that give ``n_steps``-step conductance exactly at ``layer``.

    Where the layer reaches the logits through an affine map (``ModelSpec.affine_layers``), the
    gradient ``g_i`` is the same at every interpolant, so the trapezoid sum telescopes:
    ``Σ_{i<n} (a_{i+1} − a_i) · g = (a(x) − a(0)) · g``, which one step computes.
    """
    layer = layer or model.spec.default_layer
    return 1 if layer in getattr(model.spec, "affine_layers", ()) else n_steps


def conductance_chunk(x: torch.Tensor, n_steps: int, batch_size: int = 64) -> int:
    """Inputs per conductance pass; each pass runs ``chunk * (n_steps + 1)`` interpolants.

    The interpolants held at once are bounded by input size (about ``INTERPOLANT_VALUES``
    input values) so ImageNet-sized inputs stay within memory, while small inputs still go
    in big batches.
    """
    per_image = n_steps + 1
    budget = max(per_image, INTERPOLANT_VALUES // max(1, x[0].numel()))
    return max(1, min(batch_size, budget // per_image))


def _conductance(model: LoadedModel, module: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor,
                 n_steps: int, batch_size: int = 64) -> torch.Tensor:
    """Layer conductance toward several target sets at once: ``[n_targets, N, n_neurons]`` on CPU.

    The same sum as Captum's ``LayerConductance(...).attribute(x, baselines=0, n_steps=n,
    method="riemann_trapezoid")``: with alphas ``α_i = i/n`` (i = 0…n), layer activations
    ``a_i = a(α_i x)`` and layer gradients ``g_i = ∂logit_t/∂a (α_i x)``,
    ``cond = Σ_{i<n} (a_{i+1} − a_i) · g_i`` summed over positions. Computed directly so that
    (1) the network before the layer runs without an autograd graph (Captum makes the
    interpolated inputs require grad, recording the whole forward), (2) all ``n+1``
    interpolants of a chunk go through one forward pass, and (3) several targets (``targets``
    is ``[n_targets, N]``) share that forward pass and differ only in the backward from the
    logits to the layer.
    """
    box: list[torch.Tensor] = []
    hook = leaf_hook(box)
    alphas = torch.linspace(0, 1, n_steps + 1).tolist()
    chunk = conductance_chunk(x, n_steps, batch_size)
    outs = []
    with model.lease():
        with hooked(model.local(module), hook):
            with torch.enable_grad():
                for i in range(0, len(x), chunk):
                    xb = x[i:i + chunk].to(model.device)
                    b = len(xb)
                    box.clear()
                    logits = model.net(torch.cat([a * xb for a in alphas]))
                    acts = box[0]
                    diff = (acts[b:] - acts[:-b]).detach()
                    res = []
                    for j, tg in enumerate(targets):
                        tg = tg[i:i + chunk].to(model.device).repeat(n_steps + 1).view(-1, 1)
                        (g,) = torch.autograd.grad(logits.gather(1, tg).sum(), acts,
                                                   retain_graph=j < len(targets) - 1)
                        c = (diff * g[:-b]).view(n_steps, b, *acts.shape[1:]).sum(0)
                        res.append(neuron_sums(c).float().cpu())
                    outs.append(torch.stack(res))
                    del logits, acts, diff
    return torch.cat(outs, dim=1)



def _grad_x_act(model: LoadedModel, module: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor,
                batch_size: int = 64) -> torch.Tensor:
    """Gradient × activation toward several target sets: ``[n_targets, N, n_neurons]`` on CPU.

    The same numbers as Captum's ``LayerGradientXActivation`` (summed over positions), but all
    target sets share one forward pass and only backpropagate from the logits to the layer.
    """
    box: list[torch.Tensor] = []
    outs = []
    with model.lease():
        with hooked(model.local(module), leaf_hook(box)):
            with torch.enable_grad():
                for i in range(0, len(x), batch_size):
                    box.clear()
                    logits = model.net(x[i:i + batch_size].to(model.device))
                    acts = box[0]
                    res = []
                    for j, tg in enumerate(targets):
                        tg = tg[i:i + batch_size].to(model.device).view(-1, 1)
                        (g,) = torch.autograd.grad(logits.gather(1, tg).sum(), acts,
                                                   retain_graph=j < len(targets) - 1)
                        res.append(neuron_sums(g * acts.detach()).float().cpu())
                    outs.append(torch.stack(res))
                    del logits, acts
    return torch.cat(outs, dim=1)




def layer_output(model: LoadedModel, x: torch.Tensor, layer: str | None = None, *, grad: bool = False,
                 stop: bool = True) -> torch.Tensor:
    """Raw output of ``layer`` (``[N, C, h, w]`` or ``[N, F]``) for inputs on the model's device.

    With ``stop`` the forward pass ends at the layer (the rest of the network is not run).
    With ``grad`` the result stays on the autograd graph. Runs in the caller's lease of the model's
    replica (or takes one), so the hook is on no other thread's network.
    """
    model.layer(layer)
    box: list[torch.Tensor] = []
    with model.lease():
        with hooked(model.layer(layer), capture_hook(box, stop)):
            with torch.set_grad_enabled(grad):
                try:
                    model.net(x)
                except StopForward:
                    pass
    return box[0]


def neuron_activations(model: LoadedModel, x: torch.Tensor, layer: str | None = None,
                       batch_size: int = 64) -> torch.Tensor:
    """Per-neuron activation (conv channels averaged over positions): ``[N, n_neurons]`` on CPU."""
    outs = []
    for i in range(0, len(x), batch_size):
        out = layer_output(model, x[i:i + batch_size].to(model.device), layer)
        outs.append(neuron_means(out).float().cpu())
    return torch.cat(outs)


def is_conv_layer(model: LoadedModel, layer: str | None) -> bool:
    """Whether ``layer``'s neurons are conv channels (they have a spatial activation map): one pass of a
    blank input."""
    s = model.spec
    return layer_output(model, torch.zeros(1, s.input_channels, s.input_size, s.input_size), layer).dim() > 2


def spatial_map(model: LoadedModel, x: torch.Tensor, layer: str | None, neuron: int) -> torch.Tensor:
    """Activation map of one conv channel, upsampled to the input size: ``[N, H, W]`` on CPU.

    For a fully connected layer there is no spatial layout; the map is the input-gradient
    magnitude of that neuron's activation (where in the image it looks), normalised per image.
    """
    xd = x.to(model.device)
    with model.lease():
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
    _fill: Callable[[list[int]], torch.Tensor] | None = field(default=None, repr=False)
    # Writes the profile (with classes filled since loading) back to the disk cache.
    _persist: Callable[["InfluenceProfile"], None] | None = field(default=None, repr=False)
    _lock: threading.Lock | threading.RLock = field(default_factory=threading.Lock, repr=False)

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
            self.prefill([cls])
        return self.per_class[cls]

    def prefill(self, classes) -> None:
        """Compute the missing per-class profiles of ``classes`` together (one shared forward pass)."""
        missing = sorted({int(c) for c in classes} - set(self.per_class))
        if not missing:
            return
        if self._fill is None:
            raise InputError(f"no influence profile for class {missing[0]}.")
        with self._lock:
            missing = [c for c in missing if c not in self.per_class]
            if missing:
                for c, scores in zip(missing, self._fill(missing)):
                    self.per_class[c] = scores
                if self._persist is not None:
                    self._persist(self)

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


def _profile_key(model: LoadedModel, layer: str, method: str, n_steps: int, per_class: int,
                 data: str | None = None) -> str:
    fields = {"w": model.weights_sha256, "layer": layer, "method": method, "n_steps": n_steps,
              "per_class": per_class, "v": 2} | ({"data": data} if data else {})
    blob = json.dumps(fields, sort_keys=True)
    return f"{model.name}-{layer}-{method}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def shipped_profile_dir():
    return ASSETS / "profiles"


def influence_profile(model: LoadedModel, layer: str | None = None, method: str = "conductance",
                      n_steps: int = DEFAULT_STEPS, per_class: int = 100, use_cache: bool = True,
                      progress: Callable[[float, str], None] | None = None,
                      data: tuple[torch.Tensor, torch.Tensor, str] | None = None) -> InfluenceProfile:
    """The benign influence profile of ``layer``, from memory, disk, shipped assets or computed.

    The disk cache key covers the weights hash, layer, method and parameters, so a retrained
    model or a different method never reuses a stale profile.

    Args:
        data: ``(x, y, content_sha256)``: labelled benign images of the user's (``profile --data``)
            to profile instead of the dataset's references; the hash joins the cache key.
    """
    from nip_core.data import benign_reference, dataset_of, first_per_class

    _check_method(method)
    layer = layer or model.spec.default_layer
    model.layer(layer)
    key = _profile_key(model, layer, method, n_steps, per_class, data[2] if data else None)
    with _PROFILES_LOCK:
        if use_cache and key in _PROFILES:
            return _PROFILES[key]
    def reference() -> tuple[torch.Tensor, torch.Tensor]:  # loaded only when something is computed
        if data is not None:
            return first_per_class(data[0], data[1], per_class)
        return benign_reference(model, per_class)

    # Per-class profiles where the references are labelled training images in the model's classes
    # (MNIST, Fashion-MNIST, a user's labelled data); elsewhere classes are filled on demand.
    labelled = data is not None or (dataset_of(model).builtin_calibration
                                    and getattr(model.spec, "gallery_labels", True))

    def fill(classes: list[int]) -> torch.Tensor:
        # Classes with no benign examples: influence toward each class over every reference
        # image. Conductance shares one forward pass across all the requested classes.
        if method == "conductance":
            x_ref, _ = reference()
            targets = torch.tensor(classes, dtype=torch.long).view(-1, 1).expand(-1, len(x_ref))
            return _conductance(model, model.layer(layer), x_ref, targets, n_steps).mean(1)
        x_ref, _ = reference()
        targets = torch.tensor(classes, dtype=torch.long).view(-1, 1).expand(-1, len(x_ref))
        return _grad_x_act(model, model.layer(layer), x_ref, targets).mean(1)

    # The user cache comes first: it holds the shipped classes plus any filled since.
    files = [cache_dir() / "profiles" / f"{key}.safetensors", shipped_profile_dir() / f"{key}.safetensors"]
    prof = None
    if use_cache:
        for f in files:
            if f.exists():
                prof = _read(f, model, layer, method, n_steps)
                break
    if prof is None:
        x_ref, y_ref = reference()
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
            _write(files[0], prof)
        if progress:
            progress(1.0, "profile ready")
    if not labelled:
        prof._fill = fill
        # fill() may run inside a session's defense, which asks the profile for a new class: one
        # lock (the model's, never held while waiting for anything but the profile) guards the fill.
        prof._lock = model.lock
        if use_cache:
            prof._persist = lambda pr: _write(files[0], pr)
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


def write_profile(prof: InfluenceProfile, model: LoadedModel, folder, per_class: int = 100,
                  data: str | None = None) -> Path:
    """Write ``prof`` into ``folder`` under the name the engine looks it up by (the shipped and
    cached profiles' name: model, layer, method and a hash of the weights and parameters;
    ``data``: the content key of the user's data it was computed on). Returns the path."""
    key = _profile_key(model, prof.layer, prof.method, prof.n_steps, per_class, data)
    path = Path(folder) / f"{key}.safetensors"
    _write(path, prof)
    return path


def save_profile_to_assets(prof: InfluenceProfile, model: LoadedModel, per_class: int = 100) -> None:
    """Ship a computed profile in ``assets/profiles`` (used for the shipped models)."""
    write_profile(prof, model, shipped_profile_dir(), per_class)


def gallery_candidate_classes(model: LoadedModel, top: int = 3) -> list[int]:
    """Gallery labels plus the top-``top`` predictions for each gallery photo and its mirror image:
    the classes a label-free NIP run on the gallery asks the profile for first."""
    from nip_core.data import gallery

    items = gallery(model.spec.gallery)
    x = torch.stack([it.image for it in items])
    cand = model.logits(torch.cat([x, x.flip(-1)])).topk(min(top, model.num_classes), dim=1).indices
    return sorted({it.label for it in items} | set(cand.flatten().tolist()))


def ship_profiles(model: LoadedModel, layers: list[str] | None = None, method: str = "conductance",
                  n_steps: int = DEFAULT_STEPS, classes: list[int] | None = None) -> list[InfluenceProfile]:
    """Compute the default-parameter profiles of ``layers`` and write them to ``assets/profiles``.

    For a dataset without per-class examples (ImageNet) the per-class profiles of ``classes``
    (default: :func:`gallery_candidate_classes`) are filled first, so the app's first Explore
    run on a gallery photo does not pay for profiling.
    """
    out = []
    for layer in layers or list(model.spec.layers):
        prof = influence_profile(model, layer, method, n_steps)
        if prof._fill is not None:
            prof.prefill(gallery_candidate_classes(model) if classes is None else classes)
        save_profile_to_assets(prof, model)
        out.append(prof)
    return out
