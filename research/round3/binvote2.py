"""Round 3, §P6 (tune/calib only): the binarised vote only for large perturbations (abnormal
conv1 share above `pocket_level`); small ones keep the raw vote and the pocket rule."""
import torch
from research.common import binarised_bank, setup
from nip_core.defenses import DEFENSES
from nip_core.label_free import neighbour_selector, nip_targets, _outputs
m, d, sets = setup()
y = d["y"]
xc, yc = sets["calib"]
p = DEFENSES["nip"].params_for(m)
sel = neighbour_selector(m, ["conv1"], p["neighbours"], p["per_class"], p["vote_weight"])
decs = {k: nip_targets(m, sel, x, p, seed=0) for k, (x, _) in sets.items()}
for t in (0.5, 0.4):
  bank = binarised_bank(m, t)
  for level in (0.0, 0.01, 0.02, 0.025, 0.03):
    for k_nb, w in ((10, 30.0), (10, 0.0), (25, 0.0)):
        res, lost = {}, {}
        for k, (x, yy) in sets.items():
            dec = decs[k]
            o, _ = _outputs(m, (x > t).float(), ["conv1"])
            v = bank.votes(bank.flat(o["conv1"]), k_nb, 10, w)
            big = dec["scores"]["abnormal:conv1"] > level
            tgt = torch.where(big & ~dec["pocket"], v.argmax(1), dec["target"])
            res[k] = float((torch.where(dec["flagged"], tgt, dec["pred"]) == yy).float().mean())
        adv = [res[k] for k in d["adv"]]
        print(f"t {t} level {level:.3f} k {k_nb} w {w:4.0f}: adv {sum(adv)/7:.4f} benign {res['benign']:.3f} "
              f"calib {res['calib']:.4f} | " + " ".join(f"{a:.3f}" for a in adv))
