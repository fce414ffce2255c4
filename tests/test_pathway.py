"""Every layer at once (``nip_core.analyses.pathway``, issue 20 §3): each column holds the single-layer group
chart's numbers, edge strengths are activation × gradient by hand, the hooks come off, bad input is
refused in one line, and the figure carries selectable neuron markers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nip_core.errors import InputError
from nip_core.influence import InfluenceProfile
from nip_core.analyses.pathway import layer_strip
from tests.util import TinyMLP, loaded

TOL = 1e-6


def _profile(layer: str, scores, dead=None) -> InfluenceProfile:
    s = torch.tensor(scores, dtype=torch.float32)
    rate = torch.ones(len(s)) if dead is None else (~torch.tensor(dead)).float()
    return InfluenceProfile("tiny", layer, "conductance", 16, s, rate, torch.zeros(len(s)),
                            per_class={0: s, 1: s})


def _tiny():
    """TinyMLP with two hooked layers: ``hidden`` = relu(W1 x) (3 units), ``out`` = W2 hidden (the logits)."""
    net = TinyMLP()
    model = loaded(net, {"hidden": net.act, "out": net.fc2})
    profiles = {"hidden": _profile("hidden", [0.9, 0.1, -0.5]), "out": _profile("out", [0.3, -0.3])}
    return net, model, profiles


def _img(*v):
    return torch.tensor(v, dtype=torch.float32).view(1, 1, 2)


def test_edge_strength_is_activation_times_the_known_jacobian_on_a_tiny_mlp() -> None:
    net, model, profiles = _tiny()
    # adversarial x = (1, 1): hidden = relu(1, 2, -1) = (1, 2, 0); out = W2 hidden, so ∂out_d/∂hidden_u = W2[d, u]
    strip = layer_strip(model, _img(0, 0), _img(1, 1), _img(0.5, 0), 1, k=0.34, profiles=profiles)
    hidden, out = strip.columns
    assert hidden.top == [1, 0, 2] and out.top == [1, 0]          # |adv − benign|: (1, 2, 0) and (1, 3)
    h = [1.0, 2.0, 0.0]
    w2 = net.fc2.weight.detach()
    got = {(e.source, e.target): e.strength for e in strip.edges}
    assert len(strip.edges) == 6 and {(e.upstream, e.downstream) for e in strip.edges} == {("hidden", "out")}
    for (u, d), s in got.items():
        assert s == pytest.approx(h[u] * float(w2[d, u]), abs=TOL)
    assert got[(0, 0)] == pytest.approx(3.0) and got[(1, 0)] == pytest.approx(-2.0) and got[(1, 1)] == pytest.approx(2.0)
    # groups (k = 0.34 of 3 live neurons: one front, one tail) and the numbers of the group chart
    assert hidden.group_sizes == {"front": 1, "middle": 1, "tail": 1}
    assert hidden.group_means["adversarial"] == pytest.approx({"front": 1.0, "middle": 2.0, "tail": 0.0})
    assert hidden.group_means["defended"] == pytest.approx({"front": 0.5, "middle": 0.0, "tail": 0.0})
    assert (hidden.attack_front, hidden.attack_tail) == pytest.approx((1.0, 0.0))
    assert (hidden.defense_front, hidden.defense_tail) == pytest.approx((-0.5, 0.0))
    assert hidden.top_groups == ["middle", "front", "tail"]
    assert strip.defense_acted
    passed = layer_strip(model, _img(0, 0), _img(1, 1), _img(1, 1), 1, k=0.34, profiles=profiles)
    assert not passed.defense_acted and passed.edges == strip.edges   # a defense that changed nothing
    assert not net.act._forward_hooks and not net.fc2._forward_hooks    # every hook came off


class TinyConv(nn.Module):
    """x [1, 2, 2] → ``maps`` = relu(1×1 conv, 2 channels) → ``mix`` = 1×1 conv V (2 channels) →
    ``out`` = U · flatten(mix) (2 units). No biases: every gradient is a product of weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.act = nn.ReLU()
        self.mix = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(8, 2, bias=False)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
            self.mix.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.randn(2, 8, generator=g))

    def forward(self, x):
        return self.fc(self.mix(self.act(self.conv(x))).flatten(1))


