"""Attack registry: each attack is one small unit wrapping an ART evasion attack.

One unit is not ART's: ``nip-aware``, the defense-aware attack on the label-free ``nip``
(``nip_core.label_free.aware_attack``). It only applies where ``nip`` uses its benign-neighbour
vote (MNIST models).

Every budget is in [0,1] pixel space (``eps=0.1`` on MNIST means ±25 of 255 grey levels).
Defaults depend on the dataset: MNIST tolerates large L∞ budgets (0.1–0.3), ImageNet models
are attacked with 2/255–8/255. ``target=-1`` means untargeted; a class index makes the attack
targeted where the attack allows it.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from nip_core.data import defaults_chain
from nip_core.errors import InputError
from nip_core.models.base import LoadedModel
from nip_core.params import Param, Registry, Spec
from nip_core.runtime import global_rng, import_art, routed, run_stream

ATTACKS = Registry("attack")


@dataclass(frozen=True)
class Attack:
    """A registered attack: its spec, the ART factory and how it is run."""

    spec: Spec
    build: Callable[[Any, dict], Any] = field(repr=False)
    access: str = "white-box"          # or "black-box" (queries predictions only)
    norm: str = "Linf"
    targeted_ok: bool = True
    probabilities: bool = False       # the ART attack expects softmax outputs
    dataset_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Not an ART attack: run(model, x, y, params, seed) → adversarials; applies(model) → bool.
    run: Callable[..., torch.Tensor] | None = field(default=None, repr=False)
    applies: Callable[[LoadedModel], bool] | None = field(default=None, repr=False)
    # Its strength is its budget ``eps``, and its step ``eps_step`` (if it has one) is a share of it
    # that a sweep over ε keeps (``nip_core.analyses.elasticity``): the gradient attacks with a budget.
    eps_sweep: bool = False
    # Draws from NumPy's or Python's process-wide RNG (ART's random starts and random searches): its
    # runs hold ``RNG_LOCK`` and are seeded (``nip_core.runtime.global_rng``); the other attacks run
    # concurrently without seeding anything global.
    draws_global_rng: bool = False
    # Its only global draws are ART's ``random_sphere`` in PGD (the random start): routed to the run's
    # own stream (``nip_core.runtime.run_stream``), so only the draw itself holds ``RNG_LOCK``.
    routed_draws: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def params_for(self, model: LoadedModel, values: dict | None = None) -> dict[str, Any]:
        """Validated parameters: spec defaults, then the dataset's defaults, then ``values``."""
        params = self.spec.validate_for(self.dataset_defaults, defaults_chain(model), values)
        if params.get("target", -1) >= model.num_classes:
            raise InputError(f"parameter 'target' must be -1 (untargeted) or a class in [0, {model.num_classes - 1}]; "
                             f"got {params['target']}.")
        if params.get("target", -1) >= 0 and not self.targeted_ok:
            raise InputError(f"attack '{self.name}' cannot be targeted; use target=-1.")
        return params

    def applies_to(self, model: LoadedModel) -> bool:
        return self.applies is None or self.applies(model)

    def to_json(self) -> dict:
        return self.spec.to_json() | {"access": self.access, "norm": self.norm, "targeted": self.targeted_ok,
                                      "eps_sweep": self.eps_sweep,
                                      "dataset_defaults": self.dataset_defaults,
                                      "library": "ART" if self.run is None else "nip_core"}


def _eps(default: float, hi: float = 1.0, name: str = "eps", help_: str = "L∞ budget") -> Param:
    return Param(name, "float", default, 0.0, hi, help=help_, step=1 / 255, unit="[0,1] pixel")


def _iters(default: int, hi: int = 1000, name: str = "max_iter") -> Param:
    return Param(name, "int", default, 1, hi, help="iterations")


TARGET = Param("target", "int", -1, -1, 999, help="-1 untargeted, else the target class")
MNIST, IMAGENET, FASHION = "mnist", "imagenet", "fashion"


