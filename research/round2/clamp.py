"""Round 2, §R3 (tune split): model accuracy after clamping neurons to their benign range
(negative). Index: research/README.md."""
import torch, torch.nn.functional as Fn
from nip_core.data import benign_reference
from research.common import tune_sets
m, d, sets = tune_sets(threads=2)
y = d["y"]
xr, yr = benign_reference(m, 400)
acts = {}
def grab(name):
    def h(_m, _i, o): acts[name] = o
    return h
hs = [m.layer(l).register_forward_hook(grab(l)) for l in ("conv1", "conv2", "fc1")]
with torch.no_grad(): m.net(xr)
for h in hs: h.remove()
R = {k: v.clone() for k, v in acts.items()}
def bounds(l, q):
    v = R[l]
    if q == 1.0: return v.amin(0), v.amax(0)
    return torch.quantile(v.flatten(1), 1 - q, dim=0).view(v.shape[1:]), torch.quantile(v.flatten(1), q, dim=0).view(v.shape[1:])
def clamped_logits(x, cl):
    hs = []
    for l, (lo, hi) in cl.items():
        hs.append(m.layer(l).register_forward_hook(lambda _m, _i, o, lo=lo, hi=hi: torch.maximum(torch.minimum(o, hi), lo)))
    try:
        with torch.no_grad(): return m.net(x)
    finally:
        for h in hs: h.remove()
for cfg in [("conv1", 1.0), ("conv1", 0.999), ("conv1", 0.99), ("conv1", 0.95), ("conv2", 1.0), ("conv2", 0.99)]:
    cl = {cfg[0]: bounds(*cfg)}
    accs = [float((clamped_logits(x, cl).argmax(1) == y).float().mean()) for x in sets.values()]
    print(cfg, " ".join(f"{a:.3f}" for a in accs), f"mean adv {sum(accs[1:])/7:.3f}")
cl = {"conv1": bounds("conv1", 0.99), "conv2": bounds("conv2", 0.99)}
accs = [float((clamped_logits(x, cl).argmax(1) == y).float().mean()) for x in sets.values()]
print("both .99", " ".join(f"{a:.3f}" for a in accs), f"mean adv {sum(accs[1:])/7:.3f}")
