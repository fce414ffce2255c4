"""Round 2, §R5 (tune and calib splits): thresholds calibrated on the calib split; restricted-vote
rules (not adopted). Index: research/README.md."""
import torch, torch.nn.functional as Fn
from nip_core.data import benign_reference, mnist
from nip_core.label_free import layer_outputs
from research.common import tune_sets
m, d, tune = tune_sets(threads=2)
y = d["y"]
xr, yr = benign_reference(m, 400)
xt, yt = mnist("test"); ok = m.predict(xt) == yt
xc = xt[ok][500:]; print("calib digits", len(xc))
sets = {"calib": xc} | tune
def c1(x):
    with torch.no_grad(), m.lock: return layer_outputs(m, x, ["conv1"])[0]["conv1"]
R = c1(xr); S = {s: c1(x) for s, x in sets.items()}
LG = {s: m.logits(x) for s, x in sets.items()}
hi, lo = R.flatten(1).amax(0), R.flatten(1).amin(0)
ER = Fn.normalize(Fn.avg_pool2d(R, 2).flatten(1), dim=1)
def V(v, k, w):
    top = (Fn.normalize(Fn.avg_pool2d(v, 2).flatten(1), dim=1) @ ER.T).topk(k, 1); s = top.values
    vv = (Fn.one_hot(yr[top.indices], 10).float() * torch.exp(w * (s - s[:, :1]))[..., None]).sum(1)
    return vv / vv.sum(1, keepdim=True)
def sc(s, k, w):
    v = V(S[s], k, w); p = LG[s].argmax(1); pr = LG[s].softmax(1).topk(2, 1).values
    f = S[s].flatten(1)
    return {"abn": ((f > hi + 1e-6) | (f < lo - 1e-6)).float().mean(1), "nosup": 1 - v.gather(1, p[:, None]).squeeze(1),
            "lowm": pr[:, 1] - pr[:, 0]}, v, p
for k, w in ((10, 30.0), (10, 0.0), (25, 30.0)):
    C, vc, pc = sc("calib", k, w)
    print("calib vote acc", float((vc.argmax(1) == yt[ok][500:]).float().mean()))
    for fa in (0.005, 0.01, 0.02):
        for dets in (("abn", "lowm"), ("abn", "lowm", "nosup")):
            th = {q: torch.quantile(C[q], 1 - fa) for q in dets}
            accs, flr = [], []
            for s in list(sets)[1:]:
                X, v, p = sc(s, k, w); fl = torch.zeros(len(p), dtype=torch.bool)
                for q in dets: fl |= X[q] > th[q]
                accs.append(float((torch.where(fl, v.argmax(1), p) == y).float().mean())); flr.append(float(fl.float().mean()))
            print(k, w, fa, dets, f"adv {sum(accs[1:])/7:.4f} benign {accs[0]:.3f}", " ".join(f"{a:.3f}" for a in accs), "flag", " ".join(f"{a:.2f}" for a in flr))
print("---- lowm-restricted vote")
for k, w in ((10, 30.0), (25, 30.0)):
    C, _, _ = sc("calib", k, w)
    for fa in (0.005, 0.01):
        for top in (2, 3):
            dets = ("abn", "lowm", "nosup")
            th = {q: torch.quantile(C[q], 1 - fa) for q in dets}
            accs = []
            for s in list(sets)[1:]:
                X, v, p = sc(s, k, w); fl = torch.zeros(len(p), dtype=torch.bool)
                for q in dets: fl |= X[q] > th[q]
                low = X["lowm"] > th["lowm"]
                tk = LG[s].topk(top, 1).indices
                restricted = torch.full_like(v, -1.0).scatter(1, tk, v.gather(1, tk)).argmax(1)
                c = torch.where(low, restricted, v.argmax(1))
                accs.append(float((torch.where(fl, c, p) == y).float().mean()))
            print(k, w, fa, top, f"adv {sum(accs[1:])/7:.4f} benign {accs[0]:.3f}", " ".join(f"{a:.3f}" for a in accs))
print("---- small-perturbation rule: restrict to top-T logits when abnormal is below a level")
k, w, fa = 10, 30.0, 0.005
C, _, _ = sc("calib", k, w)
dets = ("abn", "lowm", "nosup")
th = {q: torch.quantile(C[q], 1 - fa) for q in dets}
print("abn quantiles per set:")
for s in list(sets):
    X, v, p = sc(s, k, w); print(f"  {s[:14]:14s}", [round(float(a), 4) for a in torch.quantile(X["abn"], torch.tensor([.1, .5, .9]))])
for level in [float(th["abn"]), 0.01, 0.02, 0.05, 0.1]:
    for top in (2, 3):
        accs = []
        for s in list(sets)[1:]:
            X, v, p = sc(s, k, w); fl = torch.zeros(len(p), dtype=torch.bool)
            for q in dets: fl |= X[q] > th[q]
            small = X["abn"] <= level
            tk = LG[s].topk(top, 1).indices
            restricted = torch.full_like(v, -1.0).scatter(1, tk, v.gather(1, tk)).argmax(1)
            c = torch.where(small, restricted, v.argmax(1))
            accs.append(float((torch.where(fl, c, p) == y).float().mean()))
        print(f"{level:.4f}", top, f"adv {sum(accs[1:])/7:.4f} benign {accs[0]:.3f}", " ".join(f"{a:.3f}" for a in accs))
