"""lenet-fashion: the Debian Fashion-MNIST loader, the shipped model, gallery and bank, and
lenet-mnist unchanged by the generalised LeNet5. Needs `make fashion-data` (make test runs it)."""
import json

import numpy as np
import pytest
import torch

from nip_core.errors import InputError
from nip_core.images import load_image_file, to_model_input
from nip_core.models import load_model
from nip_core.models.base import file_sha256
from nip_core.models.lenet import CARD, FASHION_CARD, FASHION_WEIGHTS, MNIST_MEAN, MNIST_STD, WEIGHTS
from nip_core.sources.fashion import (
    BANK, FASHION_CLASSES, FASHION_SPLITS, GALLERY_DIR, fashion_available, fashion_bank, fashion_gallery,
    fashion_mnist, fashion_test_permutation, fashion_uint8,
)


@pytest.fixture(scope="module")
def fashion():
    return load_model("lenet-fashion")


def test_loader_reads_the_official_60000_and_10000_images():
    assert fashion_available()
    for split, n in (("train", 60_000), ("test", 10_000)):
        x, y = fashion_mnist(split)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert torch.bincount(y).tolist() == [n // 10] * 10
        raw, labels = fashion_uint8(split)
        assert torch.equal(x[:, 0], torch.from_numpy(raw.astype(np.float32) / 255.0))
    # The official files start with an ankle boot (train) and an ankle boot, a pullover (test).
    assert int(fashion_mnist("train")[1][0]) == 9
    assert fashion_mnist("test")[1][:3].tolist() == [9, 2, 1]
    with pytest.raises(InputError, match="choose train or test"):
        fashion_mnist("validation")


def test_missing_files_give_one_line_telling_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("NIP_FASHION_DIR", str(tmp_path))
    assert not fashion_available()
    with pytest.raises(InputError) as err:
        fashion_mnist("test")
    message = str(err.value)
    assert "\n" not in message and "make fashion-data" in message and "dataset-fashion-mnist" in message
    assert str(tmp_path) in message


def test_test_permutation_is_fixed_and_splits_are_disjoint():
    perm = fashion_test_permutation()
    assert np.array_equal(perm, fashion_test_permutation())
    assert sorted(perm.tolist()) == list(range(10_000))
    bounds = [FASHION_SPLITS[s] for s in ("tune", "report", "calib")]
    assert bounds == [(0, 500), (500, 1500), (1500, 2500)]


def test_model_classifies_the_first_500_test_images(fashion):
    x, y = fashion_mnist("test")
    acc = float((fashion.predict(x[:500]) == y[:500]).float().mean())
    assert acc >= 0.87
    assert fashion.class_names == list(FASHION_CLASSES)
    assert tuple(fashion.layers) == ("conv1", "conv2", "fc1", "fc2") and fashion.spec.default_layer == "fc1"
    assert fashion.spec.gallery == "fashion" and (fashion.spec.input_channels, fashion.spec.input_size) == (1, 28)


def test_card_matches_weights_and_the_full_test_set(fashion):
    card = json.loads(FASHION_CARD.read_text())
    assert card["sha256"] == file_sha256(FASHION_WEIGHTS) == fashion.weights_sha256
    assert card["test_accuracy"] >= 0.89 and card["n_test"] == 10_000 and card["licence"].startswith("MIT")
    x, y = fashion_mnist("test")
    acc = float((fashion.predict(x) == y).float().mean())
    assert abs(acc - card["test_accuracy"]) <= 1e-3


def test_gallery_images_are_the_debian_test_images_they_name(fashion):
    items = fashion_gallery()
    raw, labels = fashion_uint8("test")
    position = {int(i): p for p, i in enumerate(fashion_test_permutation())}
    assert [m["label"] for m, _ in items] == sorted([c for c in range(10)] * 2)
    for meta, image in items:
        i = meta["test_index"]
        assert meta["source"] == f"Fashion-MNIST test image #{i} (MIT)"
        assert meta["label"] == int(labels[i]) and meta["label_name"] == FASHION_CLASSES[int(labels[i])]
        assert torch.equal(image[0], torch.from_numpy(raw[i].astype(np.float32) / 255.0))
        assert position[i] >= 2500  # never in the tune/report/calib part of the permutation
    x = torch.stack([img for _, img in items])
    assert fashion.predict(x).tolist() == [m["label"] for m, _ in items]


def test_fashion_preprocessing_keeps_gallery_images_recognisable(fashion):
    metas = fashion_gallery()
    x = torch.stack([load_image_file(GALLERY_DIR / m["file"], channels=1, size=28, preprocess="fashion")
                     for m, _ in metas])
    assert x.shape == (20, 1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert int((fashion.predict(x) == torch.tensor([m["label"] for m, _ in metas])).sum()) >= 17


def test_fashion_preprocessing_inverts_a_product_photo_on_white():
    from PIL import Image

    photo = np.full((90, 60, 3), 255, dtype=np.uint8)
    photo[10:80, 20:40] = 40  # a dark, tall item on a white background
    x = to_model_input(Image.fromarray(photo), channels=1, size=28, preprocess="fashion")
    assert x.shape == (1, 28, 28)
    assert float(x[0, :, :5].max()) == 0.0 and float(x[0, :, -5:].max()) == 0.0  # black sides
    assert float(x[0, 14, 14]) > 0.9 and float(x[0, 0, 14]) > 0.9  # item fills the height


def test_bank_is_the_first_400_training_images_of_each_class():
    with np.load(BANK) as f:
        x, y, index = f["x"], f["y"], f["index"]
    assert x.shape == (4000, 1, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    raw, labels = fashion_uint8("train")
    expected = np.sort(np.concatenate([np.flatnonzero(labels == c)[:400] for c in range(10)]))
    assert np.array_equal(index, expected)
    assert np.array_equal(x[:, 0], raw[index]) and np.array_equal(y, labels[index])
    xb, yb = fashion_bank()
    assert xb.shape == (4000, 1, 28, 28) and torch.bincount(yb).tolist() == [400] * 10


def test_lenet_mnist_still_loads_bit_identically(lenet):
    from safetensors.torch import load_file

    from nip_core.data import mnist

    card = json.loads(CARD.read_text())
    assert card["sha256"] == file_sha256(WEIGHTS) == lenet.weights_sha256
    state = load_file(str(WEIGHTS))
    assert torch.equal(state["normalize.mean"].flatten(), torch.tensor(MNIST_MEAN))
    assert torch.equal(state["normalize.std"].flatten(), torch.tensor(MNIST_STD))
    assert all(torch.equal(v.cpu(), state[k]) for k, v in lenet.net.state_dict().items())
    x, y = mnist("test")
    assert float((lenet.predict(x) == y).float().mean()) == pytest.approx(card["test_accuracy"], abs=5e-5)


def test_cli_train_refuses_unknown_models_and_missing_data_in_one_line(tmp_path, monkeypatch, capsys):
    from nip_core.cli import main

    before = file_sha256(FASHION_WEIGHTS)
    assert main(["train", "resnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lenet-mnist, lenet-fashion" in err
    monkeypatch.setenv("NIP_FASHION_DIR", str(tmp_path))
    assert main(["train", "lenet-fashion", "--epochs", "1", "--ship"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: Fashion-MNIST is not installed")
    assert file_sha256(FASHION_WEIGHTS) == before  # nothing was overwritten
