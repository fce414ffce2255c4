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
"""
from __future__ import annotations

import csv
import io
import json
import platform
import time
from typing import Any, Callable

import torch

from nip_core.analysis import suppression_stats
from nip_core.attacks import ATTACKS, run_attack
from nip_core.data import dataset_of, heldout_split
from nip_core.defenses import DEFENSES, DefendedNet, apply_defense
from nip_core.errors import InputError
from nip_core.models import load_model

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


def unit_label(name: str, params: dict[str, Any]) -> str:
    if not params:
        return name
    return name + "[" + ";".join(f"{k}={_fmt(v)}" for k, v in params.items()) + "]"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


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


def evaluate(model_name: str, attacks: UnitList, defenses: UnitList, n: int = 100, seed: int = 0,
             split: str = "all", adaptive: bool = True, progress: Progress | None = None,
             observe: bool = True, paired_with: str = "nip") -> dict[str, Any]:
    """Run the evaluation grid; returns a JSON-able dict (see module doc).

    Every row and benign entry carries ``correct``: one character per image, "1" where the
    defended prediction is right. With ``paired_with`` among the defenses, ``summary.paired``
    compares it image by image with every other defense (``paired_comparisons``).

    With ``observe``, also measures per attack how front/tail neurons change (``observation``,
    see ``nip_core.analysis``) at the model's fully connected / head layers.
    """
    say = progress or (lambda f, m: None)
    if not isinstance(n, int) or n < 1:
        raise InputError(f"parameter 'n' must be an integer ≥ 1; got {n!r}.")
    model = load_model(model_name)
    att_units = [(a, ATTACKS.get_unit(a).params_for(model, p)) for a, p in attacks]
    def_units = [(d, DEFENSES.get_unit(d).params_for(model, p)) for d, p in defenses]
    x, y = heldout_split(model, split)
    x, y = x[:n], y[:n]
    if len(y) == 0:
        raise InputError(f"split {split!r} has no images for {model_name}.")
    warnings = split_warnings(model, split, len(y), [d for d, _ in def_units])
    t_start = time.perf_counter()
    steps = len(att_units) * (len(def_units) + 1) + len(def_units) + (len(def_units) if adaptive else 0)
    done = 0

    def tick(msg: str) -> None:
        nonlocal done
        done += 1
        say(min(done / steps, 1.0), msg)

    observation: dict[str, Any] = {}
    benign: dict[str, dict[str, float]] = {}
    for d, dp in def_units:
        dr = apply_defense(model, d, x, dp, y=y, seed=seed)
        benign[unit_label(d, dp)] = {"accuracy": _acc(model, dr.x_def, y), "seconds_per_image": dr.seconds / len(y),
                                     "correct": _bits(model.predict(dr.x_def) == y)}
        tick(f"benign · {d}")

    rows = []
    for a, ap in att_units:
        ar = run_attack(model, a, x, y, ap, seed=seed)
        a_label = unit_label(a, {k: v for k, v in ap.items() if k != "target" or v >= 0})
        tick(f"attack {a_label}")
        pred_adv = model.predict(ar.x_adv)
        fooled = pred_adv != y
        if observe:
            observation[a_label] = {lay: suppression_stats(model, x, ar.x_adv, y, lay)
                                    for lay in _observed_layers(model)}
        delta = (ar.x_adv - x).flatten(1)
        for d, dp in def_units:
            dr = apply_defense(model, d, ar.x_adv, dp, y=y, seed=seed)
            pred_def = model.predict(dr.x_def)
            restored = (pred_def == y) & fooled
            d_label = unit_label(d, dp)
            rows.append({
                "attack": a_label, "attack_name": a, "defense": d_label, "defense_name": d,
                "deployable": DEFENSES[d].deployable, "n": len(y),
                "clean_accuracy": 1.0,
                "adv_accuracy": float((~fooled).float().mean()),
                "defended_adv_accuracy": float((pred_def == y).float().mean()),
                "benign_accuracy": benign[d_label]["accuracy"],
                "defense_success_rate": float(restored.sum() / fooled.sum()) if fooled.any() else None,
                "n_successful_adv": int(fooled.sum()),
                "linf_mean": float(delta.abs().amax(1).mean()), "l2_mean": float(delta.norm(dim=1).mean()),
                "defense_linf_mean": float((dr.x_def - ar.x_adv).flatten(1).abs().amax(1).mean()),
                "attack_seconds_per_image": ar.seconds / len(y),
                "defense_seconds_per_image": dr.seconds / len(y),
                "correct": _bits(pred_def == y),
            })
            tick(f"{a_label} · {d}")

    adaptive_out: dict[str, dict[str, Any]] = {}
    if adaptive:
        ap = dataset_of(model).adaptive
        for d, dp in def_units:
            d_label = unit_label(d, dp)
            if DEFENSES[d].needs_labels:
                adaptive_out[d_label] = {"accuracy": None, "note": "needs true labels: not deployable, not attacked"}
            else:
                t0 = time.perf_counter()
                net = DefendedNet(model, d, dp, seed)
                ar = run_attack(model, "pgd", x, y, ap, seed=seed, net=net)
                dr = apply_defense(model, d, ar.x_adv, dp, seed=seed)
                adaptive_out[d_label] = {"accuracy": _acc(model, dr.x_def, y), "attack": unit_label("pgd-bpda", ap),
                                         "seconds_per_image": (time.perf_counter() - t0) / len(y)}
                aware = DEFENSES.get_unit(d).aware_attack
                if aware is not None and ATTACKS.get_unit(aware).applies_to(model):
                    aw = run_attack(model, aware, x, y, seed=seed, against=dp)
                    da = apply_defense(model, d, aw.x_adv, dp, seed=seed)
                    adaptive_out[d_label]["aware"] = {
                        "accuracy": _acc(model, da.x_def, y), "undefended_accuracy": _acc(model, aw.x_adv, y),
                        "attack": unit_label(aware, aw.params),
                        "seconds_per_image": (aw.seconds + da.seconds) / len(y)}
            tick(f"adaptive · {d}")

    def_labels = [unit_label(d, dp) for d, dp in def_units]
    summary = {
        "mean_adv_accuracy": {dl: _mean([r["defended_adv_accuracy"] for r in rows if r["defense"] == dl])
                              for dl in def_labels},
        "benign_accuracy": {dl: benign[dl]["accuracy"] for dl in def_labels},
        "adaptive_accuracy": {dl: adaptive_out.get(dl, {}).get("accuracy") for dl in def_labels},
        "adaptive_aware_accuracy": {dl: adaptive_out.get(dl, {}).get("aware", {}).get("accuracy")
                                    for dl in def_labels},
    }
    # Summary maps are also keyed by bare defense name when that name is unambiguous.
    for key in list(summary):
        for d, dp in def_units:
            if sum(dd == d for dd, _ in def_units) == 1:
                summary[key][d] = summary[key][unit_label(d, dp)]
    if [d for d, _ in def_units].count(paired_with) == 1:
        summary["paired"] = paired_comparisons(rows, benign, paired_with)
    x_test, y_test = dataset_of(model).heldout(model) if getattr(model.spec, "gallery_labels", True) else (x, y)
    return {
        "model": model_name, "weights_sha256": model.weights_sha256, "split": split, "seed": seed,
        "n_images": len(y), "attacks": [unit_label(a, p) for a, p in att_units],
        "attack_params": {unit_label(a, p): p for a, p in att_units},
        "defenses": def_labels, "defense_params": {unit_label(d, p): p for d, p in def_units},
        "heldout_clean_accuracy": _acc(model, x_test, y_test),
        "rows": rows, "benign": benign, "adaptive": adaptive_out, "summary": summary, "observation": observation,
        "seconds_total": time.perf_counter() - t_start,
        "environment": environment(),
        "warnings": warnings,
    }


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


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for ``k`` successes in ``n`` trials (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


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


def environment() -> dict[str, Any]:
    import captum
    import art

    return {"python": platform.python_version(), "torch": torch.__version__, "captum": captum.__version__,
            "art": art.__version__, "device": _device(),
            "machine": platform.machine(), "cpus": torch.get_num_threads()}


def _device() -> str:
    from nip_core.runtime import get_device
    return str(get_device())


CSV_FIELDS = ["attack", "defense", "deployable", "n", "adv_accuracy", "defended_adv_accuracy", "benign_accuracy",
              "defense_success_rate", "n_successful_adv", "linf_mean", "l2_mean", "defense_linf_mean",
              "attack_seconds_per_image", "defense_seconds_per_image", "adaptive_accuracy",
              "adaptive_aware_accuracy"]


def to_csv(result: dict[str, Any]) -> str:
    """The evaluation rows as CSV (adaptive accuracy repeated on each row of its defense)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in result["rows"]:
        ad = result["adaptive"].get(r["defense"], {})
        w.writerow(r | {"adaptive_accuracy": ad.get("accuracy"),
                        "adaptive_aware_accuracy": ad.get("aware", {}).get("accuracy")})
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
