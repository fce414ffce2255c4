"""Shared set-up of the round-3 scripts: the model, and the benign calib digits plus the cached
tune-split sets (benign and the seven attacks, from `scripts/research/cache_adversarials.py`)."""
import torch

from nip_core.data import heldout_split
from nip_core.models import load_model

CACHE = "/tmp/nipres/adv-tune-150.pt"


def setup():
    """(model, cached tune dict, sets: name → (images, labels) for calib, benign and each attack)."""
    torch.set_num_threads(1)
    m = load_model("lenet-mnist")
    xc, yc = heldout_split(m, "calib")
    d = torch.load(CACHE)
    y = d["y"]
    sets = {"calib": (xc, yc), "benign": (d["x"], y)} | {k: (v, y) for k, v in d["adv"].items()}
    return m, d, sets


def smooth_per_input(m, x, amp, draws, seed):
    """The first prototype of the pocket test: mean softmax over ``draws`` random-sign
    perturbations of size ``amp``, with fresh signs for every input (the registered
    ``nip_variants.smoothed_class`` shares one set of signs across inputs)."""
    g = torch.Generator().manual_seed(seed)
    acc = 0
    for _ in range(draws):
        s = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
        acc = acc + m.logits((x + amp * s).clamp(0, 1)).softmax(1)
    return acc / draws


def binarised_bank(m, threshold, per_class=400):
    """The prototype binarised vote's bank: conv1 maps (2×2 pooled) of binarised benign digits."""
    from nip_core.data import benign_reference
    from nip_core.nip_variants import BenignBank, _outputs

    xr, yr = benign_reference(m, per_class)
    outs, _ = _outputs(m, (xr > threshold).float(), ["conv1"])
    bank = BenignBank(torch.zeros(0), yr, torch.zeros(1), torch.ones(1), pool=True)
    bank.feats = bank.embed(bank.flat(outs["conv1"]))
    return bank
