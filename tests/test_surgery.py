"""Neuron surgery: exactness on every model, hand-checked replacements, selections, values, errors, CLI."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file
from torch import nn
from torch.nn import functional as F

from nip_core.errors import InputError
from nip_core.models.base import LoadedModel
from nip_core.analyses.surgery import (Selection, Value, check_selection, layer_output_and_logits, margins, parse_selection,
                              parse_value, patch, random_mask, recovery_share, reference_mean, select_neurons,
                              source_activations, surgery)
from tests.util import TinyMLP, loaded

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ("lenet-mnist", "lenet-fashion", "lenet-fashion-at", "resnet8-cifar10", "efficientnet-lite0")
USER = ("user-lenet", "user-resnet18")
DIGITS = [str(i) for i in range(10)]


# ----------------------------------------------------------------------------- models and inputs

def _user_model(name: str) -> LoadedModel:
    """A user's model as the app and CLI load it: safetensors bytes of a state dict."""
    from nip_core.byom import load_custom_model
    from nip_core.models.lenet import LeNet5

    torch.manual_seed(11)
    if name == "user-lenet":
        return load_custom_model("lenet", save(LeNet5().eval().state_dict()), DIGITS)
    from torchvision.models import resnet18
    return load_custom_model("resnet18", save(resnet18(weights=None, num_classes=3).eval().state_dict()),
                             ["cat", "dog", "bird"], input_size=64)


_CASES: dict[str, tuple] = {}


def case(name: str):
    """(model, benign [2,C,H,W], FGSM adversarial, labels): two gallery images, fitted to the model."""
    if name not in _CASES:
        from nip_core.attacks import run_attack
        from nip_core.data import gallery
        from nip_core.models import load_model

        model = load_model(name) if name in BUILTIN else _user_model(name)
        items = gallery(model.spec.gallery)[:2]
        x = torch.stack([it.image for it in items])
        size = model.spec.input_size
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        y = torch.tensor([it.label for it in items]) if name in BUILTIN else model.predict(x)
        x_adv = run_attack(model, "fgsm", x, y, seed=0).x_adv
        _CASES[name] = (model, x, x_adv, y)
    return _CASES[name]


ALL = BUILTIN + USER


# ----------------------------------------------------------------------------- exactness on every model

@pytest.mark.parametrize("name", ALL)
def test_empty_selection_is_the_unpatched_pass_bit_for_bit(name):
    model, x, x_adv, y = case(name)
    unpatched = model.logits(x_adv)
    for layer in model.spec.layers:
        src, _ = layer_output_and_logits(model, x, layer)
        for value, source in (("benign", src), ("zero", None), ("scale:3", None)):
            got = patch(model, x_adv, layer, [], value, source=source)
            assert torch.equal(got.logits, unpatched), (layer, value)
    r = surgery(model, x, x_adv, None, "none", "benign", label=y)
    assert torch.equal(r.patched.logits, unpatched) and torch.equal(r.adversarial.logits, unpatched)
    assert torch.equal(r.benign.logits, model.logits(x)) and not r.neurons.any()


@pytest.mark.parametrize("name", ALL)
def test_scale_one_on_every_neuron_changes_nothing(name):
    model, x, x_adv, y = case(name)
    unpatched = model.logits(x_adv)
    for layer in model.spec.layers:
        every = torch.ones(layer_output_and_logits(model, x[:1], layer)[0].shape[1], dtype=torch.bool)
        assert torch.equal(patch(model, x_adv, layer, every, "scale:1").logits, unpatched), layer


