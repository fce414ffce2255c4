"""Issue 6 round 2 research (tune/calib splits only); see README.md in this folder."""
import torch
from nip_core.models import load_model
from nip_core.nip_variants import neighbour_selector
torch.set_num_threads(2)
m = load_model("lenet-mnist")
d = torch.load("/tmp/nipres/adv-tune-150.pt"); y = d["y"]
sel = neighbour_selector(m, ["conv1", "conv2"], 25, 400)
sets = {"benign": d["x"]} | d["adv"]
print("set            unflag_wrong flag_voteWrong flag_voteRight unflag_right  decision_acc  vote_acc_all")
for fa in (0.01, 0.02, 0.03):
    accs=[]
    for s, x in sets.items():
        fl, votes, pred = sel(x, fa)
        w = torch.sort(votes, dim=1, descending=True, stable=True).indices[:, 0]
        dec = torch.where(fl, w, pred)
        acc = float((dec == y).float().mean()); accs.append(acc)
        print(f"{fa} {s[:14]:14s} {int(((~fl)&(pred!=y)).sum()):4d} {int((fl&(w!=y)).sum()):4d} {int((fl&(w==y)).sum()):4d} {int(((~fl)&(pred==y)).sum()):4d}   {acc:.3f}  {float((w==y).float().mean()):.3f}")
    print(fa, "mean adv", sum(accs[1:])/7, "benign", accs[0])
