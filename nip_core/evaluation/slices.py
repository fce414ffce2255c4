"""Slices of an evaluation result: the images behind a Benchmark number.

``evaluate`` stores per-image records beside each row's ``correct`` bits (the JSON's ``per_image``
block and each row's ``pred``; :func:`nip_core.evaluation.evaluate.per_image_block`): each image's position in
its split, its true label, each attack's adversarial prediction and, per row, the defended one.
Classes are written as a string of digits when the model has at most 10 classes (``"7210…"``), else
as a list of ints. From them this module answers:

* :func:`per_class_accuracy` – a table faceted by true class (per-class counts sum to ``n``);
* :func:`row_images` – the images of one (attack, defense) row with their predictions;
* :func:`explore_link` – the Explore link that re-runs one image of a row as its shard ran it.

Result files written before the records existed still load everywhere; these functions then raise
:class:`~nip_core.errors.InputError` saying that slicing needs a re-run (:func:`has_per_image`).

**Split images.** An Explore link names a split image ``report:123`` (position 123 of the model's
``report`` split). The split's images ship as a small uint8 ``.npz`` per model in ``assets/splits``
(:func:`write_split_asset`, ``python -m nip_core split-images``) so that the app needs neither the
Debian Fashion-MNIST package nor a pass of the model over the held-out set; without a shipped file the
images come from the data loaders (:func:`nip_core.data.heldout_split`).

**The same computation.** ``evaluate`` attacks and defends a shard of up to ``shard_size`` images at
once, seeded by :func:`nip_core.evaluation.shards.shard_seed`; PGD's random start and the random defenses draw
their noise for the whole shard. An image run alone with that seed would draw other numbers, so the
link names the shard too: ``report:123@64:128`` runs the attack and the defense on split images 64 to
127 with the shard's seed, exactly as ``evaluate`` did, and shows image 123 (``explain(batch=…)``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nip_core.errors import InputError
from nip_core.runtime import ASSETS

PER_IMAGE_FORMAT = 1
SPLITS_DIR = ASSETS / "splits"
NO_RECORDS = ("this result has no per-image records (it was written before `evaluate` stored them): re-run it "
              "with `python -m nip_core evaluate` to facet it by class and list its images")
# Inputs besides the attacks that a table can be faceted on, and what they are called.
BENIGN, ADAPTIVE, AWARE, ALL_ATTACKS = "benign", "adaptive (BPDA)", "defense-aware", "all attacks (mean)"


# ----------------------------------------------------------------------------- encoding

def encode_classes(values: Sequence[int], num_classes: int) -> str | list[int]:
    """Class indices as stored: a string of digits when there are at most 10 classes, else a list."""
    values = [int(v) for v in values]
    return "".join(map(str, values)) if num_classes <= 10 else values


def decode_classes(stored: str | Sequence[int]) -> list[int]:
    """Inverse of :func:`encode_classes`."""
    return [int(c) for c in stored]


# ----------------------------------------------------------------------------- reading a result

def has_per_image(result: dict[str, Any]) -> bool:
    """Whether the result carries per-image records (labels, and predictions in every row)."""
    block = result.get("per_image")
    return (isinstance(block, dict) and "labels" in block and isinstance(result.get("rows"), list)
            and all("pred" in r and "correct" in r for r in result["rows"]))


def _require(result: dict[str, Any]) -> dict[str, Any]:
    if not has_per_image(result):
        raise InputError(NO_RECORDS[0].upper() + NO_RECORDS[1:] + ".")
    return result["per_image"]


def labels(result: dict[str, Any]) -> list[int]:
    """True label of each image, in the result's order."""
    return decode_classes(_require(result)["labels"])


def split_name(result: dict[str, Any]) -> str:
    """The split the result's images come from (``report``, ``all``, …)."""
    return str(_require(result)["split"])


def images_owner(result: dict[str, Any]) -> str:
    """The model whose split images the result ran on: its own, or another model's when it was run
    with ``evaluate --images-of`` (the ``data`` block's ``images_of``)."""
    return str((result.get("data") or {}).get("images_of") or result.get("images_of") or result["model"])


def attacks(result: dict[str, Any]) -> list[str]:
    """The attack labels of the rows, in order."""
    return list(dict.fromkeys(r["attack"] for r in result["rows"]))


def defenses(result: dict[str, Any]) -> list[str]:
    return list(result.get("defenses") or dict.fromkeys(r["defense"] for r in result["rows"]))


