"""Evaluation: a model × attacks × defenses on held-out images, with a seed.

For each attack the adversarials are computed once; each defense is then applied to the
benign and the adversarial images. Numbers per (attack, defense):

* ``adv_accuracy``            – accuracy on adversarials with no defense;
* ``defended_adv_accuracy``   – accuracy after the defense on adversarials;
* ``benign_accuracy``         – accuracy after the defense on the benign images;
* ``defense_success_rate``    – share of *successful* adversarials the defense restores;
* perturbation norms and wall time per image.

The **adaptive** column attacks each defense directly: PGD through ``model ∘ defense`` with
a straight-through (BPDA) gradient. Label-using analysis modes (``nip-oracle``) have no
adaptive number, since they are not deployable. A defense that registers a defense-aware attack
(``Defense.aware_attack``, the name of a registered attack; the label-free ``nip`` has
``nip-aware``) also gets an **aware** number: that attack, which also targets the defense's own
decision (for ``nip``: the neighbour vote), run with its default settings against the
defense's evaluated parameters. BPDA alone can badly
over-state such a defense.

With an ε grid (``eps_grid``, ``nip_core.analyses.elasticity``) every L∞ gradient attack runs at each strength
of the grid, and the result gains accuracy against ε per attack and defense (``elasticity``).

The grid runs as **shards** (``nip_core.evaluation.shards``): the benign pass, each attack and each adaptive
column on chunks of ``shard_size`` images. :func:`evaluate_shard` evaluates one; the serial path
calls it in a loop and the Ray backend (``nip_core.evaluation.distributed``, ``--ray``) from actors;
:func:`merge_shards` rebuilds every number from per-image bits and sums, in shard order, so both
give the same result. Seeds are per shard, from its content. See ``docs/cluster.md``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from nip_core.analyses.analysis import suppression_from_sums, suppression_sums
from nip_core.attacks import ATTACKS, run_attack
from nip_core.data import dataset_of, heldout_split
from nip_core.defenses import DEFENSES, DefendedNet, apply_defense
from nip_core.analyses.elasticity import Sweep, elasticity_block, expand_eps_grid, parse_eps_grid
from nip_core.errors import InputError
from nip_core.analyses.mediation import DEFAULT_K as MEDIATION_K
from nip_core.analyses.mediation import GROUPS as MEDIATION_GROUPS
from nip_core.analyses.mediation import MEDIATION_DEFENSES, mediation_from_parts, mediation_layers, mediation_parts
from nip_core.models import load_model
from nip_core.runtime import environment, get_device
from nip_core.params import unit_label
from nip_core.evaluation.shards import Shard, shard_seed
from nip_core.evaluation.slices import PER_IMAGE_FORMAT, encode_classes
from nip_core.stats import wilson_interval

# One ART batch (attacks run with batch_size=64): larger shards gain no vectorisation.
SHARD_SIZE = 64

Progress = Callable[[float, str], None]
UnitList = list[tuple[str, dict[str, Any]]]

# Fixed suites, so that results compare across runs. Labels carry the budget so one attack can
# appear at several sizes. Every suite carries the baselines, the random control, the oracle and
# deployable NIP modes, and the ablations of issue 13: counter-attack (nip without neurons), its
# oracle, and the authors' released protocol (nip-authors, an oracle).
_NIP_AND_ABLATIONS = [("random-sign", {}), ("nip-oracle", {}), ("counter-attack-oracle", {}), ("nip-authors", {}),
                      ("nip-global", {}), ("counter-attack", {}), ("nip", {})]
SUITES: dict[str, dict[str, Any]] = {
    "paper-mnist": {
        "model": "lenet-mnist",
        "attacks": [("fgsm", {"eps": 0.1}), ("fgsm", {"eps": 0.2}), ("fgsm", {"eps": 0.3}), ("pgd", {"eps": 0.3}),
                    ("cw-l2", {}), ("deepfool", {}), ("mifgsm", {"eps": 0.3})],
        # bit depth 1 is feature squeezing's own MNIST setting (Xu et al., NDSS 2018)
        "defenses": [("none", {}), ("jpeg", {}), ("bitdepth", {}), ("bitdepth", {"bits": 1}), ("median", {}),
                     ("gaussian", {})] + _NIP_AND_ABLATIONS,
        "blackbox_eps": 0.3,
    },
    "paper-fashion": {
        "model": "lenet-fashion",
        "attacks": [("fgsm", {"eps": 0.05}), ("fgsm", {"eps": 0.1}), ("fgsm", {"eps": 0.2}),
                    ("pgd", {"eps": 0.1, "eps_step": 0.01, "max_iter": 40}), ("cw-l2", {}), ("deepfool", {}),
                    ("mifgsm", {"eps": 0.1, "eps_step": 0.01})],
        # Feature squeezing (Xu et al., NDSS 2018) recommends 1 bit for MNIST and 5 bits for CIFAR-10
        # and ImageNet; Fashion-MNIST is not in the paper, so both settings are carried.
        "defenses": [("none", {}), ("jpeg", {}), ("bitdepth", {"bits": 1}), ("bitdepth", {"bits": 5}), ("median", {}),
                     ("gaussian", {}), ("tvm", {})] + _NIP_AND_ABLATIONS,
        "blackbox_eps": 0.1,
    },
    "paper-cifar10": {
        "model": "resnet8-cifar10",
        "attacks": [("fgsm", {"eps": 2 / 255}), ("fgsm", {"eps": 8 / 255}),
                    ("pgd", {"eps": 8 / 255, "eps_step": 2 / 255, "max_iter": 20}), ("cw-l2", {}), ("deepfool", {})],
        "defenses": [("none", {}), ("jpeg", {}), ("bitdepth", {}), ("median", {}), ("gaussian", {}),
                     ("tvm", {})] + _NIP_AND_ABLATIONS,
        "blackbox_eps": 8 / 255,
    },
    "paper-imagenet": {
        "model": "efficientnet-lite0",
        "attacks": [("fgsm", {"eps": 2 / 255}), ("pgd", {"eps": 4 / 255, "max_iter": 10})],
        "defenses": [("none", {}), ("jpeg", {}), ("bitdepth", {}), ("median", {}), ("gaussian", {})]
        + _NIP_AND_ABLATIONS,
        "blackbox_eps": 4 / 255,
    },
}


def parse_units(text: str, registry) -> UnitList:
    """``"fgsm[eps=0.1],pgd"`` → ``[("fgsm", {"eps": "0.1"}), ("pgd", {})]`` (names checked)."""
    out: UnitList = []
    depth, cur, parts = 0, "", []
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in filter(None, (p.strip() for p in parts)):
        name, params = part, {}
        if "[" in part:
            if not part.endswith("]"):
                raise InputError(f"cannot read {part!r}: write name[param=value;param=value].")
            name, body = part[:-1].split("[", 1)
            for kv in filter(None, body.split(";")):
                if "=" not in kv:
                    raise InputError(f"cannot read {kv!r} in {part!r}: write param=value.")
                k, v = kv.split("=", 1)
                params[k.strip()] = v.strip()
        registry.get_unit(name.strip())
        out.append((name.strip(), params))
    if not out:
        raise InputError(f"no {registry.kind} given.")
    return out


def _acc(model, x, y) -> float:
    return float((model.predict(x) == y).float().mean()) if len(y) else float("nan")


@dataclass
class EvalJob:
    """What an evaluation is, in plain values: enough for any process (a Ray worker on another
    node) to rebuild the same :class:`EvalContext`.

    ``model_source``: for a model brought by the user, the keyword arguments of
    ``nip_core.byom.load_custom_model`` (file paths that must be readable where the job runs).
    """

    model: str
    attacks: UnitList
    defenses: UnitList
    n: int
    seed: int = 0
    split: str = "all"
    observe: bool = True
    model_source: dict[str, Any] | None = None
    # The user's labelled data (``--data``: ImageFolder, .zip or .npz), read where the job runs.
    data_path: str | None = None
    data_seed: int = 0
    # The black-box column: Square attack through model ∘ defense on the first ``n`` images.
    blackbox: dict[str, Any] | None = None
    # Neuron mediation (``nip_core.analyses.mediation``) at these layers (empty: every hookable layer); None: off.
    mediation: list[str] | None = None
    # Strengths at which every L∞ gradient attack runs (``nip_core.analyses.elasticity``); None: as given.
    eps_grid: list[float] | None = None
    # Run on this other model's split images (same dataset), counting unconditionally; None: the model's own.
    images_of: str | None = None

    def context(self) -> "EvalContext":
        """The job made ready to run shards (in this process: a Ray worker calls this)."""
        return EvalContext(self)


class EvalContext:
    """A job made ready to run shards: the model loaded once, units validated, images read."""

    def __init__(self, job: EvalJob) -> None:
        from nip_core.models.base import MODELS

        if not isinstance(job.n, int) or job.n < 1:
            raise InputError(f"parameter 'n' must be an integer ≥ 1; got {job.n!r}.")
        if job.model_source is not None and job.model not in MODELS:
            from nip_core.byom import load_custom_model
            load_custom_model(**job.model_source)
        self.job = job
        self.model = model = load_model(job.model)
        self.att_units = [(a, ATTACKS.get_unit(a).params_for(model, p)) for a, p in job.attacks]
        self.sweeps: list[Sweep] = []
        if job.eps_grid is not None:
            # one unit per strength, each an ordinary attack unit: shards, seeds and cache keys need
            # nothing new, and the benign and adaptive shards keep the keys of a run without the grid
            self.att_units, self.sweeps = expand_eps_grid(model, self.att_units, job.eps_grid)
        self.def_units = [(d, DEFENSES.get_unit(d).params_for(model, p)) for d, p in job.defenses]
        self.data = None
        if job.data_path is not None and job.images_of is not None:
            raise InputError("--data and --images-of are two sources of images; give one of them.")
        if job.data_path is not None:
            x, y, self.data = user_split(model, job.data_path, job.split, job.data_seed)
        elif job.images_of is not None:
            x, y = images_of_split(model, job.images_of, job.split)
        else:
            x, y = heldout_split(model, job.split)
        self.x, self.y = x[:job.n], y[:job.n]
        if len(self.y) == 0:
            raise InputError(f"split {job.split!r} has no images for {job.images_of or job.model}"
                             + (f" in {job.data_path}." if job.data_path else "."))
        # Another model's images are not filtered to those this model gets right: an image it
        # misclassifies when clean counts as wrong under every attack (unconditional counting).
        self.unconditional = job.images_of not in (None, job.model)
        self.clean = model.predict(self.x) == self.y if self.unconditional else None
        self.attack_labels = [unit_label(a, {k: v for k, v in ap.items() if k != "target" or v >= 0})
                              for a, ap in self.att_units]
        self.defense_labels = [unit_label(d, dp) for d, dp in self.def_units]
        self.layers = _observed_layers(model) if job.observe else []
        self.mediation = [] if job.mediation is None else mediation_layers(model, job.mediation)
        self.adaptive_params = dataset_of(model).adaptive
        self.blackbox = None
        if job.blackbox:
            self.blackbox = {"eps": float(job.blackbox.get("eps", self.adaptive_params["eps"])),
                             "max_iter": int(job.blackbox.get("max_iter", 1000)),
                             "n": min(int(job.blackbox.get("n", 100)), len(self.y))}

    def run(self, shard: Shard) -> dict[str, Any]:
        """:func:`evaluate_shard` of this context."""
        return evaluate_shard(self, shard)

    def adaptive_units(self) -> list[int]:
        """Defenses that get an adaptive column (analysis modes, which need labels or the benign
        image, are not deployable and not attacked)."""
        return [i for i, (d, _) in enumerate(self.def_units) if DEFENSES[d].deployable]

    def label(self, shard: Shard) -> str:
        """The unit a shard runs: "benign", an attack label or (adaptive) a defense label."""
        if shard.kind == "attack":
            return self.attack_labels[shard.unit]
        return self.defense_labels[shard.unit] if shard.kind == "adaptive" else "benign"

    def fingerprint(self) -> str:
        """sha256 of the images and labels: workers check they read the same data as the driver."""
        import hashlib
        return hashlib.sha256(self.x.numpy().tobytes() + self.y.numpy().tobytes()).hexdigest()

    def calibration_key(self) -> str | None:
        """The key of the calibration the grid's defenses use (``nip_core.calibration``), or None
        where no defense needs one or the model has none (then ``nip`` passes inputs through)."""
        if not hasattr(self, "_calibration_key"):
            from nip_core.calibration import calibration_for

            needs = any(DEFENSES[d].calibration_split is not None for d, _ in self.def_units)
            cal = calibration_for(self.model) if needs else None
            self._calibration_key = None if cal is None else cal.key
        return self._calibration_key

    def key_fields(self, shard: Shard, device: str) -> dict[str, Any]:
        """What determines ``shard``'s numbers, for its cache key (``nip_core.evaluation.shards.shard_key``)."""
        from nip_core.evaluation.shards import data_key

        import hashlib

        m, job = self.model, self.job
        x, y = self.x[shard.start:shard.stop], self.y[shard.start:shard.stop]
        fields: dict[str, Any] = {"model": m.name, "weights": m.weights_sha256, "device": device, "seed": job.seed,
                                  "data": data_key(job.split, self.data.data_sha256 if self.data else None,
                                                   job.data_seed),
                                  # the pixels themselves: a changed gallery photo or dataset package is a new shard
                                  "images": hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest(),
                                  # `calibrate --data` changes what `nip` does: a shard of the old one is stale
                                  "calibration": self.calibration_key()}
        if self.unconditional:   # only then: runs on the model's own images keep their cache keys
            fields["images_of"] = self.job.images_of
        if shard.kind == "attack":
            fields |= {"attack": self.att_units[shard.unit], "defenses": self.def_units, "observe": self.layers}
            if self.mediation:   # only then: runs without it keep their cache keys
                fields["mediation"] = self.mediation
        elif shard.kind == "benign":
            fields |= {"defenses": self.def_units}
        else:
            d, dp = self.def_units[shard.unit]
            aware = DEFENSES.get_unit(d).aware_attack
            fields |= {"defense": (d, dp), "adaptive": self.adaptive_params, "blackbox": self.blackbox,
                       "aware": aware and (aware, ATTACKS.get_unit(aware).params_for(m, {}))}
        return fields


