"""The defense registry and what every NIP defense shares: the :class:`Defense` unit, NIP's
declared parameters and its influence profile.

It sits below both :mod:`nip_core.defenses` (the baselines, the oracle and top-K NIP, the random
control, BPDA) and :mod:`nip_core.label_free` (the label-free ``nip``), so each of them registers
its units here and neither imports the other's internals.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from nip_core.data import defaults_chain
from nip_core.influence import METHODS, influence_profile
from nip_core.models.base import LoadedModel
from nip_core.params import Param, Registry, Spec

DEFENSES = Registry("defense")

# NIP budgets are in [0,1] pixel units; ImageNet inputs need far smaller ones than MNIST.
NIP_PARAMS = (
    Param("layer", "choice", "default", choices=("default", "conv1", "conv2", "fc1", "fc2", "block6", "block10",
                                                "block14", "block15", "head"), help="influence layer"),
    Param("method", "choice", "conductance", choices=METHODS, help="influence method"),
    Param("k", "float", 0.2, 0.01, 0.5, step=0.01, help="front/tail share of live neurons"),
    Param("steps", "int", 20, 1, 200, help="inverse-perturbation steps T"),
    Param("step_size", "float", 0.03, 1e-4, 1.0, step=1 / 255, unit="[0,1] pixel", help="step size α"),
    Param("budget", "float", 0.3, 0.0, 1.0, step=1 / 255, unit="[0,1] pixel", help="L∞ budget ε"),
    Param("candidates", "int", 3, 1, 20, help="top-K candidate classes (label-free class-conditional mode)"),
    Param("rule", "choice", "margin", choices=("margin", "confidence"), help="candidate selection rule"),
    Param("n_steps", "int", 16, 2, 200, help="conductance integration steps for the profile"),
)
# On ImageNet every top-K candidate class needs its own profile over the reference photos;
# gradient×activation costs one pass per photo instead of n_steps + 1 for conductance, and at
# the default `head` layer (followed only by pooling and the linear classifier) the two rank
# neurons almost identically.
NIP_IMAGENET = {"budget": 4 / 255, "step_size": 1 / 255, "steps": 10, "method": "grad_x_act"}


@dataclass(frozen=True)
class Defense:
    """A registered defense: spec, transform and what it needs."""

    spec: Spec
    transform: Callable[[LoadedModel, torch.Tensor, dict, torch.Tensor | None, int], torch.Tensor] = field(repr=False)
    deployable: bool = True
    needs_labels: bool = False
    dataset_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    family: str = "baseline"
    # The registered attack that knows this defense (beyond BPDA), e.g. "nip-aware"; evaluate runs
    # it with its default settings, against the evaluated defense parameters, wherever it applies.
    aware_attack: str | None = None
    # Why the defense treats each input as it does: (model, x, params, seed) → one dict per input, or None.
    explain_decision: Callable[..., list[dict] | None] | None = field(default=None, repr=False)
    # The held-out split (``nip_core.data.SPLITS``) the defense places thresholds on, if any:
    # evaluate warns when a table includes it.
    calibration_split: str | None = None
    # Needs the benign image too (the authors' oracle protocol): ``transform(..., x_benign=...)``.
    needs_benign: bool = False
    # Draws from NumPy's or Python's process-wide RNG (an ART preprocessor's noise): its runs hold
    # ``RNG_LOCK`` (``nip_core.runtime.global_rng``); every other defense runs concurrently.
    draws_global_rng: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def params_for(self, model: LoadedModel, values: dict | None = None) -> dict[str, Any]:
        values = dict(values or {})
        # NIP's layer may be any of this model's own influence layers (ResNet-8's `stack3`, a user
        # model's), beyond the names its Param lists; other values are validated as declared.
        own = None
        if any(q.name == "layer" for q in self.spec.params) and str(values.get("layer")) in model.spec.layers:
            own = str(values.pop("layer"))
        p = self.spec.validate_for(self.dataset_defaults, defaults_chain(model), values)
        if own is not None:
            p["layer"] = own
        if p.get("layer") not in (None, "default"):
            model.layer(p["layer"])
        return p

    def to_json(self) -> dict:
        return self.spec.to_json() | {"deployable": self.deployable, "needs_labels": self.needs_labels,
                                      "needs_benign": self.needs_benign,
                                      "family": self.family, "dataset_defaults": self.dataset_defaults}


def register(name: str, summary: str, params, transform, **kw) -> Defense:
    return DEFENSES.register(Defense(Spec(name, summary, tuple(params)), transform, **kw))


def _layer(model: LoadedModel, p: dict) -> str:
    return model.spec.default_layer if p.get("layer") in (None, "default") else p["layer"]


def nip_profile(model: LoadedModel, p: dict):
    return influence_profile(model, _layer(model, p), p["method"], p["n_steps"])