def register(name: str, summary: str, params: list[Param], build, targeted_ok: bool = True,
             **kw) -> Attack:
    ps = tuple(params) + ((TARGET,) if targeted_ok else ())
    return ATTACKS.register(Attack(Spec(name, summary, ps), build, targeted_ok=targeted_ok, **kw))


def _art():
    import_art()
    from art.attacks import evasion
    _route_art_draws()
    return evasion


def _route_art_draws() -> None:
    """ART's PyTorch PGD draws its random start with ``art.utils.random_sphere`` from NumPy's global
    RNG: route that one name (in the module that calls it) to the run's own stream. Idempotent."""
    from art.attacks.evasion.projected_gradient_descent import projected_gradient_descent_pytorch as pgd

    pgd.random_sphere = routed(pgd.random_sphere)


register("fgsm", "Fast Gradient Sign Method (Goodfellow et al. 2015), one step of size eps",
         [_eps(0.2)], lambda c, p: _art().FastGradientMethod(c, norm=np.inf, eps=p["eps"], targeted=p["target"] >= 0,
                                                              batch_size=64),
         dataset_defaults={IMAGENET: {"eps": 2 / 255}}, eps_sweep=True)
register("bim", "Basic Iterative Method (Kurakin et al. 2017)",
         [_eps(0.1), Param("eps_step", "float", 0.01, 1e-4, 1.0, step=1 / 255, unit="[0,1] pixel"), _iters(20)],
         lambda c, p: _art().BasicIterativeMethod(c, eps=p["eps"], eps_step=p["eps_step"], max_iter=p["max_iter"],
                                                  targeted=p["target"] >= 0, batch_size=64, verbose=False),
         dataset_defaults={IMAGENET: {"eps": 4 / 255, "eps_step": 1 / 255, "max_iter": 10}}, eps_sweep=True)
register("pgd", "Projected Gradient Descent, L∞, random start (Madry et al. 2018)",
         [_eps(0.3), Param("eps_step", "float", 0.01, 1e-4, 1.0, step=1 / 255, unit="[0,1] pixel"), _iters(40)],
         lambda c, p: _art().ProjectedGradientDescent(c, norm=np.inf, eps=p["eps"], eps_step=p["eps_step"],
                                                      max_iter=p["max_iter"], num_random_init=1,
                                                      targeted=p["target"] >= 0, batch_size=64, verbose=False),
         dataset_defaults={IMAGENET: {"eps": 4 / 255, "eps_step": 1 / 255, "max_iter": 10}}, eps_sweep=True, routed_draws=True)
register("pgd-l2", "Projected Gradient Descent, L2 ball (Madry et al. 2018)",
         [_eps(2.0, 100.0, help_="L2 budget"), Param("eps_step", "float", 0.2, 1e-4, 100.0), _iters(40)],
         lambda c, p: _art().ProjectedGradientDescent(c, norm=2, eps=p["eps"], eps_step=p["eps_step"],
                                                      max_iter=p["max_iter"], num_random_init=1,
                                                      targeted=p["target"] >= 0, batch_size=64, verbose=False),
         norm="L2", dataset_defaults={IMAGENET: {"eps": 1.0, "eps_step": 0.2, "max_iter": 10}}, eps_sweep=True, routed_draws=True)
register("mifgsm", "Momentum Iterative FGSM (Dong et al. 2018)",
         [_eps(0.3), Param("eps_step", "float", 0.03, 1e-4, 1.0, step=1 / 255, unit="[0,1] pixel"), _iters(10),
          Param("decay", "float", 1.0, 0.0, 10.0)],
         lambda c, p: _art().MomentumIterativeMethod(c, norm=np.inf, eps=p["eps"], eps_step=p["eps_step"],
                                                     max_iter=p["max_iter"], decay=p["decay"],
                                                     targeted=p["target"] >= 0, batch_size=64, verbose=False),
         dataset_defaults={IMAGENET: {"eps": 4 / 255, "eps_step": 1 / 255}}, eps_sweep=True)