def _row(result: dict[str, Any], attack: str, defense: str) -> dict[str, Any]:
    for r in result["rows"]:
        if r["attack"] == attack and r["defense"] == defense:
            return r
    raise InputError(f"the result has no row for attack {attack!r} and defense {defense!r}.")


def facets(result: dict[str, Any]) -> list[str]:
    """The inputs a table can be faceted on: each attack, their mean, the benign images, and the
    adaptive and defense-aware columns where the result has them."""
    out = attacks(result) + [ALL_ATTACKS, BENIGN]
    adaptive = result.get("adaptive") or {}
    if any(isinstance(v, dict) and v.get("correct") for v in adaptive.values()):
        out.append(ADAPTIVE)
    if any(isinstance(v, dict) and (v.get("aware") or {}).get("correct") for v in adaptive.values()):
        out.append(AWARE)
    return out


def _bits(result: dict[str, Any], inputs: str, defense: str) -> list[str] | None:
    """The per-image bits behind one cell (several bit strings for the mean over attacks), or None."""
    if inputs == ALL_ATTACKS:
        return [_row(result, a, defense)["correct"] for a in attacks(result)]
    if inputs == BENIGN:
        bits = (result.get("benign") or {}).get(defense, {}).get("correct")
    elif inputs == ADAPTIVE:
        bits = (result.get("adaptive") or {}).get(defense, {}).get("correct")
    elif inputs == AWARE:
        bits = ((result.get("adaptive") or {}).get(defense, {}).get("aware") or {}).get("correct")
    else:
        bits = _row(result, inputs, defense)["correct"]
    return [bits] if bits else None


def per_class_accuracy(result: dict[str, Any], inputs: str) -> dict[str, Any]:
    """Accuracy per true class for every defense on ``inputs`` (an attack label or one of
    :func:`facets`).

    Returns:
        ``{"inputs", "classes", "n", "defenses", "correct", "accuracy", "repeats"}``: ``classes``
        the true classes present (ascending), ``n[j]`` the images of class ``classes[j]`` (they sum
        to the result's ``n_images``), and per defense (rows of ``correct``/``accuracy``) the count
        right and its share. For ``all attacks (mean)`` the count is summed over the ``repeats``
        attacks and the share is the mean over them (``repeats`` is 1 otherwise). Defenses without
        this column (e.g. no adaptive number) are left out.
    """
    y = np.asarray(labels(result))
    classes = sorted(set(y.tolist()))
    n = [int((y == c).sum()) for c in classes]
    out_d, correct, acc = [], [], []
    for d in defenses(result):
        parts = _bits(result, inputs, d)
        if parts is None:
            continue
        if any(len(b) != len(y) for b in parts):
            raise InputError(f"the result's records for {inputs!r} × {d!r} do not cover its {len(y)} images.")
        ok = sum(np.frombuffer(b.encode(), dtype=np.uint8) == ord("1") for b in parts)
        k = [int(ok[y == c].sum()) for c in classes]
        out_d.append(d)
        correct.append(k)
        acc.append([kc / (nc * len(parts)) for kc, nc in zip(k, n)])
    return {"inputs": inputs, "classes": classes, "n": n, "defenses": out_d, "correct": correct, "accuracy": acc,
            "repeats": len(attacks(result)) if inputs == ALL_ATTACKS else 1}


def class_label(c: int, class_names: Sequence[str] | None) -> str:
    """``"3"`` for MNIST digits, ``"3 dress"`` where classes have names."""
    name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else None
    return str(c) if name is None or name == str(c) else f"{c} {name}"


def row_images(result: dict[str, Any], attack: str, defense: str) -> list[dict[str, Any]]:
    """The images of the (``attack``, ``defense``) row: per image its position in the result
    (``position``, what :func:`explore_link` takes) and in the split (``index``), true ``label``,
    the undefended adversarial's prediction (``adv_pred``), the
    defended prediction (``pred``) and whether it is right (``correct``, the row's bit)."""
    block = _require(result)
    row = _row(result, attack, defense)
    y, pred = labels(result), decode_classes(row["pred"])
    adv = decode_classes(block["adv_pred"][attack])
    index = block.get("index") or list(range(len(y)))
    return [{"position": i, "index": int(index[i]), "label": y[i], "adv_pred": adv[i], "pred": pred[i],
             "correct": row["correct"][i] == "1"} for i in range(len(y))]