# Every influence layer of these models is a tensor that everything after it is computed from
# (LeNet's activations; ResNet-8's stem and residual-stack outputs; EfficientNet's MBConv block
# outputs and head activation; torchvision ResNet's layer1-4 and avgpool), so setting all of its
# neurons to their benign values must give the benign logits.
@pytest.mark.parametrize("name", ALL)
def test_every_neuron_set_to_benign_gives_the_benign_logits(name):
    model, x, x_adv, y = case(name)
    benign = model.logits(x)
    for layer in model.spec.layers:
        n = layer_output_and_logits(model, x[:1], layer)[0].shape[1]
        r = surgery(model, x, x_adv, layer, ",".join(map(str, range(n))), "benign", label=y)
        assert r.neurons.all()
        tol = 1e-4 * float(benign.abs().max())
        assert float((r.patched.logits - benign).abs().max()) <= tol, layer
        assert torch.equal(r.patched.predictions, benign.argmax(1))
        flipped = r.flipped
        assert torch.allclose(r.recovery_share[flipped], torch.ones(int(flipped.sum())), atol=1e-3)


def test_an_attack_flips_something_so_recovery_is_tested():
    # The exactness test above checks recovery share 1 on flipped images: make sure there are some.
    model, x, x_adv, y = case("lenet-mnist")
    assert (model.predict(x) == y).all() and (model.predict(x_adv) != y).any()


# ----------------------------------------------------------------------------- hand-checkable models

class TinyConv(nn.Module):
    # One 1×1 conv with two output channels (maps of 1×2), then a linear read-out of all 4 values.
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0, 4.0, 8.0], [1.0, -1.0, 1.0, -1.0]]))

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


@pytest.fixture()
def mlp():
    net = TinyMLP()
    return loaded(net, {"hidden": net.act})


@pytest.fixture()
def conv():
    net = TinyConv()
    return loaded(net, {"maps": net.act})


X = torch.tensor([[[[0.5, 0.25]]]])      # hidden = [0.5, 0.5, 0];  logits = [1.5 - 0.5, 1.0] = [1, 1]
X2 = torch.tensor([[[[1.0, 0.125]]]])    # hidden = [1, 0.25, 0];   logits = [2.75, 1.25]


def test_zeroing_a_unit_changes_each_logit_by_weight_times_activation(mlp):
    base = mlp.logits(X)[0]
    w2 = mlp.net.fc2.weight
    for j, a_j in enumerate([0.5, 0.5, 0.0]):
        got = patch(mlp, X, "hidden", [j], "zero").logits[0]
        assert torch.equal(base - got, w2[:, j] * a_j), j
    # scale:2 on unit 1 adds W2[:,1]·a_1 once more; several units at once add up.
    assert torch.equal(patch(mlp, X, "hidden", [1], "scale:2").logits[0], base + w2[:, 1] * 0.5)
    assert torch.equal(patch(mlp, X, "hidden", [0, 1], "zero").logits[0], torch.tensor([0.0, 0.0]))


def test_benign_value_copies_the_source_units_and_only_them(mlp):
    src, _ = layer_output_and_logits(mlp, X2, "hidden")          # [1, 0.25, 0]
    got = patch(mlp, X, "hidden", [0], "benign", source=src).logits[0]
    # hidden becomes [1, 0.5, 0]: logits [3 - 0.5, 1.5]
    assert torch.equal(got, torch.tensor([2.5, 1.5]))
    # one index list per input, in a batch: row 0 patches unit 0, row 1 unit 1
    both = torch.cat([X, X])
    got = patch(mlp, both, "hidden", [[0], [1]], "benign", source=src).logits
    assert torch.equal(got, torch.tensor([[2.5, 1.5], [1.0 + 0.25, 0.75]]))


def test_conv_neuron_is_a_whole_map_replaced_position_by_position(conv):
    x = torch.tensor([[[[1.0, 3.0]]]])           # maps: ch0 [1, 3], ch1 [2, 6]; logits [1+6+8+48, 1-3+2-6]
    xs = torch.tensor([[[[2.0, 0.5]]]])          # maps: ch0 [2, 0.5], ch1 [4, 1]
    assert torch.equal(conv.logits(x)[0], torch.tensor([63.0, -6.0]))
    src, _ = layer_output_and_logits(conv, xs, "maps")
    got = patch(conv, x, "maps", [1], "benign", source=src).logits[0]
    # ch1 becomes [4, 1] position by position (not its mean): [1 + 6 + 16 + 8, 1 - 3 + 4 - 1]
    assert torch.equal(got, torch.tensor([31.0, 1.0]))
    assert torch.equal(patch(conv, x, "maps", [0], "zero").logits[0], torch.tensor([0 + 0 + 8 + 48, 2 - 6.0]))


