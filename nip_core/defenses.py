"""Defenses: the baselines from ART, the random control, oracle/top-K/global NIP, and BPDA.

Every defense maps inputs in [0,1] to inputs in [0,1] before the unchanged model classifies
them. Each is one registered :class:`~nip_core.defense_registry.Defense` with declared,
validated parameters. Importing this module registers every built-in defense, the label-free
``nip`` of :mod:`nip_core.label_free` included; the registry itself lives in
:mod:`nip_core.defense_registry`, below both.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from nip_core.defense_registry import (DEFENSES, NIP_IMAGENET, NIP_PARAMS, Defense, nip_profile,
                                       register)
from nip_core.label_free import register_label_free
from nip_core.errors import InputError
from nip_core.hooks import capture_hook, hooked, neuron_means
from nip_core.models.base import LoadedModel
from nip_core.nip import logit_perturbation, nip_defend
from nip_core.params import Param
from nip_core.runtime import global_rng, import_art

__all__ = ["DEFENSES", "NIP_IMAGENET", "NIP_PARAMS", "Defense", "DefenseResult", "DefendedNet", "apply_defense",
           "nip_profile", "register"]


@dataclass
class DefenseResult:
    x_def: torch.Tensor
    seconds: float
    params: dict[str, Any]


def apply_defense(model: LoadedModel, name: str, x: torch.Tensor, params: dict | None = None,
                  y: torch.Tensor | None = None, seed: int = 0, x_benign: torch.Tensor | None = None
                  ) -> DefenseResult:
    """Defend inputs ``x`` (``y`` only for label-using analysis modes; ``x_benign``, the benign
    images ``x`` came from, only for ``needs_benign`` modes such as ``nip-authors``)."""
    d = DEFENSES.get_unit(name)
    p = d.params_for(model, params)
    extra = {}
    if d.needs_benign:
        if x_benign is None or len(x_benign) != len(x):
            raise InputError(f"'{name}' is the authors' oracle protocol: it needs the benign image each input came "
                             "from (analysis only, not deployable).")
        extra["x_benign"] = x_benign.cpu()
    t0 = time.perf_counter()
    with model.lease(), global_rng(d.draws_global_rng):
        out = d.transform(model, x.cpu(), p, y, seed, **extra)
    return DefenseResult(out.clamp(0, 1).float(), time.perf_counter() - t0, p)


def _nip(mode: str):
    def transform(model, x, p, y, seed):
        prof = nip_profile(model, p)
        xd, _ = nip_defend(model, x, prof, mode=mode, k=p["k"], budget=p["budget"], steps=p["steps"],
                           step_size=p["step_size"], candidates=p["candidates"], rule=p["rule"], y=y)
        return xd
    return transform


register("none", "No defense", [], lambda m, x, p, y, s: x.clone(), family="none")
register("nip-topk", "NIP, label-free: class-conditional over the model's top-K candidates (selection rule)",
         NIP_PARAMS, _nip("topk"), dataset_defaults={"imagenet": NIP_IMAGENET}, family="nip")
register("nip-global", "NIP, label-free: global (all-class) influence profile",
         NIP_PARAMS, _nip("global"), dataset_defaults={"imagenet": NIP_IMAGENET}, family="nip")
register("nip-oracle", "NIP with the TRUE class's profile — analysis only, not deployable",
         NIP_PARAMS, _nip("oracle"), deployable=False, needs_labels=True,
         dataset_defaults={"imagenet": NIP_IMAGENET}, family="nip")


def _counter_attack_oracle(model, x, p, y, seed):
    if y is None:
        raise InputError("counter-attack-oracle needs the true labels; it is an analysis mode, not a deployable defense.")
    return logit_perturbation(model, x, torch.as_tensor(y), p["budget"], p["steps"], p["step_size"])


register("counter-attack-oracle", "Ablation of nip-oracle: logit-targeted PGD toward the TRUE class with NIP's budget, "
         "steps and step size (no neurons) — analysis only, not deployable",
         [q for q in NIP_PARAMS if q.name in ("steps", "step_size", "budget")], _counter_attack_oracle,
         deployable=False, needs_labels=True,
         dataset_defaults={"imagenet": {k: NIP_IMAGENET[k] for k in ("budget", "step_size", "steps")}},
         family="ablation")


def _nip_authors(model, x, p, y, seed, x_benign=None):
    """Chen et al.'s released procedure (Reverse_VGG_CIFAR.py): at the layer feeding the classifier,
    gradient × activation toward the benign image's prediction picks its ``front`` top and ``tail``
    bottom neurons; the gradient of Σfront − Σtail is taken **at the benign image**, scaled to unit
    RMS, and one step of size ``eta`` is added to the adversarial; if that does not restore the
    benign prediction, the step is subtracted instead. An oracle protocol: it needs the benign image."""
    layer = model.spec.default_layer if p["layer"] == "default" else p["layer"]
    module = model.layer(layer)
    xb = x_benign.to(model.device)
    box: list[torch.Tensor] = []
    with hooked(module, capture_hook(box, stop=False)):
        with torch.enable_grad():
            xg = xb.clone().requires_grad_(True)
            logits = model.net(xg)
            pred = logits.argmax(1)
            act = box[0]
            acts = neuron_means(act)
            (g_act,) = torch.autograd.grad(logits.gather(1, pred.view(-1, 1)).sum(), act, retain_graph=True)
            g = neuron_means(g_act)
            score = (g * acts).detach()
            nf, nt = min(p["front"], score.shape[1]), min(p["tail"], score.shape[1])
            front = score.topk(nf, dim=1).indices
            tail = (-score).topk(nt, dim=1).indices
            objective = acts.gather(1, front).sum() - acts.gather(1, tail).sum()
            (grad,) = torch.autograd.grad(objective, xg)
    rms = grad.flatten(1).pow(2).mean(1).sqrt().view(-1, *([1] * (grad.dim() - 1)))
    step = p["eta"] * grad / (rms + 1e-5)
    xa = x.to(model.device)
    plus = (xa + step).clamp(0, 1)
    restored = model.net(plus).argmax(1) == pred
    out = torch.where(restored.view(-1, *([1] * (xa.dim() - 1))), plus, (xa - step).clamp(0, 1))
    return out.detach().cpu()


register("nip-authors", "The authors' released NIP protocol (one RMS-normalised step η from the gradient at the "
         "BENIGN image, sign chosen with the benign prediction) — oracle, analysis only, not deployable",
         [Param("layer", "choice", "default", choices=NIP_PARAMS[0].choices, help="layer feeding the classifier"),
          Param("front", "int", 1, 1, 1000, help="top neurons raised (authors: 1)"),
          Param("tail", "int", 5, 1, 1000, help="bottom neurons lowered (authors: 5)"),
          Param("eta", "float", 0.001, 0.0, 1.0, unit="[0,1] pixel", help="step size η (authors: 0.001 on CIFAR-10)")],
         _nip_authors, deployable=False, needs_labels=False, needs_benign=True, family="ablation")


def _random_sign(model, x, p, y, seed):
    # Same budget, steps and step size as NIP, but each step's sign is random: the control
    # that tells whether NIP's direction matters at all.
    g = torch.Generator().manual_seed(seed)
    delta = torch.zeros_like(x)
    for _ in range(p["steps"]):
        sign = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
        delta = (delta + p["step_size"] * sign).clamp(-p["budget"], p["budget"])
        delta = (x + delta).clamp(0, 1) - x
    return x + delta


register("random-sign", "Control: random-sign steps with NIP's budget, steps and step size",
         [Param("steps", "int", 20, 1, 200), Param("step_size", "float", 0.03, 1e-4, 1.0, unit="[0,1] pixel"),
          Param("budget", "float", 0.3, 0.0, 1.0, unit="[0,1] pixel")],
         _random_sign, dataset_defaults={"imagenet": {k: NIP_IMAGENET[k] for k in ("budget", "step_size", "steps")}},
         family="control")


def _art_preprocessor(make: Callable[[dict, bool], Any], draws: bool = False):
    """An ART preprocessor as a transform; one that ``draws`` noise from NumPy's global RNG is
    seeded here (its caller holds ``RNG_LOCK``); the others must not touch the shared stream."""
    def transform(model, x, p, y, seed):
        if draws:
            np.random.seed(seed)
        pre = make(p, model.spec.input_channels)
        out, _ = pre(x.numpy().astype(np.float32))
        return torch.from_numpy(np.asarray(out, dtype=np.float32))
    return transform


def _pp():
    import_art()
    from art.defences import preprocessor
    return preprocessor


register("jpeg", "JPEG compression (Dziugaite et al. 2016), ART JpegCompression",
         [Param("quality", "int", 50, 1, 95)],
         _art_preprocessor(lambda p, c: _pp().JpegCompression(clip_values=(0.0, 1.0), quality=p["quality"],
                                                              channels_first=True, apply_predict=True)))
register("bitdepth", "Bit-depth reduction, feature squeezing (Xu et al. 2018), ART FeatureSqueezing",
         [Param("bits", "int", 2, 1, 8)],
         _art_preprocessor(lambda p, c: _pp().FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=p["bits"],
                                                               apply_predict=True)),
         dataset_defaults={"imagenet": {"bits": 5}})
register("median", "Median smoothing (Xu et al. 2018), ART SpatialSmoothing",
         [Param("window", "int", 3, 2, 11)],
         _art_preprocessor(lambda p, c: _pp().SpatialSmoothing(window_size=p["window"], channels_first=True,
                                                               clip_values=(0.0, 1.0))))
register("tvm", "Total-variation minimisation (Guo et al. 2018), ART TotalVarMin",
         [Param("prob", "float", 0.3, 0.01, 1.0), Param("lamb", "float", 0.5, 0.0, 10.0),
          Param("max_iter", "int", 10, 1, 100)],
         _art_preprocessor(lambda p, c: _pp().TotalVarMin(prob=p["prob"], lamb=p["lamb"], max_iter=p["max_iter"],
                                                          clip_values=(0.0, 1.0), apply_predict=True), draws=True),
         draws_global_rng=True)
register("gaussian", "Gaussian noise at test time, ART GaussianAugmentation (augmentation=False)",
         [Param("sigma", "float", 0.1, 0.0, 1.0, unit="[0,1] pixel")],
         _art_preprocessor(lambda p, c: _pp().GaussianAugmentation(sigma=p["sigma"], augmentation=False,
                                                                   clip_values=(0.0, 1.0), apply_predict=True),
                           draws=True),
         draws_global_rng=True,
         dataset_defaults={"imagenet": {"sigma": 0.03}})


class DefendedNet(nn.Module):
    """Model behind a defense, with a straight-through (BPDA) gradient for adaptive attacks.

    Forward: ``model(defense(x))``. Backward: the defense is treated as the identity, the
    standard Backward Pass Differentiable Approximation (Athalye et al. 2018).
    """

    def __init__(self, model: LoadedModel, defense: str, params: dict | None = None, seed: int = 0) -> None:
        super().__init__()
        self.model, self.defense, self.seed = model, DEFENSES.get_unit(defense), seed
        self.params = self.defense.params_for(model, params)
        self.inner = model.shared_net   # plain passes only: the network nobody hooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), global_rng(self.defense.draws_global_rng):
            xd = self.defense.transform(self.model, x.detach().float().cpu(), self.params, None, self.seed)
        x_st = x + (xd.to(x.device, x.dtype) - x).detach()
        return self.inner(x_st)


# The label-free NIP registers `nip` (= nip-neighbours) after the units above, so that listings
# keep their order: baselines first, the default defense last.
register_label_free()
