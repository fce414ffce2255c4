"""Every hookable layer at once: the attack's pathway through the network (issue 20, section 3).

:func:`layer_strip` takes one image's benign, adversarial and defended versions and returns a
:class:`LayerStrip`, one :class:`LayerColumn` per layer (``model.spec.layers`` by default, in
forward order) plus the :class:`Edge` s between neighbouring columns:

* **group means**, per layer: the mean activation of the layer's front / middle / tail neurons on
  each input, the groups taken from that layer's benign influence profile toward the reference
  class exactly as :func:`nip_core.analyses.explain.explain` takes them for one layer (so a column holds
  the numbers of the single-layer group chart, ``figures.group_chart``, for that layer). From them:
  the attack's change ``adversarial − benign`` of the front and the tail mean (the paper expects
  the front to drop and the tail to rise) and the defense's change ``defended − adversarial`` (its
  recovery: the front back up, the tail back down).
* **top neurons**, per layer: the ``top`` neurons whose activation moved most between benign and
  adversarial (``|a(x') − a(x)|``, ties to the lower index: surgery's ``changed:N`` selection).
* **edges**, between the top neurons of each layer and those of the next layer in the list,
  computed on the **adversarial** input (the pathway the attack takes). The strength of the edge
  from upstream neuron ``u`` (raw output ``A_u``, one value or a channel map) to downstream neuron
  ``d`` (activation ``a_d``: the unit, or its channel's spatial mean) is activation × gradient::

      s(u → d) = Σ_p A_u[p] · ∂a_d / ∂A_u[p]      (p: the positions of u's map; one for a unit)

  the gradient taken by autograd through whatever lies between the two hooked layers (pooling,
  residual additions, unhooked blocks). It is the first-order change of ``a_d`` if ``u`` were set
  to zero (surgery's ``zero`` value), the gradient × activation attribution of ``a_d`` to ``u``:
  positive when ``u`` drives ``d`` up, negative when it holds ``d`` down. For a unit the sum has one
  term, ``a_u · ∂a_d/∂a_u``. Units: those of the downstream layer's activation.

A neuron's activation is its unit's value, or its channel's spatial mean
(:func:`nip_core.influence.neuron_activations`).

Typical use::

    expl = explain(model, image, label)
    strip = layer_strip(model, expl.images["benign"], expl.images["adversarial"], expl.images["defended"],
                        expl.reference_class, method=expl.method, k=expl.k)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from nip_core.errors import InputError
from nip_core.hooks import StopForward, capture_hook, hooked_all, neuron_means
from nip_core.influence import InfluenceProfile, _check_method, influence_profile
from nip_core.models.base import LoadedModel

VARIANTS = ("benign", "adversarial", "defended")
GROUPS = ("front", "middle", "tail")
TOP_RANGE = (1, 10)
Progress = Callable[[float, str], None]


@dataclass
class LayerColumn:
    """One layer of the strip (plain numbers and lists, no tensors).

    Attributes:
        layer: the layer's name; n_neurons: its width; conv: whether its neurons are channels.
        group_sizes: group → number of neurons (front, middle, tail of the live neurons).
        group_means: variant → group → mean activation (as :meth:`Explanation.group_means`).
        top: the most-changed neurons, most changed first.
        top_groups: each top neuron's group (front / middle / tail / dead).
        top_activations: variant → the top neurons' activations.
    """

    layer: str
    n_neurons: int
    conv: bool
    group_sizes: dict[str, int]
    group_means: dict[str, dict[str, float]]
    top: list[int]
    top_groups: list[str]
    top_activations: dict[str, list[float]]

    @property
    def attack_front(self) -> float:
        """Front mean, adversarial − benign (negative: the attack lowered the front)."""
        return self.group_means["adversarial"]["front"] - self.group_means["benign"]["front"]

    @property
    def attack_tail(self) -> float:
        """Tail mean, adversarial − benign (positive: the attack raised the tail)."""
        return self.group_means["adversarial"]["tail"] - self.group_means["benign"]["tail"]

    @property
    def defense_front(self) -> float:
        """Front mean, defended − adversarial (positive: the defense raised the front again)."""
        return self.group_means["defended"]["front"] - self.group_means["adversarial"]["front"]

    @property
    def defense_tail(self) -> float:
        """Tail mean, defended − adversarial (negative: the defense lowered the tail again)."""
        return self.group_means["defended"]["tail"] - self.group_means["adversarial"]["tail"]

    def change(self, neuron: int) -> float:
        """Adversarial − benign activation of one of the top neurons."""
        i = self.top.index(int(neuron))
        return self.top_activations["adversarial"][i] - self.top_activations["benign"][i]

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "n_neurons": self.n_neurons, "conv": self.conv,
                "group_sizes": self.group_sizes, "group_means": self.group_means,
                "attack_front": self.attack_front, "attack_tail": self.attack_tail,
                "defense_front": self.defense_front, "defense_tail": self.defense_tail,
                "top": self.top, "top_groups": self.top_groups, "top_activations": self.top_activations}


@dataclass(frozen=True)
class Edge:
    """``source`` of layer ``upstream`` → ``target`` of layer ``downstream``, with its activation ×
    gradient ``strength`` on the adversarial input (units of the downstream activation)."""

    upstream: str
    source: int
    downstream: str
    target: int
    strength: float


@dataclass
class LayerStrip:
    """What :func:`layer_strip` returns: columns in forward order and the edges between them."""

    model_name: str
    reference_class: int
    class_name: str
    method: str
    k: float
    top: int
    columns: list[LayerColumn]
    edges: list[Edge]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return [c.layer for c in self.columns]

    @property
    def defense_acted(self) -> bool:
        """Whether the defense moved any front or tail mean at any layer (False: it passed the
        adversarial through unchanged, as ``nip`` does on a model without a calibration)."""
        return any(c.defense_front != 0 or c.defense_tail != 0 for c in self.columns)

    def column(self, layer: str) -> LayerColumn:
        for c in self.columns:
            if c.layer == layer:
                return c
        raise InputError(f"the strip has no layer {layer!r}; it has: {', '.join(self.layers)}.")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model_name, "reference_class": self.reference_class, "class_name": self.class_name,
                "influence_method": self.method, "k": self.k, "top": self.top,
                "columns": [c.to_json() for c in self.columns],
                "edges": [e.__dict__.copy() for e in self.edges],
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


def _check_layers(model: LoadedModel, layers: Sequence[str] | None) -> list[str]:
    order = list(model.spec.layers)
    if layers is None:
        return order
    chosen = list(dict.fromkeys(layers))
    for name in chosen:
        model.layer(name)                              # an unknown name: InputError naming the choices
        if name not in order:
            raise InputError(f"layer {name!r} of model {model.name!r} is not one of its influence layers: "
                             f"{', '.join(order)}.")
    if not chosen:
        raise InputError(f"choose at least one layer of: {', '.join(order)}.")
    return sorted(chosen, key=order.index)


def _batch(model: LoadedModel, images: dict[str, torch.Tensor]) -> torch.Tensor:
    xs = []
    for v, x in images.items():
        if not isinstance(x, torch.Tensor):
            raise InputError(f"the {v} input must be an image tensor; got {type(x).__name__}.")
        x = x.detach().float().cpu()
        x = x[0] if x.dim() == 4 and len(x) == 1 else x
        if x.dim() != 3 or x.shape[0] != model.spec.input_channels:
            raise InputError(f"the {v} input must be one image of shape [{model.spec.input_channels}, H, W]; "
                             f"got {list(x.shape)}.")
        xs.append(x)
    if any(x.shape != xs[0].shape for x in xs):
        raise InputError("the benign, adversarial and defended images must have the same shape; got "
                         + ", ".join(f"{v} {list(x.shape)}" for v, x in zip(images, xs)) + ".")
    return torch.stack(xs)


def _layer_outputs(model: LoadedModel, x: torch.Tensor, layers: list[str], grad: bool) -> dict[str, torch.Tensor]:
    """Raw outputs of ``layers`` (forward order) in one pass that ends after the last of them,
    with :func:`~nip_core.hooks.capture_hook` on each (:func:`~nip_core.hooks.hooked_all`); with ``grad``
    the outputs stay on the autograd graph. In the caller's lease of the model's replica (or its own)."""
    boxes: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with model.lease(), hooked_all((model.layer(name), capture_hook(boxes[name], stop=name == layers[-1]))
                                   for name in layers):
        with torch.set_grad_enabled(grad):
            try:
                model.net(x)
            except StopForward:
                pass
    return {name: box[0] for name, box in boxes.items()}



def _group_names(n: int, front, middle, tail, dead: torch.Tensor) -> list[str]:
    names = ["dead" if bool(d) else "middle" for d in dead.tolist()] if len(dead) == n else ["middle"] * n
    for grp, idx in (("front", front), ("middle", middle), ("tail", tail)):
        for j in idx.tolist():
            names[j] = grp
    return names


def layer_strip(model: LoadedModel, benign: torch.Tensor, adversarial: torch.Tensor, defended: torch.Tensor,
                reference_class: int, *, method: str = "conductance", k: float = 0.2, top: int = 3,
                layers: Sequence[str] | None = None, n_steps: int = 16,
                profiles: Mapping[str, InfluenceProfile] | None = None,
                progress: Progress | None = None) -> LayerStrip:
    """One image's attack and defense at every layer, and the pathway the attack takes (module docstring).

    Args:
        model: a loaded model.
        benign, adversarial, defended: ``[C, H, W]`` images in [0,1] (e.g. an Explanation's ``images``).
        reference_class: the class whose benign influence profile gives each layer's front and tail
            (the true label when known, else the benign prediction: ``Explanation.reference_class``).
        method, k, n_steps: the influence profiles' method and steps, and the front/tail share of
            live neurons (as for :func:`~nip_core.analyses.explain.explain`).
        top: most-changed neurons per layer, in [1, 10] (at most the layer's width).
        layers: influence layers to show (default: all of ``model.spec.layers``), put in forward order.
        profiles: layer → its influence profile (default: :func:`~nip_core.influence.influence_profile`
            of the layer with ``method`` and ``n_steps``, as ``explain`` loads it).
        progress: optional ``(fraction, message)`` callback.
    Returns:
        A :class:`LayerStrip`: one column per layer, and the edges between each layer's top neurons
        and the next layer's (``top × top`` per pair of neighbouring layers).
    Raises:
        InputError: an unknown layer or method, k outside (0, 0.5], top outside [1, 10], a class
            outside the model's, or images of the wrong shape.
    """
    say = progress or (lambda f, m: None)
    names = _check_layers(model, layers)
    _check_method(method)
    if not 0 < k <= 0.5:
        raise InputError(f"parameter 'k' must be float in (0, 0.5]; got {k!r}.")
    if isinstance(top, bool) or not isinstance(top, int) or not TOP_RANGE[0] <= top <= TOP_RANGE[1]:
        raise InputError(f"top must be a whole number of neurons in [{TOP_RANGE[0]}, {TOP_RANGE[1]}]; got {top!r}.")
    ref = int(reference_class)
    if not 0 <= ref < model.num_classes:
        raise InputError(f"reference class must be in [0, {model.num_classes - 1}]; got {reference_class}.")
    batch = _batch(model, {"benign": benign, "adversarial": adversarial, "defended": defended})
    secs: dict[str, float] = {}

    t = time.perf_counter()
    groups = {}
    for i, name in enumerate(names):
        say(0.8 * i / len(names), f"influence profile of {name}")
        prof = profiles[name] if profiles and name in profiles else influence_profile(model, name, method, n_steps)
        if prof.layer != name:
            raise InputError(f"the influence profile given for layer {name!r} is of layer {prof.layer!r}.")
        groups[name] = (prof.groups(ref, k), prof.dead)
    secs["profiles"] = time.perf_counter() - t

    say(0.8, "activations at every layer")
    t = time.perf_counter()
    with model.lease():
        # The three inputs in one batch, as explain measures them: the group means match its chart.
        outs = _layer_outputs(model, batch.to(model.device), names, grad=False)
        acts = {name: neuron_means(o).float().cpu() for name, o in outs.items()}
        columns = []
        for name in names:
            (front, middle, tail), dead = groups[name]
            a = acts[name]
            means = {v: {g: float(a[r][idx].mean()) if len(idx) else 0.0
                         for g, idx in (("front", front), ("middle", middle), ("tail", tail))}
                     for r, v in enumerate(VARIANTS)}
            delta = (a[1] - a[0]).abs()
            order = torch.sort(delta, descending=True, stable=True).indices[:top].tolist()
            gnames = _group_names(a.shape[1], front, middle, tail, dead)
            columns.append(LayerColumn(
                layer=name, n_neurons=int(a.shape[1]), conv=outs[name].dim() > 2,
                group_sizes={"front": len(front), "middle": len(middle), "tail": len(tail)}, group_means=means,
                top=order, top_groups=[gnames[j] for j in order],
                top_activations={v: [float(a[r, j]) for j in order] for r, v in enumerate(VARIANTS)}))
        secs["activations"] = time.perf_counter() - t

        say(0.9, "edges: activation × gradient on the adversarial input")
        t = time.perf_counter()
        edges = _edges(model, batch[1:2], columns) if len(columns) > 1 else []
        secs["edges"] = time.perf_counter() - t
    say(1.0, "done")
    return LayerStrip(model_name=model.name, reference_class=ref, class_name=model.class_names[ref], method=method,
                      k=float(k), top=top, columns=columns, edges=edges, seconds=secs)


def _edges(model: LoadedModel, x_adv: torch.Tensor, columns: list[LayerColumn]) -> list[Edge]:
    """Activation × gradient from each column's top neurons to the next column's (in the caller's lease)."""
    names = [c.layer for c in columns]
    x = x_adv.to(model.device).clone().requires_grad_(True)   # a graph even if the weights need no grad
    with torch.enable_grad():
        outs = _layer_outputs(model, x, names, grad=True)
        edges = []
        for up, down in zip(columns, columns[1:]):
            a_up = outs[up.layer]
            a_down = neuron_means(outs[down.layer])[0]
            src = torch.tensor(up.top, device=a_up.device)
            for d in down.top:
                (g,) = torch.autograd.grad(a_down[d], a_up, retain_graph=True, allow_unused=True)
                if g is None:                      # nothing of the upstream layer reaches this neuron
                    s = torch.zeros(len(up.top))
                else:
                    prod = (g[0, src] * a_up[0, src]).detach()
                    s = (prod.flatten(1).sum(1) if prod.dim() > 1 else prod).float().cpu()
                edges.extend(Edge(up.layer, u, down.layer, d, float(v)) for u, v in zip(up.top, s.tolist()))
    return edges
