"""Check that a re-run evaluation result changed no number of the one it replaces.

    python scripts/compare_results.py OLD.json NEW.json [--added per_image,pred] [--out report.json]

Walks both JSON trees. Every value of OLD must be in NEW and equal (floats exactly), except wall
times and how the run was made: keys containing ``seconds`` and the ``environment`` and
``distributed`` blocks, which are listed as ignored. Keys only in NEW must be among ``--added``
(default: the per-image records of issue 21, ``per_image`` and each row's ``pred``). Prints one line
per difference and exits 1 if any number differs or an unexpected key appears, else 0.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IGNORED_BLOCKS = ("environment", "distributed")


def ignored(key: str) -> bool:
    return "seconds" in key or key in IGNORED_BLOCKS


def compare(old: Any, new: Any, added: set[str], path: str = "") -> tuple[list[str], list[str], int]:
    """(differences, new keys, values compared) between ``old`` and ``new`` below ``path``."""
    diffs: list[str] = []
    extra: list[str] = []
    n = 0
    if isinstance(old, dict) and isinstance(new, dict):
        for k in old:
            p = f"{path}.{k}" if path else k
            if ignored(k):
                continue
            if k not in new:
                diffs.append(f"{p}: missing in the new file")
                continue
            d, e, m = compare(old[k], new[k], added, p)
            diffs += d
            extra += e
            n += m
        for k in new:
            if k not in old:
                p = f"{path}.{k}" if path else k
                (extra if k in added else diffs).append(f"{p}: {'added' if k in added else 'unexpected new key'}")
        return diffs, extra, n
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} entries → {len(new)}"], [], 1
        for i, (a, b) in enumerate(zip(old, new)):
            d, e, m = compare(a, b, added, f"{path}[{i}]")
            diffs += d
            extra += e
            n += m
        return diffs, extra, n
    same = old == new or (isinstance(old, float) and isinstance(new, float) and old != old and new != new)
    return ([] if same else [f"{path}: {old!r} → {new!r}"]), [], 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--added", default="per_image,pred", help="keys the new file may add (comma-separated)")
    ap.add_argument("--out", help="also write the comparison as JSON")
    args = ap.parse_args(argv)
    old, new = (json.loads(Path(f).read_text()) for f in (args.old, args.new))
    diffs, extra, n = compare(old, new, set(args.added.split(",")))
    kinds = sorted({e.split(": ")[0].rsplit(".", 1)[-1].split("[")[0] for e in extra})
    for d in diffs:
        print("DIFFERS", d)
    print(f"{n} values compared; {len(diffs)} differ; {len(extra)} new fields ({', '.join(kinds) or 'none'}); "
          f"ignored: keys containing 'seconds', {', '.join(IGNORED_BLOCKS)}")
    if args.out:
        Path(args.out).write_text(json.dumps({"old": args.old, "new": args.new, "compared": n, "differ": diffs,
                                              "added": extra}, indent=2) + "\n")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