def test_mean_value_is_the_per_position_mean_over_references(conv, mlp):
    refs = torch.tensor([[[[1.0, 3.0]]], [[[2.0, 0.5]]]])
    mean = reference_mean(conv, "maps", x_ref=refs)
    assert torch.equal(mean, torch.tensor([[[[1.5, 1.75]], [[3.0, 3.5]]]]))
    x = torch.tensor([[[[1.0, 3.0]]]])
    got = patch(conv, x, "maps", [1], "mean", source=mean).logits[0]
    assert torch.equal(got, torch.tensor([1 + 6 + 12 + 28, 1 - 3 + 3 - 3.5]))
    assert torch.equal(reference_mean(mlp, "hidden", x_ref=torch.cat([X, X2])), torch.tensor([[0.75, 0.375, 0.0]]))


def test_mean_value_on_lenet_uses_the_profiles_references(lenet, digits):
    from nip_core.influence import influence_profile

    x, y = digits
    for layer in ("conv2", "fc1"):
        mean = reference_mean(lenet, layer)
        assert mean.shape[0] == 1 and reference_mean(lenet, layer) is mean        # cached
        prof = influence_profile(lenet, layer)
        per_neuron = mean.flatten(2).mean(2)[0] if mean.dim() > 2 else mean[0]
        assert torch.allclose(per_neuron, prof.mean_activation, rtol=1e-4, atol=1e-5)
    # fc1 (after its ReLU) set to the mean everywhere: the rest of LeNet by hand.
    net = lenet.net
    with torch.no_grad():
        want = net.fc3(net.act4(net.fc2(reference_mean(lenet, "fc1"))))
    got = patch(lenet, x[:3], "fc1", torch.ones(120, dtype=torch.bool), "mean").logits
    assert torch.allclose(got, want.expand(3, -1), atol=1e-5)


# ----------------------------------------------------------------------------- margins and recovery

def test_margins_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    assert torch.equal(margins(logits, 1), torch.tensor([1.0, -5.0]))
    assert torch.equal(margins(logits, torch.tensor([0, 2])), torch.tensor([-2.0, 4.0]))


def test_recovery_share_by_hand_and_na_when_not_flipped():
    assert recovery_share(1.0, -2.0, 4.0) == 0.5
    assert recovery_share(4.0, -2.0, 4.0) == 1.0 and recovery_share(-2.0, -2.0, 4.0) == 0.0
    assert recovery_share(-5.0, -2.0, 4.0) == -0.5                      # patching made it worse
    assert recovery_share(3.0, 0.5, 4.0) is None                        # the attack did not flip it
    assert recovery_share(3.0, -0.5, -1.0) is None                      # benign was already wrong
    got = recovery_share(torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.5]), torch.tensor([4.0, 4.0]))
    assert got[0] == 0.5 and torch.isnan(got[1])


def test_surgery_on_an_unflipped_input_reports_na(mlp):
    # "adversarial" = the benign input itself: hidden [1, 0, 0], logits [3, 1], margin 2, not flipped.
    # Zeroing unit 0 leaves logits [0, 0]: margin 0.
    r = surgery(mlp, torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[1.0, 0.0]]]]), "hidden", "0", "zero", label=0)
    assert r.benign.margins.tolist() == [2.0] and r.patched.margins.tolist() == [0.0]
    assert not r.flipped.any() and r.recovery(0) is None and r.to_json()["recovery_share"] == [None]
    from nip_core.figures import surgery_bars
    assert "n/a" in surgery_bars(r).layout.title.text