register("apgd", "Auto-PGD, L∞, cross-entropy (Croce & Hein 2020)",
         [_eps(0.3), _iters(20), Param("restarts", "int", 1, 1, 10)],
         lambda c, p: _art().AutoProjectedGradientDescent(c, norm=np.inf, eps=p["eps"], eps_step=2 * p["eps"] / 10,
                                                          max_iter=p["max_iter"], nb_random_init=p["restarts"],
                                                          targeted=p["target"] >= 0, loss_type="cross_entropy",
                                                          batch_size=64, verbose=False),
         dataset_defaults={IMAGENET: {"eps": 4 / 255, "max_iter": 10}}, eps_sweep=True, draws_global_rng=True)
register("cw-l2", "Carlini & Wagner L2 (2017), minimal-norm",
         [Param("confidence", "float", 0.0, 0.0, 100.0), Param("learning_rate", "float", 0.05, 1e-4, 1.0),
          Param("binary_search_steps", "int", 5, 1, 20), _iters(20), Param("initial_const", "float", 1.0, 1e-4, 100.0)],
         lambda c, p: _art().CarliniL2Method(c, confidence=p["confidence"], learning_rate=p["learning_rate"],
                                             binary_search_steps=p["binary_search_steps"], max_iter=p["max_iter"],
                                             initial_const=p["initial_const"], targeted=p["target"] >= 0,
                                             batch_size=64, verbose=False),
         norm="L2", dataset_defaults={IMAGENET: {"binary_search_steps": 3, "max_iter": 10, "initial_const": 0.1}})
register("deepfool", "DeepFool (Moosavi-Dezfooli et al. 2016), minimal L2 step to the nearest boundary",
         [_iters(50), Param("overshoot", "float", 0.02, 0.0, 1.0), Param("nb_grads", "int", 10, 2, 1000)],
         lambda c, p: _art().DeepFool(c, max_iter=p["max_iter"], epsilon=p["overshoot"], nb_grads=p["nb_grads"],
                                      batch_size=64, verbose=False),
         targeted_ok=False, norm="L2")
register("jsma", "Jacobian Saliency Map Attack (Papernot et al. 2016); untargeted picks a random target",
         [Param("theta", "float", 0.1, 0.0, 1.0), Param("gamma", "float", 0.1, 0.0, 1.0, help="max share of features changed")],
         lambda c, p: _art().SaliencyMapMethod(c, theta=p["theta"], gamma=p["gamma"], batch_size=64, verbose=False),
         norm="L0", draws_global_rng=True)
register("ead", "Elastic-net attack EAD (Chen et al. 2018), L1+L2",
         [Param("confidence", "float", 0.0, 0.0, 100.0), Param("beta", "float", 1e-3, 0.0, 1.0),
          Param("binary_search_steps", "int", 3, 1, 20), _iters(20), Param("initial_const", "float", 1.0, 1e-4, 100.0)],
         lambda c, p: _art().ElasticNet(c, confidence=p["confidence"], beta=p["beta"], max_iter=p["max_iter"],
                                        binary_search_steps=p["binary_search_steps"], initial_const=p["initial_const"],
                                        learning_rate=0.05, targeted=p["target"] >= 0, batch_size=64, verbose=False),
         norm="L1")
register("square", "Square Attack (Andriushchenko et al. 2020), score-based black-box, L∞",
         [_eps(0.3), _iters(100, 10000), Param("p_init", "float", 0.3, 0.01, 1.0)],
         lambda c, p: _art().SquareAttack(c, norm=np.inf, eps=p["eps"], max_iter=p["max_iter"], p_init=p["p_init"],
                                          nb_restarts=1, batch_size=64, verbose=False),
         access="black-box", targeted_ok=False, dataset_defaults={IMAGENET: {"eps": 4 / 255}}, draws_global_rng=True)
