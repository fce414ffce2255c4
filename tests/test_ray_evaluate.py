"""Distributed evaluation (issue 14): shards on Ray actors give the serial run's numbers, whatever
order workers finish in, after a worker is killed, and across an interrupted and resumed run."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from nip_core.errors import InputError
from nip_core.evaluation.evaluate import EvalContext, EvalJob, evaluate, evaluate_shard, merge_shards
from nip_core.evaluation.shards import plan, shard_seed
from tests.util import deterministic

ROOT = Path(__file__).resolve().parent.parent

# Small and fast, but with every kind of shard and seeded random units (random-sign, gaussian,
# PGD's random start), so seeding by shard content is what is tested.
GRID = dict(attacks=[("fgsm", {"eps": "0.2"}), ("pgd", {"max_iter": "3"})],
            defenses=[("none", {}), ("random-sign", {}), ("gaussian", {}), ("nip-oracle", {"steps": "3"})],
            n=12, seed=7, split="tune", adaptive=True, observe=True, shard_size=4)
N_SHARDS = 3 * (1 + 2 + 3)          # 3 chunks × (benign, 2 attacks, 3 attacked defenses; nip-oracle is not)


@pytest.fixture(scope="module")
def ray_local():
    from nip_core.evaluation.distributed import init_local

    if not ray.is_initialized():
        init_local(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def serial():
    return evaluate("lenet-mnist", **GRID)


def test_serial_and_ray_give_identical_results(ray_local, serial):
    distributed = evaluate("lenet-mnist", **GRID, ray_address="local", workers=2)
    assert deterministic(distributed) == deterministic(serial)
    d = distributed["distributed"]
    assert (d["backend"], d["workers"], d["shards"], d["shards_computed"]) == ("ray", 2, N_SHARDS, N_SHARDS)
    assert serial["distributed"]["backend"] == "serial" and serial["distributed"]["shards_from_cache"] == 0
    # the numbers are real: per-image bits back the accuracies, seeded units depend on the seed
    assert len(serial["rows"]) == 8 and all(len(r["correct"]) == 12 for r in serial["rows"])
    assert serial["adaptive"]["random-sign[steps=20;step_size=0.03;budget=0.3]"]["correct"].count("1") / 12 == \
        serial["summary"]["adaptive_accuracy"]["random-sign"]
    other = evaluate("lenet-mnist", **(GRID | {"seed": 8, "adaptive": False, "observe": False}))
    assert [r["correct"] for r in other["rows"]] != [r["correct"] for r in serial["rows"]]


def test_merge_does_not_depend_on_finishing_order(serial):
    ctx = EvalContext(EvalJob("lenet-mnist", GRID["attacks"], GRID["defenses"], GRID["n"], GRID["seed"],
                              GRID["split"]))
    shards = plan(len(ctx.att_units), ctx.adaptive_units(), len(ctx.y), GRID["shard_size"])
    assert len(shards) == N_SHARDS
    done = {s: evaluate_shard(ctx, s) for s in shards}
    merged = merge_shards(ctx, done, adaptive=True)
    for trial in range(3):
        order = list(done)
        random.Random(trial).shuffle(order)
        assert merge_shards(ctx, {s: done[s] for s in order}, adaptive=True) == merged
    rows, benign, adaptive, observation, mediation = merged
    assert mediation == {}                      # off unless asked for
    assert deterministic(rows) == deterministic(serial["rows"]) and observation == serial["observation"]
    # a shard's seed comes from what it is, so the same shard evaluated again is identical
    assert evaluate_shard(ctx, shards[-1]) | {"seconds": 0} == done[shards[-1]] | {"seconds": 0}
    assert shard_seed(7, "attack", "a", 0) != shard_seed(7, "attack", "a", 4) != shard_seed(8, "attack", "a", 4)


def test_mediation_is_the_same_serial_and_on_ray(ray_local):
    grid = dict(attacks=[("fgsm", {"eps": "0.2"})], defenses=[("none", {}), ("random-sign", {})], n=12, seed=3,
                split="tune", adaptive=False, observe=False, shard_size=4, mediation=["conv2", "fc1"])
    serial = evaluate("lenet-mnist", **grid)
    distributed = evaluate("lenet-mnist", **grid, ray_address="local", workers=2)
    assert deterministic(distributed) == deterministic(serial)
    med = serial["mediation"]["by_attack"]["fgsm[eps=0.2]"]
    assert serial["mediation"]["layers"] == ["conv2", "fc1"] and set(med) == {"conv2", "fc1", "seconds_per_image"}
    assert med["fc1"]["n_successful"] == serial["rows"][0]["n_successful_adv"] > 0


def test_eps_grid_is_the_same_serial_and_on_ray(ray_local):
    grid = dict(attacks=[("fgsm", {}), ("pgd", {"max_iter": "2"})], defenses=[("none", {}), ("random-sign", {})],
                n=8, seed=2, split="tune", adaptive=False, observe=False, shard_size=4, eps_grid=[0.1, 0.3])
    serial = evaluate("lenet-mnist", **grid)
    distributed = evaluate("lenet-mnist", **grid, ray_address="local", workers=2)
    assert deterministic(distributed) == deterministic(serial)
    assert distributed["distributed"]["shards"] == 2 * (1 + 4)       # 2 chunks × (benign + 2 attacks × 2 ε)
    assert list(serial["elasticity"]["by_attack"]) == ["fgsm", "pgd[eps_step/eps=0.03333;max_iter=2]"]


def test_a_killed_worker_has_its_shard_rerun(ray_local, serial):
    killed = []

    def kill_one(event):
        if not killed and event["running"]:
            victim = event["running"][0]
            ray.kill(victim, no_restart=False)      # dies mid-shard; Ray restarts it and retries the shard
            killed.append(victim)

    result = evaluate("lenet-mnist", **GRID, ray_address="local", workers=2, on_shard=kill_one)
    assert killed, "no worker was busy when the first shard finished"
    assert deterministic(result) == deterministic(serial)


def test_interrupted_run_resumes_from_the_cache(ray_local, serial, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_5(event):
        if event["computed"] == 5:
            raise Stop

    with pytest.raises(Stop):
        evaluate("lenet-mnist", **GRID, ray_address="local", workers=2, cache=tmp_path, on_shard=stop_after_5)
    assert len(list(tmp_path.rglob("*.json"))) == 5 and not list(tmp_path.rglob(".tmp-*"))
    computed = []
    resumed = evaluate("lenet-mnist", **GRID, cache=tmp_path, on_shard=lambda e: computed.append(e["shard"]))
    assert len(computed) == N_SHARDS - 5
    d = resumed["distributed"]
    assert (d["shards_from_cache"], d["shards_computed"]) == (5, N_SHARDS - 5)
    assert deterministic(resumed) == deterministic(serial)
    again = evaluate("lenet-mnist", **GRID, cache=tmp_path)                  # nothing left to do
    assert again["distributed"]["shards_computed"] == 0 and deterministic(again) == deterministic(serial)
    assert evaluate("lenet-mnist", **GRID, cache=tmp_path, fresh=True)["distributed"]["shards_computed"] == N_SHARDS
    # a different seed shares no shard with this one
    other = evaluate("lenet-mnist", **(GRID | {"seed": 8, "n": 4, "adaptive": False}), cache=tmp_path)
    assert other["distributed"]["shards_from_cache"] == 0


def test_user_model_is_loaded_on_the_workers(ray_local, tmp_path):
    from nip_core.byom import load_custom_model

    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(str(i) for i in range(10)) + "\n")
    source = {"arch": "lenet", "weights": str(ROOT / "assets/models/lenet-mnist.safetensors"),
              "class_names": str(classes), "input_size": None}
    name = load_custom_model(**source).name
    grid = dict(attacks=[("fgsm", {})], defenses=[("none", {}), ("jpeg", {})], n=6, seed=1, split="tune",
                adaptive=False, observe=False, shard_size=3)
    a = evaluate(name, **grid, ray_address="local", workers=2, model_source=source)
    assert deterministic(a) == deterministic(evaluate(name, **grid))


def test_worker_without_the_data_reports_one_line():
    from nip_core.evaluation.distributed import ShardWorker

    job = EvalJob("custom-lenet-missing", [("fgsm", {})], [("none", {})], 4,
                  model_source={"arch": "lenet", "weights": "/nonexistent/weights.safetensors",
                                "class_names": [str(i) for i in range(10)]})
    info = ShardWorker(job, threads=1).ready()
    assert info["error"].startswith("on node ") and "\n" not in info["error"] and info["fingerprint"] is None


def test_ray_not_installed_is_an_input_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)           # `import ray` now raises ImportError
    with pytest.raises(InputError, match="needs the 'ray' package"):
        evaluate("lenet-mnist", [("fgsm", {})], [("none", {})], n=2, ray_address="local")


def run_cli(*args):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "nip_core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("extra, needle", [
    (["--ray", "127.0.0.1:1"], "cannot connect to the Ray cluster at 127.0.0.1:1"),
    (["--ray", "no-port-here"], "cannot read the Ray address"),
    (["--workers", "2"], "workers need ray"),
])
def test_bad_ray_arguments_are_one_line_exit_2(tmp_path, extra, needle):
    r = run_cli("evaluate", "--model", "lenet-mnist", "--attacks", "fgsm", "--defenses", "none", "--n", "2",
                "--no-adaptive", *extra, "--out", str(tmp_path / "x.json"))
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr


def test_cli_resumes_from_its_shard_cache(tmp_path):
    args = ["evaluate", "--model", "lenet-mnist", "--attacks", "fgsm", "--defenses", "none,jpeg", "--n", "6",
            "--shard-size", "4", "--no-adaptive", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "r.json")]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert json.loads((tmp_path / "r.json").read_text())["distributed"]["shards_computed"] == 4
    second = run_cli(*args)
    d = json.loads((tmp_path / "r.json").read_text())["distributed"]
    assert second.returncode == 0 and (d["shards_from_cache"], d["shards_computed"]) == (4, 0)
    assert second.stdout == first.stdout                 # the same table


def test_cli_ray_local_gives_the_serial_numbers(ray_local, tmp_path, capsys):
    """README: ``evaluate … --ray local --workers 2`` (here on the running local Ray) equals serial."""
    from nip_core.cli import main

    args = ["evaluate", "--model", "lenet-mnist", "--attacks", "fgsm,pgd[max_iter=3]", "--defenses",
            "none,random-sign", "--split", "tune", "--n", "6", "--shard-size", "3", "--seed", "7", "--no-cache"]
    assert main(args + ["--out", str(tmp_path / "serial.json")]) == 0
    assert main(args + ["--ray", "local", "--workers", "2", "--out", str(tmp_path / "ray.json")]) == 0
    capsys.readouterr()
    serial, distributed = (json.loads((tmp_path / f).read_text()) for f in ("serial.json", "ray.json"))
    assert distributed["distributed"]["backend"] == "ray" and distributed["distributed"]["workers"] == 2
    assert distributed["distributed"]["shards_computed"] == distributed["distributed"]["shards"] == 2 * (1 + 2 + 2)
    assert deterministic(distributed) == deterministic(serial)
