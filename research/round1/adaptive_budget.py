"""Research (tune split, cached adversarials, research/common.py): §5.1 fixed vs adaptive NIP budget
on flagged inputs. See docs/nip-research.md."""
import torch
import torch.nn.functional as Fn
from research.round1.detectors import S, SR, m, sets, y   # the shared set-up and scores
from nip_core.influence import influence_profile
from nip_core.label_free import layer_outputs
prof = influence_profile(m, "fc1")
def nip_b(x, cls, budget, steps=20, step_size=0.03):
    fm = torch.stack([prof.masks(int(c), 0.2)[0] for c in cls]).float(); tm = torch.stack([prof.masks(int(c), 0.2)[1] for c in cls]).float()
    fm, tm = fm / fm.sum(1, keepdim=True), tm / tm.sum(1, keepdim=True)
    b = budget.view(-1, 1, 1, 1); delta = torch.zeros_like(x)
    with m.lock, torch.enable_grad():
        for _ in range(steps):
            xd = (x + delta).requires_grad_(True)
            o, _ = layer_outputs(m, xd, ["fc1"], grad=True); a = o["fc1"]
            g, = torch.autograd.grad(((a * fm).sum(1) - (a * tm).sum(1)).sum(), xd)
            delta = torch.maximum(torch.minimum(delta + step_size * g.sign(), b), -b)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()
dets = ["c1r_ood", "c1r_nosupport", "lowconf"]
for qq in (0.9, 0.95):
    th = {k: torch.quantile(SR[k], qq) for k in dets}
    for bmode in ("0.1", "0.2", "0.3", "adapt"):
        a = []
        for s, x in sets.items():
            sc = S[s]; flag = torch.zeros(len(y), dtype=torch.bool)
            for k in dets: flag |= sc[k] > th[k]
            cls = sc["c1r_votes"].argmax(1)
            idx = torch.nonzero(flag).flatten()
            pred = sc["p"].clone()
            if len(idx):
                if bmode == "adapt":
                    b = ((sc["c2s_ood"][idx] + 0.70) * 1.0).clamp(0.05, 0.3)
                else:
                    b = torch.full((len(idx),), float(bmode))
                xd = nip_b(x[idx], cls[idx], b)
                pred[idx] = m.predict(xd)
            a.append(float((pred == y).float().mean()))
        print(qq, bmode, " ".join(f"{v:.3f}" for v in a), f" mean {sum(a[1:])/(len(a)-1):.3f}", flush=True)
