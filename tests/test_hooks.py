"""nip_core.hooks: a hook always comes off, acts in its own thread only; the per-neuron reduction."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from nip_core.hooks import StopForward, capture_hook, hooked, hooked_all, leaf_hook, neuron_means, neuron_sums


def test_hooked_removes_the_hook_also_when_the_pass_fails():
    lin = nn.Linear(2, 2)
    with pytest.raises(RuntimeError):
        with hooked(lin, lambda m, i, o: o * 0):
            assert len(lin._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(lin._forward_hooks) == 0


def test_hooked_all_registers_each_and_removes_all():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    net = nn.Sequential(a, b)
    box_a, box_b = [], []
    with hooked_all([(a, capture_hook(box_a, stop=False)), (b, capture_hook(box_b, stop=False))]):
        out = net(torch.ones(1, 2))
    assert torch.equal(box_b[0], out) and box_a[0].shape == (1, 2)
    assert not a._forward_hooks and not b._forward_hooks


def test_capture_hook_stops_the_pass_and_ignores_other_threads():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    net = nn.Sequential(a, b)
    box: list[torch.Tensor] = []
    with hooked(a, capture_hook(box, stop=True)):
        with pytest.raises(StopForward):
            net(torch.ones(1, 2))
        other = threading.Thread(target=lambda: net(torch.ones(3, 2)))     # another session's pass
        other.start()
        other.join()
    assert len(box) == 1 and box[0].shape == (1, 2)


def test_leaf_hook_makes_the_layer_output_a_leaf():
    a, b = nn.Linear(2, 2), nn.Linear(2, 1)
    box: list[torch.Tensor] = []
    with hooked(a, leaf_hook(box)):
        y = nn.Sequential(a, b)(torch.ones(1, 2)).sum()
    (g,) = torch.autograd.grad(y, box[0])
    assert torch.allclose(g, b.weight)          # d y / d a = b's weights, by hand


def test_neuron_means_and_sums_reduce_positions_of_a_conv_output():
    t = torch.arange(16.0).view(1, 2, 2, 4)
    assert neuron_means(t).tolist() == [[3.5, 11.5]] and neuron_sums(t).tolist() == [[28.0, 92.0]]
    dense = torch.ones(3, 5)
    assert neuron_means(dense) is dense and neuron_sums(dense) is dense


def test_a_model_counts_hooks_left_on_its_replicas_and_retired_ones():
    from nip_core.models import load_model

    m = load_model("lenet-mnist")
    assert m.leftover_hooks() == 0
    with m.lease():
        with hooked(m.layer("fc1"), lambda *a: None):
            m.net(torch.zeros(1, 1, 28, 28))
    assert m.leftover_hooks() == 0
    with m.lease():
        handle = m.layer("fc1").register_forward_hook(lambda *a: None)     # a leak: never removed
    assert m.leftover_hooks() == 1
    handle.remove()
    m._leaked = 0                                                           # restore the shared model
