"""LeNet-5-style CNN for MNIST, trained here on real MNIST digits (see ``nip_core.train``)."""
from __future__ import annotations

import json

from safetensors.torch import load_file
from torch import nn

from nip_core.errors import InputError
from nip_core.models.base import ModelSpec, Normalize, file_sha256, finish, register_model
from nip_core.runtime import ASSETS

WEIGHTS = ASSETS / "models" / "lenet-mnist.safetensors"
CARD = ASSETS / "models" / "lenet-mnist.json"
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


class LeNet5(nn.Module):
    """Conv(6)-pool-Conv(16)-pool-FC120-FC84-FC; one activation module per layer so each can be hooked."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.normalize = Normalize(MNIST_MEAN * in_channels, MNIST_STD * in_channels)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.act4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool1(self.act1(self.conv1(self.normalize(x))))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.act3(self.fc1(x.flatten(1)))
        x = self.act4(self.fc2(x))
        return self.fc3(x)

    def influence_layers(self) -> dict[str, nn.Module]:
        """Layer name → the activation module whose output is that layer's neurons."""
        return {"conv1": self.act1, "conv2": self.act2, "fc1": self.act3, "fc2": self.act4}


def _load():
    if not WEIGHTS.exists():
        raise InputError(f"LeNet weights are missing at {WEIGHTS}; run `python -m nip_core train lenet-mnist`.")
    net = LeNet5()
    net.load_state_dict(load_file(str(WEIGHTS)))
    card = json.loads(CARD.read_text()) if CARD.exists() else {}
    names = card.get("class_names") or [str(i) for i in range(10)]
    return finish(SPEC, net, names, net.influence_layers(), file_sha256(WEIGHTS))


SPEC = register_model(ModelSpec(
    name="lenet-mnist",
    summary="LeNet-5 CNN trained on 4,000 real MNIST digits (28×28 gray)",
    input_channels=1, input_size=28, preprocess="mnist", gallery="mnist",
    layers=("conv1", "conv2", "fc1", "fc2"), default_layer="fc1", factory=_load,
    affine_layers=("fc2",),
))
