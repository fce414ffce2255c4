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