def test_surgery_result_by_hand(mlp):
    # benign X2: logits [2.75, 1.25], class 0, margin 1.5; adversarial X3: hidden [0, 1, 0],
    # logits [-1, 1], margin -2 (flipped). Unit 0 set to its benign value 1: logits [2, 2]: margin 0.
    x3 = torch.tensor([[[[0.0, 0.5]]]])
    r = surgery(mlp, X2, x3, "hidden", "0", "benign")
    assert r.reference_class.tolist() == [0] and r.label is None
    assert r.benign.margins.tolist() == [1.5] and r.adversarial.margins.tolist() == [-2.0]
    assert r.patched.logits.tolist() == [[2.0, 2.0]] and r.recovery(0) == pytest.approx(2 / 3.5)
    j = r.to_json()
    assert j["neurons"] == [[0]] and j["settings"]["select"] == "0" and j["flipped"] == [True]
    assert j["patched"]["prediction_names"] == ["a"] and set(j) >= {"benign", "adversarial", "patched", "seconds"}
    json.dumps(j, allow_nan=False)


# ----------------------------------------------------------------------------- selections

@pytest.mark.parametrize("text, want", [
    ("front:0.2", Selection("front", k=0.2)), ("tail:0.5", Selection("tail", k=0.5)),
    (" Front+Tail : 0.1 ", Selection("front+tail", k=0.1)), ("changed:5", Selection("changed", n=5)),
    ("random:12", Selection("random", n=12)), ("3,17,42", Selection("indices", indices=(3, 17, 42))),
    ("3, 3, 1", Selection("indices", indices=(3, 1))), ("none", Selection("none")),
    ("7", Selection("indices", indices=(7,))),
])
def test_selection_parsing(text, want):
    got = parse_selection(text)
    assert got == want and parse_selection(str(got)) == got


def test_selection_from_a_list_and_values():
    assert parse_selection([4, 2]) == Selection("indices", indices=(4, 2)) and parse_selection([]).kind == "none"
    assert parse_value("benign") == Value("benign") and parse_value(" Scale:-2.5 ") == Value("scale", -2.5)
    assert str(parse_value("scale:10")) == "scale:10" and parse_value("mean").needs_source


@pytest.mark.parametrize("text, message", [
    ("front:0.6", r"'front:K' needs K, a share of the layer's live neurons, in \(0, 0.5\]; got '0.6'"),
    ("tail:0", r"'tail:K' needs K"), ("front+tail:x", r"'front\+tail:K' needs K"),
    ("changed:0", r"'changed:N' needs N, a whole number of neurons of at least 1; got '0'"),
    ("random:2.5", r"'random:N' needs N"), ("middle:0.2", r"unknown selection 'middle:0.2'; write front:K"),
    ("3,x", "unknown selection '3,x'"), ("", "no neurons selected"),
])
def test_bad_selections_are_input_errors(text, message):
    with pytest.raises(InputError, match=message):
        parse_selection(text)


@pytest.mark.parametrize("text, message", [
    ("scale:11", r"scale must be a number in \[-10, 10\] \(write scale:A, e.g. scale:0.5\); got '11'"),
    ("scale:-10.5", "scale must be"), ("scale:nan", "scale must be"), ("scale", "scale must be"),
    ("half", r"unknown value 'half'; choose one of: benign, defended, zero, scale:A"), ("zero:1", "unknown value"),
])
def test_bad_values_are_input_errors(text, message):
    with pytest.raises(InputError, match=message):
        parse_value(text)


def test_indices_are_checked_against_the_layer():
    assert check_selection("0,119", 120, "fc1").indices == (0, 119)
    with pytest.raises(InputError, match=r"neuron index 120 is outside layer 'fc1', whose neurons are 0–119"):
        check_selection("3,120", 120, "fc1")
    with pytest.raises(InputError, match="neuron index -1 is outside"):
        check_selection("-1", 120, "fc1")
    with pytest.raises(InputError, match=r"'random:200' asks for 200 neurons; layer 'fc1' has 120"):
        check_selection("random:200", 120, "fc1")


