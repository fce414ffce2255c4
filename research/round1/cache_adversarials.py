"""Compute the paper-mnist suite's adversarials once per split and cache them (seed 0).

Usage: PYTHONPATH=. .venv/bin/python research/round1/cache_adversarials.py [tune|report] [n]
Writes ``adv-<split>-<n>.pt`` in the research cache (``research/common.py``: ``$NIP_RESEARCH_CACHE``,
else the project cache's ``research/``). The research scripts read it; final numbers come from the CLI.
"""
from __future__ import annotations

import sys
import time

import torch

from nip_core.attacks import run_attack
from nip_core.data import heldout_split
from nip_core.evaluation.evaluate import SUITES, unit_label
from nip_core.models import load_model
from research.common import adversarials_name, cache_path


def main(split: str = "tune", n: int = 150) -> None:
    model = load_model("lenet-mnist")
    x, y = heldout_split(model, split)
    x, y = x[:n], y[:n]
    out = {"x": x, "y": y, "adv": {}}
    p = cache_path(adversarials_name(split, n))
    if p.exists():
        out = torch.load(p)
    for a, ap in SUITES["paper-mnist"]["attacks"]:
        label = unit_label(a, ap)
        if label in out["adv"]:
            continue
        t0 = time.perf_counter()
        out["adv"][label] = run_attack(model, a, x, y, ap, seed=0).x_adv
        acc = float((model.predict(out["adv"][label]) == y).float().mean())
        print(f"{label}: acc {acc:.3f} in {time.perf_counter() - t0:.1f}s", flush=True)
        torch.save(out, p)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tune", int(sys.argv[2]) if len(sys.argv) > 2 else 150)
