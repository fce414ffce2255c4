"""Round 2, §R4 (tune split): detector combinations and the vote grid over embeddings, k and
weights; reads table2.pt from feat2.py. Index: research/README.md."""
import torch, torch.nn.functional as Fn, itertools
from research.common import load_cached
MAKE_TABLE2 = "PYTHONPATH=. .venv/bin/python research/round2/feat2.py"
D = load_cached("table2.pt", MAKE_TABLE2); TR, yr, TS, y, AB, B = D["TR"], D["yr"], D["TS"], D["y"], D["abn"], D["B"]
names = list(TS)
def votes(t, rep, k=25, w=0.0):
    lab = t[rep + "_lab"][:, :k]; oh = Fn.one_hot(lab, 10).float()
    if w: oh = oh * torch.exp(w * t[rep + "_sim"][:, :k, None])
    v = oh.sum(1); return v / v.sum(1, keepdim=True)
def basic(t, V):
    lg = t["logits"]; p = lg.argmax(1)
    pr = lg.softmax(1).topk(2, 1).values
    return {"nosup": 1 - V.gather(1, p[:, None]).squeeze(1), "lowm": pr[:, 1] - pr[:, 0],
            "ood:c2": -t["c2_sim"][:, :25].mean(1), "ood:c1p": -t["c1p_sim"][:, :25].mean(1)}, p
def evaluate(vreps=("c1p", "c2"), k=25, w=0.0, q=1.0, fa_abn=0.01, others=("lowm",), fa_o=0.01, excl=False, beta=0.0, show=False):
    VR = sum(votes(TR, r, k, w) for r in vreps) / len(vreps)
    sR, _ = basic(TR, VR)
    th = {o: torch.quantile(sR[o], 1 - fa_o) for o in others}
    th_abn = torch.quantile(AB[q]["B"], 1 - fa_abn)
    accs = {}
    for n in names:
        t = TS[n]; V = sum(votes(t, r, k, w) for r in vreps) / len(vreps)
        s, p = basic(t, V)
        fl = AB[q][n] > th_abn
        for o in others: fl |= s[o] > th[o]
        sc = V + beta * t["logits"].softmax(1)
        if excl:
            sc = sc.scatter(1, p[:, None], -1.0)
        c = sc.argmax(1)
        accs[n] = float((torch.where(fl, c, p) == y).float().mean())
    adv = sum(v for n, v in accs.items() if n != "benign") / 7
    if show: print(" ".join(f"{v:.3f}" for v in accs.values()))
    return round(adv, 4), accs["benign"]
print("current-like", evaluate(q=1.0, fa_abn=0.0001, others=("ood:c1p", "ood:c2", "nosup", "lowm")))
for q in (1.0, 0.999):
    for fa in (0.005, 0.01, 0.02):
        for others in ((), ("lowm",), ("lowm", "nosup")):
            print(q, fa, others, evaluate(q=q, fa_abn=fa, others=others, fa_o=fa, show=False))
print("---- votes")
res = []
for vreps in (("c1p",), ("c2",), ("c2p",), ("c1p", "c2"), ("c1p", "c2p"), ("c1p", "c2", "c2p")):
    for k in (10, 25, 50):
        for w in (0.0, 10.0, 30.0):
            for beta in (0.0, 0.3):
                for excl in (False, True):
                    r = evaluate(vreps=vreps, k=k, w=w, beta=beta, excl=excl, q=1.0, fa_abn=0.01, others=("lowm", "nosup"))
                    res.append((r, vreps, k, w, beta, excl))
res.sort(key=lambda z: -z[0][0])
for z in res[:15]: print(z)
print("px upper-ref", evaluate(vreps=("px",), q=1.0, fa_abn=0.01, others=("lowm", "nosup")))
