"""Shipped models: accuracy, card, hookable layers, and ImageNet gallery labels."""
import json

import torch

from nip_core.data import gallery, mnist
from nip_core.models import load_model
from nip_core.models.base import file_sha256
from nip_core.models.lenet import CARD, WEIGHTS


def test_lenet_card_matches_weights_and_heldout_accuracy(lenet):
    card = json.loads(CARD.read_text())
    assert card["sha256"] == file_sha256(WEIGHTS) == lenet.weights_sha256
    x, y = mnist("test")
    acc = float((lenet.predict(x) == y).float().mean())
    assert len(y) == 1000 and acc >= 0.96
    assert abs(acc - card["test_accuracy"]) < 1e-3


def test_train_and_test_splits_are_disjoint():
    xtr, _ = mnist("train")
    xte, _ = mnist("test")
    assert len(xtr) == 4000 and len(xte) == 1000
    tr = {hash(t.numpy().tobytes()) for t in xtr}
    assert sum(hash(t.numpy().tobytes()) in tr for t in xte) <= 2  # MNIST holds a few exact duplicates


def _hook_counts(model, x):
    counts = {name: 0 for name in model.layers}
    handles = [m.register_forward_hook(lambda *_a, n=name: counts.__setitem__(n, counts[n] + 1))
               for name, m in model.layers.items()]
    try:
        model.logits(x)
    finally:
        for h in handles:
            h.remove()
    return counts


def test_influence_layers_run_once_per_forward(lenet):
    eff = load_model("efficientnet-lite0")
    assert set(_hook_counts(lenet, torch.rand(2, 1, 28, 28)).values()) == {1}
    assert set(_hook_counts(eff, torch.rand(1, 3, 224, 224)).values()) == {1}


def test_efficientnet_classifies_gallery_photos():
    eff = load_model("efficientnet-lite0")
    items = gallery("imagenet")
    assert len(items) >= 5
    x = torch.stack([it.image for it in items])
    assert x.shape[1:] == (3, 224, 224) and 0 <= float(x.min()) and float(x.max()) <= 1
    pred = eff.predict(x)
    assert pred.tolist() == [it.label for it in items]
    assert any("cat" in it.label_name for it in items) and any(it.label_name == "espresso" for it in items)


def test_imagenet_heldout_adds_foolbox_validation_images():
    from nip_core.data import heldout_split, imagenet_samples

    samples = imagenet_samples()
    assert len(samples) == 20
    for it in samples:
        assert it.image.shape == (3, 224, 224) and 0 <= float(it.image.min()) and float(it.image.max()) <= 1
        assert it.key.endswith(f"_{it.label}") and 0 <= it.label < 1000 and it.label_name
    eff = load_model("efficientnet-lite0")
    x, y = heldout_split(eff, "all")
    assert len(x) >= 21                                   # 5 gallery photos + 16 of 20 foolbox images
    assert torch.equal(eff.predict(x), y)                 # only correctly classified images are held out
    assert {it.label for it in samples if it.label in set(y.tolist())}  # the foolbox images are in it
