"""Round 2, §R4 (tune split): builds table2.pt (neighbour tables per embedding, abnormal shares) in
the research cache for rules3.py and c1var.py. Index: research/README.md."""
import torch, torch.nn.functional as Fn
from nip_core.data import benign_reference
from nip_core.label_free import layer_outputs
from research.common import cache_path, tune_sets
m, d, sets = tune_sets(threads=2)
y = d["y"]
xr, yr = benign_reference(m, 400)
L = ["conv1", "conv2", "fc1"]
def raw(x):
    outs = {l: [] for l in L}; lg = []
    with torch.no_grad(), m.lock:
        for i in range(0, len(x), 500):
            o, g = layer_outputs(m, x[i:i+500], L)
            for l in L: outs[l].append(o[l])
            lg.append(g)
    return {l: torch.cat(v) for l, v in outs.items()}, torch.cat(lg)
R, LR = raw(xr)
def reps(o, x):
    c1p = Fn.avg_pool2d(o["conv1"], 2).flatten(1)
    return {"c1p": c1p, "c2": o["conv2"].flatten(1), "px": x.flatten(1), "c2p": Fn.max_pool2d(o["conv2"], 2).flatten(1) if o["conv2"].shape[-1] > 4 else o["conv2"].flatten(1)}
RR = reps(R, xr)
mu = {k: v.mean(0) for k, v in RR.items()}; sd = {k: v.std(0) + 1e-3 for k, v in RR.items()}
STD = {"c1p": False, "c2": True, "px": False, "c2p": True}
def emb(k, v):
    return Fn.normalize((v - mu[k]) / sd[k] if STD[k] else v, dim=1)
ER = {k: emb(k, v) for k, v in RR.items()}
K = 50
def table(o, lg, x, self_ex=False):
    rp = reps(o, x); t = {"logits": lg}
    for k in RR:
        sim = emb(k, rp[k]) @ ER[k].T
        top = sim.topk(K + 1, 1)
        s0 = int(self_ex)
        t[k + "_sim"] = top.values[:, s0:K + s0]; t[k + "_lab"] = yr[top.indices[:, s0:K + s0]]
        # magnitude residual: raw distance to mean of 25 nearest (cosine) neighbours, relative to own norm
        nb = rp[k].new_zeros(0)
        idx = top.indices[:, s0:25 + s0]
        t[k + "_resid"] = (rp[k] - RR[k][idx].mean(1)).norm(dim=1) / RR[k][idx].norm(dim=2).mean(1)
    return t
TR = table(R, LR, xr, self_ex=True)
TS = {s: table(*raw(x), x) for s, x in sets.items()}
torch.save({"TR": TR, "yr": yr, "TS": TS, "y": y}, cache_path("table2.pt"))
print("saved")
# abnormal-neuron share at conv1 (stats from half A of the references, scores for half B and sets)
g = torch.Generator().manual_seed(0); perm = torch.randperm(len(xr), generator=g)
A, B = perm[:2000], perm[2000:]
c1 = R["conv1"].flatten(1)
ab = {}
for qq in (0.999, 1.0):
    hi = torch.quantile(c1[A], qq, dim=0) if qq < 1 else c1[A].amax(0)
    lo = torch.quantile(c1[A], 1 - qq, dim=0) if qq < 1 else c1[A].amin(0)
    f = lambda v: ((v > hi + 1e-6) | (v < lo - 1e-6)).float().mean(1)
    ab[qq] = {"B": f(c1[B]), **{s: f(raw(x)[0]["conv1"].flatten(1)) for s, x in sets.items()}}
torch.save({"TR": TR, "yr": yr, "TS": TS, "y": y, "abn": ab, "B": B}, cache_path("table2.pt"))
print("saved abn")
