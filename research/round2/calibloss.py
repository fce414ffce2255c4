"""Round 2, §R5/§R6 (calib and tune splits): benign digits flagged and lost per detector. Index:
research/README.md."""
import torch
from nip_core.data import heldout_split
from nip_core.label_free import neighbour_selector
from research.common import tune_sets
m, d, _ = tune_sets(threads=1)
xc, yc = heldout_split(m, "calib")
sel = neighbour_selector(m, ["conv1"], 10, 400, 30.0)
for nm, (x, y) in {"calib": (xc, yc), "tune": (d["x"], d["y"])}.items():
    s, v, p = sel.scores(x)
    for fa in (0.0025, 0.005, 0.01):
        th = sel.thresholds(fa)
        w = v.argmax(1)
        tot = torch.zeros(len(y), dtype=torch.bool)
        parts = []
        for k, t in th.items():
            f = s[k] > t; tot |= f
            parts.append(f"{k} {int(f.sum())}/{int((f & (w != y)).sum())}")
        print(nm, fa, "flagged", int(tot.sum()), "lost", int((tot & (w != y)).sum()), "of", len(y), "|", ", ".join(parts))
