"""Round 2, §R5 (tune and calib splits): the runner-up rule for small perturbations (not adopted).
Index: research/README.md."""
import torch
from nip_core.data import heldout_split
from nip_core.label_free import neighbour_selector
from research.common import tune_sets
m, d, _ = tune_sets(threads=1)
y = d["y"]
xc, yc = heldout_split(m, "calib")
sel = neighbour_selector(m, ["conv1"], 10, 400, 30.0)
sets = {"calib": (xc, yc), "benign": (d["x"], y)} | {k: (v, y) for k, v in d["adv"].items()}
th = sel.thresholds(0.005)
for mode in ("vote", "runnerup-if-lowmargin", "top2vote-if-lowmargin"):
    res = {}
    for k, (x, yy) in sets.items():
        fl, v, p = sel(x, 0.005, 0.1)
        s, _, _ = sel.scores(x)
        lg = m.logits(x); top2 = lg.topk(2, 1).indices
        low = s["low_margin"] > th["low_margin"]
        c = v.argmax(1)
        if mode == "runnerup-if-lowmargin":
            c = torch.where(low, top2[:, 1], c)
        elif mode == "top2vote-if-lowmargin":
            r = torch.full_like(v, -1).scatter(1, top2, v.gather(1, top2)).argmax(1)
            c = torch.where(low, r, c)
        res[k] = float((torch.where(fl, c, p) == yy).float().mean())
    adv = [res[k] for k in d["adv"]]
    print(f"{mode:24s} adv {sum(adv)/7:.4f} tune-benign {res['benign']:.3f} calib {res['calib']:.4f} |", " ".join(f"{a:.3f}" for a in adv))
print("--- runner-up if low margin AND abnormal share <= level")
for level in (0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02):
    res = {}
    for k, (x, yy) in sets.items():
        fl, v, p = sel(x, 0.005, 0.1)
        s, _, _ = sel.scores(x)
        top2 = m.logits(x).topk(2, 1).indices
        small = (s["low_margin"] > th["low_margin"]) & (s["abnormal:conv1"] <= level)
        c = torch.where(small, top2[:, 1], v.argmax(1))
        res[k] = float((torch.where(fl, c, p) == yy).float().mean())
    adv = [res[k] for k in d["adv"]]
    print(f"{level:.4f} adv {sum(adv)/7:.4f} tune-benign {res['benign']:.3f} calib {res['calib']:.4f} |", " ".join(f"{a:.3f}" for a in adv))