def evaluate_shard(ctx: EvalContext, shard: Shard) -> dict[str, Any]:
    """Evaluate one shard (see :class:`nip_core.evaluation.shards.Shard`); a JSON-able dict of per-image
    bits ("1" = right) and sums, which :func:`merge_shards` combines exactly.

    The seed is the shard's own (:func:`nip_core.evaluation.shards.shard_seed`), so the result is the same
    whichever process runs it, and the function is idempotent: a retried shard gives the same dict.
    """
    model = ctx.model
    x, y = ctx.x[shard.start:shard.stop], ctx.y[shard.start:shard.stop]
    seed = shard_seed(ctx.job.seed, shard.kind, ctx.label(shard), shard.start)
    # Unconditional counting (``--images-of``): right under attack only if also right when clean.
    clean = ctx.clean[shard.start:shard.stop] if ctx.unconditional else torch.ones(len(y), dtype=torch.bool)
    if shard.kind == "benign":
        out: dict[str, Any] = {}
        for (d, dp), dl in zip(ctx.def_units, ctx.defense_labels):
            dr = apply_defense(model, d, x, dp, y=y, seed=seed, x_benign=x)
            pred = model.predict(dr.x_def)
            out[dl] = {"correct": _bits(pred == y), "pred": pred.tolist(), "seconds": dr.seconds}
        return {"defenses": out}
    if shard.kind == "attack":
        a, ap = ctx.att_units[shard.unit]
        ar = run_attack(model, a, x, y, ap, seed=seed)
        adv_pred = model.predict(ar.x_adv)
        fooled = adv_pred != y
        delta = (ar.x_adv - x).flatten(1)
        res: dict[str, Any] = {
            "attack_seconds": ar.seconds, "adv_correct": _bits(~fooled & clean), "adv_pred": adv_pred.tolist(),
            "linf_sum": float(delta.abs().amax(1).double().sum()), "l2_sum": float(delta.norm(dim=1).double().sum()),
            "observation": {lay: suppression_sums(model, x, ar.x_adv, y, lay, seed=seed) for lay in ctx.layers},
            "defenses": {}}
        defended: dict[str, torch.Tensor] = {}
        for (d, dp), dl in zip(ctx.def_units, ctx.defense_labels):
            dr = apply_defense(model, d, ar.x_adv, dp, y=y, seed=seed, x_benign=x)
            defended.setdefault(d, dr.x_def)
            pred = model.predict(dr.x_def)
            res["defenses"][dl] = {
                "correct": _bits((pred == y) & clean), "pred": pred.tolist(), "seconds": dr.seconds,
                "defense_linf_sum": float((dr.x_def - ar.x_adv).flatten(1).abs().amax(1).double().sum())}
        if ctx.mediation:
            t0 = time.perf_counter()
            # The mediated defenses: the grid's own outputs where it has them, else with defaults.
            src = {d: defended[d] if d in defended else
                   apply_defense(model, d, ar.x_adv, {}, y=y, seed=seed, x_benign=x).x_def for d in MEDIATION_DEFENSES}
            res["mediation"] = {lay: mediation_parts(model, x, ar.x_adv, y, lay, src, seed=seed)
                                for lay in ctx.mediation}
            res["mediation_seconds"] = time.perf_counter() - t0
        if ctx.unconditional:
            res["clean_correct"] = _bits(clean)
        return res
    d, dp = ctx.def_units[shard.unit]
    t0 = time.perf_counter()
    ar = run_attack(model, "pgd", x, y, ctx.adaptive_params, seed=seed, net=DefendedNet(model, d, dp, seed))
    dr = apply_defense(model, d, ar.x_adv, dp, seed=seed)
    res = {"correct": _bits((model.predict(dr.x_def) == y) & clean), "seconds": time.perf_counter() - t0, "aware": None,
           "blackbox": None}
    bb = ctx.blackbox
    if bb is not None and shard.start < bb["n"]:
        # Score-based black-box: Square queries the defended pipeline's outputs, no gradient at all.
        hi = min(shard.stop, bb["n"]) - shard.start
        t1 = time.perf_counter()
        sq = run_attack(model, "square", x[:hi], y[:hi], {"eps": bb["eps"], "max_iter": bb["max_iter"]}, seed=seed,
                        net=DefendedNet(model, d, dp, seed))
        ds = apply_defense(model, d, sq.x_adv, dp, seed=seed)
        res["blackbox"] = {"correct": _bits((model.predict(ds.x_def) == y[:hi]) & clean[:hi]),
                           "undefended_correct": _bits((model.predict(sq.x_adv) == y[:hi]) & clean[:hi]),
                           "seconds": time.perf_counter() - t1}
    aware = DEFENSES.get_unit(d).aware_attack
    if aware is not None and ATTACKS.get_unit(aware).applies_to(model):
        aw = run_attack(model, aware, x, y, seed=seed, against=dp)
        da = apply_defense(model, d, aw.x_adv, dp, seed=seed)
        res["aware"] = {"correct": _bits((model.predict(da.x_def) == y) & clean),
                        "undefended_correct": _bits((model.predict(aw.x_adv) == y) & clean),
                        "attack": unit_label(aware, aw.params), "seconds": aw.seconds + da.seconds}
    return res


