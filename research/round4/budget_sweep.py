"""Round 4, §Q1: does neuron influence do the work? The oracle pair under a budget sweep.

For each tune image and attack, the smallest L∞ budget at which ``nip-oracle`` (NIP toward the
true class's front/tail neurons) and ``counter-attack-oracle`` (a logit-targeted PGD toward the
true class, no neurons) restore the true class, with the same steps (20) and step size
(budget / 8) at every budget. Tune split only.

    PYTHONPATH=. .venv/bin/python research/round4/budget_sweep.py lenet-mnist lenet-fashion \
        --out docs/results/ablation-budget-sweep.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nip_core.attacks import run_attack  # noqa: E402
from nip_core.data import heldout_split  # noqa: E402
from nip_core.defenses import apply_defense  # noqa: E402
from nip_core.models import load_model  # noqa: E402

BUDGETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
ATTACKS = {"lenet-mnist": [("fgsm", {"eps": 0.2}), ("pgd", {"eps": 0.3}), ("deepfool", {})],
           "lenet-fashion": [("fgsm", {"eps": 0.1}), ("pgd", {"eps": 0.1, "eps_step": 0.01}), ("deepfool", {})]}
PAIR = ("nip-oracle", "counter-attack-oracle")


def sweep(model_name: str, n: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = load_model(model_name)
    x, y = heldout_split(model, "tune")
    x, y = x[:n], y[:n]
    out = {"model": model_name, "split": "tune", "n": len(y), "budgets": list(BUDGETS), "steps": 20,
           "step_size": "budget / 8", "attacks": {}}
    for a, ap in ATTACKS[model_name]:
        t0 = time.perf_counter()
        adv = run_attack(model, a, x, y, ap, seed=seed).x_adv
        fooled = model.predict(adv) != y
        res = {"fooled": int(fooled.sum())}
        for d in PAIR:
            smallest = torch.full((len(y),), float("inf"))
            rate = []
            for b in BUDGETS:
                xd = apply_defense(model, d, adv, {"budget": b, "step_size": b / 8, "steps": 20}, y=y, seed=seed).x_def
                ok = (model.predict(xd) == y) & fooled
                smallest = torch.where(ok & torch.isinf(smallest), torch.tensor(b), smallest)
                rate.append(float(ok.sum() / max(1, int(fooled.sum()))))
            restored = smallest[fooled]
            res[d] = {"restore_rate_by_budget": rate,
                      "median_smallest_budget": float(restored.median()) if len(restored) else None,
                      "never_restored": int(torch.isinf(restored).sum())}
        both = [res[d] for d in PAIR]
        res["seconds"] = time.perf_counter() - t0
        out["attacks"][f"{a}{ap or ''}"] = res
        print(model_name, a, ap, {d: (r["median_smallest_budget"], [round(v, 2) for v in r["restore_rate_by_budget"]])
                                  for d, r in zip(PAIR, both)}, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    result = {"question": "which restores with the smaller budget: NIP (neurons) or a logit counter-attack?",
              "pair": list(PAIR), "runs": [sweep(m, args.n) for m in args.models]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
