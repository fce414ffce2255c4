"""Bring your own model: safetensors only, checked against the architecture, usable end to end."""
import json
import os
import pathlib
import pickle

import pytest
import torch
from safetensors.torch import save, save_file

from nip_core.byom import ARCHITECTURES, add_byom_arguments, load_custom_model, parse_class_names, resolve_model
from nip_core.errors import InputError
from nip_core.models import load_model
from nip_core.models.lenet import LeNet5

DIGITS = [str(i) for i in range(10)]


def _lenet(seed=1, **kw):
    torch.manual_seed(seed)
    return LeNet5(**kw).eval()


@pytest.fixture(scope="module")
def resnet_small():
    from torchvision.models import resnet18

    torch.manual_seed(3)
    net = resnet18(weights=None, num_classes=3).eval()
    model = load_custom_model("resnet18", save(net.state_dict()), b"cat\ndog\nbird\n", input_size=64)
    return net, model


def test_lenet_round_trip_same_logits_and_registered():
    net = _lenet()
    m = load_custom_model("lenet", save(net.state_dict()), DIGITS)
    assert m.name.startswith("custom-lenet-") and len(m.name) == len("custom-lenet-") + 12
    assert load_model(m.name) is m
    assert (m.spec.input_channels, m.spec.input_size, m.spec.gallery, m.spec.preprocess) == (1, 28, "mnist", "mnist")
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m.logits(x), net(x))
    # Loading the same file again gives the same registered model.
    assert load_custom_model("lenet", save(net.state_dict()), DIGITS) is m


def test_lenet_rgb_from_file_path_and_json_classes(tmp_path):
    net = _lenet(2, in_channels=3, num_classes=4)
    w = tmp_path / "m.safetensors"
    save_file(net.state_dict(), str(w))
    c = tmp_path / "classes.json"
    c.write_text(json.dumps(["a", "b", "c", "d"]))
    m = load_custom_model("lenet", w, c)
    assert m.class_names == ["a", "b", "c", "d"] and m.spec.input_channels == 3 and m.spec.gallery == "imagenet"
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(m.logits(x), net(x))
    # Gallery photos (224×224) are fitted to the model's 28×28 input for influence profiles.
    assert m.logits(torch.rand(1, 3, 224, 224)).shape == (1, 4)


def test_resnet18_round_trip(resnet_small):
    net, m = resnet_small
    assert m.num_classes == 3 and m.spec.input_size == 64 and m.spec.gallery == "imagenet"
    assert "relu" not in m.layers and {"layer1", "layer4", "avgpool"} <= set(m.layers)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m.logits(x), net(m.net.normalize(x)))


def test_explain_on_custom_resnet_with_gallery_image(resnet_small):
    """A user's 3-class model explained on an ImageNet gallery photo: the gallery's labels (e.g. 285)
    are not its classes, so its references are labelled with its own predictions (engine request A)."""
    from nip_core.data import benign_reference, gallery
    from nip_core.analyses.explain import explain
    from nip_core.images import to_model_input, tensor_to_pil
    from nip_core.influence import influence_profile

    _, m = resnet_small
    x_ref, y_ref = benign_reference(m)
    assert torch.equal(y_ref, m.predict(x_ref)) and int(y_ref.max()) < m.num_classes
    photo = gallery("imagenet")[0].image
    x = to_model_input(tensor_to_pil(photo), channels=3, size=64, preprocess="imagenet")
    e = explain(m, x, attack="fgsm", defense="nip", defense_params={"steps": 2, "candidates": 2}, n_steps=4,
                method="grad_x_act")
    assert set(e.logits) == {"benign", "adversarial", "defended"}
    assert e.top("benign")[0][1] in ("cat", "dog", "bird")
    assert e.influence["benign"].shape == (512,)  # layer4 channels
    # influence is measured toward the model's own prediction, a class it has
    assert e.reference_class == e.prediction("benign") < m.num_classes
    # no calibration for a user's model: nip passes the adversarial through unchanged (never harm)
    assert torch.equal(e.images["defended"], e.images["adversarial"])
    # the profile's per-class scores are for the model's 3 classes only
    prof = influence_profile(m, e.layer, "grad_x_act", 4)
    assert e.reference_class in prof.per_class and set(prof.per_class) <= {0, 1, 2}


def test_mismatched_shapes_refused():
    net = _lenet(num_classes=10)
    state = net.state_dict()
    state["fc2.weight"] = torch.zeros(80, 120)
    with pytest.raises(InputError, match=r"'fc2.weight' has shape 80×120, the architecture needs 84×120"):
        load_custom_model("lenet", save(state), DIGITS)


def test_missing_and_unexpected_keys_refused():
    state = _lenet().state_dict()
    del state["conv2.bias"]
    with pytest.raises(InputError, match="'conv2.bias' is missing"):
        load_custom_model("lenet", save(state), DIGITS)
    state = _lenet().state_dict() | {"extra.weight": torch.zeros(2)}
    with pytest.raises(InputError, match="unexpected key 'extra.weight'"):
        load_custom_model("lenet", save(state), DIGITS)
    # A LeNet file given as a resnet: no final layer where resnet keeps it.
    with pytest.raises(InputError, match="do not fit resnet18"):
        load_custom_model("resnet18", save(_lenet().state_dict()), DIGITS)