def test_influence_changed_and_random_groups_on_lenet(lenet, digits):
    from nip_core.influence import influence_profile, neuron_activations

    x, y = digits
    x, y = x[:3], y[:3]
    x_adv = (x + 0.2 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))).clamp(0, 1)
    src = source_activations(lenet, x, x_adv, "fc1")
    prof = influence_profile(lenet, "fc1")
    for kind in ("front", "tail", "front+tail"):
        mask = select_neurons(lenet, f"{kind}:0.1", src, y)
        for r, c in enumerate(y.tolist()):
            front, _, tail = prof.groups(c, 0.1)
            want = {"front": front, "tail": tail, "front+tail": torch.cat([front, tail])}[kind]
            assert sorted(torch.nonzero(mask[r]).flatten().tolist()) == sorted(want.tolist())
    # changed:N: the largest |Δ| of the per-neuron activation neuron_activations reports
    delta = (neuron_activations(lenet, x_adv, "fc1") - neuron_activations(lenet, x, "fc1")).abs()
    mask = select_neurons(lenet, "changed:7", src, y)
    assert (mask.sum(1) == 7).all()
    for r in range(3):
        assert delta[r][mask[r]].min() >= delta[r][~mask[r]].max()
    # random:N: seeded, N per input, different groups for different inputs and seeds
    a, b = select_neurons(lenet, "random:10", src, y, seed=4), select_neurons(lenet, "random:10", src, y, seed=4)
    c = select_neurons(lenet, "random:10", src, y, seed=5)
    assert torch.equal(a, b) and (a.sum(1) == 10).all() and not torch.equal(a, c) and not torch.equal(a[0], a[1])
    # the class is the true label when known, else the benign prediction
    r_label = surgery(lenet, x, x_adv, "fc1", "front:0.1", "zero", label=y, sources=src, profile=prof)
    r_pred = surgery(lenet, x, x_adv, "fc1", "front:0.1", "zero", sources=src, profile=prof)
    assert r_label.reference_class.tolist() == y.tolist()
    assert torch.equal(r_pred.reference_class, lenet.predict(x))


def test_defended_value_patches_in_the_defended_activations(mlp):
    x_def = torch.tensor([[[[0.0, 1.0]]]])       # hidden [0, 2, 0]
    r = surgery(mlp, X, X2, "hidden", "1", "defended", x_def=x_def)
    # X2's hidden [1, 0.25, 0] with unit 1 from the defended input: [1, 2, 0] → [1, 3]
    assert r.patched.logits.tolist() == [[1.0, 3.0]] and r.defended.logits.tolist() == [[-2.0, 2.0]]


def test_random_groups_of_given_sizes_a_callers_mask_and_a_given_mean(mlp):
    m = random_mask([0, 2, 3], 3, seed=1)
    assert m.sum(1).tolist() == [0, 2, 3] and torch.equal(m, random_mask(torch.tensor([0, 2, 3]), 3, seed=1))
    with pytest.raises(InputError, match="random groups must have 0 to 3 neurons; got sizes"):
        random_mask([4], 3)
    # One mask row per input. Benign X2: hidden [1, 0.25, 0]; adversarial X: hidden [0.5, 0.5, 0].
    # Row 0 takes unit 0 from benign: [1, 0.5, 0] → [2.5, 1.5]; row 1 unit 1: [0.5, 0.25, 0] → [1.25, 0.75].
    mask = torch.tensor([[True, False, False], [False, True, False]])
    r = surgery(mlp, torch.cat([X2, X2]), torch.cat([X, X]), "hidden", mask, "benign")
    assert r.patched.logits.tolist() == [[2.5, 1.5], [1.25, 0.75]]
    assert r.to_json()["settings"]["select"] == "mask" and r.to_json()["neurons"] == [[0], [1]]
    # value "mean" with the caller's means: unit 0 → 4: [12 - 0.5, 4.5]
    r = surgery(mlp, X2, X, "hidden", "0", "mean", mean=torch.tensor([[4.0, 0.0, 0.0]]))
    assert r.patched.logits.tolist() == [[11.5, 4.5]]


