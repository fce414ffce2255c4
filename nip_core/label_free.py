"""Label-free NIP: detect with benign statistics, then NIP toward a chosen class.

Chen et al., "Fight Perturbations with Perturbations: Defending Adversarial Attacks via Neuron
Influence" (arXiv 2112.13060), compute neuron influence on benign examples. They then add an
inverse perturbation that strengthens high-influence (front) neurons and weakens low-influence
(tail) ones. Per class this works: oracle NIP restores almost every adversarial. The hard part
is knowing the class. The attacked logits are the worst witness, and so are the fc layers the
attack rewires. So ``nip-neighbours`` (registered also as ``nip``) reads the class from early
layers and benign statistics:

1. **Detect.** Three scores are each calibrated to a ``false_alarm`` rate on held-out benign
   digits (the ``calib`` split, never used for tuning or reporting): the share of ``conv1``
   neurons outside the range they take on benign references (an L∞ perturbation lights up
   background neurons that are constant on every benign digit), the share of neighbour votes
   against the model's prediction, and a low softmax margin. The last two count only when the
   abnormal share is also above its benign 90th percentile (``gate``). If nothing fires, the
   input is judged benign and returned **unchanged**.
2. **Choose the class** (``nip_targets``). The vote: the ``neighbours`` nearest of 4,000 benign
   training digits by cosine of the ``conv1`` maps (2×2-pooled) of the input **binarised** at
   ``vote_binarize``, each weighted by ``exp(vote_weight · (cos − nearest cos))``. An L∞ attack of
   size ε flips only pixels within ε of the threshold, so on MNIST it can hardly move this vote.
   The **pocket rule** for small perturbations (few abnormal neurons): if small random-sign
   noise moves the model's average prediction off its prediction, the input sits in a thin
   adversarial pocket, and the class under noise is taken instead.
3. **Defend.** A flagged input gets NIP (``nip_core.nip.inverse_perturbation``) with the
   influence profile of the chosen class: front up, tail down, within budget ε.

Known limitations (measured in ``docs/nip-research.md``):

* The defended accuracy is, in effect, the accuracy of the detector plus the class choice. With
  ε = 0.3, NIP reaches whatever class it is pointed at, so NIP here is the *mechanism* that moves
  the input; the vote decides where.
* Adversarials that no detector flags pass untouched. To keep benign accuracy, ``false_alarm``
  must stay small.
* Choosing the candidate by how the NIP-defended input "fits" its class does not work: neither
  the distance to benign means, nor J, nor the margin over all ten candidates. With ε = 0.3, NIP
  makes every candidate fit.
* The binarised vote's robustness (``nip-aware``: .78 on the report split, against .13 for a
  vote on the raw input) is an MNIST property: near-binary pixels and ε = 0.3. It does not hold
  for natural images or larger budgets.
* It needs a labelled benign set in the model's label space (``nip_core.calibration``: built in
  for MNIST and Fashion-MNIST; ``calibrate --data`` for other models). Without one it passes
  inputs through unchanged, and says so, rather than guess (never harm).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import torch

from nip_core.calibration import Calibration, calibration_for, how_to_calibrate
from nip_core.defense_registry import DEFENSES, NIP_IMAGENET, NIP_PARAMS, nip_profile, register
from nip_core.errors import InputError
from nip_core.fingerprint import code_fingerprint
from nip_core.hooks import capture_hook, hooked_all
from nip_core.influence import InfluenceProfile
from nip_core.models.base import LoadedModel
from nip_core.nip import inverse_perturbation, logit_perturbation, selection_scores
from nip_core.params import Param
from nip_core.runtime import cache_dir

# ---------------------------------------------------------------------------------------------
# Several layers in one forward pass


def layer_outputs(model: LoadedModel, x: torch.Tensor, layers: list[str], *, grad: bool = False
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Raw outputs of ``layers`` and the logits, from one forward pass (``x`` on the model's device).

    Runs in the caller's lease of the model's replica (or takes one): the hooks are on no other
    thread's network.
    """
    boxes: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with model.lease(), hooked_all((model.layer(name), capture_hook(boxes[name], stop=False)) for name in layers):
        with torch.set_grad_enabled(grad):
            logits = model.net(x)
    return {name: box[-1] for name, box in boxes.items()}, logits



def binarise(x: torch.Tensor, threshold: float, surrogate: float = 0.0) -> torch.Tensor:
    """Pixels above ``threshold`` → 1, others → 0.

    An L∞ perturbation of size ε changes no pixel farther than ε from the threshold. MNIST
    pixels sit near 0 or 1, so at 0.4 and ε = 0.3 only mid-grey stroke edges can flip. With
    ``surrogate`` > 0 the forward pass is the same, and the backward pass is the gradient of
    ``sigmoid((x − threshold) / surrogate)`` (for the defense-aware attack).
    """
    hard = (x > threshold).to(x.dtype)
    if surrogate <= 0:
        return hard
    soft = torch.sigmoid((x - threshold) / surrogate)
    return hard + (soft - soft.detach())


