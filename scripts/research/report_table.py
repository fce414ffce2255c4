"""Print the markdown tables of an evaluation JSON: per-attack accuracy per defense, summary, adaptive.

Usage: python scripts/research/report_table.py RESULT.json
"""
from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    r = json.load(open(path))
    defs = r["defenses"]
    short = {d: d.split("[")[0] for d in defs}
    print(f"split {r['split']}, n = {r['n_images']}, seed {r['seed']}, {r['seconds_total'] / 60:.1f} min\n")
    print("| attack | undefended | " + " | ".join(short[d] for d in defs) + " |")
    print("|---" * (len(defs) + 2) + "|")
    for a in dict.fromkeys(x["attack"] for x in r["rows"]):
        rows = {x["defense"]: x for x in r["rows"] if x["attack"] == a}
        und = next(iter(rows.values()))["adv_accuracy"]
        print(f"| {a.split(';')[0] + (']' if ';' in a else '')} | {und:.3f} | "
              + " | ".join(f"{rows[d]['defended_adv_accuracy']:.3f}" for d in defs) + " |")
    s = r["summary"]
    for key, name in (("mean_adv_accuracy", "**mean adv**"), ("benign_accuracy", "benign"),
                      ("adaptive_accuracy", "adaptive PGD-BPDA")):
        print(f"| {name} | | " + " | ".join("—" if s[key][d] is None else f"{s[key][d]:.3f}" for d in defs) + " |")
    print("\nseconds per image (defense, on the PGD row):",
          ", ".join(f"{short[x['defense']]} {x['defense_seconds_per_image']:.3f}"
                    for x in r["rows"] if x["attack_name"] == "pgd"))


if __name__ == "__main__":
    main(sys.argv[1])