def _autoattack(c, p):
    """ART's AutoAttack with the field's ensemble: APGD (cross-entropy), APGD (DLR), DeepFool and
    Square, each untargeted; the worst case per image is kept. ``restarts`` and ``square_queries``
    default below the standard evaluation (5 restarts, 5,000 queries) to stay interactive."""
    ev = _art()
    eps, step = p["eps"], p["eps_step"]
    attacks = [ev.AutoProjectedGradientDescent(c, norm=np.inf, eps=eps, eps_step=step, max_iter=p["max_iter"],
                                               targeted=False, nb_random_init=p["restarts"], batch_size=64,
                                               loss_type=loss, verbose=False)
               for loss in ("cross_entropy", "difference_logits_ratio")]
    attacks.append(ev.DeepFool(c, max_iter=100, epsilon=1e-3, nb_grads=10, batch_size=64, verbose=False))
    attacks.append(ev.SquareAttack(c, norm=np.inf, eps=eps, max_iter=p["square_queries"], p_init=0.8,
                                   nb_restarts=1, batch_size=64, verbose=False))
    return ev.AutoAttack(c, norm=np.inf, eps=eps, eps_step=step, attacks=attacks, batch_size=64)


register("autoattack", "AutoAttack (Croce & Hein 2020): APGD-CE, APGD-DLR, DeepFool and Square, worst case per "
         "image (ART AutoAttack)",
         [_eps(0.3), Param("eps_step", "float", 0.1, 1e-4, 1.0, step=1 / 255, unit="[0,1] pixel"), _iters(100),
          Param("restarts", "int", 1, 1, 10, help="APGD random restarts (standard: 5)"),
          Param("square_queries", "int", 1000, 10, 10000, help="Square attack queries (standard: 5,000)")],
         _autoattack, targeted_ok=False,
         dataset_defaults={IMAGENET: {"eps": 4 / 255, "eps_step": 1 / 255, "max_iter": 20},
                           FASHION: {"eps": 0.1, "eps_step": 0.03}}, draws_global_rng=True)

register("hsj", "HopSkipJump (Chen et al. 2020), decision-based black-box, L2",
         [_iters(10, 200), Param("max_eval", "int", 200, 10, 10000), Param("init_eval", "int", 20, 1, 1000)],
         lambda c, p: _art().HopSkipJump(c, max_iter=p["max_iter"], max_eval=p["max_eval"], init_eval=p["init_eval"],
                                         targeted=p["target"] >= 0, batch_size=64, verbose=False),
         access="black-box", norm="L2", draws_global_rng=True)
register("pixel", "Pixel attack (Su et al. 2019, one-pixel family), differential evolution, black-box",
         [Param("pixels", "int", 3, 1, 100, help="pixels changed"), _iters(10, 1000)],
         lambda c, p: _art().PixelAttack(c, th=p["pixels"], es=1, max_iter=p["max_iter"], targeted=p["target"] >= 0,
                                         verbose=False),
         access="black-box", norm="L0", probabilities=True, draws_global_rng=True)
register("simba", "SimBA-DCT (Guo et al. 2019), simple score-based black-box",
         [Param("epsilon", "float", 0.2, 1e-3, 1.0, unit="[0,1] pixel"), _iters(300, 20000)],
         lambda c, p: _art().SimBA(c, attack="dct", epsilon=p["epsilon"], max_iter=p["max_iter"],
                                   targeted=p["target"] >= 0, verbose=False),
         access="black-box", norm="L2", probabilities=True, dataset_defaults={IMAGENET: {"epsilon": 0.05}}, draws_global_rng=True)
