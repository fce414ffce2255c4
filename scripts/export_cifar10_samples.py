"""Write foolbox's 20 CIFAR-10 test images as an ImageFolder (one folder per class name).

    .venv/bin/python scripts/export_cifar10_samples.py /tmp/cifar20
    .venv/bin/python -m nip_core evaluate --model resnet8-cifar10 --data /tmp/cifar20 ...

The images are read from the installed foolbox wheel (nip_core.sources.cifar10); they are
not redistributed by this project.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nip_core.images import tensor_to_png_bytes  # noqa: E402
from nip_core.sources.cifar10 import CIFAR10_CLASSES, cifar10_samples  # noqa: E402


def export(out: Path) -> int:
    x, y, files = cifar10_samples()
    for img, label, name in zip(x, y.tolist(), files):
        folder = out / CIFAR10_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).with_suffix(".png").write_bytes(tensor_to_png_bytes(img))
    return len(files)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: export_cifar10_samples.py OUT_DIR", file=sys.stderr)
        raise SystemExit(2)
    print(f"wrote {export(Path(sys.argv[1]))} images to {sys.argv[1]}")
