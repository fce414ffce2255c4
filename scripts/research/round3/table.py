"""Per-attack table of an `evaluate` JSON: defended accuracy of the baselines and `nip`."""
import json
import sys

d = json.load(open(sys.argv[1]))
defs = ["none", "jpeg", "bitdepth", "median", "gaussian", "random-sign", "nip"]
attacks = list(dict.fromkeys(r["attack"] for r in d["rows"]))
print(f"{'attack':40s}", " ".join(f"{k[:8]:>8s}" for k in defs))
for a in attacks:
    cells = {r["defense_name"]: r["defended_adv_accuracy"] for r in d["rows"] if r["attack"] == a}
    best = max(v for k, v in cells.items() if k in defs[1:-1])
    flag = "" if cells["nip"] > best else "  <- not above every baseline"
    print(f"{a[:40]:40s}", " ".join(f"{cells[k]:8.3f}" for k in defs), flag)
s = d["summary"]
print("mean adv", {k: round(s["mean_adv_accuracy"][k], 3) for k in defs})
print("benign  ", {k: round(s["benign_accuracy"][k], 3) for k in defs})
print("adaptive nip", s["adaptive_accuracy"]["nip"], "aware", s["adaptive_aware_accuracy"]["nip"])