def test_given_sources_give_the_same_result_and_are_checked(lenet, digits):
    x, y = digits
    x_adv = x.flip(-1)
    src = source_activations(lenet, x[:2], x_adv[:2], "fc1")
    a = surgery(lenet, x[:2], x_adv[:2], "fc1", "random:30", "benign", seed=3)
    b = surgery(lenet, x[:2], x_adv[:2], "fc1", "random:30", "benign", seed=3, sources=src)
    ja, jb = a.to_json(), b.to_json()
    ja.pop("seconds"), jb.pop("seconds")
    assert ja == jb and "sources" not in b.seconds
    with pytest.raises(InputError, match="not of layer 'fc2' and these inputs"):
        surgery(lenet, x[:2], x_adv[:2], "fc2", "0", "zero", sources=src)
    with pytest.raises(InputError, match="not of layer 'fc1' and these inputs"):
        surgery(lenet, x[:2], x[:2], "fc1", "0", "zero", sources=src)


def test_api_errors(lenet, digits, mlp):
    x, y = digits
    xa = x[:1].flip(-1)
    with pytest.raises(InputError, match="model 'lenet-mnist' has no layer 'fc9'; choose one of: conv1"):
        surgery(lenet, x[:1], xa, "fc9", "0", "zero")
    with pytest.raises(InputError, match="neuron index 84 is outside layer 'fc2'"):
        surgery(lenet, x[:1], xa, "fc2", "1,84", "zero")
    with pytest.raises(InputError, match="neuron index 6 is outside layer 'conv1'"):
        patch(lenet, xa, "conv1", [6], "zero")
    with pytest.raises(InputError, match="scale must be"):
        surgery(lenet, x[:1], xa, "fc1", "0", "scale:12")
    with pytest.raises(InputError, match="unknown selection 'top:3'"):
        surgery(lenet, x[:1], xa, "fc1", "top:3", "zero")
    with pytest.raises(InputError, match="value 'defended' needs the defended input"):
        surgery(lenet, x[:1], xa, "fc1", "0", "defended")
    with pytest.raises(InputError, match="needs K"):
        surgery(lenet, x[:1], xa, "fc1", "front:0.75", "benign")
    with pytest.raises(InputError, match=r"label must be 1 class\(es\) in \[0, 9\]; got 10"):
        surgery(lenet, x[:1], xa, "fc1", "0", "zero", label=10)
    with pytest.raises(InputError, match="same shape"):
        surgery(lenet, x[:2], xa, "fc1", "0", "zero")
    with pytest.raises(InputError, match="needs the benign activations"):
        patch(lenet, xa, "fc1", [0], "benign")
    from nip_core.influence import influence_profile
    with pytest.raises(InputError, match="profile is of layer 'fc2'"):
        surgery(lenet, x[:1], xa, "fc1", "front:0.2", "zero", profile=influence_profile(lenet, "fc2"))


# ----------------------------------------------------------------------------- sharing one model

def test_a_patch_never_leaks_into_another_threads_pass(lenet, digits):
    """One thread patches (zeroing every fc1 unit); another runs the shared network directly,
    without the model's lock, and must always get the unpatched logits."""
    x, _ = digits
    with torch.no_grad():
        want = lenet.net(x)
    every = torch.ones(120, dtype=torch.bool)
    stop, bad, patched = threading.Event(), [], []

    def surgeon():
        while not stop.is_set():
            patched.append(patch(lenet, x, "fc1", every, "zero").logits)

    t = threading.Thread(target=surgeon)
    t.start()
    try:
        for _ in range(300):
            with torch.no_grad():
                out = lenet.net(x)
            if not torch.equal(out, want):
                bad.append(out)
            if not torch.equal(lenet.logits(x), want):
                bad.append(None)
    finally:
        stop.set()
        t.join()
    assert not bad and patched
    assert all(torch.equal(p, patched[0]) for p in patched) and not torch.equal(patched[0], want)
    assert lenet.leftover_hooks() == 0                     # every hook was removed, on every replica