def test_conv_edges_sum_activation_times_gradient_over_the_map_and_skip_what_lies_between() -> None:
    net = TinyConv()
    model = loaded(net, {"maps": net.act, "mix": net.mix, "out": net.fc})
    profiles = {n: _profile(n, [0.5, -0.5]) for n in ("maps", "mix", "out")}
    x_adv = torch.tensor([[[1.0, -1.0], [2.0, 0.5]]])
    A = torch.relu(torch.tensor([1.0, 2.0]).view(2, 1, 1) * x_adv).numpy()        # maps on the adversarial
    V = net.mix.weight.detach().view(2, 2).numpy()
    U = net.fc.weight.detach().view(2, 2, 4).numpy()                               # out d, mix channel e, position p
    args = (torch.zeros(1, 2, 2), x_adv, torch.zeros(1, 2, 2), 0)
    strip = layer_strip(model, *args, k=0.5, profiles=profiles, top=2)
    got = {(e.upstream, e.source, e.target): e.strength for e in strip.edges}
    # maps → mix: a_d = mean_p Σ_c V[d,c] A[c,p], so Σ_p A[c,p] ∂a_d/∂A[c,p] = V[d,c] · mean_p A[c,p]
    for c in range(2):
        for d in range(2):
            assert got[("maps", c, d)] == pytest.approx(V[d, c] * A[c].mean(), abs=TOL)
    # mix → out: out_d = Σ_{e,p} U[d,e,p] M[e,p]
    M = np.einsum("ec,cp->ep", V, A.reshape(2, 4))
    for e in range(2):
        for d in range(2):
            assert got[("mix", e, d)] == pytest.approx(float((U[d, e] * M[e]).sum()), abs=1e-5)
    # maps → out directly, through the 1×1 conv between them: Σ_p A[c,p] Σ_e U[d,e,p] V[e,c]
    skip = layer_strip(model, *args, k=0.5, profiles=profiles, top=2, layers=["out", "maps"])
    assert skip.layers == ["maps", "out"]                                         # put in forward order
    for s in skip.edges:
        want = float((A[s.source].reshape(4) * np.einsum("ep,e->p", U[s.target], V[:, s.source])).sum())
        assert s.strength == pytest.approx(want, abs=1e-5)
    assert skip.columns[0].conv and not skip.columns[1].conv
    assert not any(m._forward_hooks for m in net.modules())


