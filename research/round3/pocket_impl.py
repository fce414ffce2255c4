"""Round 3, §P2, §P6 (tune/calib only): class-choice accuracy of the registered decision
(`label_free.nip_targets`, as `nip` runs it) with the pocket rule and the binarised vote off
and on. `pocket_impl.py AMP LEVEL BINARIZE` for one setting. Flagged inputs
count as right when NIP is pointed at the true class; unflagged ones when the model is right."""
import sys
import torch
from research.common import setup
from nip_core.defenses import DEFENSES
from nip_core.label_free import nip_targets, selector_for
m, d, sets = setup()
y = d["y"]
xc, yc = sets["calib"]
p = DEFENSES["nip"].params_for(m)
# (pocket amplitude, small_level, binarised-vote threshold); 0 switches a part off
grid = [(0.0, 0.025, 0.0)] + [(a, l, 0.0) for a in (0.05, 0.1, 0.15) for l in (0.02, 0.025, 0.03)]
if len(sys.argv) > 1:
    grid = [tuple(float(v) for v in sys.argv[1:4])]
for amp, level, binar in grid:
    q = p | {"pocket_amp": amp, "small_level": level, "vote_binarize": binar}
    res, npocket = {}, {}
    sel = selector_for(m, q)
    for k, (x, yy) in sets.items():
        dec = nip_targets(m, sel, x, q, seed=0)
        res[k] = float((torch.where(dec["flagged"], dec["target"], dec["pred"]) == yy).float().mean())
        npocket[k] = int(dec["pocket"].sum())
    adv = [res[k] for k in d["adv"]]
    print(f"amp {amp:.2f} level {level:.3f} binarize {binar:.2f}: adv {sum(adv)/7:.4f} benign {res['benign']:.3f} calib {res['calib']:.4f} | "
          + " ".join(f"{a:.3f}" for a in adv) + " | pocket " + " ".join(str(v) for v in npocket.values()))
