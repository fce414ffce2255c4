"""Round 3, §P2 (tune/calib only): the "pocket" rule. A small perturbation leaves the input in
a thin adversarial pocket: random-sign noise of small amplitude takes the model back out, so the
class the model predicts under noise differs from its prediction. Rule: if the smoothed class
(mean softmax over `draws` random-sign draws at amplitude `amp`) differs from the model's
prediction and holds at least `share` of the mass, point NIP at it; otherwise at the vote's
class, but only when the abnormal-neuron share is at most `level`. Prints class-choice accuracy (flagged: chosen class; unflagged: model prediction)."""
import torch
from research.common import setup, smooth_per_input
from nip_core.label_free import neighbour_selector
m, d, sets = setup()
y = d["y"]
xc, yc = sets["calib"]
sel = neighbour_selector(m, ["conv1"], 10, 400, 30.0)
def smooth(x, amp, draws):
    return smooth_per_input(m, x, amp, draws, seed=0)
base = {k: sel(x, 0.005, 0.1) for k, (x, _) in sets.items()}
sc = {k: sel.scores(x)[0]['abnormal:conv1'] for k, (x, _) in sets.items()}
cache = {}
print("amp draws share level | adv-mean tune-benign calib | F.1 F.2 F.3 PGD CW DF MI | changed-right changed-wrong")
import itertools
for amp, draws, share, level in [(0.0, 1, 0.0, 1.0)] + list(itertools.product((0.05, 0.1), (32,), (0.0, 0.5), (0.01, 0.015, 0.02, 0.025, 0.03, 1.0))):
        if True:
            res, good, bad = {}, 0, 0
            for k, (x, yy) in sets.items():
                fl, v, p = base[k]
                c = v.argmax(1)
                if amp:
                    if (k, amp, draws) not in cache:
                        cache[(k, amp, draws)] = smooth(x, amp, draws)
                    sm = cache[(k, amp, draws)]
                    pocket = fl & (sm.argmax(1) != p) & (sm.max(1).values >= share) & (sc[k] <= level)
                    c2 = torch.where(pocket, sm.argmax(1), c)
                    good += int(((c2 == yy) & (c != yy) & fl).sum()); bad += int(((c2 != yy) & (c == yy) & fl).sum())
                    c = c2
                res[k] = float((torch.where(fl, c, p) == yy).float().mean())
            adv = [res[k] for k in d["adv"]]
            print(f"{amp:.2f} {draws:3d} {share:.1f} {level:.3f} | {sum(adv)/7:.4f} {res['benign']:.3f} {res['calib']:.4f} | "
                  + " ".join(f"{a:.3f}" for a in adv) + f" | +{good} -{bad}")
