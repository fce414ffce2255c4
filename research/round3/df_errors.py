"""Round 3, §P1 (tune/calib only): what the vote gets wrong on DeepFool, and label-free
signals that could fix it (model runner-up, random-sign smoothing)."""
import torch
from nip_core.label_free import neighbour_selector
from research.common import smooth_per_input, tune_sets
torch.manual_seed(0)
m, d, _ = tune_sets(threads=1)
y = d["y"]
sel = neighbour_selector(m, ["conv1"], 10, 400, 30.0)
th = sel.thresholds(0.005)
print("attacks:", list(d["adv"]))
def smooth(x, amp, draws=32):
    return smooth_per_input(m, x, amp, draws, seed=1)
for k, x in d["adv"].items():
    fl, v, p = sel(x, 0.005, 0.1)
    s, _, _ = sel.scores(x)
    lg = m.logits(x); top2 = lg.softmax(1).topk(2, 1)
    c = v.argmax(1)
    wrong = fl & (c != y)
    print(f"== {k}: flagged {int(fl.sum())}/150, vote wrong on flagged {int(wrong.sum())}; runner-up==y {int((top2.indices[:,1]==y).sum())}")
    sm = smooth(x, 0.1)
    for i in torch.nonzero(wrong).flatten()[:12]:
        i = int(i)
        vs = torch.sort(v[i], descending=True)
        print(f"  y={int(y[i])} pred={int(p[i])} runner={int(top2.indices[i,1])} margin={float(top2.values[i,0]-top2.values[i,1]):.3f} "
              f"abn={float(s['abnormal:conv1'][i]):.4f} vote={[(int(a), round(float(b),2)) for b,a in zip(vs.values[:3], vs.indices[:3])]} "
              f"smooth.1={int(sm[i].argmax())}({float(sm[i].max()):.2f}) p(y)={float(sm[i][y[i]]):.2f}")
