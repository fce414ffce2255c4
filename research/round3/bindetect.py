"""HISTORICAL: needs the prototype's `NeighbourSelector.binary_votes(x)` (a binarised vote computed
beside the raw one) and a registered `nip` whose selector votes on the raw input (variant A). Neither
exists any more: variant C was registered, and the selector now votes on the binarised input itself
(`vote_binarize`). The script imports, then stops with this note before any work.

Round 3, §P6 (tune/calib only): detection and vote both on the binarised input.

Variants (all keep the abnormal-neuron detector on the raw conv1 maps, the gate and the pocket
rule for small perturbations):
  A  registered so far: raw vote for no-support and small perturbations, binarised vote for large;
  B  binarised vote for every flagged input the pocket rule does not take;
  C  B, and the no-support detector counts votes of the binarised vote (recalibrated on calib);
  D  C, with both no-support detectors (raw and binarised).
Class-choice accuracy on the cached tune sets, calib, and the stealthy and plain aware attacks
against A (100 tune digits)."""
import torch
from research.common import setup
from nip_core.attacks import run_attack
from nip_core.defenses import DEFENSES
from nip_core.label_free import NeighbourSelector, nip_targets, selector_for
if not hasattr(NeighbourSelector, "binary_votes"):
    raise SystemExit(__doc__.split("\n\n")[0])
m, d, sets = setup()
y = d["y"]
xc, yc = sets["calib"]
p = DEFENSES["nip"].params_for(m)
sel = selector_for(m, p)
xt, yt = d["x"][:100], y[:100]
for st in (0.0, 1.0, 100.0, 10000.0):
    sets[f"aware-st{st:g}"] = (run_attack(m, "nip-aware", xt, yt, {"weight": 100.0, "stealth": st}, seed=0).x_adv, yt)
fa = p["false_alarm"]
ref = {}
bin_calib = sel.binary_votes(xc)
_, _, pred_c = sel.scores(xc)
ns_bin_ref = 1 - bin_calib.gather(1, pred_c.view(-1, 1)).squeeze(1)
th_bin = torch.quantile(ns_bin_ref, 1 - fa)
gate_th = torch.quantile(sel.reference_scores["abnormal:conv1"], 1 - p["gate"])
th = sel.thresholds(fa)
print(f"no-support thresholds: raw {float(th['no_support']):.3f} binarised {float(th_bin):.3f}")
rows = {v: {} for v in "ABCD"}
for k, (x, yy) in sets.items():
    dec = nip_targets(m, sel, x, p, seed=0)
    s = dec["scores"]; pred = dec["pred"]
    bv = sel.binary_votes(x)
    ns_bin = 1 - bv.gather(1, pred.view(-1, 1)).squeeze(1)
    abn_fire = s["abnormal:conv1"] > th["abnormal:conv1"]
    gated = s["abnormal:conv1"] > gate_th
    lowm = s["low_margin"] > th["low_margin"]
    flag_raw = dec["flagged"]
    flag_C = abn_fire | (gated & (lowm | (ns_bin > th_bin)))
    flag_D = flag_C | (gated & (s["no_support"] > th["no_support"]))
    tgt_B = torch.where(dec["pocket"], dec["target"], bv.argmax(1))
    for v, fl, tgt in (("A", flag_raw, dec["target"]), ("B", flag_raw, tgt_B), ("C", flag_C, tgt_B), ("D", flag_D, tgt_B)):
        rows[v][k] = float((torch.where(fl, tgt, pred) == yy).float().mean())
names = list(sets)
print("variant adv-mean |", " ".join(n[:9] for n in names))
for v, r in rows.items():
    adv = [r[k] for k in d["adv"]]
    print(f"{v}      {sum(adv)/7:.4f} |", " ".join(f"{r[k]:.4f}"[:9].rjust(9) for k in names))
