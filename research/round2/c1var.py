"""Round 2, §R4 (tune split): conv1 embedding variants (pooling, clamping, k, weight); reads
table2.pt from feat2.py. Index: research/README.md."""
import torch, torch.nn.functional as Fn
from nip_core.data import benign_reference
from nip_core.label_free import layer_outputs
from research.common import load_cached, tune_sets
MAKE_TABLE2 = "PYTHONPATH=. .venv/bin/python research/round2/feat2.py"
m, d, sets = tune_sets(threads=2)
xr, yr = benign_reference(m, 400)
D = load_cached("table2.pt", MAKE_TABLE2); AB, y = D["abn"], D["y"]
def c1(x):
    with torch.no_grad(), m.lock: return layer_outputs(m, x, ["conv1"])[0]["conv1"]
R = c1(xr); S = {s: c1(x) for s, x in sets.items()}
LG = {s: m.logits(x) for s, x in sets.items()}
th_abn = torch.quantile(AB[1.0]["B"], 0.99)
hi, lo = R.amax(0), R.amin(0)
def emb(v, pool, mode, clamp):
    if clamp: v = torch.maximum(torch.minimum(v, hi), lo)
    if pool > 1: v = (Fn.avg_pool2d if mode == "avg" else Fn.max_pool2d)(v, pool)
    return Fn.normalize(v.flatten(1), dim=1)
def run(pool, mode, clamp, k, w, fa=0.01):
    ER = emb(R, pool, mode, clamp)
    def V(e, skip=0):
        top = (e @ ER.T).topk(k + skip, 1); lab = yr[top.indices[:, skip:]]; s = top.values[:, skip:]
        v = (Fn.one_hot(lab, 10).float() * torch.exp(w * (s - s[:, :1]))[..., None]).sum(1)
        return v / v.sum(1, keepdim=True)
    VR = V(ER, 1); pR = m.logits(xr).argmax(1)
    nos_R = 1 - VR.gather(1, pR[:, None]).squeeze(1)
    prR = m.logits(xr).softmax(1).topk(2, 1).values; lowR = prR[:, 1] - prR[:, 0]
    tn, tl = torch.quantile(nos_R, 1 - fa), torch.quantile(lowR, 1 - fa)
    accs = []
    for s in sets:
        v = V(emb(S[s], pool, mode, clamp)); p = LG[s].argmax(1)
        pr = LG[s].softmax(1).topk(2, 1).values
        fl = (AB[1.0][s] > th_abn) | ((1 - v.gather(1, p[:, None]).squeeze(1)) > tn) | ((pr[:, 1] - pr[:, 0]) > tl)
        accs.append(float((torch.where(fl, v.argmax(1), p) == y).float().mean()))
    return round(sum(accs[1:]) / 7, 4), round(accs[0], 3), [round(a, 3) for a in accs]
res = []
for pool in (1, 2, 3, 4):
    for mode in (("avg", "max") if pool > 1 else ("avg",)):
        for clamp in (False, True):
            for k in (5, 10, 25):
                for w in (0.0, 30.0, 100.0):
                    res.append((run(pool, mode, clamp, k, w), pool, mode, clamp, k, w))
res.sort(key=lambda z: -z[0][0])
for z in res[:20]: print(z)
