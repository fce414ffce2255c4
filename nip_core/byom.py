"""Bring your own model: a user's classifier as safetensors weights for a registered architecture.

:func:`load_custom_model` reads the weights (safetensors only — never pickle, never
``torch.load``), checks them against the architecture, registers a :class:`ModelSpec` named
``custom-<arch>-<sha12>`` and returns the :class:`LoadedModel`, so ``load_model(name)`` and
everything downstream (explain, evaluate, the app) treat it like a shipped model.

Architectures (:data:`ARCHITECTURES`): ``lenet`` (``LeNet5``, 1 or 3 input channels, 28×28)
and a few torchvision networks built with ``weights=None, num_classes=N``. Every model takes
inputs in [0,1]; normalisation lives inside the wrapper. Influence layers are modules that run
exactly once per forward (ResNet's ``layer1..layer4`` and ``avgpool``, never its reused
``relu``; MobileNet/EfficientNet ``features.i`` blocks).

Custom models have no dataset of their own: their spec's ``gallery`` is ``'mnist'`` for 1×28×28
inputs and ``'imagenet'`` otherwise, and the wrapper resizes (and converts channels of) inputs
that do not match the model's geometry, so gallery images can serve as benign references for
influence profiles. The gallery's labels are not the model's classes; the spec says so with
``gallery_labels=False`` so that ``nip_core.data.benign_reference`` labels each reference with the
model's own prediction and per-class profiles are filled on demand.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nip_core.errors import InputError
from nip_core.images import read_file_limited
from nip_core.models.base import MODELS, LoadedModel, ModelSpec, Normalize, finish, load_model, register_model

MAX_WEIGHT_BYTES = 200 * 1024 * 1024
MAX_CLASS_FILE_BYTES = 1024 * 1024
MAX_CLASSES = 10_000
MAX_NAME_CHARS = 200
MAX_CUSTOM_MODELS = 8          # oldest custom models are unregistered beyond this (memory)
CUSTOM_PREFIX = "custom-"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Architectures


@dataclass(frozen=True)
class Architecture:
    """A network a user may bring weights for.

    Attributes:
        build: ``(num_classes, in_channels) -> nn.Module`` with random weights.
        classifier_key: state-dict key of the final layer's weight (``[num_classes, ...]``).
        layers: influence layer name → module path inside the built network, in forward order.
        default_layer: the layer explain and NIP use unless told otherwise.
        channels: allowed input channel counts (the first is the default).
        input_size: default square input side; ``fixed_size`` forbids any other.
        preprocess: ``'mnist'``, ``'fashion'`` or ``'imagenet'`` (``nip_core.images.to_model_input``).
    """

    name: str
    summary: str
    build: Callable[[int, int], nn.Module] = field(repr=False)
    classifier_key: str
    layers: dict[str, str]
    default_layer: str
    channels: tuple[int, ...] = (3,)
    input_size: int = 224
    fixed_size: bool = False
    preprocess: str = "imagenet"
    normalize: tuple[Sequence[float], Sequence[float]] | None = (IMAGENET_MEAN, IMAGENET_STD)
    min_size: int = 32
    max_size: int = 512

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "input_channels": list(self.channels),
                "input_size": self.input_size, "fixed_size": self.fixed_size, "preprocess": self.preprocess,
                "layers": list(self.layers), "default_layer": self.default_layer}


ARCHITECTURES: dict[str, Architecture] = {}


def _register_arch(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


def _lenet(num_classes: int, in_channels: int) -> nn.Module:
    from nip_core.models.lenet import LeNet5
    return LeNet5(num_classes=num_classes, in_channels=in_channels)


def _torchvision(fn_name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        from torchvision import models
        return getattr(models, fn_name)(weights=None, num_classes=num_classes)
    return build


_register_arch(Architecture(
    "lenet", "LeNet-5 (nip_core.models.lenet.LeNet5), 28×28, grey or RGB", _lenet, "fc3.weight",
    {"conv1": "act1", "conv2": "act2", "fc1": "act3", "fc2": "act4"}, "fc1", channels=(1, 3), input_size=28,
    fixed_size=True, preprocess="mnist", normalize=None))
_RESNET_LAYERS = {"layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4", "avgpool": "avgpool"}
for _name in ("resnet18", "resnet34", "resnet50"):
    _register_arch(Architecture(_name, f"torchvision {_name}", _torchvision(_name), "fc.weight",
                                dict(_RESNET_LAYERS), "layer4"))
_register_arch(Architecture(
    "mobilenet_v2", "torchvision mobilenet_v2", _torchvision("mobilenet_v2"), "classifier.1.weight",
    # No avgpool module (it pools functionally): the last features block is the head.
    {f"features.{i}": f"features.{i}" for i in (3, 6, 10, 13, 16, 18)}, "features.18"))
_register_arch(Architecture(
    "mobilenet_v3_small", "torchvision mobilenet_v3_small", _torchvision("mobilenet_v3_small"), "classifier.3.weight",
    {f"features.{i}": f"features.{i}" for i in (3, 6, 9, 12)} | {"avgpool": "avgpool"}, "features.12"))
_register_arch(Architecture(
    "mobilenet_v3_large", "torchvision mobilenet_v3_large", _torchvision("mobilenet_v3_large"), "classifier.3.weight",
    {f"features.{i}": f"features.{i}" for i in (4, 7, 13, 16)} | {"avgpool": "avgpool"}, "features.16"))
_register_arch(Architecture(
    "efficientnet_b0", "torchvision efficientnet_b0", _torchvision("efficientnet_b0"), "classifier.1.weight",
    {f"features.{i}": f"features.{i}" for i in (2, 4, 6, 8)} | {"avgpool": "avgpool"}, "features.8"))


class FitInput(nn.Module):
    """Resize and convert channels of inputs that do not match the model's geometry.

    A no-op (same tensor) for inputs of the declared shape, so results are exactly the bare
    network's; other sizes (e.g. 224×224 gallery photos used as profile references for a 28×28
    model) are resized bilinearly with antialiasing.
    """

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.channels, self.size = channels, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            if self.channels == 1:
                w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
                x = (x * w).sum(1, keepdim=True)
            else:
                x = x.expand(-1, self.channels, -1, -1)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x


class CustomNet(nn.Module):
    """``backbone(normalize(fit(x)))`` for inputs in [0,1]; ``backbone`` holds the user's weights."""

    def __init__(self, backbone: nn.Module, channels: int, size: int,
                 normalize: tuple[Sequence[float], Sequence[float]] | None) -> None:
        super().__init__()
        self.fit = FitInput(channels, size)
        self.normalize = Normalize(*normalize) if normalize else nn.Identity()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(self.fit(x)))


