"""Shared set-up of the research scripts (index: ``research/README.md``).

The research record is not part of the product: ``nip_core/`` and ``app/`` never import it.

Every script that reads or writes a cached tensor goes through :func:`cache_path`, so they agree
on one folder: ``$NIP_RESEARCH_CACHE`` if set, else ``nip_core.runtime.cache_dir() / "research"``
(``~/.cache/nip_explorer/research`` unless ``NIP_CACHE_DIR`` moves it). Fill it first with
``PYTHONPATH=. .venv/bin/python research/round1/cache_adversarials.py tune 150``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from nip_core.data import heldout_split
from nip_core.models import load_model
from nip_core.runtime import cache_dir

CACHE_ENV = "NIP_RESEARCH_CACHE"
MAKE_ADVERSARIALS = "PYTHONPATH=. .venv/bin/python research/round1/cache_adversarials.py {split} {n}"


def research_cache() -> Path:
    """The research cache folder (``$NIP_RESEARCH_CACHE`` or the project cache's ``research/``), created if missing."""
    root = Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else cache_dir() / "research"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_path(name: str) -> Path:
    """Path of the cached file ``name`` (e.g. ``adv-tune-150.pt``) in :func:`research_cache`."""
    return research_cache() / name


def load_cached(name: str, made_by: str):
    """``torch.load`` of the cached file ``name``; a missing file exits with the command (``made_by``) that writes it."""
    path = cache_path(name)
    if not path.exists():
        raise SystemExit(f"{path} is missing; make it first with: {made_by}")
    return torch.load(path)


def adversarials_name(split: str = "tune", n: int = 150) -> str:
    return f"adv-{split}-{n}.pt"


def load_adversarials(split: str = "tune", n: int = 150) -> dict:
    """The cached paper-mnist adversarials of the first ``n`` digits of ``split``.

    Returns ``{"x": [n,1,28,28], "y": [n], "adv": {attack label: [n,1,28,28]}}``, written by
    ``research/round1/cache_adversarials.py`` (seed 0).
    """
    return load_cached(adversarials_name(split, n), MAKE_ADVERSARIALS.format(split=split, n=n))


def tune_sets(threads: int = 1):
    """Rounds 1 and 2: (model, cached tune dict, sets: name → images for benign and each attack)."""
    torch.set_num_threads(threads)
    m = load_model("lenet-mnist")
    d = load_adversarials("tune", 150)
    return m, d, {"benign": d["x"]} | d["adv"]


def setup():
    """Round 3: (model, cached tune dict, sets: name → (images, labels) for calib, benign and each attack)."""
    torch.set_num_threads(1)
    m = load_model("lenet-mnist")
    xc, yc = heldout_split(m, "calib")
    d = load_adversarials("tune", 150)
    y = d["y"]
    sets = {"calib": (xc, yc), "benign": (d["x"], y)} | {k: (v, y) for k, v in d["adv"].items()}
    return m, d, sets


def smooth_per_input(m, x, amp, draws, seed):
    """The first prototype of the pocket test: mean softmax over ``draws`` random-sign
    perturbations of size ``amp``, with fresh signs for every input (the registered
    ``label_free.smoothed_class`` shares one set of signs across inputs)."""
    g = torch.Generator().manual_seed(seed)
    acc = 0
    for _ in range(draws):
        s = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
        acc = acc + m.logits((x + amp * s).clamp(0, 1)).softmax(1)
    return acc / draws


def binarised_bank(m, threshold, per_class=400):
    """The prototype binarised vote's bank: conv1 maps (2×2 pooled) of binarised benign digits."""
    from nip_core.data import benign_reference
    from nip_core.label_free import BenignBank, _outputs

    xr, yr = benign_reference(m, per_class)
    outs, _ = _outputs(m, (xr > threshold).float(), ["conv1"])
    bank = BenignBank(torch.zeros(0), yr, torch.zeros(1), torch.ones(1), pool=True)
    bank.feats = bank.embed(bank.flat(outs["conv1"]))
    return bank
