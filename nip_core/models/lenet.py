"""LeNet-5-style CNNs trained here (see ``nip_core.train``): ``lenet-mnist`` on real MNIST digits,
``lenet-fashion`` on Fashion-MNIST, and ``lenet-fashion-at``, the same network PGD adversarially trained
on Fashion-MNIST (Madry et al. 2018; L∞ ε 0.1). All take 1×28×28 inputs in [0,1]; each network holds its
dataset's normalisation as buffers (saved in its weights file)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from safetensors.torch import load_file
from torch import nn

from nip_core.errors import InputError
from nip_core.models.base import MODELS, FirstRun, ModelSpec, Normalize, file_sha256, finish, register_model
from nip_core.runtime import ASSETS

WEIGHTS = ASSETS / "models" / "lenet-mnist.safetensors"
CARD = ASSETS / "models" / "lenet-mnist.json"
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_WEIGHTS = ASSETS / "models" / "lenet-fashion.safetensors"
FASHION_CARD = ASSETS / "models" / "lenet-fashion.json"
FASHION_AT_WEIGHTS = ASSETS / "models" / "lenet-fashion-at.safetensors"
FASHION_AT_CARD = ASSETS / "models" / "lenet-fashion-at.json"
# Pixel mean and standard deviation of the 60,000 Fashion-MNIST training images.
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)


class LeNet5(nn.Module):
    """Conv(6)-pool-Conv(16)-pool-FC120-FC84-FC; one activation module per layer so each can be hooked.

    Args:
        num_classes: outputs of the last layer (default 10).
        in_channels: input channels (default 1).
        mean, std: one-channel normalisation, repeated over ``in_channels`` (default MNIST's).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 mean: Sequence[float] = MNIST_MEAN, std: Sequence[float] = MNIST_STD) -> None:
        super().__init__()
        self.normalize = Normalize(tuple(mean) * in_channels, tuple(std) * in_channels)
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


def _loader(spec_name: str, weights: Path, card_path: Path, mean: Sequence[float], std: Sequence[float]):
    def load():
        if not weights.exists():
            raise InputError(f"{spec_name} weights are missing at {weights}; "
                             f"run `python -m nip_core train {spec_name} --ship`.")
        net = LeNet5(mean=mean, std=std)
        net.load_state_dict(load_file(str(weights)))
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        names = card.get("class_names") or [str(i) for i in range(10)]
        return finish(MODELS[spec_name], net, names, net.influence_layers(), file_sha256(weights))
    return load


SPEC = register_model(ModelSpec(
    name="lenet-mnist",
    summary="LeNet-5 CNN trained on 4,000 real MNIST digits (28×28 gray)",
    input_channels=1, input_size=28, preprocess="mnist", gallery="mnist",
    layers=("conv1", "conv2", "fc1", "fc2"), default_layer="fc1",
    factory=_loader("lenet-mnist", WEIGHTS, CARD, MNIST_MEAN, MNIST_STD), affine_layers=("fc2",), card=CARD,
))


def _fashion_spec(name: str, summary: str, weights, card, first_run: FirstRun) -> ModelSpec:
    """A Fashion-MNIST LeNet: the same geometry, layers and normalisation, its own weights, card and first run."""
    return register_model(ModelSpec(
        name=name, summary=summary, input_channels=1, input_size=28, preprocess="fashion", gallery="fashion",
        layers=("conv1", "conv2", "fc1", "fc2"), default_layer="fc1",
        factory=_loader(name, weights, card, FASHION_MEAN, FASHION_STD), affine_layers=("fc2",), card=card,
        first_run=first_run))


FASHION_SPEC = _fashion_spec("lenet-fashion",
                             "LeNet-5 CNN trained on Fashion-MNIST clothing images (28×28 gray, 10 classes)",
                             FASHION_WEIGHTS, FASHION_CARD,
                             # Label-free nip does not flag FGSM on the first T-shirt; the oracle, told the
                             # true class, restores it.
                             first_run=FirstRun(defense="nip-oracle"))
# The field's baseline defense (RobustBench ranks models by it): the same architecture, data,
# augmentation and optimiser as lenet-fashion, trained on PGD adversarials (nip_core.train).
FASHION_AT_SPEC = _fashion_spec("lenet-fashion-at",
                                "LeNet-5 CNN on Fashion-MNIST, PGD adversarially trained (L∞ ε 0.1; Madry et al. 2018)",
                                FASHION_AT_WEIGHTS, FASHION_AT_CARD,
                                # The robust model resists FGSM 0.1 on every correctly classified gallery image;
                                # PGD 0.1 flips this dress, and the oracle restores it (label-free nip does not).
                                first_run=FirstRun(attack="pgd", defense="nip-oracle", image="dress-03473"))