def merge_shards(ctx: EvalContext, results: dict[Shard, dict[str, Any]], adaptive: bool
                 ) -> tuple[list[dict], dict[str, dict], dict[str, dict], dict[str, Any]]:
    """Rows, benign, adaptive and observation of the whole grid from its shard results.

    Shards are taken in merge order (kind, unit, first image), whatever order they finished in;
    accuracies are counts of per-image bits, means are sums over images divided by ``n``.
    """
    n = len(ctx.y)
    shards = sorted(results, key=lambda s: s.order)

    def parts(kind: str, unit: int) -> list[dict[str, Any]]:
        return [results[s] for s in shards if s.kind == kind and s.unit == unit]

    def ratio(k: int, m: int) -> float:
        return k / m if m else float("nan")

    benign: dict[str, dict[str, Any]] = {}
    for dl in ctx.defense_labels:
        cells = [p["defenses"][dl] for p in parts("benign", 0)]
        bits = "".join(c["correct"] for c in cells)
        benign[dl] = {"accuracy": ratio(bits.count("1"), n), "seconds_per_image": sum(c["seconds"] for c in cells) / n,
                      "correct": bits, "pred": encode_classes(_joined(cells, "pred"), ctx.model.num_classes)}

    rows: list[dict[str, Any]] = []
    observation: dict[str, Any] = {}
    mediation: dict[str, Any] = {}
    for i, (a, _) in enumerate(ctx.att_units):
        ps, a_label = parts("attack", i), ctx.attack_labels[i]
        adv = "".join(p["adv_correct"] for p in ps)
        # Images right when clean (all of them, but under ``--images-of``): only these can be fooled.
        clean = "".join(p.get("clean_correct", "1" * len(p["adv_correct"])) for p in ps)
        fooled = sum(c == "1" and v == "0" for c, v in zip(clean, adv))
        if ctx.layers:
            observation[a_label] = {lay: suppression_from_sums([p["observation"][lay] for p in ps]) for lay in ctx.layers}
        if ctx.mediation:
            mediation[a_label] = {lay: mediation_from_parts([p["mediation"][lay] for p in ps], seed=ctx.job.seed)
                                  for lay in ctx.mediation}
            mediation[a_label]["seconds_per_image"] = sum(p["mediation_seconds"] for p in ps) / n
        for (d, _), dl in zip(ctx.def_units, ctx.defense_labels):
            cells = [p["defenses"][dl] for p in ps]
            bits = "".join(c["correct"] for c in cells)
            restored = sum(c == "1" and v == "0" for c, v in zip(bits, adv))
            rows.append({
                "attack": a_label, "attack_name": a, "defense": dl, "defense_name": d,
                "deployable": DEFENSES[d].deployable, "n": n,
                "clean_accuracy": ratio(clean.count("1"), n),
                "adv_accuracy": ratio(adv.count("1"), n),
                "defended_adv_accuracy": ratio(bits.count("1"), n),
                "benign_accuracy": benign[dl]["accuracy"],
                "defense_success_rate": restored / fooled if fooled else None,
                "n_successful_adv": fooled,
                "linf_mean": sum(p["linf_sum"] for p in ps) / n, "l2_mean": sum(p["l2_sum"] for p in ps) / n,
                "defense_linf_mean": sum(c["defense_linf_sum"] for c in cells) / n,
                "attack_seconds_per_image": sum(p["attack_seconds"] for p in ps) / n,
                "defense_seconds_per_image": sum(c["seconds"] for c in cells) / n,
                "correct": bits, "pred": encode_classes(_joined(cells, "pred"), ctx.model.num_classes),
            })

    adaptive_out: dict[str, dict[str, Any]] = {}
    if adaptive:
        for i, ((d, _), dl) in enumerate(zip(ctx.def_units, ctx.defense_labels)):
            if not DEFENSES[d].deployable:
                adaptive_out[dl] = {"accuracy": None, "note": "analysis mode (needs the true label or the benign "
                                                              "image): not deployable, not attacked"}
                continue
            ps = parts("adaptive", i)
            bits = "".join(p["correct"] for p in ps)
            adaptive_out[dl] = {"accuracy": ratio(bits.count("1"), n), "attack": unit_label("pgd-bpda", ctx.adaptive_params),
                                "seconds_per_image": sum(p["seconds"] for p in ps) / n, "correct": bits}
            aw = [p["aware"] for p in ps if p["aware"] is not None]
            if aw:
                abits = "".join(w["correct"] for w in aw)
                adaptive_out[dl]["aware"] = {
                    "accuracy": ratio(abits.count("1"), n),
                    "undefended_accuracy": ratio("".join(w["undefended_correct"] for w in aw).count("1"), n),
                    "attack": aw[0]["attack"], "seconds_per_image": sum(w["seconds"] for w in aw) / n,
                    "correct": abits}
            bb = [p["blackbox"] for p in ps if p.get("blackbox") is not None]
            if bb:
                bbits = "".join(b["correct"] for b in bb)
                adaptive_out[dl]["blackbox"] = {
                    "accuracy": ratio(bbits.count("1"), len(bbits)),
                    "undefended_accuracy": ratio("".join(b["undefended_correct"] for b in bb).count("1"), len(bbits)),
                    "attack": unit_label("square", {"eps": ctx.blackbox["eps"], "max_iter": ctx.blackbox["max_iter"]}),
                    "n": len(bbits), "seconds_per_image": sum(b["seconds"] for b in bb) / len(bbits),
                    "correct": bbits}
    return rows, benign, adaptive_out, observation, mediation


