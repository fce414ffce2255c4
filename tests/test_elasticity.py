"""Elasticity (issue 20, §2): ``evaluate --eps-grid`` expands each L∞ gradient attack into one unit per
strength with its step scaled by hand-checkable arithmetic, its curves are the rows' per-image bits with
their Wilson intervals, the adaptive column keeps the main ε (and its shards' cache keys), the merge does
not depend on which shard finished first, and bad grids are one line with exit status 2."""
import json
import pickle
import random

import pytest

from nip_core.attacks import ATTACKS
from nip_core.cli import main
from nip_core.analyses.elasticity import expand_eps_grid, parse_eps_grid, scaled_params, sweeps_eps
from nip_core.errors import InputError
from nip_core.evaluation.evaluate import EvalContext, EvalJob, evaluate, evaluate_shard, merge_shards, wilson_interval
from nip_core.evaluation.shards import plan

# Small and fast: one attack of each kind (no step, a step), seeded units, and a second chunk of images.
GRID = dict(attacks=[("fgsm", {"eps": "0.1"}), ("pgd", {"eps": "0.3", "eps_step": "0.03", "max_iter": "3"})],
            defenses=[("none", {}), ("random-sign", {}), ("jpeg", {})], n=10, seed=5, split="tune",
            observe=False, shard_size=5)
EPS = [0.05, 0.3]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    cache = tmp_path_factory.mktemp("shards")
    return evaluate("lenet-mnist", **GRID, adaptive=True, eps_grid=EPS, cache=cache), cache


def test_parse_eps_grid():
    assert parse_eps_grid("0.3, 0.02,0.1,0.1") == [0.02, 0.1, 0.3]
    assert parse_eps_grid([1, 0.5]) == [0.5, 1.0]
    for bad in ("", " , ", "abc", "0", "-0.1", "1.5", "nan", "inf", "0.1,,0.2", [], [True], "0x1"):
        with pytest.raises(InputError, match="grid"):
            parse_eps_grid(bad)


def test_registry_declares_which_attacks_sweep():
    assert {a for a in ATTACKS if sweeps_eps(a)} == {"fgsm", "bim", "pgd", "mifgsm", "apgd"}
    for name, a in ATTACKS.items():         # a declared sweep has the budget it sweeps
        if a.eps_sweep:
            assert "eps" in {p.name for p in a.spec.params}, name


@pytest.mark.parametrize("name", [a for a in ATTACKS if sweeps_eps(a)])
def test_every_sweep_keeps_its_step_ratio(lenet, name):
    base = ATTACKS[name].params_for(lenet, {})
    p = scaled_params(lenet, name, base, 0.15)
    assert p["eps"] == 0.15
    if "eps_step" in base:
        assert p["eps_step"] == pytest.approx(0.15 * base["eps_step"] / base["eps"], rel=1e-12)
    assert {k: v for k, v in p.items() if k not in ("eps", "eps_step")} == \
        {k: v for k, v in base.items() if k not in ("eps", "eps_step")}


def test_expansion_and_labels_by_hand(lenet):
    units = [(a, ATTACKS[a].params_for(lenet, p)) for a, p in
             [("fgsm", {"eps": 0.1}), ("cw-l2", {}), ("fgsm", {"eps": 0.2}),
              ("pgd", {"eps": 0.3, "eps_step": 0.01, "max_iter": 40}), ("mifgsm", {"eps": 0.2, "eps_step": 0.04})]]
    out, sweeps = expand_eps_grid(lenet, units, [0.3, 0.05])
    # fgsm 0.1 and 0.2 are one sweep; cw-l2 stays where it was; steps: 0.05 × 0.01/0.3 = 0.0016666… (kept to 12
    # significant digits), 0.05 × 0.04/0.2 = 0.01
    assert [(a, p.get("eps"), p.get("eps_step")) for a, p in out] == [
        ("fgsm", 0.05, None), ("fgsm", 0.3, None), ("cw-l2", None, None),
        ("pgd", 0.05, 0.00166666666667), ("pgd", 0.3, 0.01), ("mifgsm", 0.05, 0.01), ("mifgsm", 0.3, 0.06)]
    assert out[3][1]["max_iter"] == 40 and out[5][1]["decay"] == 1.0
    assert [s.label for s in sweeps] == ["fgsm", "pgd[eps_step/eps=0.03333;max_iter=40]",
                                         "mifgsm[eps_step/eps=0.2;max_iter=10;decay=1]"]
    assert sweeps[0].sources == ["fgsm[eps=0.1]", "fgsm[eps=0.2]"] and sweeps[0].units == [0, 1]
    assert sweeps[1].units == [3, 4] and sweeps[2].units == [5, 6]
    ctx = EvalContext(EvalJob("lenet-mnist", [("pgd", {"eps": "0.3", "eps_step": "0.01"})], [("none", {})], 2,
                              eps_grid=[0.05]))
    assert ctx.attack_labels == ["pgd[eps=0.05;eps_step=0.001667;max_iter=40]"]


def test_out_of_range_strengths_and_grids_without_a_sweep_are_refused(lenet):
    tiny_step = [("pgd", ATTACKS["pgd"].params_for(lenet, {"eps": 0.3, "eps_step": 0.001}))]
    with pytest.raises(InputError, match=r"ε = 0.02 is out of range for pgd\[.*'eps_step' must be"):
        expand_eps_grid(lenet, tiny_step, [0.02, 0.3])        # 0.02 × 0.001/0.3 < 1e-4
    with pytest.raises(InputError, match="the grid has none of them"):
        expand_eps_grid(lenet, [("cw-l2", ATTACKS["cw-l2"].params_for(lenet, {}))], [0.1])


