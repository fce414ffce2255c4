"""Round 3, §P10: the defense-aware attack under an L2 budget, where binarisation gives no
guarantee (an L2 budget of 2 can move about 16 pixels all the way across the threshold).
100 tune digits; `aware_l2.py EPS [EPS ...]`."""
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
for eps in [float(v) for v in sys.argv[1:]] or [1.0, 2.0, 3.0]:
    for name, dp in (("binarised vote", {}), ("raw vote", {"vote_binarize": 0.0})):
        for w, st in ((100.0, 0.0), (10.0, 0.0), (100.0, 1.0)):
            ap = {"norm": "2", "eps": eps, "eps_step": eps / 16, "weight": w, "stealth": st}
            adv = run_attack(m, "nip-aware", x, y, ap, seed=0, against=dp).x_adv
            l2 = float((adv - x).flatten(1).norm(dim=1).max())
            und = float((m.predict(adv) == y).float().mean())
            acc = float((m.predict(apply_defense(m, "nip", adv, dp, seed=0).x_def) == y).float().mean())
            print(f"L2 {eps} {name:15s} weight {w:5.0f} stealth {st}: max L2 {l2:.2f} undefended {und:.2f} nip {acc:.2f}",
                  flush=True)
