"""Regenerate the Fashion-MNIST assets that ship with the app (so it needs no Debian package).

* ``assets/gallery/fashion/``: two official *test* images per class, 28×28 grey PNGs, plus
  ``gallery.json`` (file, label, label_name, source, test_index, licence). Taken walking the fixed
  test permutation (``nip_core.sources.fashion.fashion_test_permutation``) backwards from its end,
  keeping the first two of each class that the shipped ``lenet-fashion`` classifies correctly, so
  they lie far from the first 2,500 permuted positions that the tune/report/calib splits use.
* ``assets/calibration/lenet-fashion-bank.npz``: the benign reference bank, the first 400
  *training* images of each class in official order (``x`` uint8 ``[4000,1,28,28]``, ``y`` int64,
  ``index`` int64 into the official training set), ``np.savez_compressed``.

Both depend only on the Debian files and (for the gallery) the shipped weights; the contents are
reproducible (the .npz's zip timestamps are not). Needs ``make fashion-data`` and
``assets/models/lenet-fashion.safetensors``.

Usage: ``python scripts/make_fashion_assets.py`` (from anywhere; takes a few seconds).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from nip_core.models import load_model  # noqa: E402
from nip_core.sources.fashion import (  # noqa: E402
    BANK, BANK_PER_CLASS, FASHION_CLASSES, GALLERY_DIR, fashion_mnist, fashion_test_permutation, fashion_uint8,
)

PER_CLASS = 2
LICENCE = "MIT (Expat), Copyright 2017 Zalando SE; https://github.com/zalandoresearch/fashion-mnist"
NOTICE = """# Fashion-MNIST licence

The images here are copied unchanged from Fashion-MNIST (Zalando Research), as packaged by Debian
(`dataset-fashion-mnist`, /usr/share/datasets/fashion-mnist/), by `scripts/make_fashion_assets.py`.

Copyright (c) 2017 Zalando SE

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def _slug(name: str) -> str:
    return name.lower().replace("/", "-").replace(" ", "-")


def write_gallery() -> list[dict]:
    """Pick, write and describe the gallery images; returns the ``gallery.json`` entries."""
    raw, labels = fashion_uint8("test")
    x, y = fashion_mnist("test")
    predicted = load_model("lenet-fashion").predict(x)
    perm = fashion_test_permutation()
    chosen: dict[int, list[tuple[int, int]]] = {c: [] for c in range(len(FASHION_CLASSES))}
    for position in range(len(perm) - 1, -1, -1):
        i = int(perm[position])
        c = int(labels[i])
        if len(chosen[c]) < PER_CLASS and int(predicted[i]) == c:
            chosen[c].append((i, position))
        if all(len(v) == PER_CLASS for v in chosen.values()):
            break
    GALLERY_DIR.mkdir(parents=True, exist_ok=True)
    for old in GALLERY_DIR.glob("*.png"):
        old.unlink()
    entries = []
    for c, picks in chosen.items():
        for i, position in sorted(picks):
            name = f"{_slug(FASHION_CLASSES[c])}-{i:05d}.png"
            Image.fromarray(np.ascontiguousarray(raw[i]), mode="L").save(GALLERY_DIR / name, format="PNG", optimize=True)
            entries.append({"file": name, "label": c, "label_name": FASHION_CLASSES[c],
                            "source": f"Fashion-MNIST test image #{i} (MIT)", "test_index": i,
                            "permutation_position": position, "licence": LICENCE})
    (GALLERY_DIR / "gallery.json").write_text(json.dumps(entries, indent=2) + "\n")
    (GALLERY_DIR / "LICENCE.md").write_text(NOTICE)
    return entries


def write_bank() -> tuple[np.ndarray, np.ndarray]:
    """Write the benign reference bank; returns its images and labels."""
    raw, labels = fashion_uint8("train")
    index = np.sort(np.concatenate([np.flatnonzero(labels == c)[:BANK_PER_CLASS]
                                    for c in range(len(FASHION_CLASSES))]))
    x = np.ascontiguousarray(raw[index][:, None])
    y = labels[index].astype(np.int64)
    BANK.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(BANK, x=x, y=y, index=index.astype(np.int64))
    BANK.with_suffix(".LICENCE.md").write_text(NOTICE)
    return x, y


def main() -> int:
    entries = write_gallery()
    x, y = write_bank()
    lowest = min(e["permutation_position"] for e in entries)
    print(f"{len(entries)} gallery images (permutation positions {lowest}–9999) in "
          f"{GALLERY_DIR.relative_to(REPO_ROOT)}; bank {x.shape} {np.bincount(y).tolist()} in "
          f"{BANK.relative_to(REPO_ROOT)} ({BANK.stat().st_size // 1024} KiB)")
    return 0 if len(entries) == PER_CLASS * len(FASHION_CLASSES) and lowest >= 2500 else 1


if __name__ == "__main__":
    raise SystemExit(main())
