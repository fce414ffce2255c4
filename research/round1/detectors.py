"""Research (tune split, cached adversarials, research/common.py): §4.2 detector scores calibrated
on benign references. See docs/nip-research.md.

Run as a script it prints §4.2's detection rates and detector/vote grid. Imported (by
``detector_grid.py`` and ``adaptive_budget.py``) it provides the set-up: ``m``, ``y``, ``sets``,
the scores ``S`` per set and ``SR`` on the benign references."""
import torch
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
    return {"c1r": Fn.avg_pool2d(o["conv1"], 2).flatten(1), "c2": o["conv2"].flatten(1), "fc1": o["fc1"]}, lg
R, LR = feats(xr)
mu2, sd2 = R["c2"].mean(0), R["c2"].std(0) + 1e-3
def emb(Fd):
    return {"c1r": Fn.normalize(Fd["c1r"], dim=1), "c2s": Fn.normalize((Fd["c2"] - mu2) / sd2, dim=1)}
ER = emb(R)
fmu = torch.stack([R["fc1"][yr == c].mean(0) for c in range(10)]); fsd = (R["fc1"] - fmu[yr]).std(0) + 1e-3
def scores(Fd, lg, self_ex=False):
    E = emb(Fd); out = {}
    p = lg.argmax(1)
    for r in ("c1r", "c2s"):
        sim = E[r] @ ER[r].T
        top = sim.topk(26, 1)
        vals, idx = (top.values[:, 1:], top.indices[:, 1:]) if self_ex else (top.values[:, :25], top.indices[:, :25])
        v = Fn.one_hot(yr[idx], 10).float().mean(1)
        out[r + "_ood"] = -vals.mean(1)                      # far from benign neighbours
        out[r + "_votes"] = v
        out[r + "_nosupport"] = 1 - v.gather(1, p.view(-1, 1)).squeeze(1)
    out["fc1_dist"] = (((Fd["fc1"] - fmu[p]) / fsd) ** 2).mean(1)
    pr = lg.softmax(1).topk(2, 1).values
    out["lowconf"] = -(pr[:, 0] - pr[:, 1])
    out["p"] = p
    return out
SR = scores(R, LR, self_ex=True)
S = {s: scores(*feats(x)) for s, x in sets.items()}
if __name__ == "__main__":
    dets = ["c1r_ood", "c2s_ood", "c1r_nosupport", "c2s_nosupport", "fc1_dist", "lowconf"]
    q = 0.97
    thr = {k: torch.quantile(SR[k], q) for k in dets}
    print("detection rate at benign-train 97th pct:")
    for k in dets:
        print(f"  {k:15s}", " ".join(f"{float((S[s][k] > thr[k]).float().mean()):.3f}" for s in sets))
    def final(flag_dets, vote_rep, qq):
        th = {k: torch.quantile(SR[k], qq) for k in flag_dets}
        a = []
        for s in sets:
            sc = S[s]; flag = torch.zeros(len(y), dtype=torch.bool)
            for k in flag_dets: flag |= sc[k] > th[k]
            v = sum(sc[r + "_votes"] for r in vote_rep)
            a.append(float((torch.where(flag, v.argmax(1), sc["p"]) == y).float().mean()))
        return a
    for fd in (["c1r_ood"], ["c1r_ood", "c2s_ood"], ["c1r_ood", "fc1_dist"], ["c1r_ood", "lowconf"], ["c1r_ood", "c2s_ood", "lowconf", "fc1_dist"], ["c1r_ood","c2s_nosupport"], ["c1r_ood","c1r_nosupport","lowconf"]):
        for vr in (["c1r"], ["c2s"], ["c1r", "c2s"]):
            for qq in (0.95, 0.99):
                a = final(fd, vr, qq)
                print("+".join(fd), "+".join(vr), qq, " ".join(f"{x:.3f}" for x in a), f" mean {sum(a[1:])/(len(a)-1):.3f}")
    print("---- OOD score quantiles (10/50/90) per set; benign-train too")
    for k in ("c1r_ood", "c2s_ood"):
        print(k, "train", [round(float(v), 3) for v in torch.quantile(SR[k], torch.tensor([.1, .5, .9, .99]))])
        for s in sets:
            print(k, s, [round(float(v), 3) for v in torch.quantile(S[s][k], torch.tensor([.1, .5, .9]))])
