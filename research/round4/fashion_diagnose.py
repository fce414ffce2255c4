"""Round 4, §Q2: why the MNIST-tuned label-free nip fails on Fashion-MNIST (tune split only).

For each attack: the share of adversarials the detectors flag, how often the neighbour vote's
top class is the true class (flagged ones), and the vote's accuracy on benign tune images,
for a few vote settings.

    PYTHONPATH=. .venv/bin/python research/round4/fashion_diagnose.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nip_core.attacks import run_attack  # noqa: E402
from nip_core.data import heldout_split  # noqa: E402
from nip_core.defenses import DEFENSES  # noqa: E402
from nip_core.label_free import nip_targets, selector_for  # noqa: E402
from nip_core.models import load_model  # noqa: E402

ATTACKS = [("fgsm", {"eps": 0.05}), ("fgsm", {"eps": 0.1}), ("pgd", {"eps": 0.1}), ("deepfool", {})]
VARIANTS = {"default (binarise .4)": {}, "raw vote": {"vote_binarize": 0.0},
            "raw vote, conv2": {"vote_binarize": 0.0, "select_layers": "conv2"},
            "raw vote, conv1+conv2": {"vote_binarize": 0.0, "select_layers": "conv1+conv2"},
            "false alarm .02": {"false_alarm": 0.02},
            "raw, conv1+conv2, gate off": {"vote_binarize": 0.0, "select_layers": "conv1+conv2", "gate": 1.0},
            "raw, conv2, gate off": {"vote_binarize": 0.0, "select_layers": "conv2", "gate": 1.0},
            "raw, conv1+conv2, gate off, fa .01": {"vote_binarize": 0.0, "select_layers": "conv1+conv2", "gate": 1.0,
                                                   "false_alarm": 0.01}}
ONLY = sys.argv[1:]


def main(n: int = 150) -> None:
    m = load_model("lenet-fashion")
    x, y = heldout_split(m, "tune")
    x, y = x[:n], y[:n]
    advs = {f"{a}{p}": run_attack(m, a, x, y, p, seed=0).x_adv for a, p in ATTACKS}
    for name, over in VARIANTS.items():
        if ONLY and name not in ONLY:
            continue
        p = DEFENSES["nip"].params_for(m, over)
        sel = selector_for(m, p)
        ben = nip_targets(m, sel, x, p)
        vote_ok = (ben["order"][:, 0] == y).float().mean()
        line = [f"{name:24s} benign: flagged {ben['flagged'].float().mean():.3f}, vote right {vote_ok:.3f}"]
        for k, xa in advs.items():
            d = nip_targets(m, sel, xa, p)
            f = d["flagged"]
            right = (d["target"][f] == y[f]).float().mean() if f.any() else torch.tensor(float("nan"))
            line.append(f"  {k}: flagged {f.float().mean():.3f}, target right {right:.3f}")
        print("\n".join(line), flush=True)


if __name__ == "__main__":
    main()