register("universal", "Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017), one δ for the batch",
         [_eps(0.3), Param("delta", "float", 0.2, 0.0, 1.0, help="target fooling-rate gap"), _iters(5, 100)],
         lambda c, p: _art().UniversalPerturbation(c, attacker="deepfool", attacker_params={"max_iter": 20, "epsilon": 0.02, "verbose": False},
                                                   delta=p["delta"], max_iter=p["max_iter"], eps=p["eps"],
                                                   norm=np.inf, batch_size=64, verbose=False),
         targeted_ok=False, dataset_defaults={IMAGENET: {"eps": 8 / 255}}, draws_global_rng=True)


def _nip_aware(model: LoadedModel, x: torch.Tensor, y: torch.Tensor, p: dict, seed: int,
               against: dict | None = None) -> torch.Tensor:
    from nip_core.defenses import DEFENSES
    from nip_core.label_free import aware_attack

    return aware_attack(model, x, y, DEFENSES["nip"].params_for(model, against), p, seed)


def _nip_uses_vote(model: LoadedModel) -> bool:
    from nip_core.label_free import uses_neighbours

    return uses_neighbours(model)


# Settings for the attacker, chosen on tune digits (docs/nip-research.md §R7, §P6): weight 100 was the
# strongest of 0, 3, 10, 30, 100 against the raw-vote nip (it kept .79, .26,
# .23, .18, .15 of them); the budget is the MNIST suite's PGD budget.
register("nip-aware", "Defense-aware PGD against the label-free nip: fools the model and nip's benign-neighbour "
         "vote at once (only where nip votes: models with a calibration)",
         [_eps(0.3, hi=10.0, help_="budget: L∞, or L2 with norm=2"),
          Param("eps_step", "float", 0.01, 1e-4, 1.0, step=1 / 255, unit="[0,1] pixel"), _iters(40),
          Param("norm", "choice", "inf", choices=("inf", "2"), help="threat model: L∞ (signed steps) or L2"),
          Param("weight", "float", 100.0, 0.0, 1000.0, help="weight of the vote term against the model's loss"),
          Param("surrogate", "float", 0.3, 0.001, 1.0,
                help="width of the sigmoid whose gradient stands in for nip's binarisation (BPDA)"),
          Param("stealth", "float", 0.0, 0.0, 1e5,
                help="weight of keeping conv1 inside its benign range (hides from the abnormal-neuron detector)"),
          Param("targets", "int", 3, 1, 9,
                help="wrong classes tried per input, closest first; the first that beats nip is kept")],
         None, targeted_ok=False, run=_nip_aware, applies=_nip_uses_vote)

# Fashion-MNIST: a budget of 0.3 turns a garment into a silhouette; 0.1 is the field's usual
# L∞ budget there. Every L∞ attack with a budget and no Fashion-MNIST default of its own gets it.
for _a in ATTACKS.values():
    _names = {q.name for q in _a.spec.params}
    if _a.norm == "Linf" and "eps" in _names and FASHION not in _a.dataset_defaults:
        _a.dataset_defaults[FASHION] = {"eps": 0.1} | ({"eps_step": 0.01} if "eps_step" in _names else {})


class _ArtView(nn.Module):
    """What ART sees: float32 inputs (some attacks send float64), optional softmax outputs."""

    def __init__(self, net: nn.Module, probabilities: bool) -> None:
        super().__init__()
        self.net = net
        self.probabilities = probabilities

    def forward(self, x):
        out = self.net(x.float())
        return out.softmax(1) if self.probabilities else out


def art_classifier(model: LoadedModel, net: nn.Module | None = None, probabilities: bool = False):
    """An ART ``PyTorchClassifier`` over ``net`` (default: the model), inputs clipped to [0,1]."""
    import_art()
    from art.estimators.classification import PyTorchClassifier

    net = _ArtView(net if net is not None else model.net, probabilities)
    c, s = model.spec.input_channels, model.spec.input_size
    return PyTorchClassifier(model=net, loss=nn.CrossEntropyLoss(), input_shape=(c, s, s),
                             nb_classes=model.num_classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if model.device.type == "cuda" else "cpu")