# ----------------------------------------------------------------------------- command line

def _cli(*args, timeout=600):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "nip_core", "surgery", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    from nip_core.data import mnist
    from nip_core.images import tensor_to_png_bytes

    x, y = mnist("test")
    path = tmp_path_factory.mktemp("img") / "digit.png"
    path.write_bytes(tensor_to_png_bytes(x[0]))
    return path, int(y[0])


def test_cli_same_seed_same_json_and_a_self_contained_figure(tmp_path, digit_png):
    image, label = digit_png
    runs = []
    for out in ("a", "b"):
        r = _cli("--model", "lenet-mnist", "--image", str(image), "--label", str(label), "--attack", "fgsm[eps=0.3]",
                 "--layer", "conv2", "--select", "random:5", "--value", "benign", "--defense", "bitdepth",
                 "--seed", "4", "--out", str(tmp_path / out))
        assert r.returncode == 0, r.stderr
        assert "recovery share" in r.stdout
        runs.append(json.loads((tmp_path / out / "surgery.json").read_text()))
    a, b = runs
    assert set(a.pop("seconds")) >= {"attack", "defense", "sources", "patch"} and b.pop("seconds")
    assert a == b
    assert a["settings"]["attack_params"]["eps"] == 0.3
    assert {k: a["settings"][k] for k in ("model", "layer", "select", "value", "seed", "defense", "label")} == {
        "model": "lenet-mnist", "layer": "conv2", "select": "random:5", "value": "benign", "seed": 4,
        "defense": "bitdepth", "label": [label]}
    assert len(a["neurons"][0]) == 5 and set(a) >= {"benign", "adversarial", "patched", "defended", "recovery_share"}
    for v in ("benign", "adversarial", "patched"):
        assert set(a[v]) == {"logits", "probabilities", "predictions", "prediction_names", "margins"}
    html = (tmp_path / "a" / "surgery.html").read_text()
    # plotly.js inline (megabytes), no script fetched from a network
    assert len(html) > 1_000_000 and "<script src=" not in html and "\"patched (margin" in html


def test_cli_on_a_user_safetensors_model(tmp_path, digit_png, capsys):
    from nip_core.cli import main
    from nip_core.models.lenet import LeNet5

    torch.manual_seed(5)
    weights, classes = tmp_path / "m.safetensors", tmp_path / "classes.txt"
    save_file(LeNet5().state_dict(), str(weights))
    classes.write_text("\n".join(f"digit {i}" for i in range(10)))
    image, _ = digit_png
    rc = main(["surgery", "--arch", "lenet", "--weights", str(weights), "--classes", str(classes), "--image",
               str(image), "--layer", "conv1", "--select", "0,5", "--value", "scale:-1", "--out", str(tmp_path / "o")])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "o" / "surgery.json").read_text())
    assert s["settings"]["model"].startswith("custom-lenet-") and s["neurons"] == [[0, 5]]
    assert s["benign"]["prediction_names"][0].startswith("digit ")


