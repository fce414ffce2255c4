"""Research (tune split, cached adversarials, research/common.py): §4.2 detector combinations ×
false-alarm rate. See docs/nip-research.md."""
import torch
from research.round1.detectors import S, SR, sets, y   # the shared set-up and scores
def final(flag_dets, vote_rep, qq):
    th = {k: torch.quantile(SR[k], qq) for k in flag_dets}
    a = []
    for s in sets:
        sc = S[s]; flag = torch.zeros(len(y), dtype=torch.bool)
        for k in flag_dets: flag |= sc[k] > th[k]
        v = sum(sc[r + "_votes"] for r in vote_rep)
        a.append(float((torch.where(flag, v.argmax(1), sc["p"]) == y).float().mean()))
    return a
for fd in (["c1r_ood", "c1r_nosupport", "lowconf"], ["c1r_nosupport", "lowconf"], ["c1r_ood", "c1r_nosupport", "c2s_ood", "lowconf"], ["c1r_nosupport", "c2s_nosupport", "lowconf"], ["c1r_ood", "c1r_nosupport", "c2s_nosupport", "lowconf"]):
    for vr in (["c1r"], ["c1r", "c2s"]):
        for qq in (0.97, 0.98, 0.99, 0.995):
            a = final(fd, vr, qq)
            print("+".join(fd), "+".join(vr), qq, " ".join(f"{x:.3f}" for x in a), f" mean {sum(a[1:])/(len(a)-1):.3f}")
