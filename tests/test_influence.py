"""Neuron influence checked against values computed by hand on a tiny network."""
import pytest
import torch

from nip_core.errors import InputError
from nip_core.influence import influence_profile, neuron_activations, neuron_influence, spatial_map
from tests.util import tiny_mlp


@pytest.fixture()
def tiny():
    return tiny_mlp()


X = torch.tensor([[[[0.5, 0.25]]]])  # [N=1, C=1, H=1, W=2]; hidden = [0.5, 0.5, 0]


@pytest.mark.parametrize("method", ["conductance", "grad_x_act"])
def test_influence_matches_hand_computation(tiny, method):
    # Toward class 0: a_j * W2[0, j] = [0.5*3, 0.5*(-1), 0*5]; the third neuron is off (ReLU).
    got0 = neuron_influence(tiny, X, 0, "hidden", method, n_steps=8)
    assert torch.allclose(got0, torch.tensor([[1.5, -0.5, 0.0]]), atol=1e-5)
    got1 = neuron_influence(tiny, X, 1, "hidden", method, n_steps=8)
    assert torch.allclose(got1, torch.tensor([[0.5, 0.5, 0.0]]), atol=1e-5)


def test_conductance_completeness(tiny):
    # Conductance sums to the logit difference between input and baseline (black image).
    x = torch.tensor([[[[0.8, 0.1]]]])
    infl = neuron_influence(tiny, x, 0, "hidden", "conductance", n_steps=16)
    with torch.no_grad():
        diff = tiny.net(x)[0, 0] - tiny.net(torch.zeros_like(x))[0, 0]
    assert torch.allclose(infl.sum(), diff, atol=1e-4)


def test_activations_and_batch_targets(tiny):
    xs = torch.cat([X, torch.tensor([[[[1.0, 0.0]]]])])
    assert torch.allclose(neuron_activations(tiny, xs, "hidden"), torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]))
    got = neuron_influence(tiny, xs, torch.tensor([0, 1]), "hidden", "grad_x_act")
    assert torch.allclose(got, torch.tensor([[1.5, -0.5, 0.0], [1.0, 0.0, 0.0]]))


def test_unknown_layer_and_method_are_input_errors(tiny):
    with pytest.raises(InputError, match="no layer"):
        neuron_influence(tiny, X, 0, "nope")
    with pytest.raises(InputError, match="influence method"):
        neuron_influence(tiny, X, 0, "hidden", "magic")


def test_conv_influence_sums_positions_and_agrees_between_methods(lenet, digits):
    x, y = digits
    cond = neuron_influence(lenet, x, y, "conv2", "conductance", n_steps=32)
    gxa = neuron_influence(lenet, x, y, "conv2", "grad_x_act")
    assert cond.shape == gxa.shape == (8, 16)
    # Different methods, same story: strongly correlated per-neuron scores.
    r = torch.corrcoef(torch.stack([cond.flatten(), gxa.flatten()]))[0, 1]
    assert r > 0.6
    m = spatial_map(lenet, x[:2], "conv2", 3)
    assert m.shape == (2, 28, 28) and m.min() >= 0


def test_profile_groups_and_dead_neurons(lenet):
    prof = influence_profile(lenet, "fc1", "conductance", 16)
    assert prof.n_neurons == 120 and sorted(prof.per_class) == list(range(10))
    front, middle, tail = prof.groups(3, 0.2)
    live = int((~prof.dead).sum())
    assert len(front) == len(tail) == round(0.2 * live) and len(front) + len(middle) + len(tail) == live
    s = prof.scores(3)
    assert s[front].min() >= s[middle].max() >= s[tail].max() or len(middle) == 0
    assert not prof.dead[front].any() and not prof.dead[tail].any()
    # Dead neurons never fired on the benign references.
    assert (prof.activation_rate[prof.dead] == 0).all()
    # Cached: a second call returns the same object (memory) and the same numbers from disk.
    assert influence_profile(lenet, "fc1", "conductance", 16) is prof