@pytest.mark.parametrize("args, needle", [
    (["--select", "front:0.9"], "needs K"),
    (["--layer", "fc1", "--select", "3,500"], "neuron index 500 is outside layer 'fc1', whose neurons are 0–119"),
    (["--layer", "fc1", "--select", "random:121"], "asks for 121 neurons"),
    (["--layer", "nope"], "has no layer 'nope'"),
    (["--value", "scale:20"], "scale must be a number in [-10, 10]"),
    (["--value", "defended"], "value 'defended' needs a defended input: give a defense (--defense"),
    (["--select", "bogus"], "unknown selection 'bogus'"),
    (["--value", "max"], "unknown value 'max'"),
    (["--attack", "fgsm,pgd"], "give one attack"),
    (["--attack", "zap"], "unknown attack 'zap'"),
    (["--attack", "fgsm[eps=5]"], "'eps' must be"),
    (["--defense", "nip-oracle"], "needs the true label"),
    (["--label", "12"], "label must be a class in [0, 9]"),
    (["--model", "nope"], "unknown model"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle, tmp_path, digit_png, capsys):
    from nip_core.cli import main

    image, _ = digit_png
    base = {"--model": "lenet-mnist", "--image": str(image), "--out": str(tmp_path / "o")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    assert main(["surgery", *[t for kv in base.items() for t in kv]]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_cli_bad_input_exits_2_in_a_fresh_process(digit_png, tmp_path):
    image, _ = digit_png
    r = _cli("--model", "lenet-mnist", "--image", str(image), "--select", "tail:2", "--out", str(tmp_path / "o"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "needs K" in lines[0], r.stderr


# ----------------------------------------------------------------------------- what the app shows

def test_surgery_verdict_says_whether_the_class_returns(mlp):
    from nip_core.figures import surgery_verdict

    x3 = torch.tensor([[[[0.0, 0.5]]]])     # adversarial: hidden [0, 1, 0], logits [-1, 1] (flipped)
    # units 0 and 1 benign again: hidden [1, 0.25, 0], the benign logits [2.75, 1.25]
    back = surgery_verdict(surgery(mlp, X2, x3, "hidden", "0,1", "benign"))
    assert back.startswith("The class returns. With 2 neurons of hidden set to benign, the adversarial input is "
                           "classified as 0: a again (recovery share 1.00")
    # unit 1 only: hidden [0, 0.25, 0], logits [-0.25, 0.25]: margin -0.5, (−0.5 + 2) / (1.5 + 2) = 0.43
    stays = surgery_verdict(surgery(mlp, X2, x3, "hidden", "1", "benign"))
    assert stays.startswith("The class does not return. With 1 neuron of hidden set to benign, the adversarial "
                            "input is classified as 1: b, not 0: a (recovery share 0.43")
    same = surgery_verdict(surgery(mlp, X2, X2, "hidden", "0", "zero"))
    assert same.startswith("The attack did not flip this prediction") and "n/a" in same
    from nip_core.figures import recovery_text
    assert (recovery_text(-0.001), recovery_text(0.746), recovery_text(None)) == ("0.00", "0.75", "n/a")
    wrong = surgery_verdict(surgery(mlp, X2, x3, "hidden", "0", "zero", label=1))
    assert wrong.startswith("The model already gets the benign input wrong (0: a, not 1: b)")


def test_surgery_picker_puts_one_selectable_marker_on_each_neuron():
    from nip_core.figures import SURGERY_COLOURS, picked_neurons, surgery_picker
    from nip_core.influence import InfluenceProfile

    scores = torch.tensor([0.5, -0.2, 0.0, 0.9, 0.1])
    prof = InfluenceProfile("tiny", "hidden", "conductance", 16, scores, torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]),
                            torch.zeros(5), per_class={0: scores})
    fig = surgery_picker(prof, 0, 0.25, [3, 1], ["a", "b"])
    heat, dead, markers = fig.data
    assert heat.type == dead.type == "heatmap" and markers.type == "scatter"
    assert list(markers.customdata) == [0, 1, 2, 3, 4]
    # a 2×3 grid: neuron j at column j % 3, row j // 3
    assert list(markers.x) == [0, 1, 2, 0, 1] and list(markers.y) == [0, 0, 0, 1, 1]
    colours = list(markers.marker.color)
    assert [j for j, c in enumerate(colours) if c == SURGERY_COLOURS["patched"]] == [1, 3]
    assert markers.text[3] == "neuron 3 · front · influence 0.9 · patched" and "dead" in markers.text[2]
    # what Streamlit returns for picked markers
    assert picked_neurons([{"customdata": int(c)} for c in markers.customdata[3:]]) == [3, 4]