def test_curves_are_the_rows_bits_with_wilson_bands(graded):
    r, _ = graded
    assert r["attacks"][:2] == ["fgsm[eps=0.05;target=-1]", "fgsm[eps=0.3;target=-1]"]
    el = r["elasticity"]
    assert el["eps_grid"] == EPS and el["adaptive_eps"] == 0.3
    assert list(el["by_attack"]) == ["fgsm", "pgd[eps_step/eps=0.1;max_iter=3]"]
    pgd = el["by_attack"]["pgd[eps_step/eps=0.1;max_iter=3]"]
    assert pgd["units"] == ["pgd[eps=0.05;eps_step=0.005;max_iter=3]", "pgd[eps=0.3;eps_step=0.03;max_iter=3]"]
    rows = {(row["attack"], row["defense"]): row for row in r["rows"]}
    for sweep in el["by_attack"].values():
        for dl, c in sweep["defenses"].items():
            bits = [rows[(u, dl)]["correct"] for u in sweep["units"]]
            assert c["correct"] == [b.count("1") for b in bits] and c["n"] == 10
            assert c["accuracy"] == [rows[(u, dl)]["defended_adv_accuracy"] for u in sweep["units"]]
            assert list(zip(c["ci_low"], c["ci_high"])) == [wilson_interval(b.count("1"), len(b)) for b in bits]
        assert sweep["undefended"] == sweep["defenses"]["none"]
    # real behaviour: the larger budget fools the undefended model on more of these digits
    fgsm = el["by_attack"]["fgsm"]["undefended"]["accuracy"]
    assert fgsm[1] < fgsm[0]


def test_adaptive_column_keeps_the_main_eps_and_its_cache_keys(graded):
    r, cache = graded
    assert r["adaptive"]["jpeg[quality=50]"]["attack"] == "pgd-bpda[eps=0.3;eps_step=0.03;max_iter=20]"
    # The same grid without --eps-grid: its benign and adaptive shards are the grid run's, from the cache.
    plain = evaluate("lenet-mnist", **GRID, adaptive=True, cache=cache)
    assert "elasticity" not in plain
    d = plain["distributed"]
    assert d["shards_from_cache"] == 2 * (1 + 3) and d["shards_computed"] == 2 * 2   # 2 chunks × (benign + 3 adaptive)
    assert plain["adaptive"] == r["adaptive"] and plain["benign"] == r["benign"]


def test_merge_is_order_free_and_a_worker_rebuilds_the_same_units(graded):
    r, _ = graded
    job = EvalJob("lenet-mnist", GRID["attacks"], GRID["defenses"], GRID["n"], GRID["seed"], GRID["split"],
                  observe=False, eps_grid=EPS)
    ctx = EvalContext(job)
    worker = pickle.loads(pickle.dumps(job)).context()       # what a Ray actor builds from the job
    assert worker.att_units == ctx.att_units and worker.attack_labels == ctx.attack_labels
    shards = plan(len(ctx.att_units), [], len(ctx.y), GRID["shard_size"])
    done = {s: evaluate_shard(ctx, s) for s in shards}
    merged = merge_shards(ctx, done, adaptive=False)
    for trial in range(3):
        order = list(done)
        random.Random(trial).shuffle(order)
        assert merge_shards(ctx, {s: done[s] for s in order}, adaptive=False) == merged
    assert [row["correct"] for row in merged[0]] == [row["correct"] for row in r["rows"]]


@pytest.mark.parametrize("grid, needle", [
    ("abc", "must be a number"), ("0", "must be in (0, 1]"), ("-0.1", "must be in (0, 1]"),
    ("1.5", "must be in (0, 1]"), ("", "--eps-grid is empty"), ("0.1,x", "got 'x'"),
])
def test_bad_grids_are_one_line_exit_2(tmp_path, capsys, grid, needle):
    code = main(["evaluate", "--model", "lenet-mnist", "--attacks", "fgsm", "--defenses", "none", "--n", "2",
                 "--no-adaptive", "--no-cache", "--eps-grid", grid, "--out", str(tmp_path / "x.json")])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "x.json").exists()


def test_cli_writes_the_elasticity_block(tmp_path, capsys):
    out = tmp_path / "e.json"
    args = ["evaluate", "--model", "lenet-mnist", "--attacks", "fgsm,cw-l2[max_iter=2;binary_search_steps=1]",
            "--defenses", "none", "--n", "4", "--split", "tune", "--no-adaptive", "--no-cache",
            "--eps-grid", "0.2,0.1", "--out", str(out)]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert [row["attack"] for row in r["rows"]] == ["fgsm[eps=0.1]", "fgsm[eps=0.2]",
                                                   "cw-l2[confidence=0;learning_rate=0.05;binary_search_steps=1;"
                                                   "max_iter=2;initial_const=1]"]
    assert r["elasticity"]["by_attack"]["fgsm"]["eps"] == [0.1, 0.2]
    capsys.readouterr()
    code = main([a if a != "fgsm,cw-l2[max_iter=2;binary_search_steps=1]" else "cw-l2" for a in args])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "%|" not in ln and ln.strip()]
    assert code == 2 and len(err) == 1 and "--eps-grid sweeps the L∞ gradient attacks" in err[0], err
