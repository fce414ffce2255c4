"""Same inputs, parameters and seed give bit-identical results on CPU; seeds matter where random."""
import pytest
import torch

from nip_core.defenses import apply_defense
from nip_core.evaluation.evaluate import evaluate
from nip_core.analyses.explain import explain

RUNS = [
    dict(attack="fgsm", defense="nip", seed=0),
    dict(attack="pgd", attack_params={"max_iter": 5}, defense="random-sign", layer="fc2", method="grad_x_act",
         k=0.3, seed=5),
    dict(attack="square", attack_params={"max_iter": 20}, defense="gaussian", seed=2),
]


def _tensors_equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r['attack']}-{r['defense']}")
def test_explain_is_bit_identical(lenet, digits, run):
    x, y = digits
    a = explain(lenet, x[1], int(y[1]), n_steps=8, **run)
    b = explain(lenet, x[1], int(y[1]), n_steps=8, **run)
    fields = [f for f in vars(a) if f != "seconds"]
    for f in fields:
        assert _tensors_equal(getattr(a, f), getattr(b, f)), f
    sa, sb = a.summary(), b.summary()
    sa.pop("seconds"), sb.pop("seconds")
    assert sa == sb


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if "seconds" not in k and k != "environment"}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def test_small_evaluate_is_identical_except_timing(lenet):
    args = dict(attacks=[("fgsm", {"eps": 0.2}), ("pgd", {"max_iter": 5})],
                defenses=[("none", {}), ("gaussian", {}), ("random-sign", {})],
                n=4, seed=1, split="tune", adaptive=True)
    a, b = evaluate("lenet-mnist", **args), evaluate("lenet-mnist", **args)
    assert [set(r) for r in a["rows"]] == [set(r) for r in b["rows"]]
    assert _without_timing(a) == _without_timing(b)
    assert any("seconds" in k for k in a["rows"][0])  # timing fields exist and were the only ones dropped


RANDOM_DEFENSES = {"gaussian": {}, "random-sign": {}, "tvm": {"max_iter": 2}}


@pytest.mark.parametrize("name", sorted(RANDOM_DEFENSES))
def test_random_defense_depends_on_seed_only(lenet, digits, name):
    x, _ = digits
    p = RANDOM_DEFENSES[name]
    first = apply_defense(lenet, name, x[:4], p, seed=0).x_def
    assert torch.equal(first, apply_defense(lenet, name, x[:4], p, seed=0).x_def)
    other = apply_defense(lenet, name, x[:4], p, seed=1).x_def
    assert not torch.equal(first, other)
    assert torch.equal(other, apply_defense(lenet, name, x[:4], p, seed=1).x_def)