@pytest.mark.parametrize("kwargs, words", [
    ({"layers": ["nope"]}, "has no layer 'nope'"),
    ({"layers": []}, "choose at least one layer"),
    ({"top": 0}, "top must be a whole number of neurons in [1, 10]"),
    ({"top": 2.5}, "top must be a whole number"),
    ({"k": 0.7}, "parameter 'k' must be float in (0, 0.5]"),
    ({"method": "saliency"}, "unknown influence method 'saliency'"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, words) -> None:
    _, model, profiles = _tiny()
    with pytest.raises(InputError, match=None) as err:
        layer_strip(model, _img(0, 0), _img(1, 1), _img(0, 0), 1, profiles=profiles, **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_bad_images_and_class_are_refused() -> None:
    _, model, profiles = _tiny()
    with pytest.raises(InputError, match="reference class must be in"):
        layer_strip(model, _img(0, 0), _img(1, 1), _img(0, 0), 5, profiles=profiles)
    with pytest.raises(InputError, match="must have the same shape"):
        layer_strip(model, _img(0, 0), torch.zeros(1, 1, 3), _img(0, 0), 1, profiles=profiles)
    with pytest.raises(InputError, match="adversarial input must be one image"):
        layer_strip(model, _img(0, 0), torch.zeros(2, 2), _img(0, 0), 1, profiles=profiles)


# ----------------------------------------------------------------------------- real models

@pytest.fixture(scope="module", params=[("lenet-mnist", "nip-oracle"), ("resnet8-cifar10", "jpeg")],
                ids=["lenet-mnist", "resnet8-cifar10"])
def explained(request):
    """One gallery image explained at every layer, and the strip of the first run's images."""
    from nip_core.data import gallery
    from nip_core.analyses.explain import explain
    from nip_core.models import load_model

    name, defense = request.param
    model = load_model(name)
    item = gallery(model.spec.gallery)[1]
    expls = {layer: explain(model, item.image, item.label, attack="fgsm", defense=defense, layer=layer, seed=0)
             for layer in model.spec.layers}
    first = expls[model.spec.layers[0]]
    strip = layer_strip(model, first.images["benign"], first.images["adversarial"], first.images["defended"],
                        first.reference_class, method=first.method, k=first.k)
    return model, expls, strip


def test_each_column_equals_the_single_layer_group_chart(explained) -> None:
    from nip_core import figures

    model, expls, strip = explained
    assert strip.layers == list(model.spec.layers)
    first = next(iter(expls.values()))
    for layer, expl in expls.items():
        for v in ("benign", "adversarial", "defended"):      # the same images at every layer (seeded)
            assert torch.equal(expl.images[v], first.images[v])
        col = strip.column(layer)
        chart = {t.name: list(t.y) for t in figures.group_chart(expl, "activations").data}
        for v in ("benign", "adversarial", "defended"):
            assert [col.group_means[v][g] for g in ("front", "middle", "tail")] == pytest.approx(chart[v], abs=TOL)
        for v, means in expl.group_means("activations").items():
            assert col.group_means[v] == pytest.approx(means, abs=TOL)
        assert col.attack_front == pytest.approx(chart["adversarial"][0] - chart["benign"][0], abs=TOL)
        assert col.attack_tail == pytest.approx(chart["adversarial"][2] - chart["benign"][2], abs=TOL)
        assert col.defense_front == pytest.approx(chart["defended"][0] - chart["adversarial"][0], abs=TOL)
        assert col.defense_tail == pytest.approx(chart["defended"][2] - chart["adversarial"][2], abs=TOL)
        assert col.group_sizes == {"front": len(expl.front), "middle": len(expl.middle), "tail": len(expl.tail)}
        # the top neurons are the most changed ones, as surgery's changed:3 picks them
        delta = (expl.activations["adversarial"] - expl.activations["benign"]).abs()
        assert col.top == torch.sort(delta, descending=True, stable=True).indices[:3].tolist()
        assert col.n_neurons == len(delta)
    assert sum(abs(c.defense_front) + abs(c.defense_tail) for c in strip.columns) > 0   # the defense acted


def test_strip_is_reproducible_and_lenet_fc_edges_match_the_weights(explained) -> None:
    model, expls, strip = explained
    first = next(iter(expls.values()))
    again = layer_strip(model, first.images["benign"], first.images["adversarial"], first.images["defended"],
                        first.reference_class, method=first.method, k=first.k)
    assert again.to_json()["columns"] == strip.to_json()["columns"] and again.edges == strip.edges
    assert len(strip.edges) == 9 * (len(strip.columns) - 1)
    assert model.leftover_hooks() == 0                 # no hook left, on the network or any replica
    if model.name != "lenet-mnist":
        return
    # fc2 = relu(W fc1 + b): ∂fc2_d/∂fc1_u = W[d, u] where fc2_d > 0, else 0
    from nip_core.influence import neuron_activations

    x = first.images["adversarial"].unsqueeze(0)
    fc1, fc2 = neuron_activations(model, x, "fc1")[0], neuron_activations(model, x, "fc2")[0]
    w = model.net.fc2.weight.detach()
    edges = [e for e in strip.edges if e.upstream == "fc1"]
    assert len(edges) == 9
    for e in edges:
        want = float(fc1[e.source] * w[e.target, e.source]) if fc2[e.target] > 0 else 0.0
        assert e.strength == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_figure_has_one_selectable_marker_per_top_neuron(explained) -> None:
    from nip_core.figures import layer_strip_figure, picked_layer_neuron

    model, expls, strip = explained
    fig = layer_strip_figure(strip, model.spec.default_layer, (strip.columns[0].layer, strip.columns[0].top[1]))
    [markers] = [t for t in fig.data if t.name == "neurons"]
    assert [list(c) for c in markers.customdata] == [[c.layer, j] for c in strip.columns for j in c.top]
    assert list(markers.marker.size).count(max(markers.marker.size)) == 1          # the picked one is ringed
    edges = [t for t in fig.data if t.type == "scatter" and t.mode == "lines" and t.x[0] is not None]
    assert len(edges) == len(strip.edges)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 2 * len(strip.columns)
    c0 = strip.columns[0]
    assert list(bars[0].y) == pytest.approx([c0.attack_front, c0.attack_tail])
    assert list(bars[1].y) == pytest.approx([c0.defense_front, c0.defense_tail])
    assert any(t.startswith("★ " + model.spec.default_layer) for t in fig.layout.xaxis.ticktext)
    # what Streamlit returns for a click: neuron markers give (layer, neuron); bars and edges nothing
    assert picked_layer_neuron([{"customdata": ["fc1", 7], "curve_number": 9}]) == ("fc1", 7)
    assert picked_layer_neuron([{"x": "front (3)", "y": 0.2}, {"customdata": 3}, {"customdata": ["a", True]}]) is None
    assert picked_layer_neuron([]) is None
