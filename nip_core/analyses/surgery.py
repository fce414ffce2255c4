"""Neuron surgery: set chosen neurons of one layer to chosen values and re-run the forward pass.

The intervention is a forward hook on ``model.layer(layer)`` that returns a replaced output
(never a copy of the weights), registered on the calling thread's replica of the module tree
(``model.lease()``) and removed in ``finally:``, so a model shared between threads (the app's
cached model) never runs another session's hook.
A convolutional neuron is a whole channel map (replaced position by position, map for map); a
fully connected neuron is one unit.

Selections (:func:`parse_selection`):

* ``front:K`` / ``tail:K`` / ``front+tail:K``: the influence groups of the reference class (the
  true label when known, else the benign prediction), ``K`` a share of live neurons in (0, 0.5];
* ``changed:N``: the ``N`` neurons whose activation (averaged over positions, as in
  :func:`~nip_core.influence.neuron_activations`) moved most between benign and adversarial;
* ``random:N``: a seeded random group, the control (dead neurons included);
* ``3,17,42``: explicit indices; ``none``: nothing (the unpatched pass).

Values (:func:`parse_value`): ``benign`` / ``defended`` (the neuron's value on that input),
``zero``, ``scale:A`` (``A`` in [-10, 10] times the current value) and ``mean`` (per position,
over the benign reference images the layer's influence profile uses).

The recovery share of a patched adversarial is ``r = (m_patched − m_adv) / (m_benign − m_adv)``
on the margin ``m`` of the reference class (its logit minus the largest other logit); it is
undefined (n/a) unless the attack flipped the prediction (``m_benign > 0 > m_adv``).

Typical use (the app and ``evaluate --mediation`` keep ``sources`` to patch again cheaply)::

    sources = source_activations(model, x, x_adv, layer, x_def)
    result = surgery(model, x, x_adv, layer, "front:0.2", "benign", label=y, sources=sources)
"""
from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from nip_core.errors import InputError
from nip_core.hooks import capture_hook, hooked, neuron_means
from nip_core.influence import InfluenceProfile, influence_profile
from nip_core.models.base import LoadedModel

SCALE_RANGE = (-10.0, 10.0)
INFLUENCE_SELECTIONS = ("front", "tail", "front+tail")   # selections read from the layer's influence profile
VALUE_KINDS = ("benign", "defended", "zero", "scale", "mean")
SELECTION_KINDS = ("front", "tail", "front+tail", "changed", "random", "indices", "none")
SELECTION_HELP = ("write front:K, tail:K or front+tail:K (K in (0, 0.5]), changed:N, random:N, none, "
                  "or neuron indices such as 3,17,42")
VALUE_HELP = "choose one of: benign, defended, zero, scale:A (A in [-10, 10]), mean"


# ----------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class Selection:
    """A parsed selection: ``kind`` in :data:`SELECTION_KINDS` with its share ``k``, count ``n`` or
    ``indices``. ``str(selection)`` gives its canonical text (``front:0.2``, ``3,17``)."""

    kind: str
    k: float | None = None
    n: int | None = None
    indices: tuple[int, ...] = ()

    def __str__(self) -> str:
        if self.kind in ("front", "tail", "front+tail"):
            return f"{self.kind}:{self.k:g}"
        if self.kind in ("changed", "random"):
            return f"{self.kind}:{self.n}"
        if self.kind == "indices":
            return ",".join(str(i) for i in self.indices)
        return "none"


@dataclass(frozen=True)
class Value:
    """A parsed value: ``kind`` in :data:`VALUE_KINDS`; ``scale`` for ``scale:A``."""

    kind: str
    scale: float | None = None

    def __str__(self) -> str:
        return f"scale:{self.scale:g}" if self.kind == "scale" else self.kind

    @property
    def needs_source(self) -> bool:
        """Whether the replacement comes from other activations (benign, defended or mean)."""
        return self.kind in ("benign", "defended", "mean")


