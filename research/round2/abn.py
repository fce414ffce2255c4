"""Round 2, §R2 (tune split): detection rate of the out-of-range-neuron scores per layer (pixels,
conv1, conv2, fc1). Index: research/README.md."""
import torch, torch.nn.functional as Fn
from nip_core.data import benign_reference
from nip_core.label_free import layer_outputs
from research.common import tune_sets
m, d, sets = tune_sets(threads=2)
y = d["y"]
xr, yr = benign_reference(m, 400)
L = ["conv1", "conv2", "fc1"]
def raw(x):
    with torch.no_grad(), m.lock:
        o, g = layer_outputs(m, x, L)
    o["px"] = x.flatten(1)
    return {k: v.flatten(1) for k, v in o.items()}, g
R, _ = raw(xr)
g = torch.Generator().manual_seed(0); perm = torch.randperm(len(xr), generator=g)
A, B = perm[:2000], perm[2000:]
out = {}
for lay in ["px", "conv1", "conv2", "fc1"]:
    ra = R[lay][A]
    for qq in (0.99, 0.999, 1.0):
        hi = torch.quantile(ra, qq, dim=0) if qq < 1 else ra.amax(0)
        lo = torch.quantile(ra, 1 - qq, dim=0) if qq < 1 else ra.amin(0)
        span = (hi - lo).clamp_min(1e-3)  # guard: constant neurons
        def sc(v):
            return (Fn.relu(v - hi) / span).mean(1) + (Fn.relu(lo - v) / span).mean(1)
        def cnt(v):
            return ((v > hi + 1e-6) | (v < lo - 1e-6)).float().mean(1)
        for nm, f in (("exc", sc), ("cnt", cnt)):
            sB = f(R[lay][B])
            for fa in (0.01,):
                th = torch.quantile(sB, 1 - fa)
                rates = [float((f(raw(x)[0][lay]) > th).float().mean()) for x in sets.values()]
                print(f"{lay:6s} q{qq} {nm} fa{fa}:", " ".join(f"{r:.2f}" for r in rates))
