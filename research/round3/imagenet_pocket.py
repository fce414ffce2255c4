"""Round 3, §P11: does the pocket test help on ImageNet, where `nip` has no labelled benign
bank? EfficientNet-Lite0, the 21 held-out photos, FGSM 2/255 and PGD 4/255 (the paper-imagenet
suite's attacks). Settings fixed before the run (there is no separate ImageNet tune split): noise
amplitude 8/255 (twice the PGD budget), 32 draws. Prints how often the smoothed class is the
true class, and how often it differs from the prediction, on benign and adversarial images."""
import torch
from nip_core.models import load_model
from nip_core.data import heldout_split
from nip_core.attacks import run_attack
from nip_core.label_free import smoothed_class
torch.set_num_threads(2)
m = load_model("efficientnet-lite0")
x, y = heldout_split(m, "all")
sets = {"benign": x,
        "fgsm 2/255": run_attack(m, "fgsm", x, y, {"eps": 2 / 255}, seed=0).x_adv,
        "pgd 4/255": run_attack(m, "pgd", x, y, {"eps": 4 / 255, "max_iter": 10}, seed=0).x_adv}
for amp in (8 / 255,):
    for name, xs in sets.items():
        pred = m.predict(xs)
        cls, share = smoothed_class(m, xs, amp, 32, seed=0)
        moved = cls != pred
        print(f"amp {amp*255:.0f}/255 {name:11s}: model right {int((pred == y).sum())}/{len(y)}, smoothed right "
              f"{int((cls == y).sum())}, smoothed != prediction {int(moved.sum())} (of which right {int((moved & (cls == y)).sum())}); "
              f"pocket rule result (smoothed where it moved, else prediction) right {int((torch.where(moved, cls, pred) == y).sum())}",
              flush=True)