def _count(kind: str, text: str) -> int:
    try:
        n = float(text)
    except ValueError:
        n = float("nan")
    if not math.isfinite(n) or n != int(n) or n < 1:
        raise InputError(f"selection '{kind}:N' needs N, a whole number of neurons of at least 1; got {text!r}.")
    return int(n)


def parse_selection(text: str | Selection | Sequence[int]) -> Selection:
    """Read a selection (see the module docstring); a list of ints means those indices.

    Args:
        text: ``front:K``, ``tail:K``, ``front+tail:K``, ``changed:N``, ``random:N``, ``none`` or
            comma-separated indices; or an already parsed :class:`Selection`; or a sequence of ints.
    Raises:
        InputError: unknown form, K outside (0, 0.5], N not a positive whole number, or an index
            that is not a whole number (indices are checked against the layer by
            :func:`check_selection`).
    """
    if isinstance(text, Selection):
        return text
    if not isinstance(text, str):
        idx = [int(i) for i in text]
        return Selection("indices", indices=tuple(dict.fromkeys(idx))) if idx else Selection("none")
    s = "".join(text.split()).lower()
    if s == "none":
        return Selection("none")
    kind, sep, arg = s.partition(":")
    if sep and kind in ("front", "tail", "front+tail"):
        try:
            k = float(arg)
        except ValueError:
            k = float("nan")
        if not 0 < k <= 0.5:
            raise InputError(f"selection '{kind}:K' needs K, a share of the layer's live neurons, in (0, 0.5]; "
                             f"got {arg!r}.")
        return Selection(kind, k=k)
    if sep and kind in ("changed", "random"):
        return Selection(kind, n=_count(kind, arg))
    if s and re.fullmatch(r"-?\d+(,-?\d+)*,?", s):
        return Selection("indices", indices=tuple(dict.fromkeys(int(p) for p in s.split(",") if p)))
    if not s:
        raise InputError(f"no neurons selected; {SELECTION_HELP}.")
    raise InputError(f"unknown selection {text.strip()!r}; {SELECTION_HELP}.")


def parse_value(text: str | Value) -> Value:
    """Read a value: ``benign``, ``defended``, ``zero``, ``scale:A`` (A in [-10, 10]) or ``mean``.

    Raises:
        InputError: unknown value, or a scale that is not a number in [-10, 10].
    """
    if isinstance(text, Value):
        return text
    s = "".join(str(text).split()).lower()
    kind, sep, arg = s.partition(":")
    if kind == "scale":
        try:
            a = float(arg)
        except ValueError:
            a = float("nan")
        if not (math.isfinite(a) and SCALE_RANGE[0] <= a <= SCALE_RANGE[1]):
            raise InputError(f"scale must be a number in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}] "
                             f"(write scale:A, e.g. scale:0.5); got {arg or str(text).strip()!r}.")
        return Value("scale", a)
    if not sep and kind in VALUE_KINDS:
        return Value(kind)
    raise InputError(f"unknown value {str(text).strip()!r}; {VALUE_HELP}.")


def check_selection(selection: str | Selection | Sequence[int], n_neurons: int, layer: str) -> Selection:
    """Parse ``selection`` and check it against a layer of ``n_neurons`` neurons.

    Raises:
        InputError: an index outside ``[0, n_neurons)`` or a count above ``n_neurons``.
    """
    sel = parse_selection(selection)
    for i in sel.indices:
        if not 0 <= i < n_neurons:
            raise InputError(f"neuron index {i} is outside layer {layer!r}, whose neurons are 0–{n_neurons - 1}.")
    if sel.n is not None and sel.n > n_neurons:
        raise InputError(f"selection '{sel}' asks for {sel.n} neurons; layer {layer!r} has {n_neurons}.")
    return sel


# ----------------------------------------------------------------------------- forward passes