def test_lazily_filled_class_profiles_persist_on_disk(tmp_path, monkeypatch):
    from nip_core import influence
    from nip_core.models import load_model

    monkeypatch.setenv("NIP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(influence, "_PROFILES", {})
    eff = load_model("efficientnet-lite0")
    prof = influence_profile(eff, "head", "grad_x_act")
    assert 1 not in prof.per_class
    scores = prof.class_scores(1)  # goldfish: no shipped photo, filled on first use
    monkeypatch.setattr(influence, "_PROFILES", {})
    again = influence_profile(eff, "head", "grad_x_act")
    assert again is not prof and 1 in again.per_class
    assert torch.equal(again.per_class[1], scores)


def test_multi_target_grad_x_act_equals_captum(lenet, digits):
    from nip_core.influence import _grad_x_act
    x, _ = digits
    targets = torch.tensor([[1] * 8, [7] * 8])
    for layer in ("conv2", "fc1"):
        mine = _grad_x_act(lenet, lenet.layer(layer), x, targets)
        ref = torch.stack([neuron_influence(lenet, x, t, layer, "grad_x_act") for t in targets])
        assert torch.allclose(mine, ref, atol=1e-6)


def test_tiny_affine_layer_conductance_in_one_step_by_hand(tiny):
    """Declared affine-to-logits, `hidden` needs one step: (a(x) − a(0)) · W2[target], by hand."""
    from dataclasses import replace

    from nip_core.influence import conductance_steps

    tiny.spec = replace(tiny.spec, affine_layers=("hidden",))
    assert conductance_steps(tiny, "hidden", 16) == 1
    got = neuron_influence(tiny, X, 0, "hidden", "conductance", exact_affine=True)
    # hidden(x) = [0.5, 0.5, 0], hidden(0) = 0, gradient toward class a = W2[0] = [3, -1, 5]
    assert torch.allclose(got, torch.tensor([[1.5, -0.5, 0.0]]))


@pytest.mark.parametrize("model_name, layer", [("lenet-mnist", "fc2"), ("resnet8-cifar10", "stack3"),
                                               ("efficientnet-lite0", "head")])
def test_conductance_at_affine_layers_equals_the_full_integral(model_name, layer):
    """At a layer followed only by pooling and a linear classifier, one step gives the n-step sum."""
    from nip_core.data import gallery
    from nip_core.influence import _conductance, conductance_steps
    from nip_core.models import load_model

    model = load_model(model_name)
    assert layer in model.spec.affine_layers and conductance_steps(model, layer, 16) == 1
    assert conductance_steps(model, model.spec.layers[0], 16) == 16        # elsewhere: the full integral
    items = gallery(model.spec.gallery)[:2]
    x = torch.stack([it.image for it in items])
    targets = torch.tensor([[it.label for it in items], [1, 2]])
    full = _conductance(model, model.layer(layer), x, targets, 16)
    fast = torch.stack([neuron_influence(model, x, t, layer, "conductance", 16, exact_affine=True) for t in targets])
    assert torch.allclose(fast, full, rtol=1e-4, atol=1e-5 * float(full.abs().max()))


@pytest.mark.parametrize("name", ["lenet-mnist", "lenet-fashion", "lenet-fashion-at", "resnet8-cifar10"])
def test_every_layer_profile_of_the_small_models_ships_with_every_class(name, tmp_path, monkeypatch):
    """A fresh clone's first layer strip (every layer, any class as reference) reads the shipped
    profiles: nothing is computed, no class is filled on demand, and the files stay small."""
    from nip_core import influence
    from nip_core.models import load_model

    def no_computing(*a, **k):
        raise AssertionError(f"{name}: a profile was computed instead of read from assets/profiles")

    read = []
    real_read = influence._read
    monkeypatch.setenv("NIP_CACHE_DIR", str(tmp_path))          # an empty user cache: a fresh clone
    monkeypatch.setattr(influence, "_PROFILES", {})
    monkeypatch.setattr(influence, "neuron_influence", no_computing)
    monkeypatch.setattr(influence, "_conductance", no_computing)
    monkeypatch.setattr(influence, "_grad_x_act", no_computing)
    monkeypatch.setattr(influence, "_read", lambda path, *a: read.append(path) or real_read(path, *a))
    model = load_model(name)
    for layer in model.spec.layers:
        prof = influence_profile(model, layer)
        for c in range(model.num_classes):
            prof.groups(c, 0.2)
        assert sorted(prof.per_class) == list(range(model.num_classes)), layer
    assert [p.parent for p in read] == [influence.shipped_profile_dir()] * len(model.spec.layers)
    assert all(p.stat().st_size < 16_384 for p in read), [(p.name, p.stat().st_size) for p in read]
    assert not list(tmp_path.rglob("*.safetensors"))             # and nothing was written to the cache