def _seeded_starts(model: LoadedModel, x: np.ndarray, labels: np.ndarray, targeted: bool, seed: int,
                   tries: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    starts = x.copy()
    todo = np.arange(len(x))
    for _ in range(tries):
        if len(todo) == 0:
            break
        cand = rng.uniform(0, 1, size=x[todo].shape).astype(np.float32)
        pred = model.predict(torch.from_numpy(cand)).numpy()
        ok = pred == labels[todo] if targeted else pred != labels[todo]
        starts[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return starts


def _rng(attack: Attack, seed: int, net: nn.Module | None) -> contextlib.AbstractContextManager:
    """The random streams of one run: its own NumPy stream where its draws are routed, the locked
    and seeded global RNGs where it draws from them, nothing for a deterministic attack. Through a
    defense (``net``) a routed attack takes the global RNGs as before: a defense that draws seeds
    and draws from the global stream between the attack's draws."""
    if attack.routed_draws and net is None:
        return run_stream(seed)
    return global_rng(attack.draws_global_rng or attack.routed_draws, seed)


@dataclass
class AttackResult:
    x_adv: torch.Tensor
    seconds: float
    params: dict[str, Any]


def run_attack(model: LoadedModel, name: str, x: torch.Tensor, y: torch.Tensor, params: dict | None = None,
               seed: int = 0, net: nn.Module | None = None, against: dict | None = None) -> AttackResult:
    """Attack ``x`` (true labels ``y``); returns adversarial images in [0,1] and wall time.

    ``net`` replaces the attacked network (used for adaptive attacks through a defense).
    ``against``: for a defense-aware attack (``nip-aware``), the parameters of the defense it
    attacks (default: the defense's registered defaults).
    """
    attack = ATTACKS.get_unit(name)
    p = attack.params_for(model, params)
    if not attack.applies_to(model):
        raise InputError(f"attack '{name}' does not apply to model '{model.name}': {attack.spec.summary}.")
    if attack.run is not None:
        t0 = time.perf_counter()
        with model.lease(), _rng(attack, seed, net):
            extra = {"against": against} if against is not None else {}
            x_adv = attack.run(model, x.detach().cpu().float(), torch.as_tensor(y).long().cpu(), p, seed, **extra)
        return AttackResult(x_adv.clamp(0.0, 1.0).view_as(x.cpu()), time.perf_counter() - t0, p)
    x_np = x.detach().cpu().numpy().astype(np.float32)
    targeted = p.get("target", -1) >= 0
    labels = np.full(len(x_np), p["target"]) if targeted else y.cpu().numpy()
    onehot = np.eye(model.num_classes, dtype=np.float32)[labels]
    t0 = time.perf_counter()
    with model.lease(), _rng(attack, seed, net):
        art_attack = attack.build(art_classifier(model, net, attack.probabilities), p)
        if name in ("jsma", "deepfool", "universal", "square", "autoattack") and not targeted:
            out = art_attack.generate(x_np) if name in ("jsma", "universal") else art_attack.generate(x_np, y=onehot)
        elif name == "hsj":
            # ART's HopSkipJump draws its starting points from an unseeded RandomState; give it
            # seeded ones so the same seed gives the same adversarials.
            init = _seeded_starts(model, x_np, labels, targeted, seed)
            out = art_attack.generate(x_np, y=onehot, x_adv_init=init)
        elif attack.probabilities:
            # SimBA and the pixel attack in ART handle one image at a time.
            out = np.concatenate([art_attack.generate(x_np[i:i + 1], y=onehot[i:i + 1]) for i in range(len(x_np))])
        else:
            out = art_attack.generate(x_np, y=onehot)
    secs = time.perf_counter() - t0
    x_adv = torch.from_numpy(np.clip(out, 0.0, 1.0).astype(np.float32)).view_as(x.cpu())
    return AttackResult(x_adv, secs, p)
