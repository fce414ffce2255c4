"""Research (tune split, cached adversarials, research/common.py): §3 neighbour votes per
layer/embedding, §4.1 gates per layer. See docs/nip-research.md."""
import torch, itertools
import torch.nn.functional as Fn
from nip_core.data import benign_reference
from nip_core.label_free import layer_outputs
from research.common import tune_sets
m, d, sets = tune_sets(threads=1)
y = d["y"]
xr, yr = benign_reference(m, 400)
def feats(x):
    with torch.no_grad(), m.lock:
        o, lg = layer_outputs(m, x, ["conv1", "conv2", "fc1"])
    return {"conv2m": o["conv2"].flatten(1), "conv1m": o["conv1"].flatten(1), "pix": x.flatten(1),
            "conv1p": Fn.avg_pool2d(o["conv1"], 2).flatten(1), "conv2p": Fn.avg_pool2d(o["conv2"], 2).flatten(1)}, lg
R, _ = feats(xr)
F = {k: feats(x) for k, x in sets.items()}
def votes_of(rep, X, k=25, std=True, cos=True):
    A = R[rep]; mu = A.mean(0); sd = (A.std(0) + 1e-3) if std else torch.ones_like(mu)
    An = (A - mu) / sd; Q = (X - mu) / sd
    if cos:
        sim = Fn.normalize(Q, dim=1) @ Fn.normalize(An, dim=1).T
    else:
        sim = -torch.cdist(Q, An)
    top = sim.topk(k, 1).indices
    return Fn.one_hot(yr[top], 10).sum(1).float() / k
def line(vs):
    a = [float((v.argmax(1) == y).float().mean()) for v in vs]
    return " ".join(f"{x:.3f}" for x in a) + f"  mean {sum(a[1:])/(len(a)-1):.3f}"
for rep, k, std, cos in [("conv2m",25,True,True),("conv2m",10,True,True),("conv2m",50,True,True),("conv2m",25,False,True),
                         ("conv2m",25,True,False),("conv2p",25,True,True),("conv1m",25,True,True),("conv1p",25,False,True),("pix",25,False,True)]:
    print(rep, k, std, cos, line([votes_of(rep, F[s][0][rep], k, std, cos) for s in sets]))
# binarized input to selector (feature-squeezing upper bound check)
Fb = {s: feats((x > 0.5).float()) for s, x in sets.items()}
print("binarized conv2m", line([votes_of("conv2m", Fb[s][0]["conv2m"]) for s in sets]))
print("binarized model", " ".join(f"{float((Fb[s][1].argmax(1)==y).float().mean()):.3f}" for s in sets))
print("---- combos + gate (keep pred if its vote share >= g)")
cfg = {"c2s": ("conv2m", True), "c1r": ("conv1p", False), "c2r": ("conv2m", False), "c2pr": ("conv2p", False)}
V = {name: {s: votes_of(rep, F[s][0][rep], 25, std) for s in sets} for name, (rep, std) in cfg.items()}
for combo in (["c2s"], ["c1r"], ["c2r"], ["c1r", "c2s"], ["c1r", "c2r"], ["c1r", "c2s", "c2r"], ["c2pr"], ["c1r","c2pr"]):
    vs = {s: sum(V[c][s] for c in combo) / len(combo) for s in sets}
    print("+".join(combo), "nogate", line([vs[s] for s in sets]))
    for g in (0.05, 0.1, 0.2, 0.3):
        a = []
        for s in sets:
            p = F[s][1].argmax(1); v = vs[s]
            keep = v.gather(1, p.view(-1,1)).squeeze(1) >= g
            a.append(float((torch.where(keep, p, v.argmax(1)) == y).float().mean()))
        print("   gate", g, " ".join(f"{x:.3f}" for x in a), f" mean {sum(a[1:])/(len(a)-1):.3f}")
