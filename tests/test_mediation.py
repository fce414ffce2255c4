"""Mediation (issue 19): patched passes are exact, the statistics are the formulas on hand numbers,
shards merge to the whole, and the evaluation's ``mediation`` block is what the CLI writes."""
import json
import threading

import numpy as np
import pytest
import torch

from nip_core.cli import main
from nip_core.influence import influence_profile
from nip_core.analyses.mediation import (GROUPS, group_masks, layer_values, margins, mediation_from_parts, mediation_parts,
                                patched_logits)
from nip_core.models import load_model
from tests.util import tiny_mlp


def test_margin_on_hand_numbers():
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert margins(z, torch.tensor([0, 0])).tolist() == [1.0, -5.0]
    assert margins(z, torch.tensor([2, 1])).tolist() == [-1.0, 4.0]


def test_patching_one_unit_changes_the_logits_by_weight_times_change():
    m = tiny_mlp()
    x = torch.tensor([[1.0, 2.0]])                     # hidden = relu(1, 4, -1) = (1, 4, 0); logits = (-1, 5)
    assert m.logits(x).tolist() == [[-1.0, 5.0]]
    mask = torch.tensor([[False, False, True]])
    source = torch.tensor([[0.0, 0.0, 10.0]])          # unit 2: 0 → 10; W2[:, 2] = (5, 1)
    assert patched_logits(m, x, "hidden", mask, source).tolist() == [[-1.0 + 5 * 10, 5.0 + 1 * 10]]


def test_the_hook_is_removed_and_touches_no_other_thread():
    m = tiny_mlp()
    x = torch.tensor([[1.0, 2.0]])
    before = m.logits(x)
    patched_logits(m, x, "hidden", torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3))
    assert not m.layers["hidden"]._forward_hooks and torch.equal(m.logits(x), before)
    # A forward pass of another thread while the hook is attached is left alone.
    seen = {}
    hook_in = threading.Event()
    release = threading.Event()

    def other():
        hook_in.wait(10)
        seen["logits"] = m.net(x)      # the shared network, while the main thread's patch is attached
        release.set()

    def slow_source(_m, _i, out):
        if threading.current_thread() is threading.main_thread():
            hook_in.set()
            release.wait(10)
    t = threading.Thread(target=other)
    t.start()
    with m.lease():                    # the main thread's replica: the patch below is attached to it too
        h = m.layers["hidden"].register_forward_hook(slow_source)
        try:
            patched_logits(m, x, "hidden", torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3))
        finally:
            h.remove()
            t.join(10)
    assert hook_in.is_set() and torch.equal(seen["logits"], before)


@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc1", "fc2"])
def test_lenet_exactness(layer):
    m = load_model("lenet-mnist")
    from nip_core.data import heldout_split
    x, y = heldout_split(m, "tune")
    x, y = x[:8], y[:8]
    x_adv = (x + 0.3 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))).clamp(0, 1)
    vb = layer_values(m, x, layer)
    n = vb.shape[1]
    none = torch.zeros(8, n, dtype=torch.bool)
    assert torch.equal(patched_logits(m, x_adv, layer, none, vb), m.logits(x_adv))     # empty selection: bit-exact
    full = patched_logits(m, x_adv, layer, torch.ones(8, n, dtype=torch.bool), vb)   # every neuron back: benign
    lb = m.logits(x)
    assert (full - lb).abs().max() <= 1e-4 * lb.abs().max()


def test_group_masks_sizes_and_seeds():
    m = load_model("lenet-mnist")
    from nip_core.data import heldout_split
    x, y = heldout_split(m, "tune")
    a = torch.rand(6, 500, generator=torch.Generator().manual_seed(1))
    b = a.clone()
    b[:, 7] += 5.0                                       # neuron 7 moved most on every image
    g = group_masks(m, "fc1", y[:6], a, b, k=0.2, seed=0)
    assert set(g) == set(GROUPS)
    assert torch.equal(g["front+tail"], g["front"] | g["tail"]) and not (g["front"] & g["tail"]).any()
    assert torch.equal(g["random"].sum(1), g["front"].sum(1))
    dead = influence_profile(m, "fc1", "conductance").dead
    assert dead.any() and not (g["random"] | g["random-2k"])[:, dead].any()   # drawn from live neurons only
    assert torch.equal(g["random-2k"].sum(1), g["front+tail"].sum(1))
    assert torch.equal(g["changed"].sum(1), g["front+tail"].sum(1)) and g["changed"][:, 7].all()
    again = group_masks(m, "fc1", y[:6], a, b, k=0.2, seed=0)
    other = group_masks(m, "fc1", y[:6], a, b, k=0.2, seed=1)
    assert torch.equal(again["random"], g["random"]) and not torch.equal(other["random"], g["random"])


def _parts(seed=0):
    m = load_model("lenet-mnist")
    from nip_core.attacks import run_attack
    from nip_core.data import heldout_split
    x, y = heldout_split(m, "tune")
    x, y = x[:24], y[:24]
    xa = run_attack(m, "fgsm", x, y, {"eps": 0.2}, seed=seed).x_adv
    defended = {"none": xa.clone(), "benign": x.clone()}
    return m, x, xa, y, defended