def test_unknown_architecture_refused():
    with pytest.raises(InputError, match="unknown architecture 'vgg99'; choose one of: lenet"):
        load_custom_model("vgg99", save(_lenet().state_dict()), DIGITS)


@pytest.mark.parametrize("names, match", [
    (DIGITS[:9], "10 classes but 9 class names"),
    (DIGITS + ["10"], "10 classes but 11 class names"),
    ([], "class-name list is empty"),
    (b"", "class-name list is empty"),
    (b"\n \n", "class-name list is empty"),
    (b"\xff\xfe\x00a", "not UTF-8"),
    (b'["a", 3.5]', "must be a string"),
    (b'["a", ', "not valid JSON"),
    (["x" * 300] + DIGITS[1:], "over the 200 limit"),
    ([str(i) for i in range(10_001)], "over the 10000 limit"),
])
def test_bad_class_names_refused(names, match):
    with pytest.raises(InputError, match=match):
        load_custom_model("lenet", save(_lenet().state_dict()), names)


def test_class_names_text_and_json():
    assert parse_class_names(b"\xef\xbb\xbfcat\r\n  dog \n\nbird\n") == ["cat", "dog", "bird"]
    assert parse_class_names(b' ["cat", "dog"] ') == ["cat", "dog"]


def test_nan_weights_and_bad_input_size_refused():
    state = _lenet().state_dict()
    state["fc1.weight"][0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN or infinite"):
        load_custom_model("lenet", save(state), DIGITS)
    with pytest.raises(InputError, match="'input_size' must be 28 for lenet"):
        load_custom_model("lenet", save(_lenet().state_dict()), DIGITS, input_size=32)
    with pytest.raises(InputError, match=r"'input_size' must be an integer in \[32, 512\]"):
        load_custom_model("resnet18", b"\x00" * 16, ["a"], input_size=16)


def test_oversized_and_not_safetensors_refused(tmp_path, monkeypatch):
    import nip_core.byom as byom

    monkeypatch.setattr(byom, "MAX_WEIGHT_BYTES", 1000)
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\x00" * 2000)
    with pytest.raises(InputError, match="over the"):
        byom.load_custom_model("lenet", big, DIGITS)
    monkeypatch.undo()
    for junk, match in [(b"", "empty or truncated"), (b"hello world, not weights", "not a readable safetensors"),
                        (b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "HDF5"), (tmp_path, "not a regular file"),
                        (tmp_path / "nope.safetensors", "There is no file")]:
        with pytest.raises(InputError, match=match):
            load_custom_model("lenet", junk, DIGITS)


class _Touch:
    """Unpickling this object creates ``path`` (a stand-in for arbitrary code execution)."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


class _System:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("how", ["pickle", "pickle-os-system", "torch.save", "torch.save-legacy"])
@pytest.mark.parametrize("as_path", [False, True])
def test_pickled_weights_never_unpickled(tmp_path, how, as_path):
    marker = tmp_path / "pwned"
    payload = {"conv1.weight": _System(marker) if how == "pickle-os-system" else _Touch(marker)}
    f = tmp_path / "model.pt"
    if how.startswith("pickle"):
        f.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save(payload, f, _use_new_zipfile_serialization=(how == "torch.save"))
    # The payload works: unpickling it really would create the file.
    pickle.loads(pickle.dumps(_Touch(tmp_path / "control")))
    assert (tmp_path / "control").exists()

    with pytest.raises(InputError) as err:
        load_custom_model("lenet", f if as_path else f.read_bytes(), DIGITS)
    msg = str(err.value)
    assert "only safetensors" in msg and "\n" not in msg
    assert ("ZIP archive" in msg) if how == "torch.save" else ("pickle" in msg)
    assert not marker.exists()


def test_cli_helpers(tmp_path):
    import argparse

    net = _lenet(4)
    w = tmp_path / "w.safetensors"
    save_file(net.state_dict(), str(w))
    (tmp_path / "c.txt").write_text("\n".join(DIGITS))
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    add_byom_arguments(p)
    name = resolve_model(p.parse_args(["--arch", "lenet", "--weights", str(w), "--classes", str(tmp_path / "c.txt")]))
    assert name.startswith("custom-lenet-") and load_model(name).num_classes == 10
    assert resolve_model(p.parse_args(["--model", "lenet-mnist"])) == "lenet-mnist"
    assert resolve_model(p.parse_args([]), required=False) is None
    for argv, match in [([], "give --model"), (["--model", "lenet-mnist", "--weights", str(w)], "not both"),
                        (["--weights", str(w)], "needs --arch and --classes"), (["--arch", "lenet"], "only applies")]:
        with pytest.raises(InputError, match=match):
            resolve_model(p.parse_args(argv))


def test_every_architecture_has_single_use_layers():
    for name, a in ARCHITECTURES.items():
        assert a.default_layer in a.layers, name
        assert not any(path.endswith("relu") for path in a.layers.values()), name
