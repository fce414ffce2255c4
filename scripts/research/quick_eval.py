"""Apply a registered defense to the cached tune-split sets; print accuracy per set.

Usage: python scripts/research/quick_eval.py DEFENSE [param=value,...]
"""
from __future__ import annotations

import sys
import time

import torch

from nip_core.defenses import apply_defense
from nip_core.models import load_model
from nip_core.params import parse_kv

if __name__ == "__main__":
    name = sys.argv[1]
    params = parse_kv(sys.argv[2]) if len(sys.argv) > 2 else {}
    model = load_model("lenet-mnist")
    d = torch.load("/tmp/nipres/adv-tune-150.pt")
    y = d["y"]
    accs = {}
    for k, x in ({"benign": d["x"]} | d["adv"]).items():
        t0 = time.perf_counter()
        r = apply_defense(model, name, x, params, seed=0)
        accs[k] = float((model.predict(r.x_def) == y).float().mean())
        print(f"{name} {params} {k}: {accs[k]:.3f} ({time.perf_counter() - t0:.1f}s)", flush=True)
    adv = [v for k, v in accs.items() if k != "benign"]
    print(f"{name} {params} mean-adv {sum(adv) / len(adv):.3f} benign {accs['benign']:.3f} over {len(adv)} sets")