def _joined(cells: list[dict[str, Any]], key: str) -> list[int]:
    return [v for c in cells for v in c[key]]


def per_image_block(ctx: EvalContext, results: dict[Shard, dict[str, Any]], shard_size: int) -> dict[str, Any]:
    """The per-image records of a result (``nip_core.evaluation.slices``): each image's position in the split,
    its true label, and each attack's adversarial prediction (the rows hold the defended ones);
    classes as a string of digits when the model has at most 10 classes, else a list of ints.
    ``shard_size`` with the result's ``seed`` gives the seed each image's shard used."""
    shards = sorted(results, key=lambda s: s.order)
    k = ctx.model.num_classes
    adv = {label: encode_classes(_joined([results[s] for s in shards if s.kind == "attack" and s.unit == i],
                                         "adv_pred"), k)
           for i, label in enumerate(ctx.attack_labels)}
    return {"format": PER_IMAGE_FORMAT, "split": ctx.job.split, "index": list(range(len(ctx.y))),
            "labels": encode_classes(ctx.y.tolist(), k), "shard_size": shard_size, "adv_pred": adv}


def evaluate(model_name: str, attacks: UnitList, defenses: UnitList, n: int = 100, seed: int = 0,
             split: str = "all", adaptive: bool = True, progress: Progress | None = None,
             observe: bool = True, paired_with: str = "nip", *, ray_address: str | None = None,
             workers: int | None = None, threads_per_worker: int | None = None, shard_size: int = SHARD_SIZE,
             cache: str | os.PathLike | None = None, fresh: bool = False, model_source: dict | None = None,
             on_shard: Callable[[dict[str, Any]], None] | None = None, data: str | os.PathLike | None = None,
             data_seed: int = 0, blackbox: dict[str, Any] | None = None,
             mediation: list[str] | None = None, eps_grid: list[float] | None = None,
             images_of: str | None = None) -> dict[str, Any]:
    """Run the evaluation grid; returns a JSON-able dict (see module doc).

    Every row and benign entry carries ``correct``: one character per image, "1" where the
    defended prediction is right. With ``paired_with`` among the defenses, ``summary.paired``
    compares it image by image with every other defense (``paired_comparisons``).

    With ``observe``, also measures per attack how front/tail neurons change (``observation``,
    see ``nip_core.analyses.analysis``) at the model's fully connected / head layers.

    The grid runs as shards (``nip_core.evaluation.shards``) of ``shard_size`` images, in this process or,
    with ``ray_address`` (``"local"`` or a cluster address), on ``workers`` Ray actors with
    ``threads_per_worker`` torch threads each (``nip_core.evaluation.distributed``). Every deterministic
    field is the same either way. ``cache``: a folder of finished shards (None: no cache);
    ``fresh`` recomputes and overwrites them. ``on_shard`` (tests, tools) is called with a dict
    after each computed shard has been stored.

    ``data``: the user's labelled images (``nip_core.sources.userdata``: an ImageFolder, a .zip of
    one, or an .npz) instead of the model's held-out set; ``split`` then cuts the seeded split
    ``data_seed`` of them (``docs/data.md``), and the JSON's ``data`` block lists skipped files.
    ``blackbox``: ``{"eps", "max_iter", "n"}`` adds the black-box column: ART's Square attack,
    scored by the defended outputs, against every deployable defense on the first ``n`` images.
    ``mediation``: layers (``[]``: every hookable layer) at which each attack's successful
    adversarials are patched with benign and defended neuron values (``nip_core.analyses.mediation``);
    the JSON's ``mediation`` block holds the results per attack and layer.
    ``eps_grid``: strengths in (0, 1] at which every L∞ gradient attack runs instead of its own ε
    (one unit per strength, labelled ``pgd[eps=0.05;eps_step=…;…]``, the step scaled to keep
    ``eps_step/eps``); the JSON's ``elasticity`` block holds accuracy against ε per attack and
    defense, with Wilson bands (``nip_core.analyses.elasticity``). The adaptive columns keep the main ε.
    ``images_of``: another registered model of the same dataset whose ``split`` images (its held-out
    images it classifies correctly, cut by position) this model is run on, so two models compare on
    the same images. They are not filtered to the images this model gets right: every attacked
    number counts an image it misclassifies when clean as wrong (unconditional), and the JSON's
    ``data`` block says so (``images_of``, ``clean_accuracy``).
    """
    from nip_core.evaluation.shards import ShardCache, plan, shard_key

    say = progress or (lambda f, m: None)
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise InputError(f"parameter 'shard_size' must be an integer ≥ 1; got {shard_size!r}.")
    job = EvalJob(model_name, [(a, dict(p)) for a, p in attacks], [(d, dict(p)) for d, p in defenses],
                  n, seed, split, observe, model_source, None if data is None else str(data), data_seed, blackbox,
                  None if mediation is None else list(mediation),
                  None if eps_grid is None else parse_eps_grid(eps_grid), images_of)
    ctx = EvalContext(job)
    model, att_units, def_units, x, y = ctx.model, ctx.att_units, ctx.def_units, ctx.x, ctx.y
    warnings = split_warnings(model, split, len(y), [d for d, _ in def_units])
    t_start = time.perf_counter()

    shards = plan(len(att_units), ctx.adaptive_units() if adaptive else [], len(y), shard_size)
    store = ShardCache(cache, fresh) if cache is not None else None
    results: dict[Shard, dict[str, Any]] = {}
    pool = None
    if ray_address is not None:
        from nip_core.evaluation.distributed import RayPool
        pool = RayPool(ray_address, job, ctx.fingerprint(), workers=workers, threads=threads_per_worker)
    try:
        device = pool.device if pool is not None else str(get_device()).split(":")[0]
        keys = {s: shard_key(ctx.key_fields(s, device), s) for s in shards} if store is not None else {}
        for s in shards:
            hit = store.get(keys[s]) if store is not None else None
            if hit is not None:
                results[s] = hit
        from_cache = len(results)
        todo = [s for s in shards if s not in results]
        if from_cache:
            say(from_cache / len(shards), f"{from_cache}/{len(shards)} shards from the cache")

        def finished(s: Shard, res: dict[str, Any], running: list) -> None:
            results[s] = res
            if store is not None:
                store.put(keys[s], res, {"model": model_name, "shard": str(s), "unit": ctx.label(s), "seed": seed,
                                         "split": split})
            what = "benign" if s.kind == "benign" else f"{s.kind} {ctx.label(s)}"
            say(len(results) / len(shards), f"{len(results)}/{len(shards)} shards · images {s.start}–{s.stop - 1} · {what}")
            if on_shard is not None:
                on_shard({"shard": s, "computed": len(results) - from_cache, "total": len(shards),
                          "running": running})

        if pool is None:
            threads = torch.get_num_threads()
            if threads_per_worker:
                torch.set_num_threads(threads_per_worker)
            try:
                for s in todo:
                    finished(s, evaluate_shard(ctx, s), [])
            finally:
                torch.set_num_threads(threads)
            distributed: dict[str, Any] = {"backend": "serial", "workers": 1,
                                           "threads_per_worker": threads_per_worker or threads}
        else:
            for s, res in pool.run(todo):
                finished(s, res, pool.running)
            distributed = pool.info()
    finally:
        if pool is not None:
            pool.close()
    distributed |= {"shard_size": shard_size, "shards": len(shards), "shards_from_cache": from_cache,
                    "shards_computed": len(shards) - from_cache, "cache": None if store is None else str(store)}

    rows, benign, adaptive_out, observation, mediation = merge_shards(ctx, results, adaptive)
    def_labels = ctx.defense_labels
    summary = {
        "mean_adv_accuracy": {dl: _mean([r["defended_adv_accuracy"] for r in rows if r["defense"] == dl])
                              for dl in def_labels},
        "benign_accuracy": {dl: benign[dl]["accuracy"] for dl in def_labels},
        "adaptive_accuracy": {dl: adaptive_out.get(dl, {}).get("accuracy") for dl in def_labels},
        "adaptive_aware_accuracy": {dl: adaptive_out.get(dl, {}).get("aware", {}).get("accuracy")
                                    for dl in def_labels},
        "blackbox_accuracy": {dl: adaptive_out.get(dl, {}).get("blackbox", {}).get("accuracy") for dl in def_labels},
    }
    # Summary maps are also keyed by bare defense name when that name is unambiguous.
    for key in list(summary):
        for d, dp in def_units:
            if sum(dd == d for dd, _ in def_units) == 1:
                summary[key][d] = summary[key][unit_label(d, dp)]
    if [d for d, _ in def_units].count(paired_with) == 1:
        summary["paired"] = paired_comparisons(rows, benign, paired_with)
    if ctx.data is not None or not getattr(model.spec, "gallery_labels", True):
        x_test, y_test = x, y
    else:
        x_test, y_test = dataset_of(model).heldout(model)
    return {
        "model": model_name, "weights_sha256": model.weights_sha256, "split": split, "seed": seed,
        "n_images": len(y), "attacks": [unit_label(a, p) for a, p in att_units],
        "attack_params": {unit_label(a, p): p for a, p in att_units},
        "defenses": def_labels, "defense_params": {unit_label(d, p): p for d, p in def_units},
        "heldout_clean_accuracy": _acc(model, x_test, y_test),
        "rows": rows, "benign": benign, "adaptive": adaptive_out, "summary": summary, "observation": observation,
        "per_image": per_image_block(ctx, results, shard_size),
        **({"mediation": {"layers": ctx.mediation, "k": MEDIATION_K, "groups": list(MEDIATION_GROUPS),
                          "defenses": list(MEDIATION_DEFENSES), "by_attack": mediation}} if ctx.mediation else {}),
        **({"elasticity": elasticity_block(ctx.sweeps, job.eps_grid, ctx.attack_labels, rows, def_labels,
                                           ctx.adaptive_params)} if ctx.sweeps else {}),
        "seconds_total": time.perf_counter() - t_start,
        "environment": environment(),
        "distributed": distributed,
        "warnings": warnings,
        "calibration": calibration_notes(model, [d for d, _ in def_units]),
        "data": data_block(ctx),
    }