# ----------------------------------------------------------------------------- the Explore link

def _params_text(params: dict[str, Any]) -> str:
    # repr of a float is exact (8/255 must come back as 8/255, not 0.0313725)
    return ";".join(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def shard_of(result: dict[str, Any], position: int) -> tuple[int, int]:
    """The images ``[start, stop)`` (positions in the result) of the shard that held ``position``."""
    size = int(_require(result).get("shard_size") or 64)
    n = int(result["n_images"])
    start = position - position % size
    return start, min(start + size, n)


def explore_link(result: dict[str, Any], attack: str, defense: str, position: int) -> dict[str, str]:
    """Explore's query parameters that re-run image ``position`` of the (``attack``, ``defense``)
    row as ``evaluate`` ran it: the model, ``image=<split>:<index>@<start>:<stop>`` (the image and
    its shard), the attack and defense with their parameters, and the shard's seed.

    NIP-family defenses measure at Explore's influence layer, method and k: those ride as
    ``layer``/``method``/``k``. Raises InputError for results the link cannot reproduce (the user's
    own data, which Explore cannot open).
    """
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES
    from nip_core.models import MODELS, load_model
    from nip_core.evaluation.shards import shard_seed

    block = _require(result)
    if (result.get("data") or {}).get("source", "heldout") != "heldout":
        raise InputError("this result was measured on uploaded data, which Explore cannot open by position.")
    n = int(result["n_images"])
    if not 0 <= position < n:
        raise InputError(f"image position must be in [0, {n - 1}]; got {position}.")
    row = _row(result, attack, defense)
    start, stop = shard_of(result, position)
    index = block.get("index") or list(range(n))
    owner = images_owner(result)
    image = (f"{owner}/" if owner != result["model"] else "") + \
        f"{block['split']}:{index[position]}@{index[start]}:{index[stop - 1] + 1}"
    full = dict(zip(attacks(result), result.get("attacks") or attacks(result)))
    ap = dict((result.get("attack_params") or {}).get(full[attack], {}))
    if not ap and "[" in attack:
        raise InputError(f"the result does not record the parameters of attack {attack!r}.")
    dp = dict((result.get("defense_params") or {}).get(defense, {}))
    ATTACKS.get_unit(row["attack_name"])
    unit = DEFENSES.get_unit(row["defense_name"])
    link = {"model": result["model"], "image": image, "attack": row["attack_name"], "ap": _params_text(ap),
            "defense": row["defense_name"]}
    model = load_model(result["model"]) if result["model"] in MODELS else None
    if model is None:
        raise InputError(f"model {result['model']!r} is not registered here; Explore cannot open it.")
    defaults = unit.params_for(model)
    # Explore measures NIP at its influence section's layer, method and k, and keeps n_steps (and,
    # for the other defenses, all four) at their defaults: a row that changed them has no link.
    shared = {k: dp.pop(k) for k in ("layer", "method", "k", "n_steps") if k in dp}
    if unit.family == "nip":
        layer = shared.pop("layer", "default")
        link |= {"layer": model.spec.default_layer if layer == "default" else str(layer),
                 "method": str(shared.pop("method", defaults["method"])),
                 "k": repr(float(shared.pop("k", defaults["k"])))}
    changed = [k for k, v in shared.items() if defaults.get(k) != v]
    if changed:
        raise InputError(f"Explore keeps {', '.join(changed)} of {defense!r} at the default; this row used "
                         "another value, so a link could not reproduce it.")
    link |= {"dp": _params_text(dp), "seed": str(shard_seed(int(result["seed"]), "attack", attack, start))}
    return link


# ----------------------------------------------------------------------------- split images

@dataclass(frozen=True)
class SplitImage:
    """A parsed split-image key ``[<model>/]<split>:<index>[@<start>:<stop>]``."""

    owner: str | None          # the model whose split it is (None: the model the link opens)
    split: str
    index: int
    shard: tuple[int, int] | None

    def __str__(self) -> str:
        s = (f"{self.owner}/" if self.owner else "") + f"{self.split}:{self.index}"
        return s + (f"@{self.shard[0]}:{self.shard[1]}" if self.shard else "")


_KEY = re.compile(r"^(?:(?P<owner>[A-Za-z0-9_.+-]+)/)?(?P<split>tune|report|calib|all):(?P<index>\d+)"
                  r"(?:@(?P<start>\d+):(?P<stop>\d+))?$")


def parse_image_key(key: str | None) -> SplitImage | None:
    """The split image a key names, or None when the key is not a split key (a gallery key)."""
    m = _KEY.match(key or "")
    if m is None:
        return None
    shard = (int(m["start"]), int(m["stop"])) if m["start"] is not None else None
    return SplitImage(m["owner"], m["split"], int(m["index"]), shard)


def split_asset_path(model_name: str, split: str) -> Path:
    """Where the split's images ship: ``assets/splits/<model>-<split>.npz``."""
    return SPLITS_DIR / f"{model_name}-{split}.npz"


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    u8 = np.rint(x.numpy() * 255).astype(np.uint8)
    if not np.array_equal(_from_uint8(u8), x.numpy()):
        raise InputError("these images are not whole grey levels (k/255): a uint8 file would change them.")
    return u8


def _from_uint8(u8: np.ndarray) -> np.ndarray:
    return u8.astype(np.float32) / np.float32(255)


def write_split_asset(model, split: str = "report", path: str | Path | None = None) -> Path:
    """Write ``split``'s images (uint8, ``[N,C,H,W]``), labels and positions among the held-out
    images (``heldout_index``), with the weights they were cut with, to an ``.npz``."""
    from nip_core.data import dataset_of, heldout_split

    x, y = heldout_split(model, split)
    hx, hy = dataset_of(model).heldout(model)
    right = torch.nonzero(model.predict(hx) == hy).flatten()
    lo, hi = dataset_of(model).splits[split]
    out = Path(path) if path is not None else split_asset_path(model.name, split)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=_to_uint8(x), labels=y.numpy().astype(np.int64),
                        heldout_index=right[lo:hi].numpy().astype(np.int64),
                        weights_sha256=np.array(model.weights_sha256), split=np.array(split))
    return out


