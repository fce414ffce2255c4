"""Round 2, §R6 (tune and calib splits): the gate (no-support and low-margin count only above an
abnormal-share quantile). Index: research/README.md."""
import torch
from nip_core.data import heldout_split
from nip_core.label_free import neighbour_selector
from research.common import tune_sets
m, d, _ = tune_sets(threads=1)
y = d["y"]
xc, yc = heldout_split(m, "calib")
sel = neighbour_selector(m, ["conv1"], 10, 400, 30.0)
sets = {"calib": (xc, yc), "benign": (d["x"], y)} | {k: (v, y) for k, v in d["adv"].items()}
S = {k: sel.scores(x) for k, (x, _) in sets.items()}
def run(fa, fa2, lowm_gate=None):
    th = sel.thresholds(fa); th2 = sel.thresholds(fa2) if fa2 else None
    out = {}
    for k, (x, yy) in sets.items():
        s, v, p = S[k]
        ab = s["abnormal:conv1"] > th["abnormal:conv1"]
        lm = s["low_margin"] > th["low_margin"]
        ns = s["no_support"] > th["no_support"]
        if th2 is not None: ns &= s["abnormal:conv1"] > th2["abnormal:conv1"]
        if lowm_gate is not None: lm &= s["abnormal:conv1"] > sel.thresholds(lowm_gate)["abnormal:conv1"]
        fl = ab | lm | ns
        out[k] = float((torch.where(fl, v.argmax(1), p) == yy).float().mean())
    adv = [out[k] for k in d["adv"]]
    return f"adv {sum(adv)/7:.4f} tune-benign {out['benign']:.3f} calib {out['calib']:.4f} | " + " ".join(f"{a:.3f}" for a in adv)
for fa in (0.005, 0.01):
    print(fa, "current", run(fa, None))
    for fa2 in (0.05, 0.1, 0.2, 0.3):
        print(fa, "nosup&abn", fa2, run(fa, fa2))
        print(fa, "nosup&abn + lowm&abn", fa2, run(fa, fa2, fa2))
print("abn quantiles calib", [round(float(t), 5) for t in torch.quantile(sel.reference_scores["abnormal:conv1"], torch.tensor([.5, .7, .8, .9, .95, .99]))])