@dataclass
class ForwardResult:
    """One forward pass over a batch (tensors on CPU).

    Attributes:
        logits, probabilities: ``[N, num_classes]``.
        predictions: ``[N]`` argmax classes.
        margins: ``[N]`` margin of the reference class (its logit minus the largest other
            logit), or None when no reference class was given.
    """

    logits: torch.Tensor
    probabilities: torch.Tensor
    predictions: torch.Tensor
    margins: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits: torch.Tensor, reference_class: torch.Tensor | int | None = None) -> "ForwardResult":
        logits = logits.float().cpu()
        m = None if reference_class is None else margins(logits, reference_class)
        return cls(logits, logits.softmax(1), logits.argmax(1), m)

    def to_json(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"logits": self.logits.tolist(), "probabilities": self.probabilities.tolist(),
                               "predictions": self.predictions.tolist()}
        if class_names is not None:
            out["prediction_names"] = [class_names[int(c)] for c in self.predictions]
        out["margins"] = None if self.margins is None else self.margins.tolist()
        return out


def margins(logits: torch.Tensor, reference_class: torch.Tensor | int) -> torch.Tensor:
    """Margin of the reference class: its logit minus the largest other logit, ``[N]``.

    Args:
        logits: ``[N, num_classes]``; reference_class: one class or ``[N]`` classes.
    """
    ref = torch.as_tensor(reference_class, dtype=torch.long).flatten().to(logits.device)
    if ref.numel() == 1:
        ref = ref.expand(len(logits))
    own = logits.gather(1, ref.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, ref.view(-1, 1), float("-inf"))
    return own - others.amax(1)


def _flipped(m_adv, m_benign):
    return (m_benign > 0) & (m_adv < 0)


def recovery_share(m_patched, m_adv, m_benign):
    """``(m_patched − m_adv) / (m_benign − m_adv)``: 0 = still adversarial, 1 = benign margin back.

    Defined only where the attack flipped the prediction (``m_benign > 0 > m_adv``; the
    denominator is then positive); elsewhere None for numbers and NaN for tensors (shown as n/a).

    Args:
        m_patched, m_adv, m_benign: reference-class margins (floats, or tensors of one shape).
    """
    if any(isinstance(m, torch.Tensor) for m in (m_patched, m_adv, m_benign)):
        mp, ma, mb = (torch.as_tensor(m, dtype=torch.float32) for m in (m_patched, m_adv, m_benign))
        ok = _flipped(ma, mb)
        return torch.where(ok, (mp - ma) / torch.where(ok, mb - ma, torch.ones_like(mb)),
                           torch.full_like(mp, float("nan")))
    if not (m_benign > 0 > m_adv):
        return None
    return float((m_patched - m_adv) / (m_benign - m_adv))


def _per_neuron_mean(out: torch.Tensor) -> torch.Tensor:
    """The reduction of :func:`~nip_core.influence.neuron_activations`: channels averaged over positions."""
    return neuron_means(out).float().cpu()