# ---------------------------------------------------------------------------------------------
# Benign neighbours at layers the attack disturbs less

# How each selection layer's map is embedded before the cosine: conv1 maps are 2×2 average-pooled
# and left raw (standardising amplifies the background, where benign variance is ~0, and so the
# attack's noise); conv2 maps are standardised by the benign per-unit spread.
EMBEDDING = {"conv1": ("pool", False), "conv2": ("full", True)}


class BenignBank:
    """Unit-norm embedded activation maps of benign reference images at one layer.

    Attributes:
        feats: ``[M, D]`` unit-norm embedded maps; labels: ``[M]`` their classes.
        mean, std: ``[D]`` benign statistics used to standardise (zeros/ones when raw).
        pool: 2×2 average-pool the map before embedding.
    """

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 pool: bool = False) -> None:
        self.feats, self.labels, self.mean, self.std, self.pool = feats, labels, mean, std, pool

    def flat(self, out: torch.Tensor) -> torch.Tensor:
        if self.pool and out.dim() > 2:
            out = torch.nn.functional.avg_pool2d(out, 2)
        return out.flatten(1).float()

    def embed(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize((flat - self.mean) / self.std, dim=1)

    def neighbours(self, flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cosines to the ``k`` nearest benign maps ``[N, k]``, best first; their labels ``[N, k]``)."""
        top = (self.embed(flat) @ self.feats.T).topk(min(k, len(self.labels)), dim=1)
        return top.values, self.labels[top.indices]

    def class_gap(self, flat: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """``[N]`` how much closer the nearest benign map is than the nearest of class ``cls``
        (``cos_nearest − cos_nearest_of_cls`` ≥ 0; 0 where the nearest is of that class)."""
        sims = self.embed(flat) @ self.feats.T
        own = sims.masked_fill(self.labels[None, :] != cls[:, None], float("-inf")).amax(1)
        return (sims.amax(1) - own).clamp_min(0).nan_to_num(posinf=2.0)

    def votes(self, flat: torch.Tensor, k: int, num_classes: int, weight: float = 0.0) -> torch.Tensor:
        """``[N, num_classes]`` weighted share of the ``k`` nearest benign maps in each class.

        Neighbour ``i`` weighs ``exp(weight · (cos_i − cos_1))``: 0 gives the plain majority; larger
        values trust the closest neighbours more (1 for the nearest, always).
        """
        sim, lab = self.neighbours(flat, k)
        w = torch.exp(weight * (sim - sim[:, :1]))
        v = (torch.nn.functional.one_hot(lab, num_classes).float() * w.unsqueeze(2)).sum(1)
        return v / v.sum(1, keepdim=True)


def _outputs(model: LoadedModel, x: torch.Tensor, layers: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Layer outputs and logits on CPU, in batches, no grad."""
    raws: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    logits = []
    with model.lease(), torch.no_grad():
        for i in range(0, len(x), 256):
            outs, lg = layer_outputs(model, x[i:i + 256].to(model.device), layers)
            for name in layers:
                raws[name].append(outs[name].float().cpu())
            logits.append(lg.float().cpu())
    return {n: torch.cat(v) for n, v in raws.items()}, torch.cat(logits)


_BANKS: dict[str, "NeighbourSelector"] = {}
_BANKS_LOCK = threading.Lock()


def _bank(name: str, out: torch.Tensor, labels: torch.Tensor) -> BenignBank:
    """A benign bank of one layer's maps, embedded as ``EMBEDDING`` says."""
    pool, std = EMBEDDING.get(name, ("full", True))
    bank = BenignBank(torch.zeros(0), labels, torch.zeros(1), torch.ones(1), pool=pool == "pool")
    flat = bank.flat(out)
    if std:
        bank.mean, bank.std = flat.mean(0), flat.std(0) + 1e-3
    bank.feats = bank.embed(flat)
    return bank


class NeighbourSelector:
    """Class vote and benign/adversarial flag from benign statistics at early layers.

    The vote: the ``neighbours`` nearest benign reference maps at each layer (cosine), weighted
    by ``exp(vote_weight · (cos − cos_nearest))``. With ``binarize`` > 0 the maps are those of
    the input and the references **binarised** at that pixel value (``binarise``): an L∞ attack
    of size ε moves only pixels within ε of the threshold across it, so it can hardly move this
    vote. The range statistics always use the raw maps. The scores (higher = less benign-like):

    * ``abnormal:<layer>`` – share of the layer's neurons outside the range ``[min, max]`` they
      take on the benign references. Benign backgrounds leave most early neurons at a fixed
      value; an L∞ perturbation pushes many of them out of range;
    * ``no_support`` – share of the (weighted) votes *against* the model's prediction; where it
      is saturated (no neighbour votes for the prediction) ``1 +`` how much closer the nearest
      benign map is than the nearest of the predicted class (a tie-break: see ``_scores``);
    * ``low_margin`` – minus the softmax gap between the top two classes.

    Each threshold is calibrated on the ``calib`` split of held-out benign digits
    (``nip_core.data``), never on the tune or report split: a benign digit exceeds it with
    probability ≈ ``false_alarm``.
    """

    def __init__(self, model: LoadedModel, layers: list[str], neighbours: int, per_class: int,
                 vote_weight: float = 0.0, binarize: float = 0.0, calibration: Calibration | None = None) -> None:
        self.model, self.layers, self.k, self.vote_weight = model, layers, neighbours, vote_weight
        self.binarize = binarize
        cal = calibration or calibration_for(model)
        if cal is None:
            raise InputError(how_to_calibrate(model))
        self.calibration = cal
        x, y = cal.reference(per_class)
        outs, _ = _outputs(model, x, layers)
        self.ranges = {name: (outs[name].flatten(1).amin(0), outs[name].flatten(1).amax(0)) for name in layers}
        vote_outs = self._vote_outputs(x, outs)
        self.banks = {name: _bank(name, vote_outs[name], y) for name in layers}
        xc = cal.calib_x
        self.calibration_size = len(xc)
        self.reference_scores = self.scores(xc)[0]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Everything built from the benign sets, as named tensors and string metadata (what the
        disk cache holds; :meth:`from_state` rebuilds the selector from it)."""
        t: dict[str, torch.Tensor] = {"calibration_size": torch.tensor([self.calibration_size])}
        for name in self.layers:
            bank = self.banks[name]
            t |= {f"range_lo/{name}": self.ranges[name][0], f"range_hi/{name}": self.ranges[name][1],
                  f"feats/{name}": bank.feats, f"labels/{name}": bank.labels, f"mean/{name}": bank.mean,
                  f"std/{name}": bank.std, f"pool/{name}": torch.tensor([int(bank.pool)])}
        t |= {f"score/{k}": v for k, v in self.reference_scores.items()}
        return {k: v.contiguous() for k, v in t.items()}, {"scores": json.dumps(list(self.reference_scores))}

    @classmethod
    def from_state(cls, model: LoadedModel, layers: list[str], neighbours: int, vote_weight: float, binarize: float,
                   calibration: Calibration, tensors: dict[str, torch.Tensor], meta: dict[str, str]
                   ) -> "NeighbourSelector":
        """The selector :meth:`state` describes, without a pass over the benign sets."""
        self = cls.__new__(cls)
        self.model, self.layers, self.k, self.vote_weight = model, list(layers), neighbours, vote_weight
        self.binarize, self.calibration = binarize, calibration
        self.ranges = {n: (tensors[f"range_lo/{n}"], tensors[f"range_hi/{n}"]) for n in layers}
        self.banks = {n: BenignBank(tensors[f"feats/{n}"], tensors[f"labels/{n}"], tensors[f"mean/{n}"],
                                    tensors[f"std/{n}"], pool=bool(tensors[f"pool/{n}"].item())) for n in layers}
        self.calibration_size = int(tensors["calibration_size"].item())
        self.reference_scores = {k: tensors[f"score/{k}"] for k in json.loads(meta["scores"])}
        return self

    def _vote_outputs(self, x: torch.Tensor, outs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The maps the vote compares: ``outs`` (raw), or those of the binarised input."""
        return outs if self.binarize <= 0 else _outputs(self.model, binarise(x, self.binarize), self.layers)[0]

    def _scores(self, outs: dict[str, torch.Tensor], logits: torch.Tensor, vote_outs: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        scores, votes, gap = {}, 0, 0
        pred = logits.argmax(1)
        for name, bank in self.banks.items():
            flat = bank.flat(vote_outs[name])
            votes = votes + bank.votes(flat, self.k, self.model.num_classes, self.vote_weight)
            gap = gap + bank.class_gap(flat, pred)
            lo, hi = self.ranges[name]
            raw = outs[name].flatten(1)
            scores[f"abnormal:{name}"] = ((raw > hi + 1e-6) | (raw < lo - 1e-6)).float().mean(1)
        votes = votes / len(self.banks)
        against = 1 - votes.gather(1, pred.view(-1, 1)).squeeze(1)
        # Saturation: where no neighbour votes for the prediction the share is exactly 1, a value
        # more than `false_alarm` of benign images can take (17 of Fashion-MNIST's 1,000 calib
        # images); its quantile threshold was then 1 and the strict `>` never fired. Such inputs
        # are ordered further by how far the predicted class's nearest benign map is behind the
        # nearest one (1 + gap), so the threshold falls between benign ties and the detector fires
        # at its false-alarm rate. Below 1 the score is the share, unchanged.
        scores["no_support"] = torch.where(against >= 1, 1 + gap / len(self.banks), against)
        top2 = logits.softmax(1).topk(2, dim=1).values
        scores["low_margin"] = top2[:, 1] - top2[:, 0]
        return scores, votes, pred

    def thresholds(self, false_alarm: float) -> dict[str, torch.Tensor]:
        return {k: torch.quantile(v, 1 - false_alarm) for k, v in self.reference_scores.items()}

    def scores(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(scores by name ``[N]``, votes ``[N, classes]``, model prediction ``[N]``) for inputs ``x``."""
        outs, logits = _outputs(self.model, x, self.layers)
        return self._scores(outs, logits, self._vote_outputs(x, outs))

    def __call__(self, x: torch.Tensor, false_alarm: float, gate: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(flagged ``[N]`` bool, votes ``[N, classes]``, model prediction ``[N]``) for inputs ``x``."""
        scores, votes, pred = self.scores(x)
        return self.flag(scores, false_alarm, gate), votes, pred

    def flag(self, scores: dict[str, torch.Tensor], false_alarm: float, gate: float = 1.0) -> torch.Tensor:
        """``[N]`` bool: which inputs the detectors flag.

        An ``abnormal:*`` score above its threshold flags the input. ``no_support`` and
        ``low_margin`` flag it only if some abnormal score also exceeds its ``(1 − gate)`` benign
        quantile (``gate`` ≥ 1: always): a vote that disagrees with the model, or a close call, is
        evidence of an attack only when the early neurons are also off their benign range.
        """
        n = len(next(iter(scores.values())))
        flagged = torch.zeros(n, dtype=torch.bool)
        if false_alarm <= 0:
            return flagged
        abnormal = [k for k in scores if k.startswith("abnormal:")]
        gated = torch.ones(n, dtype=torch.bool)
        if gate < 1:
            gated = torch.zeros(n, dtype=torch.bool)
            for k in abnormal:
                gated |= scores[k] > torch.quantile(self.reference_scores[k], 1 - gate)
        for k, t in self.thresholds(false_alarm).items():
            flagged |= (scores[k] > t) & (True if k in abnormal else gated)
        return flagged


def neighbour_selector(model: LoadedModel, layers: list[str], neighbours: int = 10, per_class: int = 400,
                       vote_weight: float = 30.0, binarize: float = 0.0) -> NeighbourSelector:
    """The selector for these settings and the model's current calibration, made once per process:
    read from the disk cache (:func:`bank_cache_path`), else built (one pass over the benign sets,
    about 1 s on LeNet) and written there."""
    cal = calibration_for(model)
    if cal is None:
        raise InputError(how_to_calibrate(model))
    key = json.dumps([model.name, model.weights_sha256, cal.key, layers, neighbours, per_class, vote_weight, binarize])
    # The model's lock first (a profile fill holds it and may build a selector), then the banks': one order.
    with model.lock, _BANKS_LOCK:
        if key not in _BANKS:
            path = bank_cache_path(model, key)
            sel = _read_selector(path, model, layers, neighbours, vote_weight, binarize, cal)
            if sel is None:
                sel = NeighbourSelector(model, layers, neighbours, per_class, vote_weight, binarize, cal)
                _write_selector(path, sel)
            _BANKS[key] = sel
        return _BANKS[key]


def bank_cache_path(model: LoadedModel, key: str) -> Path:
    """Where the selector of ``key`` (model, weights, calibration data, the bank's parameters) is
    cached on disk: ``<cache>/banks/<model>-<hash>.safetensors``. The hash also covers the engine
    code as it runs and torch's version, so a change to either builds it again."""
    full = json.dumps([key, code_fingerprint(), torch.__version__])
    return cache_dir() / "banks" / f"{model.name}-{hashlib.sha256(full.encode()).hexdigest()[:24]}.safetensors"


def _read_selector(path: Path, model: LoadedModel, layers: list[str], neighbours: int, vote_weight: float,
                   binarize: float, cal: Calibration) -> NeighbourSelector | None:
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
        return NeighbourSelector.from_state(model, layers, neighbours, vote_weight, binarize, cal, tensors, meta)
    except Exception:   # unreadable or from an older layout: build it again
        return None


def _write_selector(path: Path, sel: NeighbourSelector) -> None:
    from safetensors.torch import save_file

    tensors, meta = sel.state()
    tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError:   # a read-only cache only costs the rebuild next time
        pass
    finally:
        tmp.unlink(missing_ok=True)


def selector_for(model: LoadedModel, p: dict) -> NeighbourSelector:
    """The selector ``nip`` with parameters ``p`` uses on ``model``."""
    return neighbour_selector(model, _select_layers(model, p), p["neighbours"], p["per_class"], p["vote_weight"],
                              p.get("vote_binarize", 0.0))


def smoothed_class(model: LoadedModel, x: torch.Tensor, amp: float, draws: int, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ``[N]``, its mean softmax ``[N]``): the model's average prediction over ``draws``
    random-sign perturbations of size ``amp`` (clipped to [0, 1]).

    The signs come from ``seed`` and are the same for every input, so an input's result does not
    depend on the batch it is in.
    """
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (draws, *x.shape[1:]), generator=g).float() * 2 - 1
    mean = sum(model.logits((x + amp * s).clamp(0, 1)).float().cpu().softmax(1) for s in signs) / draws
    return mean.argmax(1), mean.max(1).values


VOTE_SOURCES = ("vote", "pocket rule")


def nip_targets(model: LoadedModel, sel: NeighbourSelector, x: torch.Tensor, p: dict, seed: int = 0) -> dict:
    """Who ``nip`` defends and toward which class, and why.

    Returns ``flagged`` ``[N]`` bool; ``target`` ``[N]`` (the class NIP is pointed at, -1 where
    not flagged); ``order`` ``[N, classes]`` (classes best first: the target, then the vote's
    order); ``source`` ``[N]`` (index into ``VOTE_SOURCES``); ``votes``, ``pred``, the detector
    ``scores``; for the pocket rule ``smoothed`` / ``smoothed_share`` and ``pocket`` ``[N]`` bool.

    The class is the neighbour vote's (binarised input, see ``NeighbourSelector``), except under
    the **pocket rule** (``pocket_amp`` > 0) for small perturbations: the abnormal-neuron detector
    fires but the abnormal share is at most ``small_level``. A minimal attack (DeepFool, C&W)
    stops just past the decision boundary, in a thin pocket of the wrong class. Small random-sign
    noise takes the model back out, and the class it then predicts on average is the original
    one. If that smoothed class differs from the model's prediction, NIP is pointed at it.
    """
    scores, votes, pred = sel.scores(x)
    flagged = sel.flag(scores, p["false_alarm"], p["gate"])
    order = torch.sort(votes, dim=1, descending=True, stable=True).indices
    n = len(x)
    source = torch.zeros(n, dtype=torch.long)
    out = {"flagged": flagged, "votes": votes, "pred": pred, "scores": scores,
           "smoothed": torch.full((n,), -1, dtype=torch.long), "smoothed_share": torch.full((n,), float("nan")),
           "pocket": torch.zeros(n, dtype=torch.bool)}
    abnormal = [k for k in scores if k.startswith("abnormal:")]
    if p.get("pocket_amp", 0) > 0 and p["false_alarm"] > 0 and abnormal:
        th = sel.thresholds(p["false_alarm"])
        small = torch.zeros(n, dtype=torch.bool)
        large = torch.zeros(n, dtype=torch.bool)
        for k in abnormal:
            small |= scores[k] > th[k]
            large |= scores[k] > p["small_level"]
        idx = torch.nonzero(small & ~large & flagged).flatten()
        if len(idx):
            cls, share = smoothed_class(model, x[idx], p["pocket_amp"], p["pocket_draws"], seed)
            out["smoothed"][idx], out["smoothed_share"][idx] = cls, share
            hit = idx[cls != pred[idx]]
            out["pocket"][hit] = True
            source[hit] = 1
            for i, c in zip(hit.tolist(), out["smoothed"][hit].tolist()):
                order[i] = torch.cat([torch.tensor([c]), order[i][order[i] != c]])
    out["order"], out["source"] = order, source
    out["target"] = torch.where(flagged, order[:, 0], torch.full_like(pred, -1))
    return out


def nip_neighbours(model: LoadedModel, x: torch.Tensor, profile: InfluenceProfile, *, select_layers: list[str],
                   neighbours: int, false_alarm: float, k: float, budget: float, steps: int, step_size: float,
                   candidates: int = 1, rule: str = "margin", per_class: int = 400, vote_weight: float = 30.0,
                   gate: float = 0.1, pocket_amp: float = 0.0, pocket_draws: int = 32, small_level: float = 0.025,
                   vote_binarize: float = 0.0, seed: int = 0, mechanism: str = "nip"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Detect, then NIP toward the benign-neighbour class; returns (defended inputs, used class or -1).

    ``mechanism="logits"`` is the ablation ``counter-attack``: the same detection and class choice,
    then a logit-targeted PGD toward the class (:func:`nip_core.nip.logit_perturbation`) with
    the same budget, steps and step size: no neurons.

    Inputs no detector flags are returned unchanged (used class -1). Flagged inputs get NIP with
    the profile of the class ``nip_targets`` chooses (the vote, or the pocket rule's class).
    With ``candidates`` > 1, NIP runs for that class and the next ones in the vote's order, and
    ``rule`` (on the defended logits, as in ``nip_core.nip``) picks one.
    """
    sel = neighbour_selector(model, select_layers, neighbours, per_class, vote_weight, vote_binarize)
    dec = nip_targets(model, sel, x, {"false_alarm": false_alarm, "gate": gate, "pocket_amp": pocket_amp,
                                      "pocket_draws": pocket_draws, "small_level": small_level,
                                      "vote_binarize": vote_binarize}, seed)
    todo = torch.nonzero(dec["flagged"]).flatten()
    out = x.clone()
    used = torch.full((len(x),), -1, dtype=torch.long)
    if len(todo):
        kk = min(candidates, model.num_classes)
        # The chosen class first, then the vote's order (stable sorts: ties go to the lower
        # class index, so the defense is deterministic).
        cand = dec["order"][todo][:, :kk]
        flat = cand.reshape(-1)
        xs = x[todo].repeat_interleave(kk, 0)
        if mechanism == "logits":
            xd = logit_perturbation(model, xs, flat, budget, steps, step_size)
        else:
            masks = {int(c): profile.masks(int(c), k) for c in flat.unique()}
            fm = torch.stack([masks[int(c)][0] for c in flat])
            tm = torch.stack([masks[int(c)][1] for c in flat])
            xd = inverse_perturbation(model, xs, fm, tm, profile.layer, budget, steps, step_size)
        best = selection_scores(model.logits(xd), flat, rule).view(-1, kk).argmax(1) if kk > 1 \
            else torch.zeros(len(todo), dtype=torch.long)
        pick = torch.arange(len(todo)) * kk + best
        out[todo] = xd[pick]
        used[todo] = flat[pick]
    return out, used


def explain_decision(model: LoadedModel, x: torch.Tensor, p: dict, seed: int = 0) -> list[dict] | None:
    """Why ``nip`` defends each input as it does: detector scores against their thresholds, the
    gate, the neighbour vote, the pocket rule, which of the two chose, and the class NIP is pointed
    at (None where ``nip`` has no calibration and passes inputs through). Plain numbers, for the app and the CLI's summary."""
    if not uses_neighbours(model):
        return None
    sel = selector_for(model, p)
    dec = nip_targets(model, sel, x, p, seed)
    scores, votes = dec["scores"], dec["votes"]
    th = sel.thresholds(p["false_alarm"]) if p["false_alarm"] > 0 else {}
    gate = {k: float(torch.quantile(v, 1 - p["gate"])) for k, v in sel.reference_scores.items()
            if k.startswith("abnormal:")} if p["gate"] < 1 else {}
    out = []
    for i in range(len(x)):
        gate_open = not gate or any(float(scores[k][i]) > t for k, t in gate.items())
        dets = {}
        for k in scores:
            over = bool(k in th and float(scores[k][i]) > float(th[k]))
            counts = k.startswith("abnormal:") or gate_open
            dets[k] = {"score": float(scores[k][i]), "threshold": float(th[k]) if k in th else None,
                       "above": over, "fired": over and counts}
        order = torch.sort(votes[i], descending=True, stable=True)
        smoothed = int(dec["smoothed"][i])
        out.append({
            "flagged": bool(dec["flagged"][i]), "prediction": int(dec["pred"][i]), "gate_open": gate_open,
            "gate_thresholds": gate, "detectors": dets,
            "vote": [{"class": int(c), "share": float(v)} for v, c in zip(order.values[:3], order.indices[:3])],
            "pocket": {"checked": smoothed >= 0, "applied": bool(dec["pocket"][i]),
                       "smoothed_class": smoothed if smoothed >= 0 else None,
                       "smoothed_share": float(dec["smoothed_share"][i]) if smoothed >= 0 else None,
                       "amp": p.get("pocket_amp", 0.0)},
            "small_level": p.get("small_level"), "vote_binarize": sel.binarize,
            "chosen_by": VOTE_SOURCES[int(dec["source"][i])] if bool(dec["flagged"][i]) else None,
            "nip_target": int(dec["target"][i]) if bool(dec["flagged"][i]) else None,
            "false_alarm": p["false_alarm"], "calibration_digits": sel.calibration_size,
        })
    return out


# ---------------------------------------------------------------------------------------------
# An attacker who knows the defense


def _class_similarity(bank: BenignBank, emb: torch.Tensor, cls: torch.Tensor, k: int) -> torch.Tensor:
    """``[N]`` mean of the ``k`` largest cosines between each input and class ``cls``'s benign maps."""
    sims = emb @ bank.feats.T
    mask = bank.labels.to(emb.device)[None, :] == cls[:, None]
    return sims.masked_fill(~mask, -2.0).topk(min(k, int(mask.sum(1).min())), dim=1).values.mean(1)


def aware_attack(model: LoadedModel, x: torch.Tensor, y: torch.Tensor, p: dict, ap: dict, seed: int = 0
                 ) -> torch.Tensor | None:
    """PGD that knows ``nip`` (registered as the attack ``nip-aware``): fool the model *and* the
    neighbour vote, toward one wrong class.

    For each input the target ``t`` is the wrong class whose benign ``conv1`` maps are closest;
    with ``targets`` > 1, inputs that ``nip`` still defends correctly are attacked again toward
    the next-closest classes, and the first adversarial that beats ``nip`` is kept. Gradient ascent
    (``max_iter`` steps of ``eps_step``: signed within an L∞ ball of ``eps``, or with ``norm`` "2"
    normalised within an L2 ball) on

        − CE(model(x'), t) + weight · (sim_t(x') − sim_y(x')) − stealth · excess(x')

    where ``sim_c`` is the mean of the ``neighbours`` largest cosines to class ``c``'s benign maps
    at each selection layer, on the maps the vote uses. Where ``nip`` binarises the input
    (``vote_binarize`` > 0) the threshold gets the gradient of a sigmoid of width ``surrogate``
    (BPDA). ``excess`` is how far the raw ``conv1`` maps leave their benign range (summed): with
    ``stealth`` > 0 the attacker also tries to hide from the abnormal-neuron detector. When model
    and vote agree on ``t``, the support and margin detectors stay quiet, and if the
    abnormal-neuron detector fires, NIP is pointed at ``t``. Returns None where ``nip`` does not
    use the vote (no calibration: it passes inputs through there).
    """
    if not uses_neighbours(model):
        return None
    layers = _select_layers(model, p)
    sel = selector_for(model, p)
    dev = model.device
    x0, y0 = x.to(dev), torch.as_tensor(y).long().to(dev)

    # Device copies: the shared selector's statistics stay on the CPU, untouched.
    banks = {n: BenignBank(b.feats.to(dev), b.labels.to(dev), b.mean.to(dev), b.std.to(dev), b.pool)
             for n, b in sel.banks.items()}
    ranges = {n: (lo.to(dev), hi.to(dev)) for n, (lo, hi) in sel.ranges.items()}

    def embeddings(xx: torch.Tensor, grad: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(the vote's embeddings by layer, logits, out-of-range excess ``[N]`` of the raw maps)."""
        outs, logits = layer_outputs(model, xx, layers, grad=grad)
        excess = sum(((outs[n].flatten(1) - ranges[n][1]).relu() + (ranges[n][0] - outs[n].flatten(1)).relu()).sum(1)
                     for n in layers)
        if sel.binarize > 0:
            outs, _ = layer_outputs(model, binarise(xx, sel.binarize, ap["surrogate"] if grad else 0.0), layers,
                                    grad=grad)
        return {n: b.embed(b.flat(outs[n])) for n, b in banks.items()}, logits, excess

    def similarity(embs: dict[str, torch.Tensor], cls: torch.Tensor) -> torch.Tensor:
        return sum(_class_similarity(banks[n], e, cls, sel.k) for n, e in embs.items())

    def pgd(xc: torch.Tensor, yc: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros_like(xc)
        for _ in range(ap["max_iter"]):
            xa = (xc + delta).requires_grad_(True)
            with torch.enable_grad():
                embs, logits, excess = embeddings(xa, True)
                vote = similarity(embs, t) - similarity(embs, yc)
                loss = (-torch.nn.functional.cross_entropy(logits, t, reduction="sum") + ap["weight"] * vote.sum()
                        - ap["stealth"] * excess.sum())
                (g,) = torch.autograd.grad(loss, xa)
            if ap.get("norm", "inf") == "2":
                # L2: a normalised gradient step, then back into the ball.
                g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))
                delta = delta + ap["eps_step"] * g
                scale = (ap["eps"] / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                delta = delta * scale.view(-1, *[1] * (g.dim() - 1))
            else:
                delta = (delta + ap["eps_step"] * g.sign()).clamp(-ap["eps"], ap["eps"])
            delta = (xc + delta).clamp(0, 1) - xc
        return (xc + delta).detach()

    def defended_pred(xx: torch.Tensor) -> torch.Tensor:
        """The model's prediction after ``nip`` (with ``p``) defends ``xx``."""
        with torch.no_grad():
            return model.net(_nip_neighbours_transform(model, xx.cpu(), p, None, seed).to(dev)).argmax(1)

    outs = []
    with model.lease():
        for i in range(0, len(x0), 256):
            xc, yc = x0[i:i + 256], y0[i:i + 256]
            with torch.no_grad():
                embs, _, _ = embeddings(xc, False)
                s = torch.stack([similarity(embs, torch.full_like(yc, c)) for c in range(model.num_classes)], 1)
                s = s.scatter(1, yc.view(-1, 1), float("-inf"))
                ranked = torch.sort(s, dim=1, descending=True, stable=True).indices
            best = pgd(xc, yc, ranked[:, 0])
            # More targets: retry the inputs the defense still gets right, toward the next-closest
            # wrong class, and keep the first adversarial that beats it.
            for r in range(1, ap["targets"]):
                idx = torch.nonzero(defended_pred(best) == yc).flatten()
                if not len(idx):
                    break
                retry = pgd(xc[idx], yc[idx], ranked[idx, r])
                won = defended_pred(retry) != yc[idx]
                best[idx[won]] = retry[won]
            outs.append(best.cpu())
    return torch.cat(outs)


# ---------------------------------------------------------------------------------------------
# Registration


def _select_layers(model: LoadedModel, p: dict) -> list[str]:
    if p["select_layers"] != "auto":
        return p["select_layers"].split("+")
    first = [name for name in ("conv1",) if name in model.layers]
    return first or [model.spec.layers[0]]


def uses_neighbours(model: LoadedModel) -> bool:
    """Whether ``nip`` can use the benign-neighbour vote on this model: it needs a calibration, a
    labelled benign set in the model's label space (``nip_core.calibration``: MNIST and
    Fashion-MNIST have one built in; other models get one with ``calibrate --data``). Without it
    ``nip`` passes inputs through unchanged (never harm): the top-K fallback it used before turned
    half of the correctly classified ImageNet photos wrong."""
    return calibration_for(model) is not None


def _nip_neighbours_transform(model, x, p, y, seed, mechanism: str = "nip"):
    if not uses_neighbours(model):
        return x.clone()
    prof = nip_profile(model, p) if mechanism == "nip" else None
    xd, _ = nip_neighbours(model, x, prof, select_layers=_select_layers(model, p), neighbours=p["neighbours"],
                           false_alarm=p["false_alarm"], k=p["k"], budget=p["budget"], steps=p["steps"],
                           step_size=p["step_size"], candidates=p["candidates"], rule=p["rule"],
                           per_class=p["per_class"], vote_weight=p["vote_weight"], gate=p["gate"],
                           pocket_amp=p["pocket_amp"], pocket_draws=p["pocket_draws"], small_level=p["small_level"],
                           vote_binarize=p["vote_binarize"], seed=seed, mechanism=mechanism)
    return xd


def register_label_free() -> None:
    """Register ``nip`` and its alias ``nip-neighbours`` (once; :mod:`nip_core.defenses` calls this)."""
    if "nip" in DEFENSES:
        return
    base = tuple(q for q in NIP_PARAMS if q.name != "candidates")
    params = base + (
        Param("candidates", "int", 1, 1, 20, help="top neighbour-vote classes NIP is run for (rule picks one)"),
        Param("select_layers", "choice", "auto", choices=("auto", "conv1", "conv2", "conv1+conv2"),
              help="layers whose benign neighbours vote and detect (auto: conv1 on LeNet)"),
        Param("neighbours", "int", 10, 1, 500, help="benign neighbours per layer"),
        Param("vote_weight", "float", 30.0, 0.0, 200.0, step=5.0,
              help="neighbour weight exp(w·(cos − nearest cos)); 0 = plain majority vote"),
        Param("false_alarm", "float", 0.005, 0.0, 0.5, step=0.005,
              help="per-detector share of held-out benign images (calib split) flagged; 0: never defend"),
        Param("gate", "float", 0.1, 0.0, 1.0, step=0.05,
              help="support/margin detectors count only above this benign share of abnormal neurons (1: always)"),
        Param("per_class", "int", 400, 1, 400, help="benign reference images per class"),
        Param("pocket_amp", "float", 0.1, 0.0, 0.5, step=0.01, unit="[0,1] pixel",
              help="pocket rule: random-sign noise size; a small perturbation whose class flips under it is "
                   "sent to the smoothed class (0: off)"),
        Param("pocket_draws", "int", 32, 1, 256, help="pocket rule: noise draws averaged"),
        Param("small_level", "float", 0.025, 0.0, 1.0, step=0.005,
              help="pocket rule: applies up to this share of abnormal conv1 neurons (small perturbations)"),
        Param("vote_binarize", "float", 0.4, 0.0, 0.95, step=0.05,
              help="the vote compares conv1 maps of the input binarised at this pixel value (0: raw input)"),
    )
    register("counter-attack", "Ablation of nip: the same detection and class choice, then a logit-targeted PGD "
             "toward the class with NIP's budget, steps and step size (no neurons)",
             params, lambda m, x, p, y, s: _nip_neighbours_transform(m, x, p, y, s, mechanism="logits"),
             dataset_defaults={"imagenet": NIP_IMAGENET | {"candidates": 3}}, family="ablation",
             calibration_split="calib")
    for name in ("nip", "nip-neighbours"):
        register(name, "NIP, label-free: detect with benign neighbours, NIP toward their class (issue 6)",
                 params, _nip_neighbours_transform, dataset_defaults={"imagenet": NIP_IMAGENET | {"candidates": 3}},
                 family="nip", aware_attack="nip-aware", explain_decision=explain_decision,
                 calibration_split="calib")
