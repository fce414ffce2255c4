"""Score candidate-selection rules offline on stored features (research/round1/features.py).

Usage: PYTHONPATH=. .venv/bin/python research/round1/rules.py TAG [--search]
e.g.   PYTHONPATH=. .venv/bin/python research/round1/rules.py fc1-b0.3-s20-a0.03-k0.2-tune --search
"""
from __future__ import annotations

import itertools
import sys

import torch

from research.common import load_cached

REPS = ["conv1n", "conv1m", "conv2n", "conv2m", "fc1n", "fc1m", "fc2n", "fc2m"]


def margin(lg):  # lg [n, 10(cand), 10(logit)] → margin of candidate c on its own x_c
    own = lg.diagonal(dim1=1, dim2=2)
    other = lg.clone()
    idx = torch.arange(10)
    other[:, idx, idx] = float("-inf")
    return own - other.amax(2)


def acc_of(s, sel):
    n = len(sel)
    pred = s["logits_def"][torch.arange(n), sel].argmax(1)
    return pred


def report(feat, rules, y):
    names = list(feat["sets"])
    print(f"{'rule':40s} " + " ".join(f"{k[:10]:>10s}" for k in names) + "   adv-mean")
    for rname, fn in rules.items():
        accs = []
        for k in names:
            s = feat["sets"][k]
            sel = fn(s)
            accs.append(float((acc_of(s, sel) == y).float().mean()))
        print(f"{rname:40s} " + " ".join(f"{a:10.3f}" for a in accs) + f"   {sum(accs[1:]) / (len(accs) - 1):.3f}")


def fitsum(s, reps, which="fit_def"):
    return sum(s[which][r].log() for r in reps)


def main(tag):
    feat = load_cached(f"feat-{tag}.pt", "PYTHONPATH=. .venv/bin/python research/round1/features.py LAYERS BUDGET STEPS STEP_SIZE (see its docstring)")
    y = feat["y"]
    rules = {
        "undefended (input pred)": lambda s: s["logits_in"].argmax(1),
        "oracle": lambda s: y,
        "margin K=10": lambda s: margin(s["logits_def"]).argmax(1),
    }
    for r in REPS:
        rules[f"fit_def {r}"] = lambda s, r=r: (-s["fit_def"][r]).argmax(1)
    for r in REPS:
        rules[f"fit_in {r}"] = lambda s, r=r: (-s["fit_in"][r]).argmax(1)
    for combo in (["conv1m", "conv2m"], ["conv2m", "fc1n"], ["conv1m", "conv2m", "fc1n", "fc2n"],
                  ["conv2n", "fc1n", "fc2n"], ["conv1n", "conv2n", "fc1n", "fc2n"], REPS):
        rules["fit_def log-sum " + "+".join(combo)] = lambda s, c=combo: (-fitsum(s, c)).argmax(1)
    report(feat, rules, y)
    if "--search" in sys.argv:
        best = []
        for m in range(1, 5):
            for combo in itertools.combinations(REPS, m):
                accs = [float((acc_of(s, (-fitsum(s, combo)).argmax(1)) == y).float().mean())
                        for s in feat["sets"].values()]
                best.append((sum(accs[1:]) / (len(accs) - 1), accs[0], combo))
        for b in sorted(best, reverse=True)[:10]:
            print(f"{b[0]:.3f} benign {b[1]:.3f} {'+'.join(b[2])}")


if __name__ == "__main__":
    main(sys.argv[1])
