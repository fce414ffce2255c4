"""ResNet-8 (CIFAR-10) port: weights, card, foolbox test images, hooks, input scaling, preprocessing."""
import io
import json

import numpy as np
import pytest
import torch
from captum.attr import LayerConductance
from PIL import Image, ImageDraw

from nip_core.images import load_image, to_model_input
from nip_core.models import load_model
from nip_core.models.base import file_sha256
from nip_core.models.resnet8 import CARD, WEIGHTS
from nip_core.sources.cifar10 import CIFAR10_CLASSES, cifar10_samples

SHAPES = {"stem": (16, 32, 32), "stack1": (16, 32, 32), "stack2": (32, 16, 16), "stack3": (64, 8, 8)}


@pytest.fixture(scope="module")
def resnet8():
    return load_model("resnet8-cifar10")


@pytest.fixture(scope="module")
def card():
    return json.loads(CARD.read_text())


@pytest.fixture(scope="module")
def samples():
    return cifar10_samples()


def test_loads_with_the_keras_parameter_count_and_its_card(resnet8, card):
    trainable = sum(p.numel() for p in resnet8.net.parameters())
    bn_stats = sum(b.numel() for n, b in resnet8.net.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert (trainable, bn_stats) == (78_186, 480)
    assert trainable + bn_stats == card["parameters"] == 78_666  # Keras counts BatchNorm statistics
    assert card["sha256"] == file_sha256(WEIGHTS) == resnet8.weights_sha256
    assert resnet8.class_names == card["class_names"] == list(CIFAR10_CLASSES)
    assert card["their_evaluation"]["accuracy"] == 0.8086 and card["their_evaluation"]["n_images"] == 10_000
    assert "Zlib" in WEIGHTS.with_name("resnet8-cifar10.LICENSE.txt").read_text()
    spec = resnet8.spec
    assert (spec.input_channels, spec.input_size, spec.preprocess, spec.gallery) == (3, 32, "natural", "cifar10")
    assert list(resnet8.layers) == list(spec.layers) == list(SHAPES) and spec.default_layer == "stack3"


def test_foolbox_samples_are_the_png_pixels_with_file_name_labels(samples):
    x, y, names = samples
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert names[0] == "cifar10_00_3.png" and [int(n.split("_")[1]) for n in names] == list(range(20))
    assert y.tolist() == [int(n.rsplit("_", 1)[1].removesuffix(".png")) for n in names]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(x * 255, (x * 255).round())  # no resampling: exact 8-bit values


def test_foolbox_predictions_match_the_verified_port(resnet8, card, samples):
    x, y, _ = samples
    pred = resnet8.predict(x)
    check = card["own_check"]
    assert pred.tolist() == check["foolbox_predictions"]
    assert int((pred == y).sum()) == check["n_correct"] == 18
    assert check["max_abs_diff_vs_numpy_reference"] < 1e-4


def test_scaling_to_the_int8_range_is_inside_the_model(resnet8, samples):
    x = samples[0][:4]
    seen = []
    handle = resnet8.net.conv0.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().cpu()))
    try:
        logits = resnet8.logits(x)
    finally:
        handle.remove()
    assert torch.allclose(seen[0], (x * 255 - 128) / 128, atol=1e-5)  # the package's training scaling
    # Feeding 0–255 pixels instead of [0,1] ones is a different, wrong input.
    assert not torch.allclose(resnet8.logits(x * 255), logits, atol=1.0)


def test_matches_the_numpy_keras_reference():
    """The conversion check, re-run; needs the conversion-only packages (requirements-convert.txt,
    which `make test` installs): a missing package fails here rather than skip."""
    import importlib.util

    import h5py  # noqa: F401
    import mltk  # noqa: F401
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "convert_resnet8_cifar10.py"
    spec = importlib.util.spec_from_file_location("convert_resnet8_cifar10", path)
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    layers, weights = conv.read_keras(conv.read_package()[0])
    x, _, _ = cifar10_samples()
    ref = conv.numpy_reference(layers, weights, np.rint(x.permute(0, 2, 3, 1).numpy() * 255))
    logits = load_model("resnet8-cifar10").logits(x).double().numpy()
    assert np.abs(logits - ref).max() < 1e-4


def test_influence_layers_are_single_use_hookable_relus(resnet8, samples):
    x = samples[0][:2]
    relus = [m for _, m in resnet8.net.named_modules(remove_duplicate=False) if isinstance(m, torch.nn.ReLU)]
    # The Keras graph's 7 ReLUs, each its own module, none in place.
    assert len(relus) == len({id(m) for m in relus}) == 7 and not any(m.inplace for m in relus)
    calls = {name: [] for name in resnet8.layers}
    handles = [m.register_forward_hook(lambda _m, _i, out, n=name: calls[n].append(tuple(out.shape)))
               for name, m in resnet8.layers.items()]
    try:
        resnet8.logits(x)
    finally:
        for h in handles:
            h.remove()
    assert calls == {name: [(2, *shape)] for name, shape in SHAPES.items()}


def test_conductance_on_the_default_layer_is_complete(resnet8, samples):
    x, y, _ = samples
    x, y = x[:2], y[:2]
    layer = resnet8.layer(None)
    with resnet8.lock:
        attr = LayerConductance(resnet8.net, layer).attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=64)
    assert attr.shape == (2, *SHAPES["stack3"])
    logits, base = resnet8.logits(x), resnet8.logits(torch.zeros_like(x))
    gap = logits.gather(1, y[:, None]) - base.gather(1, y[:, None])
    # Conductance sums to the target logit's change from the black baseline (up to the Riemann error).
    assert torch.allclose(attr.flatten(1).sum(1), gap.flatten(), rtol=0.05, atol=0.05)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_natural_preprocess_resizes_the_shorter_side_and_centre_crops():
    im = Image.new("RGB", (45, 31), (255, 0, 0))
    ImageDraw.Draw(im).rectangle((0, 0, 4, 30), fill=(0, 0, 255))  # left strip: outside the crop
    x = load_image(_png(im), channels=3, size=32, preprocess="natural")
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.allclose(x, torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 32, 32), atol=1e-6)
    # Unlike "imagenet" (256/224 margin), nothing of the shorter side is cut: a one-pixel top row survives.
    square = Image.new("RGB", (40, 40), (0, 0, 0))
    ImageDraw.Draw(square).rectangle((0, 0, 39, 0), fill=(255, 255, 255))
    top = {p: float(to_model_input(square, channels=3, size=32, preprocess=p)[:, 0].max())
           for p in ("natural", "imagenet")}
    assert top["natural"] > 0.5 and top["imagenet"] < 0.05
    # A 32×32 image passes through unchanged.
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    same = load_image(_png(Image.fromarray(arr)), channels=3, size=32, preprocess="natural")
    assert torch.equal(same, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
