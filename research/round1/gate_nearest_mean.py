"""Research (tune split, research cache: research/common.py): §3-4.1 nearest-class-mean selection on
the input, gated (reads feat-*.pt from features.py). See docs/nip-research.md."""
import torch
from research.common import load_cached
f = load_cached("feat-fc1-b0.3-s20-a0.03-k0.2-tune.pt", "PYTHONPATH=. .venv/bin/python research/round1/features.py fc1 0.3 20 0.03"); y = f["y"]
def run(reps, taus, w=None):
    for tau in taus:
        accs = []
        for k, s in f["sets"].items():
            d = sum(s["fit_in"][r].log() for r in reps)  # [n,10] log distances
            p = s["logits_in"].argmax(1)
            best = d.argmin(1)
            gap = d.gather(1, p.view(-1,1)).squeeze(1) - d.min(1).values
            sel = torch.where(gap > tau, best, p)
            pred = s["logits_def"][torch.arange(len(y)), sel].argmax(1)
            pred = torch.where(gap > tau, pred, p)
            accs.append(float((pred == y).float().mean()))
        print("+".join(reps), tau, " ".join(f"{a:.3f}" for a in accs), f"mean {sum(accs[1:])/(len(accs)-1):.3f}")
for reps in (["conv2m"], ["conv1m","conv2m"], ["conv2m","conv2n"]):
    run(reps, [0, 0.05, 0.1, 0.2, 0.3, 0.5])
