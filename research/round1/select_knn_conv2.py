"""Research (tune split, cached adversarials, research/common.py): §3 neighbour votes at conv2,
influence-fit, §4.1 vote-share gate. See docs/nip-research.md."""
import torch
from nip_core.data import benign_reference
from nip_core.label_free import layer_outputs
from research.common import tune_sets
m, d, sets = tune_sets(threads=1)
y = d["y"]
xr, yr = benign_reference(m, 400)
def feats(x):
    with torch.no_grad(), m.lock:
        o, lg = layer_outputs(m, x, ["conv1", "conv2", "fc1"])
    return {"conv2m": o["conv2"].flatten(1), "pool2": torch.nn.functional.max_pool2d(o["conv2"], 2).flatten(1),
            "conv1m": o["conv1"].flatten(1), "conv1p": torch.nn.functional.max_pool2d(o["conv1"], 2).flatten(1)}, lg
R, _ = feats(xr)
# influence (grad x act toward own class) spatial profile at conv2
xg = xr.clone()
with m.lock, torch.enable_grad():
    o, lg = layer_outputs(m, xg, ["conv2"], grad=False)
def prof_gxa():
    P = []
    with m.lock:
        for c in range(10):
            xc = xr[yr == c]
            box = {}
            h = m.layer("conv2").register_forward_hook(lambda mm, i, out: box.__setitem__("a", out))
            with torch.enable_grad():
                xx = xc.clone().requires_grad_(True)
                lg = m.net(xx)
                a = box["a"]
                g, = torch.autograd.grad(lg[:, c].sum(), a)
            h.remove()
            P.append((g * a).mean(0).flatten())
    return torch.stack(P)
P = prof_gxa()
for rep in ["conv2m", "pool2", "conv1p"]:
    A = R[rep]; mu = A.mean(0); sd = A.std(0) + 1e-3
    An = torch.nn.functional.normalize((A - mu) / sd, dim=1)
    line = []
    for name, x in sets.items():
        F, lg = feats(x)
        Fn = torch.nn.functional.normalize((F[rep] - mu) / sd, dim=1)
        sim = Fn @ An.T
        top = sim.topk(25, 1).indices
        votes = torch.nn.functional.one_hot(yr[top], 10).sum(1)
        line.append(float((votes.argmax(1) == y).float().mean()))
    print("knn25 cos", rep, " ".join(f"{a:.3f}" for a in line))
# influence fit
line = []
for name, x in sets.items():
    F, lg = feats(x)
    s = F["conv2m"] @ P.T
    line.append(float((s.argmax(1) == y).float().mean()))
print("gxa-profile conv2m dot", " ".join(f"{a:.3f}" for a in line))
A = R["conv2m"]; mu = A.mean(0); sd = A.std(0) + 1e-3
An = torch.nn.functional.normalize((A - mu) / sd, dim=1)
for k in (25, 50):
  for tau in (0.0, 0.1, 0.2, 0.3, 0.4):
    line = []
    for name, x in sets.items():
        F, lg = feats(x)
        Fn = torch.nn.functional.normalize((F["conv2m"] - mu) / sd, dim=1)
        top = (Fn @ An.T).topk(k, 1).indices
        votes = torch.nn.functional.one_hot(yr[top], 10).sum(1).float() / k
        p = lg.argmax(1)
        keep = votes.gather(1, p.view(-1, 1)).squeeze(1) >= tau
        pred = torch.where(keep, p, votes.argmax(1))
        line.append(float((pred == y).float().mean()))
    print("knn gate", k, tau, " ".join(f"{a:.3f}" for a in line), f"{sum(line[1:])/(len(line)-1):.3f}")
