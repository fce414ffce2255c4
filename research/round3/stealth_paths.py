"""Round 3, §P6 (tune only): where the stealthy aware attack's adversarials go in `nip`'s
decision (not flagged / vote / pocket rule), and how often each is right. It measures today's
`nip` (variant C, binarised vote for every flagged input); §P6's .23 was variant A, which is gone."""
import sys
import torch
from nip_core.models import load_model
from nip_core.data import heldout_split
from nip_core.attacks import run_attack
from nip_core.defenses import DEFENSES
from nip_core.label_free import VOTE_SOURCES, nip_targets, selector_for
torch.set_num_threads(1)
m = load_model("lenet-mnist")
x, y = heldout_split(m, "tune")
x, y = x[:100], y[:100]
extra = {} if len(sys.argv) < 2 else {"small_level": float(sys.argv[1])}
p = DEFENSES["nip"].params_for(m, extra)
sel = selector_for(m, p)
for st in (0.0, 1.0):
    adv = run_attack(m, "nip-aware", x, y, {"weight": 100.0, "stealth": st}, seed=0, against=extra).x_adv
    dec = nip_targets(m, sel, adv, p, seed=0)
    right = torch.where(dec["flagged"], dec["target"], dec["pred"]) == y
    print(f"stealth {st}: class-choice right {float(right.float().mean()):.2f}; "
          f"abnormal share median {float(dec['scores']['abnormal:conv1'].median()):.4f}")
    paths = {"not flagged": ~dec["flagged"]}
    for i, name in enumerate(VOTE_SOURCES):
        paths[name] = dec["flagged"] & (dec["source"] == i)
    for name, msk in paths.items():
        print(f"   {name:15s} n={int(msk.sum()):3d} right={int((right & msk).sum())}")