def test_parts_merge_to_the_whole_and_restoring_every_neuron_restores_everything():
    m, x, xa, y, defended = _parts()
    whole = mediation_from_parts([mediation_parts(m, x, xa, y, "fc1", defended, seed=5)], seed=0)
    halves = mediation_from_parts([mediation_parts(m, x[:12], xa[:12], y[:12], "fc1", defended_slice, seed=5)
                                   for defended_slice in [{k: v[:12] for k, v in defended.items()}]]
                                  + [mediation_parts(m, x[12:], xa[12:], y[12:], "fc1",
                                                     {k: v[12:] for k, v in defended.items()}, seed=5)], seed=0)
    fooled = int(((m.predict(x) == y) & (m.predict(xa) != y)).sum())
    assert whole["n_successful"] == halves["n_successful"] == fooled > 2
    for g in ("front", "tail", "front+tail", "changed"):           # deterministic groups: the same numbers
        assert whole["groups"][g]["restored"] == halves["groups"][g]["restored"]
        assert whole["groups"][g]["recovery"] == pytest.approx(halves["groups"][g]["recovery"], abs=1e-6)
    assert whole["defenses"]["none"]["carried"] is None and "passes inputs through" in whole["defenses"]["none"]["note"]
    # The "defense" that returns the benign image recovers the whole margin; its front+tail neurons carry part.
    d = whole["defenses"]["benign"]
    assert d["margin_recovery"] > 0 and d["carried_ci"][0] <= d["carried"] <= d["carried_ci"][1]


def test_recovery_share_is_the_formula():
    m, x, xa, y, defended = _parts()
    p = mediation_parts(m, x, xa, y, "fc2", {}, seed=0)
    ok = (m.predict(x) == y) & (m.predict(xa) != y)
    mb, ma = margins(m.logits(x[ok]), y[ok]), margins(m.logits(xa[ok]), y[ok])
    masks = group_masks(m, "fc2", y[ok], *(layer_values(m, v, "fc2") for v in (x[ok], xa[ok])), seed=0)
    mp = margins(patched_logits(m, xa[ok], "fc2", masks["front"], layer_values(m, x[ok], "fc2")), y[ok])
    expect = ((mp - ma) / (mb - ma)).tolist()
    assert p["groups"]["front"]["recovery"] == pytest.approx(expect, rel=1e-5)
    merged = mediation_from_parts([p])
    assert merged["groups"]["front"]["recovery"] == pytest.approx(float(np.mean(expect)), rel=1e-5)


def test_carried_share_is_a_ratio_of_sums_and_no_flip_means_nothing_to_measure():
    part = {"n": 3, "group_size": {g: 2.0 for g in GROUPS},
            "groups": {g: {"restored": "101", "recovery": [0.5, 0.0, 1.0]} for g in GROUPS},
            "defenses": {"d": {"passes_through": False, "total": [2.0, 2.0, 4.0], "front+tail": [1.0, 0.0, 3.0],
                               "random": [0.0, 0.0, 1.0]}}}
    out = mediation_from_parts([part], seed=0)
    assert out["defenses"]["d"]["carried"] == pytest.approx(4 / 8) and out["defenses"]["d"]["random"] == pytest.approx(1 / 8)
    assert out["groups"]["front"]["restored"] == pytest.approx(2 / 3)
    assert out["groups"]["front"]["recovery"] == pytest.approx(0.5)
    empty = mediation_from_parts([{"n": 0, "groups": {}, "defenses": {}}])
    assert empty == {"n_successful": 0, "groups": {}, "defenses": {}}


def test_cli_writes_the_mediation_block_and_checks_its_layers(tmp_path, capsys):
    out = tmp_path / "m.json"
    args = ["evaluate", "--model", "lenet-mnist", "--attacks", "fgsm[eps=0.2]", "--defenses", "none", "--n", "16",
            "--split", "tune", "--no-adaptive", "--no-cache", "--mediation", "--mediation-layers", "fc1",
            "--out", str(out)]
    assert main(args) == 0
    r = json.loads(out.read_text())
    block = r["mediation"]
    assert block["layers"] == ["fc1"] and block["defenses"][0] == "nip"
    fc1 = block["by_attack"]["fgsm[eps=0.2]"]["fc1"]
    assert set(fc1["groups"]) == set(GROUPS) and set(fc1["defenses"]) == set(block["defenses"])
    # the observation carries its random control now
    obs = r["observation"]["fgsm[eps=0.2]"]["fc1"]["true_class"]
    assert 0 <= obs["share_random_down"] <= 1 and "random_activation_change" in obs
    capsys.readouterr()
    for bad, needle in ((["--mediation-layers", "nope"], "has no layer 'nope'"),
                        (["--mediation-layers", "fc1"], "--mediation-layers needs --mediation")):
        base = [a for a in args if a not in ("--mediation", "--mediation-layers", "fc1")]
        argv = base[:-2] + (["--mediation"] if "nope" in bad else []) + bad + base[-2:]
        code = main(argv)
        err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "%|" not in ln]
        assert code == 2 and len(err) == 1 and needle in err[0], err