@torch.no_grad()
def layer_output_and_logits(model: LoadedModel, x: torch.Tensor, layer: str | None = None,
                            batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpatched pass: (raw ``layer`` output ``[N, C, h, w]`` or ``[N, F]``, logits ``[N, K]``), on CPU.

    One full forward per batch gives both, batched as :meth:`LoadedModel.logits` batches.
    """
    module = model.layer(layer)
    acts, logits = [], []
    with model.lease():
        module = model.local(module)
        for i in range(0, len(x), batch_size):
            box: list[torch.Tensor] = []
            with hooked(module, capture_hook(box, stop=False)):
                logits.append(model.net(x[i:i + batch_size].to(model.device)).float().cpu())
            acts.append(box[0].detach().float().cpu())
    return torch.cat(acts), torch.cat(logits)


def _as_mask(neurons, n_images: int, n_neurons: int, layer: str) -> torch.Tensor:
    """Selected neurons (indices for every image, one index list per image, or a bool mask
    ``[n]`` / ``[N, n]``) as a bool mask ``[N, n_neurons]``."""
    if isinstance(neurons, torch.Tensor) and neurons.dtype == torch.bool:
        if neurons.shape[-1] != n_neurons or neurons.dim() not in (1, 2) or \
                (neurons.dim() == 2 and len(neurons) not in (1, n_images)):
            raise InputError(f"a neuron mask of shape {list(neurons.shape)} does not fit layer {layer!r} "
                             f"({n_images} inputs, {n_neurons} neurons).")
        return neurons.view(-1, n_neurons).expand(n_images, -1).cpu()
    if isinstance(neurons, torch.Tensor):
        neurons = neurons.tolist()
    rows = list(neurons)
    per_image = bool(rows) and not isinstance(rows[0], (int, float)) and hasattr(rows[0], "__iter__")
    if per_image and len(rows) != n_images:
        raise InputError(f"{len(rows)} neuron lists given for {n_images} inputs.")
    mask = torch.zeros(n_images, n_neurons, dtype=torch.bool)
    for r, idx in enumerate(rows if per_image else [rows] * n_images):
        idx = [int(i) for i in idx]
        check_selection(idx, n_neurons, layer)
        mask[r, idx] = True
    return mask


@dataclass
class _Patch:
    """What the hook applies: the selection (made a mask once the layer's width is seen) and,
    per chunk, its rows and the replacement source (set before each chunk's forward pass)."""

    select: Any
    n_images: int
    mask: torch.Tensor | None = None     # [N, n_neurons] bool, CPU
    rows: slice = field(default_factory=lambda: slice(0, 0))
    source: torch.Tensor | None = None   # [b or 1, *layer shape] on the device


def _replace_hook(value: Value, state: _Patch, layer: str):
    """A forward hook returning the layer output with the selected neurons replaced.

    Only the registering thread's passes are changed (the caller also holds a lease of its replica).
    Unselected entries are the original output's, bit for bit (``torch.where``).
    """
    owner = threading.get_ident()

    def hook(_m, _inp, out):
        if threading.get_ident() != owner:
            return None
        if state.mask is None:
            state.mask = _as_mask(state.select, state.n_images, int(out.shape[1]), layer)
        mask = state.mask[state.rows].to(out.device)
        m = mask.view(*mask.shape, *([1] * (out.dim() - 2)))
        if value.kind == "zero":
            return out.masked_fill(m, 0)
        if value.kind == "scale":
            return torch.where(m, out * value.scale, out)
        src = state.source
        if tuple(src.shape[1:]) != tuple(out.shape[1:]):
            raise InputError(f"source activations of shape {list(src.shape[1:])} do not fit layer {layer!r}, "
                             f"whose output is {list(out.shape[1:])}.")
        return torch.where(m, src.to(out.dtype), out)
    return hook


@torch.no_grad()
def patch(model: LoadedModel, x: torch.Tensor, layer: str | None,
          select: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor, value: str | Value, *,
          source: torch.Tensor | None = None, reference_class: torch.Tensor | int | None = None,
          batch_size: int = 64) -> ForwardResult:
    """Run ``x`` with the selected neurons of ``layer`` replaced; the model itself is not changed.

    Args:
        x: inputs ``[N, C, H, W]`` in [0,1] (any device; run on the model's).
        layer: a layer of ``model.layers`` (None: the model's default layer).
        select: the neurons, as indices for every input (``[3, 17]``; empty: none), one index
            list per input, or a bool mask ``[n_neurons]`` or ``[N, n_neurons]``.
        value: ``zero``, ``scale:A``, or ``benign`` / ``defended`` / ``mean`` with ``source``.
        source: the replacement activations, the layer's raw output ``[N or 1, C, h, w]`` (or
            ``[N or 1, F]``); required for ``benign`` and ``defended``; for ``mean`` defaults to
            :func:`reference_mean`.
        reference_class: class (or ``[N]`` classes) whose margins are reported.
        batch_size: inputs per forward pass, as :meth:`LoadedModel.logits` (same batches, same bits).
    Returns:
        The patched pass's :class:`ForwardResult`.
    Raises:
        InputError: an unknown layer or value, an index outside the layer, a missing source.
    """
    layer = layer or model.spec.default_layer
    module = model.layer(layer)
    val = parse_value(value)
    if val.needs_source and source is None:
        if val.kind != "mean":
            raise InputError(f"value {val.kind!r} needs the {val.kind} activations of the layer (source).")
        source = reference_mean(model, layer)
    if source is not None and len(source) not in (1, len(x)):
        raise InputError(f"source activations for {len(source)} inputs do not fit {len(x)} inputs.")
    state = _Patch(select, len(x))
    outs = []
    with model.lease():
        with hooked(model.local(module), _replace_hook(val, state, layer)):
            for i in range(0, len(x), batch_size):
                state.rows = slice(i, i + batch_size)
                if val.needs_source:
                    state.source = (source if len(source) == 1 else source[state.rows]).to(model.device)
                outs.append(model.net(x[state.rows].to(model.device)).float().cpu())
    logits = torch.cat(outs) if outs else torch.empty(0, model.num_classes)
    return ForwardResult.from_logits(logits, reference_class)


# ----------------------------------------------------------------------------- sources and means

_MEANS: dict[tuple, torch.Tensor] = {}
_MEANS_LOCK = threading.Lock()


def reference_mean(model: LoadedModel, layer: str | None = None, per_class: int = 100,
                   x_ref: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position mean of ``layer``'s output over benign reference images, ``[1, C, h, w]`` on CPU.

    Args:
        per_class: references as :func:`~nip_core.influence.influence_profile` takes them
            (:func:`~nip_core.data.benign_reference`); the result is cached per model and layer.
        x_ref: other reference images instead (not cached), e.g. a user's ``profile --data``.
    """
    from nip_core.data import benign_reference

    layer = layer or model.spec.default_layer
    model.layer(layer)
    key = (model.name, model.weights_sha256, layer, per_class)
    cached = x_ref is None
    if cached:
        with _MEANS_LOCK:
            if key in _MEANS:
                return _MEANS[key]
        x_ref, _ = benign_reference(model, per_class)
    acts, _ = layer_output_and_logits(model, x_ref, layer)
    mean = acts.double().mean(0, keepdim=True).float()
    if cached:
        with _MEANS_LOCK:
            _MEANS.setdefault(key, mean)
    return mean


@dataclass
class SourceActivations:
    """The unpatched passes that surgery starts from, kept to patch again cheaply.

    Attributes:
        layer: the layer the activations are of.
        inputs: variant (``benign``, ``adversarial``, optionally ``defended``) → inputs ``[N, C, H, W]``.
        activations: variant → the layer's raw output ``[N, C, h, w]`` or ``[N, F]`` (CPU).
        logits: variant → ``[N, num_classes]`` of the same unpatched pass (CPU).
    """

    layer: str
    inputs: dict[str, torch.Tensor]
    activations: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]
    seconds: float = 0.0

    @property
    def n_neurons(self) -> int:
        return int(self.activations["benign"].shape[1])

    def neuron_activations(self, variant: str) -> torch.Tensor:
        """Per-neuron activation ``[N, n_neurons]`` (as :func:`~nip_core.influence.neuron_activations`)."""
        return _per_neuron_mean(self.activations[variant])

    def matches(self, layer: str, x_benign: torch.Tensor, x_adv: torch.Tensor, x_def: torch.Tensor | None) -> bool:
        """Whether these were computed for this layer and exactly these inputs."""
        want = {"benign": x_benign, "adversarial": x_adv} | ({"defended": x_def} if x_def is not None else {})
        return layer == self.layer and all(
            v in self.inputs and self.inputs[v].shape == x.shape and torch.equal(self.inputs[v], x.cpu())
            for v, x in want.items())


def source_activations(model: LoadedModel, x_benign: torch.Tensor, x_adv: torch.Tensor, layer: str | None = None,
                       x_def: torch.Tensor | None = None, batch_size: int = 64) -> SourceActivations:
    """Layer outputs and logits of the benign, adversarial (and defended) inputs, one pass each.

    Args:
        x_benign, x_adv, x_def: ``[N, C, H, W]`` (or one ``[C, H, W]`` image) in [0,1].
        layer: None for the model's default layer.
    """
    layer = layer or model.spec.default_layer
    model.layer(layer)
    t0 = time.perf_counter()
    xs = _inputs(model, x_benign, x_adv, x_def)
    acts, logits = {}, {}
    for v, x in xs.items():
        acts[v], logits[v] = layer_output_and_logits(model, x, layer, batch_size)
    return SourceActivations(layer, xs, acts, logits, time.perf_counter() - t0)


def _inputs(model: LoadedModel, x_benign, x_adv, x_def) -> dict[str, torch.Tensor]:
    xs = {"benign": x_benign, "adversarial": x_adv} | ({"defended": x_def} if x_def is not None else {})
    out = {}
    for v, x in xs.items():
        if not isinstance(x, torch.Tensor):
            raise InputError(f"the {v} input must be an image tensor; got {type(x).__name__}.")
        x = x.detach().float().cpu()
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[1] != model.spec.input_channels:
            raise InputError(f"the {v} input must have shape [N, {model.spec.input_channels}, H, W]; "
                             f"got {list(x.shape)}.")
        out[v] = x
    if any(x.shape != out["benign"].shape for x in out.values()):
        raise InputError("the benign, adversarial and defended inputs must have the same shape; got "
                         + ", ".join(f"{v} {list(x.shape)}" for v, x in out.items()) + ".")
    return out


# ----------------------------------------------------------------------------- selection

def select_neurons(model: LoadedModel, selection: str | Selection | Sequence[int], sources: SourceActivations,
                   reference_class: torch.Tensor, *, profile: InfluenceProfile | None = None,
                   seed: int = 0) -> torch.Tensor:
    """The selected neurons of each input as a bool mask ``[N, n_neurons]``.

    Args:
        selection: see :func:`parse_selection`.
        sources: from :func:`source_activations` (layer size; benign and adversarial activations
            for ``changed``).
        reference_class: ``[N]`` classes whose influence groups ``front``/``tail`` take.
        profile: the layer's influence profile (default: :func:`influence_profile` of the layer).
        seed: ``random:N`` draws one group per input, in order, from a generator with this seed.
    """
    n_img, n = len(sources.activations["benign"]), sources.n_neurons
    sel = check_selection(selection, n, sources.layer)
    mask = torch.zeros(n_img, n, dtype=torch.bool)
    if sel.kind == "indices":
        mask[:, list(sel.indices)] = True
    elif sel.kind in ("front", "tail", "front+tail"):
        prof = profile if profile is not None else influence_profile(model, sources.layer)
        if prof.layer != sources.layer or prof.n_neurons != n:
            raise InputError(f"the influence profile is of layer {prof.layer!r} ({prof.n_neurons} neurons), "
                             f"not of layer {sources.layer!r} ({n} neurons).")
        groups: dict[int, torch.Tensor] = {}
        for r, c in enumerate(torch.as_tensor(reference_class).flatten().tolist()):
            if c not in groups:
                front, _, tail = prof.groups(c, sel.k)
                groups[c] = {"front": front, "tail": tail, "front+tail": torch.cat([front, tail])}[sel.kind]
            mask[r, groups[c]] = True
    elif sel.kind == "changed":
        delta = (sources.neuron_activations("adversarial") - sources.neuron_activations("benign")).abs()
        order = torch.sort(delta, dim=1, descending=True, stable=True).indices[:, :sel.n]
        mask.scatter_(1, order, True)
    elif sel.kind == "random":
        mask = random_mask([sel.n] * n_img, n, seed)
    return mask


def random_mask(counts: Sequence[int] | torch.Tensor, n_neurons: int, seed: int = 0, *,
                live: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Seeded random groups, the control: ``counts[i]`` neurons for input ``i``.

    Args:
        counts: group size per input, e.g. ``front_mask.sum(1)`` for groups as large as the front's.
        n_neurons: the layer's width.
        seed: one generator with this seed draws the inputs' groups in order.
        live: a bool mask ``[n_neurons]``: draw only from these neurons (the influence groups are
            drawn from the live ones, so the mediation's control is too); None: from every neuron.
        generator: draw from this generator instead of a new one seeded with ``seed`` (several
            groups from one stream).
    Returns:
        A bool mask ``[len(counts), n_neurons]``.
    """
    counts = [int(c) for c in (counts.tolist() if isinstance(counts, torch.Tensor) else counts)]
    pool = torch.arange(n_neurons) if live is None else torch.nonzero(live).flatten()
    if any(not 0 <= c <= len(pool) for c in counts):
        raise InputError(f"random groups must have 0 to {len(pool)} neurons; got sizes {sorted(set(counts))}.")
    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    mask = torch.zeros(len(counts), n_neurons, dtype=torch.bool)
    for r, c in enumerate(counts):
        mask[r, pool[torch.randperm(len(pool), generator=g)[:c]]] = True
    return mask


# ----------------------------------------------------------------------------- one call

@dataclass
class SurgeryResult:
    """Benign, adversarial and patched passes of one surgery (plain tensors on CPU).

    Attributes:
        neurons: ``[N, n_neurons]`` bool mask of the patched neurons.
        reference_class: ``[N]``: the true label when known, else the benign prediction.
        recovery_share: ``[N]``; NaN where the attack did not flip the prediction.
        defended: the defended input's pass when one was given.
        seconds: timings (``sources``, ``select``, ``patch``); the only non-deterministic fields.
    """

    model_name: str
    layer: str
    selection: str
    value: str
    seed: int
    label: list[int] | None
    reference_class: torch.Tensor
    neurons: torch.Tensor
    benign: ForwardResult
    adversarial: ForwardResult
    patched: ForwardResult
    recovery_share: torch.Tensor
    class_names: list[str] = field(repr=False, default_factory=list)
    defended: ForwardResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    # What made the inputs, when known (``api.run_surgery``): attack, defense and their parameters.
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def flipped(self) -> torch.Tensor:
        """``[N]``: the attack flipped the prediction away from the reference class."""
        return _flipped(self.adversarial.margins, self.benign.margins)

    def selected(self, image: int = 0) -> list[int]:
        """Indices of the patched neurons of one input."""
        return torch.nonzero(self.neurons[image]).flatten().tolist()

    def recovery(self, image: int = 0) -> float | None:
        """The recovery share of one input, None where undefined (n/a)."""
        r = float(self.recovery_share[image])
        return None if math.isnan(r) else r

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data; equal for equal settings apart from ``seconds``."""
        names = self.class_names or None
        out: dict[str, Any] = {
            "settings": {"model": self.model_name, "layer": self.layer, "select": self.selection,
                         "value": self.value, "seed": self.seed, "label": self.label} | self.inputs,
            "n_images": len(self.reference_class), "n_neurons": int(self.neurons.shape[1]),
            "reference_class": self.reference_class.tolist(),
            "neurons": [self.selected(i) for i in range(len(self.neurons))],
        }
        variants = {"benign": self.benign, "adversarial": self.adversarial, "patched": self.patched}
        if self.defended is not None:
            variants["defended"] = self.defended
        for v, r in variants.items():
            out[v] = r.to_json(names)
        out["flipped"] = self.flipped.tolist()
        out["recovery_share"] = [self.recovery(i) for i in range(len(self.recovery_share))]
        out["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        return out


def surgery(model: LoadedModel, x_benign: torch.Tensor, x_adv: torch.Tensor, layer: str | None = None,
            select: str | Selection | Sequence[int] | torch.Tensor = "front:0.2", value: str | Value = "benign", *,
            label: int | Sequence[int] | torch.Tensor | None = None, x_def: torch.Tensor | None = None,
            seed: int = 0, profile: InfluenceProfile | None = None, sources: SourceActivations | None = None,
            mean: torch.Tensor | None = None, batch_size: int = 64) -> SurgeryResult:
    """Patch the selected neurons of the adversarial pass and compare with benign and adversarial.

    Args:
        x_benign, x_adv: ``[N, C, H, W]`` (or one ``[C, H, W]``) in [0,1], pair by pair.
        layer: a layer of the model (None: its default layer).
        select: a selection (:func:`parse_selection`), or a bool mask ``[N, n_neurons]`` made by the
            caller (e.g. :func:`random_mask`; reported as ``mask``).
        value: a value (:func:`parse_value`); ``defended`` needs ``x_def``.
        label: true class(es) when known; they are the reference class, else the benign prediction.
        x_def: the defended inputs (for ``value="defended"``; its pass is reported too).
        seed: seed of ``random:N``.
        profile: the layer's influence profile for ``front``/``tail`` (default: loaded).
        sources: :func:`source_activations` of these inputs and layer, to skip their passes
            (a widget move then costs one patched forward pass).
        mean: for ``value="mean"``, other per-position means than :func:`reference_mean`'s
            (``[1, C, h, w]``, e.g. of a user's own references).
        batch_size: inputs per forward pass.
    Returns:
        A :class:`SurgeryResult`.
    """
    layer = layer or model.spec.default_layer
    model.layer(layer)
    given_mask = isinstance(select, torch.Tensor) and select.dtype == torch.bool
    sel, val = (None if given_mask else parse_selection(select)), parse_value(value)
    if val.kind == "defended" and x_def is None and (sources is None or "defended" not in sources.inputs):
        raise InputError("value 'defended' needs the defended input; choose a defense.")
    secs: dict[str, float] = {}
    if sources is None:
        sources = source_activations(model, x_benign, x_adv, layer, x_def, batch_size)
        secs["sources"] = sources.seconds
    else:
        xs = _inputs(model, x_benign, x_adv, x_def)
        if not sources.matches(layer, xs["benign"], xs["adversarial"], xs.get("defended")):
            raise InputError(f"the given source activations are not of layer {layer!r} and these inputs.")
    n_img = len(sources.inputs["benign"])
    pred_b = sources.logits["benign"].argmax(1)
    labels = None
    if label is not None:
        lab = torch.as_tensor(label, dtype=torch.long).flatten()
        lab = lab.expand(n_img) if lab.numel() == 1 else lab
        if len(lab) != n_img or bool(((lab < 0) | (lab >= model.num_classes)).any()):
            raise InputError(f"label must be {n_img} class(es) in [0, {model.num_classes - 1}]; got {label!r}.")
        labels = lab.tolist()
    ref = torch.tensor(labels) if labels is not None else pred_b
    t0 = time.perf_counter()
    if given_mask:
        mask = _as_mask(select, n_img, sources.n_neurons, layer)
    else:
        mask = select_neurons(model, sel, sources, ref, profile=profile, seed=seed)
    secs["select"] = time.perf_counter() - t0
    source = {"benign": sources.activations["benign"], "mean": mean, "zero": None, "scale": None,
              "defended": sources.activations.get("defended")}[val.kind]
    t0 = time.perf_counter()
    patched = patch(model, sources.inputs["adversarial"], layer, mask, val, source=source, reference_class=ref,
                    batch_size=batch_size)
    secs["patch"] = time.perf_counter() - t0
    benign = ForwardResult.from_logits(sources.logits["benign"], ref)
    adv = ForwardResult.from_logits(sources.logits["adversarial"], ref)
    dfd = ForwardResult.from_logits(sources.logits["defended"], ref) if "defended" in sources.logits else None
    return SurgeryResult(
        model_name=model.name, layer=layer, selection="mask" if given_mask else str(sel), value=str(val),
        seed=int(seed), label=labels, reference_class=ref, neurons=mask, benign=benign, adversarial=adv,
        patched=patched, recovery_share=recovery_share(patched.margins, adv.margins, benign.margins),
        class_names=list(model.class_names), defended=dfd, seconds=secs)