@dataclass(frozen=True)
class CustomModelSpec(ModelSpec):
    """A user's model. ``gallery_labels=False``: the gallery's labels are not this model's classes."""

    arch: str = ""
    gallery_labels: bool = False

    def to_json(self) -> dict:
        return super().to_json() | {"arch": self.arch, "custom": True}


# ---------------------------------------------------------------------------------------------
# Reading untrusted files


def _read_limited(source: bytes | bytearray | memoryview | str | os.PathLike, what: str, limit: int) -> bytes:
    """Bytes of ``source`` (bytes, or a path to a regular file), refusing anything over ``limit``."""
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    if isinstance(source, bytes):
        if len(source) > limit:
            raise InputError(f"The {what} are {len(source) / 2**20:.1f} MB, over the {limit / 2**20:g} MB limit.")
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"Expected the {what} as bytes or a file path, got {type(source).__name__}.")
    return read_file_limited(source, f"the {what}", limit)


_SAFETENSORS_ONLY = ("only safetensors weights are accepted; save them with "
                     "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")


def _describe_refused(data: bytes) -> str:
    if data.startswith(b"PK\x03\x04"):
        return ("The weights file is a ZIP archive (a PyTorch .pt/.pth checkpoint holds pickles, which can run "
                f"code when loaded); {_SAFETENSORS_ONLY}.")
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"The weights file is a Python pickle, which can run code when loaded; {_SAFETENSORS_ONLY}."
    if data.startswith(b"\x89HDF"):
        return f"The weights file is an HDF5 (Keras) file; {_SAFETENSORS_ONLY}."
    if data.startswith(b"\x08") and b"onnx" in data[:64].lower():
        return f"The weights file looks like an ONNX model; {_SAFETENSORS_ONLY}."
    return f"The weights file is not a readable safetensors file; {_SAFETENSORS_ONLY}."


