"""Round 3, §P6 (tune/calib only): a vote the attacker can hardly move. MNIST pixels are
nearly binary, so an L∞ perturbation of 0.3 cannot flip a pixel of 0 or 1 across 0.5: after
binarising at 0.5 only mid-grey (edge) pixels can change. Vote among the nearest benign digits
by the conv1 maps of the *binarised* input (bank built the same way), and compare class-choice
accuracy with the registered vote (raw conv1), with the registered detectors and pocket rule."""
import torch
from research.common import binarised_bank, setup
from nip_core.defenses import DEFENSES
from nip_core.label_free import neighbour_selector, nip_targets, _outputs
m, d, sets = setup()
y = d["y"]
xc, yc = sets["calib"]
p = DEFENSES["nip"].params_for(m)
sel = neighbour_selector(m, ["conv1"], p["neighbours"], p["per_class"], p["vote_weight"])

def binar(x, t=0.5):
    return (x > t).float()

for t in (0.3, 0.5):
  for k_nb, w in ((10, 30.0), (25, 30.0), (10, 0.0)):
    bank = binarised_bank(m, t)
    res = {}
    for k, (x, yy) in sets.items():
        dec = nip_targets(m, sel, x, p, seed=0)
        o, _ = _outputs(m, binar(x, t), ["conv1"])
        v = bank.votes(bank.flat(o["conv1"]), k_nb, 10, w)
        tgt = torch.where(dec["pocket"], dec["target"], v.argmax(1))
        res[k] = float((torch.where(dec["flagged"], tgt, dec["pred"]) == yy).float().mean())
        res[k + ":vote"] = float((v.argmax(1) == yy).float().mean())
    adv = [res[k] for k in d["adv"]]
    print(f"t {t} k {k_nb} w {w}: adv {sum(adv)/7:.4f} benign {res['benign']:.3f} calib {res['calib']:.4f} | "
          + " ".join(f"{a:.3f}" for a in adv) + " | raw vote acc " + " ".join(f"{res[k + ':vote']:.3f}" for k in sets))