@lru_cache(maxsize=8)
def _split_cached(model_name: str, weights_sha256: str, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    path = split_asset_path(model_name, split)
    if path.is_file():
        with np.load(path) as f:
            if str(f["weights_sha256"]) == weights_sha256:
                return torch.from_numpy(_from_uint8(f["images"])), torch.from_numpy(f["labels"]), str(path)
    from nip_core.data import heldout_split
    from nip_core.models import load_model

    x, y = heldout_split(load_model(model_name), split)
    return x, y, "data loader"


def split_images(model, split: str = "report") -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of the model's ``split``: the shipped ``.npz`` when it was cut with
    these weights, else the data loaders (which may need the dataset installed)."""
    x, y, _ = _split_cached(model.name, model.weights_sha256, split)
    return x, y


def split_source(model, split: str = "report") -> str:
    """Where :func:`split_images` reads from: the shipped file's path or ``"data loader"``."""
    return _split_cached(model.name, model.weights_sha256, split)[2]


def split_image(model, key: str) -> tuple[torch.Tensor, int, tuple[torch.Tensor, torch.Tensor, int] | None]:
    """The image a split key names, its true label, and (when the key names a shard) the shard's
    images, labels and the image's position in it, for ``explain(batch=…)``.

    Raises:
        InputError: not a split key, another dataset's split, or an index outside the split/shard.
    """
    from nip_core.data import dataset_of
    from nip_core.models import MODELS, load_model

    k = parse_image_key(key)
    if k is None:
        raise InputError(f"{key!r} is not a split image; write report:<index> (e.g. report:12).")
    source = model
    if k.owner and k.owner != model.name:
        if k.owner not in MODELS:
            raise InputError(f"unknown model {k.owner!r} in image {key!r}.")
        source = load_model(k.owner)
        if dataset_of(source).name != dataset_of(model).name:
            raise InputError(f"image {key!r} is from {dataset_of(source).name}, not {model.name}'s dataset.")
    x, y = split_images(source, k.split)
    if not 0 <= k.index < len(y):
        raise InputError(f"no image {k.index} in the {k.split} split of {source.name} "
                         f"({len(y)} images: 0 to {len(y) - 1}).")
    batch = None
    if k.shard is not None:
        lo, hi = k.shard
        if not (0 <= lo <= k.index < hi <= len(y)):
            raise InputError(f"shard {lo}:{hi} of image {key!r} must hold the image and lie within the "
                             f"{len(y)} images of the split.")
        batch = (x[lo:hi], y[lo:hi], k.index - lo)
    return x[k.index], int(y[k.index]), batch
