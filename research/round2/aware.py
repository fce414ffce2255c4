"""Round 2, §R7 (100 tune digits): defense-aware PGD against the raw conv1 vote, for each λ given
(`aware.py 0 3 10 30 100`).

The `nip` column runs round 2's `nip`: today's registered one with the round-3 additions switched
off (raw vote, no pocket rule). Index: research/README.md."""
import sys, torch, torch.nn.functional as Fn
from nip_core.defenses import apply_defense
from nip_core.label_free import neighbour_selector
from research.common import tune_sets
m, d, _ = tune_sets(threads=1)
x, y = d["x"][:100], d["y"][:100]
sel = neighbour_selector(m, ["conv1"], 10, 400, 30.0)
ROUND2_NIP = {"vote_binarize": 0.0, "pocket_amp": 0.0}   # round 3 added the binarised vote and the pocket rule
bank = sel.banks["conv1"]
def conv1_and_logits(xx):
    box = {}
    h = m.layer("conv1").register_forward_hook(lambda _m, _i, o: box.__setitem__("c1", o))
    try: lg = m.net(xx)
    finally: h.remove()
    return box["c1"], lg
def class_sim(emb, c, k=10):
    # mean of the k largest cosines to benign maps of class c, per input: [N]
    sims = emb @ bank.feats.T                      # [N, M]
    mask = bank.labels[None, :] == c[:, None]
    return sims.masked_fill(~mask, -2).topk(k, 1).values.mean(1)
def attack(lam, eps=0.3, step=0.01, iters=40, target="vote"):
    with torch.no_grad():
        c1, lg = conv1_and_logits(x)
        emb = bank.embed(bank.flat(c1))
        if target == "vote":
            s = torch.stack([class_sim(emb, torch.full((len(x),), c)) for c in range(10)], 1)
        else:
            s = lg.clone()
        t = s.scatter(1, y[:, None], -1e9).argmax(1)
    delta = torch.zeros_like(x)
    for _ in range(iters):
        xa = (x + delta).requires_grad_(True)
        c1, lg = conv1_and_logits(xa)
        emb = bank.embed(bank.flat(c1))
        loss = -Fn.cross_entropy(lg, t, reduction="sum") + lam * (class_sim(emb, t) - class_sim(emb, y)).sum()
        g, = torch.autograd.grad(loss, xa)
        delta = (delta + step * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return x + delta
for lam in [float(a) for a in sys.argv[1:]]:
    for tgt in ("vote",):
        xa = attack(lam, target=tgt)
        und = float((m.predict(xa) == y).float().mean())
        fl, votes, _ = sel(xa, 0.005)
        dr = apply_defense(m, "nip", xa, ROUND2_NIP, seed=0).x_def
        print(f"lam {lam} target {tgt}: undefended {und:.3f} flagged {float(fl.float().mean()):.2f} vote-right {float((votes.argmax(1)==y).float().mean()):.2f} nip {float((m.predict(dr)==y).float().mean()):.3f}", flush=True)
