"""Small helpers shared by several test files (not tests themselves)."""
from __future__ import annotations

import torch
from torch import nn

from nip_core.models.base import LoadedModel, ModelSpec


class TinyMLP(nn.Module):
    """hidden = relu(W1 x), logits = W2 hidden; no biases, values exactly representable in float32,
    so every influence, activation and patched logit is easy by hand."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 3, bias=False)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]))
            self.fc2.weight.copy_(torch.tensor([[3.0, -1.0, 5.0], [1.0, 1.0, 1.0]]))

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def loaded(net: nn.Module, layers: dict[str, nn.Module], name: str = "tiny") -> LoadedModel:
    """``net`` as a registered-looking model with two classes ("a", "b") on the CPU (1×1×2 inputs)."""
    spec = ModelSpec(name, "hand-checkable", 1, 2, "none", "none", tuple(layers), next(iter(layers)))
    return LoadedModel(spec, net.eval(), ["a", "b"], layers, "0" * 64, torch.device("cpu"))


def tiny_mlp() -> LoadedModel:
    """:class:`TinyMLP` with its ReLU output as the layer ``hidden``."""
    net = TinyMLP()
    return loaded(net, {"hidden": net.act})


def deterministic(result: dict) -> dict:
    """An evaluation result without timing, environment and how it was run."""
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if "seconds" not in k and k not in ("environment", "distributed")}
        return [strip(v) for v in o] if isinstance(o, list) else o
    return strip(result)
