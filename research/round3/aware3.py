"""Round 3, §P6 (tune only): the defense-aware attack against `nip` with and without the
binarised vote, over the attacker's settings (the attacker gets the strongest). 100 tune digits."""
import itertools
import sys
import torch
from nip_core.models import load_model
from nip_core.data import heldout_split
from nip_core.attacks import run_attack
from nip_core.defenses import apply_defense
torch.set_num_threads(1)
m = load_model("lenet-mnist")
x, y = heldout_split(m, "tune")
x, y = x[:100], y[:100]
configs = {"nip (binarised vote)": {}, "nip (raw vote only)": {"vote_binarize": 0.0}}
# (eps, weight, surrogate, stealth); `aware3.py EPS WEIGHT SURROGATE STEALTH` for one setting
grid = list(itertools.product((0.3,), (10.0, 100.0), (0.05, 0.1, 0.3), (0.0, 1.0))) + \
    list(itertools.product((0.1,), (10.0, 100.0), (0.1,), (0.0, 1.0)))
if len(sys.argv) > 1:
    grid = [tuple(float(v) for v in sys.argv[1:5])]
for name, dp in configs.items():
    for eps, w, sur, st in grid:
        ap = {"eps": eps, "weight": w, "surrogate": sur, "stealth": st, "eps_step": eps / 30, "max_iter": 40}
        adv = run_attack(m, "nip-aware", x, y, ap, seed=0, against=dp).x_adv
        und = float((m.predict(adv) == y).float().mean())
        xd = apply_defense(m, "nip", adv, dp, seed=0).x_def
        acc = float((m.predict(xd) == y).float().mean())
        print(f"{name:22s} eps {eps} weight {w:5.0f} surrogate {sur} stealth {st}: undefended {und:.2f} nip {acc:.2f}", flush=True)