def read_safetensors(weights: bytes | str | os.PathLike, *, max_bytes: int | None = None
                     ) -> tuple[dict[str, torch.Tensor], str]:
    """Parse untrusted safetensors bytes (or file) into CPU tensors; returns (tensors, sha256).

    Only ``safetensors.torch.load`` ever touches the data: no pickle, no ``torch.load``.
    """
    from safetensors.torch import load as st_load

    data = _read_limited(weights, "weights", MAX_WEIGHT_BYTES if max_bytes is None else max_bytes)
    if len(data) < 8:
        raise InputError("The weights file is empty or truncated; " + _SAFETENSORS_ONLY + ".")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8 or header_len > 100 * 1024 * 1024 or data[8:9] != b"{":
        raise InputError(_describe_refused(data))
    try:
        tensors = st_load(data)
    except Exception:  # any parse failure of an untrusted file
        raise InputError(_describe_refused(data)) from None
    if not tensors:
        raise InputError("The safetensors file holds no tensors.")
    return tensors, hashlib.sha256(data).hexdigest()


def parse_class_names(class_names: Sequence[str] | bytes | bytearray | str | os.PathLike) -> list[str]:
    """Class names from a list, or a text file's bytes/path (one name per line, or a JSON list)."""
    if isinstance(class_names, (bytes, bytearray, memoryview, str, os.PathLike)):
        data = _read_limited(class_names, "class names", MAX_CLASS_FILE_BYTES)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError("The class-name file is not UTF-8 text; give one name per line or a JSON list.") from None
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                names = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise InputError(f"The class-name file starts like a JSON list but is not valid JSON "
                                 f"(line {exc.lineno}: {exc.msg}).") from None
        else:
            names = [line.strip() for line in stripped.splitlines()]
            names = [n for n in names if n]
    else:
        names = class_names
    if not isinstance(names, (list, tuple)):
        raise InputError(f"Class names must be a list of strings, got {type(names).__name__}.")
    out = []
    for i, n in enumerate(names):
        if isinstance(n, bool) or not isinstance(n, (str, int)):
            raise InputError(f"Class name #{i} must be a string, got {type(n).__name__}.")
        n = " ".join(str(n).split())
        if not n:
            raise InputError(f"Class name #{i} is empty.")
        if len(n) > MAX_NAME_CHARS:
            raise InputError(f"Class name #{i} is {len(n)} characters long, over the {MAX_NAME_CHARS} limit.")
        out.append(n)
    if not out:
        raise InputError("The class-name list is empty; give one name per class.")
    if len(out) > MAX_CLASSES:
        raise InputError(f"There are {len(out)} class names, over the {MAX_CLASSES} limit.")
    return out


# ---------------------------------------------------------------------------------------------
# Building and registering


def get_architecture(arch: str) -> Architecture:
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[arch]


def _shape(t: torch.Tensor) -> str:
    return "×".join(str(d) for d in t.shape) or "scalar"


def _check_state(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], arch: str) -> None:
    # BatchNorm counters are unused in eval mode; some exporters leave them out.
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(tensors) - optional)
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(f"The weights do not fit {arch}: key {missing[0]!r}{more} is missing.")
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise InputError(f"The weights do not fit {arch}: unexpected key {unexpected[0]!r}{more}.")
    for k, t in tensors.items():
        if t.shape != expected[k].shape:
            raise InputError(f"The weights do not fit {arch}: {k!r} has shape {_shape(t)}, "
                             f"the architecture needs {_shape(expected[k])}.")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"The weights contain NaN or infinite values (in {k!r}).")
        if not (t.is_floating_point() or k.endswith("num_batches_tracked")):
            raise InputError(f"The weights have a non-float tensor {k!r} ({t.dtype}).")