def images_of_split(model, other: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``split`` images of the registered model ``other`` (its held-out images it classifies
    correctly, cut by position: ``nip_core.data.heldout_split``), for ``model`` to be run on.

    Raises:
        InputError: ``other`` is unknown, is a user's model, or is of another dataset than ``model``.
    """
    from nip_core.models.base import get_spec

    spec = get_spec(other)
    if not getattr(spec, "gallery_labels", True) or not getattr(model.spec, "gallery_labels", True):
        raise InputError(f"--images-of needs two built-in models of one dataset; {other!r} or {model.name!r} has "
                         "its own classes.")
    if spec.gallery != model.spec.gallery:
        raise InputError(f"--images-of {other}: its images are {spec.gallery}, but {model.name} is a "
                         f"{model.spec.gallery} model; choose a model of the same dataset.")
    return heldout_split(load_model(other), split)


def data_block(ctx: EvalContext) -> dict[str, Any]:
    """The result's ``data`` block: where the images came from and how they were counted."""
    job = ctx.job
    if ctx.data is not None:
        return ctx.data.to_json() | {"split": job.split, "split_seed": job.data_seed}
    out: dict[str, Any] = {"source": "heldout", "dataset": dataset_of(ctx.model).name}
    if ctx.unconditional:
        k = int(ctx.clean.sum())
        out |= {"images_of": job.images_of, "split": job.split, "clean_correct": k, "clean_accuracy": k / len(ctx.y),
                "counting": f"unconditional: the {job.images_of} {job.split} split (the held-out images "
                            f"{job.images_of} classifies correctly); an image {job.model} misclassifies when "
                            "clean counts as wrong under every attack and defense",
                "summary": f"the {job.images_of} {job.split} split ({len(ctx.y)} images; {job.model} classifies "
                           f"{k} of them correctly when clean)"}
    return out


def calibration_notes(model, defenses: list[str]) -> dict[str, Any]:
    """For each defense that needs a calibration (the label-free ``nip``, ``counter-attack``):
    which one it used, or that it had none and passed inputs through (``nip_core.calibration``)."""
    from nip_core.calibration import calibration_for, how_to_calibrate

    out: dict[str, Any] = {}
    for d in dict.fromkeys(defenses):
        if DEFENSES[d].calibration_split is None:
            continue
        cal = calibration_for(model)
        out[d] = cal.to_json() if cal is not None else {"calibrated": False, "note": how_to_calibrate(model)}
    return out


def user_split(model, path: str, split: str, seed: int):
    """The images of ``split`` of the user's data that the model classifies correctly, and the
    loaded :class:`~nip_core.sources.userdata.LabelledData` (for its skipped files and hash)."""
    from nip_core.sources.userdata import load_labelled_data, split_indices

    data = load_labelled_data(path, class_names=model.class_names, channels=model.spec.input_channels,
                              size=model.spec.input_size, preprocess=model.spec.preprocess)
    idx = torch.from_numpy(split_indices(len(data.y), split, seed).copy())
    x, y = data.x[idx], data.y[idx]
    ok = model.predict(x) == y
    return x[ok], y[ok], data


def split_warnings(model, split: str, n: int, defenses: list[str]) -> list[str]:
    """What a reader of the table must know about the images it was measured on: a table that
    includes the held-out images a defense placed its thresholds on (``Defense.calibration_split``;
    for the label-free ``nip``, MNIST positions 500 on) flatters that defense."""
    ds = dataset_of(model)
    lo, hi = ds.splits[split]
    end = lo + n if hi is None else min(lo + n, hi)
    out = []
    for d in dict.fromkeys(defenses):
        cal = DEFENSES[d].calibration_split
        if cal is None or not ds.builtin_calibration:
            continue
        c_lo, c_hi = ds.splits[cal]
        if lo < (c_hi if c_hi is not None else float("inf")) and end > c_lo:
            out.append(f"the {n} images of split {split!r} include held-out positions {c_lo}+ (the {cal!r} "
                       f"split), on which '{d}' places its detector thresholds; its numbers there are "
                       "optimistic. Use --split report for a clean table.")
    return out


def _bits(ok: torch.Tensor) -> str:
    return "".join("1" if v else "0" for v in ok.tolist())


def paired_comparisons(rows: list[dict], benign: dict[str, dict], defense: str) -> dict[str, Any]:
    """``defense`` against every other defense on the same images, attack by attack (and benign).

    For each pair: how many images only ``defense`` gets right (``only_this``), how many only the
    other gets right (``only_other``), and the exact two-sided McNemar p-value (a binomial test
    of ``only_this`` against ``only_this + only_other`` at 1/2). A small difference in accuracy
    with a large p-value is a tie, not a win.
    """
    from scipy.stats import binomtest

    def compare(a: str, b: str) -> dict[str, Any]:
        this = sum(x == "1" and y == "0" for x, y in zip(a, b))
        other = sum(x == "0" and y == "1" for x, y in zip(a, b))
        p = binomtest(this, this + other, 0.5).pvalue if this + other else 1.0
        return {"only_this": this, "only_other": other, "p_value": float(p)}

    label = next(r["defense"] for r in rows if r["defense_name"] == defense) if rows else defense
    out: dict[str, Any] = {"defense": label, "attacks": {}, "benign": {}}
    for attack in dict.fromkeys(r["attack"] for r in rows):
        cells = {r["defense"]: r["correct"] for r in rows if r["attack"] == attack}
        out["attacks"][attack] = {d: compare(cells[label], c) for d, c in cells.items() if d != label}
    if label in benign:
        out["benign"] = {d: compare(benign[label]["correct"], b["correct"]) for d, b in benign.items() if d != label}
    return out


def accuracy_intervals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Accuracy after each defense with its 95% Wilson interval: one row per attack × defense, then
    one per defense on the benign images.

    The count of correct images comes from the per-image ``correct`` bits where the result has
    them, else from ``accuracy × n`` (older result files).
    """
    def row(inputs: str, defense: str, acc: float | None, bits: str | None, n: Any) -> dict[str, Any]:
        if bits:
            k, n = bits.count("1"), len(bits)
        elif acc is not None and isinstance(n, int) and n > 0:
            k = int(round(acc * n))
        else:
            return {"inputs": inputs, "defense": defense, "accuracy": acc, "correct": None, "n": None,
                    "ci_low": None, "ci_high": None}
        lo, hi = wilson_interval(k, n)
        return {"inputs": inputs, "defense": defense, "accuracy": k / n, "correct": k, "n": n,
                "ci_low": lo, "ci_high": hi}

    n_all = result.get("n_images")
    out = [row(r["attack"], r["defense"], r.get("defended_adv_accuracy"), r.get("correct"), r.get("n", n_all))
           for r in result["rows"]]
    benign = result.get("benign") or {}
    for d in result.get("defenses") or dict.fromkeys(r["defense"] for r in result["rows"]):
        b = benign.get(d, {})
        acc = b.get("accuracy", result.get("summary", {}).get("benign_accuracy", {}).get(d))
        out.append(row("benign", d, acc, b.get("correct"), n_all))
    return out


def paired_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """``summary.paired`` as table rows: one per attack (and "benign") × other defense."""
    paired = result.get("summary", {}).get("paired")
    if not paired:
        return []
    name = paired["defense"].split("[")[0]
    out = []
    for attack, cmp in list(paired["attacks"].items()) + [("benign", paired.get("benign", {}))]:
        for other, c in cmp.items():
            out.append({"inputs": attack, "against": other, f"only {name} right": c["only_this"],
                        "only the other right": c["only_other"], "McNemar p": c["p_value"]})
    return out


def _observed_layers(model) -> list[str]:
    # The paper's pattern is clearest at fully connected layers; also report the default.
    fc = [name for name in model.spec.layers if name.startswith("fc")]
    return list(dict.fromkeys(fc + [model.spec.default_layer]))


def _mean(v: list[float]) -> float | None:
    return sum(v) / len(v) if v else None


CSV_FIELDS = ["attack", "defense", "deployable", "n", "adv_accuracy", "defended_adv_accuracy", "benign_accuracy",
              "defense_success_rate", "n_successful_adv", "linf_mean", "l2_mean", "defense_linf_mean",
              "attack_seconds_per_image", "defense_seconds_per_image", "adaptive_accuracy",
              "adaptive_aware_accuracy", "blackbox_accuracy"]


def to_csv(result: dict[str, Any]) -> str:
    """The evaluation rows as CSV (adaptive accuracy repeated on each row of its defense)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in result["rows"]:
        ad = result["adaptive"].get(r["defense"], {})
        w.writerow(r | {"adaptive_accuracy": ad.get("accuracy"),
                        "adaptive_aware_accuracy": ad.get("aware", {}).get("accuracy"),
                        "blackbox_accuracy": ad.get("blackbox", {}).get("accuracy")})
    return buf.getvalue()


def write_result(result: dict[str, Any], path) -> tuple[str, str]:
    """Write ``path`` (JSON) and the CSV beside it; returns both paths."""
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2, default=float) + "\n")
    c = p.with_suffix(".csv")
    c.write_text(to_csv(result))
    return str(p), str(c)
