"""A quick look at one image before any attack: the model's prediction and one layer's neuron influence
toward it (Explore's drawing canvas shows this after every stroke; the attack waits for Run).

One forward pass and one layer attribution, no attack, no defense: milliseconds on the 28×28 models.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nip_core.errors import InputError
from nip_core.influence import neuron_activations, neuron_influence
from nip_core.models.base import LoadedModel


@dataclass(frozen=True)
class Preview:
    """The model's view of one image.

    Attributes:
        probabilities: ``[classes]`` softmax.
        prediction: the top class.
        layer, method: where and how the influence is measured.
        influence: ``[n_neurons]`` influence of the layer's neurons toward ``prediction``.
        activations: ``[n_neurons]`` the layer's per-neuron activation.
    """

    probabilities: torch.Tensor
    prediction: int
    layer: str
    method: str
    influence: torch.Tensor
    activations: torch.Tensor

    def top(self, class_names: list[str], n: int = 3) -> list[tuple[int, str, float]]:
        """The ``n`` most likely classes: (class, name, softmax confidence)."""
        p, c = self.probabilities.topk(min(n, len(self.probabilities)))
        return [(int(j), class_names[int(j)], float(q)) for q, j in zip(p, c)]


def preview(model: LoadedModel, image: torch.Tensor, layer: str | None = None,
            method: str = "conductance") -> Preview:
    """Prediction and neuron influence of one ``[C, H, W]`` image in [0,1] (no attack, no defense).

    Args:
        model: a loaded model.
        image: the input, in the model's shape.
        layer: the layer (default: the model's default influence layer).
        method: ``"conductance"`` or ``"grad_x_act"`` (as :func:`~nip_core.influence.neuron_influence`).
    """
    spec = model.spec
    shape = (spec.input_channels, spec.input_size, spec.input_size)
    if not isinstance(image, torch.Tensor) or tuple(image.shape) != shape:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"model {model.name!r} takes a {shape} image, got {got}.")
    layer = layer or spec.default_layer
    x = image[None].float().clamp(0.0, 1.0)
    probs = model.probabilities(x)[0]
    pred = int(probs.argmax())
    influence = neuron_influence(model, x, pred, layer, method, exact_affine=True)[0]
    return Preview(probabilities=probs, prediction=pred, layer=layer, method=method, influence=influence,
                   activations=neuron_activations(model, x, layer)[0])
