"""Round 3, §P12 (tune only): for each cached tune set, where the registered `nip`'s class
choice goes wrong: not flagged, flagged and the vote wrong, or the pocket rule wrong."""
import torch
from research.common import setup
from nip_core.defenses import DEFENSES
from nip_core.label_free import VOTE_SOURCES, nip_targets, selector_for
m, d, sets = setup()
p = DEFENSES["nip"].params_for(m)
sel = selector_for(m, p)
for k, (x, yy) in sets.items():
    dec = nip_targets(m, sel, x, p, seed=0)
    right = torch.where(dec["flagged"], dec["target"], dec["pred"]) == yy
    wrong = ~right
    parts = {"not flagged": wrong & ~dec["flagged"]}
    for i, name in enumerate(VOTE_SOURCES):
        parts[name] = wrong & dec["flagged"] & (dec["source"] == i)
    extra = ""
    if int(parts["vote"].sum()):
        i = torch.nonzero(parts["vote"]).flatten()
        extra = (f" | vote-wrong: true class 2nd in vote {int((dec['order'][i, 1] == yy[i]).sum())}, "
                 f"model runner-up true {int((m.logits(x[i]).topk(2, 1).indices[:, 1] == yy[i]).sum())}, "
                 f"abnormal share {[round(float(v), 3) for v in dec['scores']['abnormal:conv1'][i]]}")
    print(f"{k:16s} wrong {int(wrong.sum()):3d}: " + ", ".join(f"{n} {int(v.sum())}" for n, v in parts.items()) + extra)
