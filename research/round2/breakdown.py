"""HISTORICAL: §R1's table needs the round-1 selector (ood:conv1/ood:conv2 detectors calibrated on
training digits, plain majority vote), which `nip_core/label_free.py` dropped in round 2. The script
still runs, against today's `NeighbourSelector` (out-of-range detectors calibrated on calib, weighted
vote) with conv1 + conv2 and k = 25, so its numbers are not R1's.

Round 2, §R1 (tune split): where the variant loses: missed vs wrong vote, per set.
Index: research/README.md."""
import torch
from nip_core.label_free import neighbour_selector
from research.common import tune_sets
m, d, sets = tune_sets(threads=2)
y = d["y"]
sel = neighbour_selector(m, ["conv1", "conv2"], 25, 400)
print("set            unflag_wrong flag_voteWrong flag_voteRight unflag_right  decision_acc  vote_acc_all")
for fa in (0.01, 0.02, 0.03):
    accs=[]
    for s, x in sets.items():
        fl, votes, pred = sel(x, fa)
        w = torch.sort(votes, dim=1, descending=True, stable=True).indices[:, 0]
        dec = torch.where(fl, w, pred)
        acc = float((dec == y).float().mean()); accs.append(acc)
        print(f"{fa} {s[:14]:14s} {int(((~fl)&(pred!=y)).sum()):4d} {int((fl&(w!=y)).sum()):4d} {int((fl&(w==y)).sum()):4d} {int(((~fl)&(pred==y)).sum()):4d}   {acc:.3f}  {float((w==y).float().mean()):.3f}")
    print(fa, "mean adv", sum(accs[1:])/7, "benign", accs[0])