def _build_with_weights(a: Architecture, num_classes: int, channels: int,
                        tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The network holding ``tensors``. Built on the meta device first: a random init would
    draw from the global RNG, which other sessions' seeded attacks and defenses rely on."""
    with torch.device("meta"):
        backbone = a.build(num_classes, channels)
    expected = backbone.state_dict()
    _check_state(tensors, expected, a.name)
    backbone = backbone.to_empty(device="cpu")
    state = {k: (tensors[k].to(v.dtype) if k in tensors else torch.zeros((), dtype=v.dtype))
             for k, v in expected.items()}
    backbone.load_state_dict(state, strict=True)
    persistent = set(expected)
    stale = [n for n, _ in backbone.named_buffers() if n not in persistent]
    if stale:  # a non-persistent buffer would hold garbage after to_empty: never expected here
        raise RuntimeError(f"{a.name}: non-persistent buffers {stale} cannot be restored")
    return backbone


_LOCK = threading.Lock()
_CUSTOM_ORDER: list[str] = []


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InputError("The model name must be a non-empty string.")
    name = name.strip()
    if len(name) > 80 or not all(c.isalnum() or c in "-_." for c in name):
        raise InputError(f"The model name {name!r} may use only letters, digits, '-', '_' and '.' "
                         f"(at most 80 characters).")
    if not name.startswith(CUSTOM_PREFIX):
        name = CUSTOM_PREFIX + name
    return name


def load_custom_model(arch: str, weights: bytes | str | os.PathLike,
                      class_names: Sequence[str] | bytes | str | os.PathLike, *,
                      input_size: int | None = None, name: str | None = None) -> LoadedModel:
    """Check, register and load a user's classifier.

    Args:
        arch: a key of :data:`ARCHITECTURES`.
        weights: safetensors bytes or the path of a ``.safetensors`` file holding the state dict
            of the architecture (the network itself, no wrapper prefix). Pickled checkpoints
            (``.pt``/``.pth``) are refused without being opened.
        class_names: a list of names, or a text file (bytes or path): one name per line, or a
            JSON list. Their count must equal the final layer's output size.
        input_size: square input side (default: the architecture's; LeNet is fixed at 28).
        name: registry name (prefixed ``custom-``); default ``custom-<arch>-<sha12>``, where
            the hash covers the weights, class names and input geometry.

    Returns:
        The :class:`LoadedModel`, also reachable as ``nip_core.models.load_model(name)``.

    Raises:
        InputError: unknown architecture, unreadable/oversized/non-safetensors weights, keys or
            shapes that do not fit, a class count that differs from the network's, bad names.
    """
    a = get_architecture(arch)
    if input_size is None:
        input_size = a.input_size
    if isinstance(input_size, bool) or not isinstance(input_size, int):
        raise InputError(f"parameter 'input_size' must be an integer, got {input_size!r}.")
    if a.fixed_size and input_size != a.input_size:
        raise InputError(f"parameter 'input_size' must be {a.input_size} for {arch}; got {input_size}.")
    if not a.min_size <= input_size <= a.max_size and not a.fixed_size:
        raise InputError(f"parameter 'input_size' must be an integer in [{a.min_size}, {a.max_size}] for {arch}; "
                         f"got {input_size}.")
    names = parse_class_names(class_names)
    tensors, sha = read_safetensors(weights)

    head = tensors.get(a.classifier_key)
    if head is None or head.dim() != 2:
        raise InputError(f"The weights do not fit {arch}: no 2-D final-layer weight {a.classifier_key!r}.")
    num_classes = int(head.shape[0])
    channels = a.channels[0]
    if len(a.channels) > 1:
        first = tensors.get("conv1.weight")
        if first is None or first.dim() != 4 or int(first.shape[1]) not in a.channels:
            raise InputError(f"The weights do not fit {arch}: 'conv1.weight' must be a conv weight with "
                             f"{' or '.join(map(str, a.channels))} input channels.")
        channels = int(first.shape[1])
    if len(names) != num_classes:
        raise InputError(f"The weights have {num_classes} classes but {len(names)} class names were given.")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise InputError(f"The network has {num_classes} classes, outside [1, {MAX_CLASSES}].")

    backbone = _build_with_weights(a, num_classes, channels, tensors)

    config = json.dumps({"arch": arch, "w": sha, "names": names, "c": channels, "s": input_size}, sort_keys=True)
    tag = hashlib.sha256(config.encode()).hexdigest()[:12]
    model_name = _check_name(name) if name is not None else f"{CUSTOM_PREFIX}{arch}-{tag}"

    net = CustomNet(backbone, channels, input_size, a.normalize)
    modules = dict(backbone.named_modules())
    layers = {lname: modules[path] for lname, path in a.layers.items()}
    gallery = "mnist" if (channels, input_size) == (1, 28) else "imagenet"
    spec = CustomModelSpec(
        name=model_name, summary=f"{arch} brought by a user ({num_classes} classes, {channels}×{input_size}²)",
        input_channels=channels, input_size=input_size, preprocess=a.preprocess, gallery=gallery,
        layers=tuple(layers), default_layer=a.default_layer, arch=arch, gallery_labels=False,
        factory=lambda: finish(spec, net, names, layers, loaded_sha))
    # The hash in the model's weights_sha256 covers the configuration, so cached profiles of
    # the same weights with other class names or input sizes are never reused.
    loaded_sha = hashlib.sha256(f"{sha}:{tag}".encode()).hexdigest()

    with _LOCK:
        existing = MODELS.get(model_name)
        if existing is not None:
            if not isinstance(existing, CustomModelSpec):
                raise InputError(f"The name {model_name!r} belongs to a shipped model; choose another.")
            if load_model(model_name).weights_sha256 != loaded_sha:
                raise InputError(f"A different custom model is already registered as {model_name!r}; "
                                 f"choose another name.")
            return load_model(model_name)
        register_model(spec)
        _CUSTOM_ORDER.append(model_name)
        _evict_oldest()
        return load_model(model_name)


def _evict_oldest() -> None:
    """Unregister the oldest custom models beyond :data:`MAX_CUSTOM_MODELS` (callers holding
    their LoadedModel keep working; only new lookups by name fail)."""
    from nip_core.models.base import unregister_model

    while len(_CUSTOM_ORDER) > MAX_CUSTOM_MODELS:
        unregister_model(_CUSTOM_ORDER.pop(0))


def is_custom(name: str) -> bool:
    """Whether ``name`` is a user's model (the app lists only the session's own)."""
    return isinstance(MODELS.get(name), CustomModelSpec)


# ---------------------------------------------------------------------------------------------
# Command-line wiring


def add_byom_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--arch``, ``--weights``, ``--classes`` and ``--input-size`` to a subcommand."""
    g = parser.add_argument_group("bring your own model (instead of --model)")
    g.add_argument("--arch", choices=sorted(ARCHITECTURES), help="architecture of --weights")
    g.add_argument("--weights", help="a .safetensors state dict for --arch (pickled .pt/.pth files are refused)")
    g.add_argument("--classes", help="class names: a text file, one per line, or a JSON list")
    g.add_argument("--input-size", type=int, dest="input_size", help="square input side (default: the arch's)")


def resolve_model(args: argparse.Namespace, *, required: bool = True) -> str | None:
    """The model name to use: registers the custom model when ``--weights`` is given.

    Without ``--weights`` returns ``args.model`` (``None`` allowed only when not ``required``).
    """
    weights = getattr(args, "weights", None)
    model = getattr(args, "model", None)
    if weights is None:
        for opt in ("arch", "classes", "input_size"):
            if getattr(args, opt, None) is not None:
                raise InputError(f"--{opt.replace('_', '-')} only applies with --weights.")
        if model is None and required:
            raise InputError("give --model NAME, or --arch, --weights and --classes for your own model.")
        return model
    if model is not None:
        raise InputError("give either --model or --weights (your own model), not both.")
    if getattr(args, "arch", None) is None or getattr(args, "classes", None) is None:
        raise InputError("--weights needs --arch and --classes.")
    return load_custom_model(args.arch, args.weights, args.classes,
                             input_size=getattr(args, "input_size", None)).name
