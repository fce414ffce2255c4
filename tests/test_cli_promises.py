"""Every command-line promise of the README, run in-process through ``nip_core.cli.main`` on tiny
grids: the suites, your own model, calibration, profiles, the bench, training, the shard cache,
``--seed``, and one-line errors with exit status 2 on every command."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nip_core.cli import build_parser, main
from nip_core.runtime import ASSETS
from tests.util import deterministic

ROOT = Path(__file__).resolve().parent.parent
LENET_WEIGHTS = ASSETS / "models" / "lenet-mnist.safetensors"


def cli(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python -m nip_core ARGS``, in this process."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:       # argparse refuses before main's own handler
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def subcommands() -> list[str]:
    return list(build_parser()._subparsers._group_actions[0].choices)


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory) -> Path:
    """200 held-out MNIST digits with their labels, as a user's ``--data`` file (uint8, N×H×W)."""
    from nip_core.data import mnist

    x, y = mnist("test")
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=(x[:200, 0] * 255).round().numpy().astype(np.uint8), y=y[:200].numpy())
    return path


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> Path:
    from nip_core.data import gallery
    from nip_core.images import tensor_to_png_bytes

    path = tmp_path_factory.mktemp("img") / "digit.png"
    path.write_bytes(tensor_to_png_bytes(gallery("mnist")[0].image))
    return path


# ---------------------------------------------------------------------------------------------
# evaluate


def test_suite_paper_mnist_runs_every_unit_on_a_few_report_images(tmp_path, capsys):
    from nip_core.defenses import DEFENSES
    from nip_core.evaluation.evaluate import SUITES

    out = tmp_path / "F.json"
    rc, stdout, err = cli(capsys, "evaluate", "--suite", "paper-mnist", "--split", "report", "--n", 4,
                          "--no-blackbox", "--no-cache", "--out", out)
    assert rc == 0, err
    res, suite = json.loads(out.read_text()), SUITES["paper-mnist"]
    assert (res["suite"], res["model"], res["split"], res["n_images"]) == ("paper-mnist", "lenet-mnist", "report", 4)
    assert [lb.split("[")[0] for lb in res["attacks"]] == [a for a, _ in suite["attacks"]]
    assert [lb.split("[")[0] for lb in res["defenses"]] == [d for d, _ in suite["defenses"]]
    assert len(res["rows"]) == len(suite["attacks"]) * len(suite["defenses"])
    for row in res["rows"]:
        assert len(row["correct"]) == 4 and row["defended_adv_accuracy"] == row["correct"].count("1") / 4
    # the adaptive column attacks every deployable defense and no analysis mode; nip has its aware attack
    for d, label in zip((d for d, _ in suite["defenses"]), res["defenses"]):
        assert (res["adaptive"][label]["accuracy"] is None) == (not DEFENSES[d].deployable), d
    nip = next(lb for lb in res["defenses"] if lb.startswith("nip["))
    assert res["adaptive"][nip]["aware"]["attack"].startswith("nip-aware")
    # --no-blackbox: no black-box column anywhere; the report split carries no calibration warning
    assert all(v is None for v in res["summary"]["blackbox_accuracy"].values())
    assert res["warnings"] == [] and "paired" in res["summary"]
    table = stdout.splitlines()
    assert all(any(line.startswith(d[:40]) for line in table) for d in res["defenses"])


def test_blackbox_column_runs_and_its_numbers_land_in_the_json_and_csv(tmp_path, capsys):
    out = tmp_path / "bb.json"
    rc, stdout, err = cli(capsys, "evaluate", "--model", "lenet-mnist", "--attacks", "fgsm", "--defenses",
                          "none,jpeg,nip-oracle", "--split", "tune", "--n", 3, "--blackbox-eps", 0.3,
                          "--blackbox-queries", 10, "--blackbox-n", 2, "--no-cache", "--out", out)
    assert rc == 0, err
    res = json.loads(out.read_text())
    for d in ("none", "jpeg"):
        label = next(lb for lb in res["defenses"] if lb.split("[")[0] == d)
        bb = res["adaptive"][label]["blackbox"]
        assert bb["n"] == 2 and len(bb["correct"]) == 2 and bb["attack"] == "square[eps=0.3;max_iter=10]"
        assert bb["accuracy"] == bb["correct"].count("1") / 2 == res["summary"]["blackbox_accuracy"][d]
        assert bb["seconds_per_image"] > 0
    # through no defense, the defended and undefended outputs are the same model call
    none = res["adaptive"]["none"]["blackbox"]
    assert none["accuracy"] == none["undefended_accuracy"]
    oracle = next(lb for lb in res["defenses"] if lb.startswith("nip-oracle"))
    assert "blackbox" not in res["adaptive"][oracle]          # analysis mode: never attacked
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert {r["blackbox_accuracy"] for r in rows if r["defense"] == "none"} == {str(none["accuracy"])}
    assert any(line.startswith("none") and not line.rstrip().endswith("n/a") for line in stdout.splitlines())


@pytest.fixture(scope="module")
def user_model(tmp_path_factory) -> tuple[Path, Path]:
    """The shipped LeNet's weights brought as a user's model, with class names of its own."""
    classes = tmp_path_factory.mktemp("byom") / "classes.txt"
    classes.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    return LENET_WEIGHTS, classes


def test_evaluate_and_explain_a_user_model_and_nip_never_harms_it(user_model, digit_png, tmp_path, capsys):
    from nip_core.models import load_model

    weights, classes = user_model
    byom = ["--arch", "lenet", "--weights", weights, "--classes", classes]
    out = tmp_path / "mine.json"
    rc, _, err = cli(capsys, "evaluate", *byom, "--attacks", "fgsm", "--defenses", "none,nip", "--n", 4,
                     "--no-adaptive", "--no-cache", "--out", out)
    assert rc == 0, err
    res = json.loads(out.read_text())
    model = load_model(res["model"])
    assert res["model"].startswith("custom-lenet-") and res["weights_sha256"] == model.weights_sha256
    assert model.class_names[0] == "zero"
    # a user's model is scored against its own benign predictions, so every benign image counts as right
    assert res["benign"]["none"]["correct"] == "1111"
    # never harm: no calibration, so nip passes benign and adversarial inputs through unchanged
    assert res["calibration"]["nip"]["calibrated"] is False and "no calibration for custom-lenet-" in err
    nip = next(lb for lb in res["defenses"] if lb.startswith("nip"))
    assert res["benign"][nip]["correct"] == "1111"
    rows = {r["defense"]: r for r in res["rows"]}
    assert rows[nip]["correct"] == rows["none"]["correct"] and rows[nip]["defense_linf_mean"] == 0

    ex = tmp_path / "ex"
    rc, stdout, err = cli(capsys, "explain", *byom, "--image", digit_png, "--defense", "nip", "--out", ex)
    assert rc == 0, err
    summary = json.loads((ex / "summary.json").read_text())
    assert summary["model"] == res["model"] and summary["defense_decision"] is None
    assert summary["predictions"]["benign"]["name"] in model.class_names
    assert (ex / "defended.png").read_bytes() == (ex / "adversarial.png").read_bytes()
    assert summary["norms"]["defended"] == summary["norms"]["adversarial"]


# ---------------------------------------------------------------------------------------------
# calibrate


def test_calibrate_with_data_is_used_by_evaluate_then_forgotten(digits_npz, tmp_path, capsys, lenet):
    from nip_core.calibration import calibration_for
    from nip_core.sources.userdata import load_labelled_data

    grid = ["evaluate", "--model", "lenet-mnist", "--attacks", "fgsm", "--defenses", "none,nip", "--split", "tune",
            "--n", 2, "--no-adaptive", "--cache", tmp_path / "shards", "--out", tmp_path / "r.json"]

    def shards_from_cache() -> int:
        rc, _, err = cli(capsys, *grid)
        assert rc == 0, err
        return json.loads((tmp_path / "r.json").read_text())["distributed"]["shards_from_cache"]

    builtin = calibration_for(lenet)
    assert shards_from_cache() == 0
    rc, stdout, err = cli(capsys, "calibrate", "--model", "lenet-mnist", "--data", digits_npz)
    assert rc == 0, err
    info = json.loads(stdout)
    data = load_labelled_data(digits_npz, class_names=lenet.class_names, channels=1, size=28, preprocess="mnist")
    # the calib split is the last 30% of a seeded permutation (docs/data.md): of 200 images, 60;
    # its first half is the bank (the digits the model gets right), its second half the thresholds
    assert info["data_sha256"] == data.data_sha256 and info["calib_images"] == 30 and info["bank_images"] <= 30
    assert Path(info["path"]).exists() and "calibrated nip for lenet-mnist" in err
    assert calibration_for(lenet).data_sha256 == data.data_sha256
    # nip now uses another calibration: no shard computed with the built-in one may be reused
    assert shards_from_cache() == 0

    rc, _, err = cli(capsys, "calibrate", "--model", "lenet-mnist", "--forget")
    assert rc == 0 and "back to its built-in calibration" in err
    assert calibration_for(lenet).key == builtin.key
    assert shards_from_cache() == 2            # the built-in calibration's shards are valid again


# ---------------------------------------------------------------------------------------------
# profile


def test_profile_recomputed_matches_the_shipped_profiles(tmp_path, capsys, monkeypatch):
    import nip_core.influence as influence

    def no_reading(*a, **k):
        raise AssertionError("profile --fresh read a stored profile instead of computing it")

    monkeypatch.setattr(influence, "_read", no_reading)
    rc, stdout, err = cli(capsys, "profile", "--model", "lenet-mnist", "--layer", "all", "--fresh",
                          "--out", tmp_path)
    assert rc == 0, err
    shipped = sorted(influence.shipped_profile_dir().glob("lenet-mnist-*.safetensors"))
    computed = sorted(tmp_path.glob("*.safetensors"))
    # the same file names: the key (weights, layer, method, parameters) names the shipped profile
    assert [p.name for p in computed] == [p.name for p in shipped] and len(shipped) == 4
    for new, old in zip(computed, shipped):
        a, b = load_file(str(new)), load_file(str(old))
        assert set(a) == set(b), new.name
        assert torch.equal(a["classes"], b["classes"]) and torch.equal(a["counts"], b["counts"])
        for k in ("global", "activation_rate", "mean_activation", "per_class"):
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), (new.name, k)
    assert len(stdout.strip().splitlines()) == 4


# ---------------------------------------------------------------------------------------------
# bench


def test_bench_quick_writes_its_json(tmp_path, capsys):
    from nip_core.evaluation.bench import QUICK_CHANGES

    # --models lenet-mnist: the quick configuration of one model (all four take about a minute)
    out = tmp_path / "sub" / "bench.json"
    rc, stdout, err = cli(capsys, "bench", "--quick", "--models", "lenet-mnist", "--out", out)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["config"]["quick"] is True and res["config"]["quick_changes"] == list(QUICK_CHANGES)
    assert list(res["models"]) == ["lenet-mnist"]
    b = res["models"]["lenet-mnist"]["batch_64"]                 # quick: LeNet at batch 64 only
    for key in ("nip_floor_ratio", "conductance_floor_ratio"):
        assert np.isfinite(b[key]) and b[key] > 0
    assert res["evaluation"]["lenet-mnist"]["n_images"] == 16
    assert json.loads(stdout) == res["summary"]


# ---------------------------------------------------------------------------------------------
# train


def test_train_twice_gives_the_same_weights_and_never_touches_the_shipped_ones(tmp_path, capsys):
    card = ASSETS / "models" / "lenet-mnist.json"
    shipped = (sha256(LENET_WEIGHTS), sha256(card))
    hashes = []
    for folder, seed in (("a", 0), ("b", 0), ("c", 1)):
        rc, stdout, err = cli(capsys, "train", "lenet-mnist", "--epochs", 1, "--seed", seed, "--out", tmp_path / folder)
        assert rc == 0, err
        info = json.loads(stdout)
        weights = tmp_path / folder / "lenet-mnist.safetensors"
        assert info["sha256"] == sha256(weights) and info["epochs"] == 1 and info["train_seed"] == seed
        assert json.loads((tmp_path / folder / "lenet-mnist.json").read_text()) == info
        hashes.append(info["sha256"])
    assert hashes[0] == hashes[1] != hashes[2]
    assert (sha256(LENET_WEIGHTS), sha256(card)) == shipped


# ---------------------------------------------------------------------------------------------
# the shard cache


def test_cache_no_cache_and_fresh(tmp_path, capsys):
    import os

    cache = tmp_path / "shards"
    grid = ["evaluate", "--model", "lenet-mnist", "--attacks", "fgsm", "--defenses", "none,random-sign",
            "--split", "tune", "--n", 4, "--shard-size", 2, "--no-adaptive"]

    def run(*extra) -> dict:
        out = tmp_path / "r.json"
        rc, _, err = cli(capsys, *grid, *extra, "--out", out)
        assert rc == 0, err
        return json.loads(out.read_text())

    def files() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in cache.rglob("*.json")}

    first = run("--cache", cache)
    d = first["distributed"]
    assert (d["shards"], d["shards_computed"], d["cache"]) == (4, 4, str(cache)) and len(files()) == 4
    before = files()
    again = run("--cache", cache)
    assert again["distributed"]["shards_from_cache"] == 4
    none = run("--cache", cache, "--no-cache")             # neither read nor written
    assert (none["distributed"]["shards_from_cache"], none["distributed"]["cache"]) == (0, None)
    assert files() == before
    fresh = run("--cache", cache, "--fresh")                # recomputed and written again
    assert (fresh["distributed"]["shards_from_cache"], fresh["distributed"]["shards_computed"]) == (0, 4)
    assert set(files()) == set(before) and all(files()[p] != t for p, t in before.items())
    assert deterministic(first) == deterministic(again) == deterministic(none) == deterministic(fresh)
    # without --cache, shards go to the engine's cache folder (this test session's own)
    default = run()
    assert default["distributed"]["cache"] == str(Path(os.environ["NIP_CACHE_DIR"]) / "shards")


# ---------------------------------------------------------------------------------------------
# --seed


def _seeded_outputs(command: str, seed: int, tmp: Path, capsys, digit_png: Path, digits_npz: Path):
    """What ``command --seed seed`` produces, as comparable values."""
    out = tmp / f"{command}-{seed}-{len(list(tmp.iterdir()))}"
    if command == "evaluate":   # PGD starts from a random point: its perturbation depends on the seed
        args = ["evaluate", "--model", "lenet-mnist", "--attacks", "pgd[max_iter=2]", "--defenses", "none",
                "--split", "tune", "--n", 3, "--no-adaptive", "--no-cache", "--out", out.with_suffix(".json")]
    elif command == "explain":
        args = ["explain", "--model", "lenet-mnist", "--image", digit_png, "--attack", "pgd",
                "--attack-params", "max_iter=2", "--defense", "random-sign", "--out", out]
    elif command == "profile":  # the seed of the --data split: another seed, other tune images
        args = ["profile", "--model", "lenet-mnist", "--data", digits_npz, "--split", "tune", "--layer", "fc2",
                "--fresh", "--out", out]
    elif command == "calibrate":
        args = ["calibrate", "--model", "lenet-mnist", "--data", digits_npz]
    elif command == "surgery":  # PGD's random start and the random group both follow the seed
        args = ["surgery", "--model", "lenet-mnist", "--image", digit_png, "--attack",
                "pgd[max_iter=2]", "--layer", "fc1", "--select", "random:20", "--value", "zero", "--out", out]
    else:
        raise AssertionError(f"no --seed case for {command!r}")
    rc, stdout, err = cli(capsys, *args, "--seed", seed)
    assert rc == 0, err
    if command == "evaluate":
        return [r["l2_mean"] for r in json.loads(out.with_suffix(".json").read_text())["rows"]]
    if command == "explain":
        s = json.loads((out / "summary.json").read_text())
        return s["norms"], s["predictions"], (out / "defended.png").read_bytes()
    if command == "profile":
        return {k: v.tolist() for k, v in load_file(str(next(out.glob("*.safetensors")))).items()}
    if command == "surgery":
        s = json.loads((out / "surgery.json").read_text())
        return s["adversarial"], s["patched"], s["neurons"]
    with np.load(json.loads(stdout)["path"]) as f:
        return f["bank_x"].tolist(), f["calib_x"].tolist()


SEEDED = ["evaluate", "explain", "profile", "calibrate", "surgery"]     # train: test_train_twice_…


def test_every_command_that_draws_at_random_takes_seed():
    def has_seed(name):
        sub = build_parser()._subparsers._group_actions[0].choices[name]
        return any("--seed" in a.option_strings for a in sub._actions)

    # train: test_train_twice_…; fragility: tests/test_fragility.py (the same seed gives the same ε; its
    # flip ε often does not move with the seed, so "another seed, another output" is not a property of it);
    # robustness: tests/test_lenet_fashion_at.py (the same seed gives the same figures; accuracy counts
    # rarely move with PGD's random start)
    assert {c for c in subcommands() if has_seed(c)} == set(SEEDED) | {"train", "fragility", "robustness"}
    # list and bench draw nothing at random: bench times the held-out images in order; split-images
    # writes the split as the loaders give it
    assert set(subcommands()) - set(SEEDED) - {"train", "fragility", "robustness"} == {"list", "bench", "split-images"}


@pytest.mark.parametrize("command", SEEDED)
def test_seed_gives_the_same_output_and_another_seed_another(command, tmp_path, capsys, digit_png, digits_npz):
    first = _seeded_outputs(command, 0, tmp_path, capsys, digit_png, digits_npz)
    assert _seeded_outputs(command, 0, tmp_path, capsys, digit_png, digits_npz) == first
    assert _seeded_outputs(command, 1, tmp_path, capsys, digit_png, digits_npz) != first


# ---------------------------------------------------------------------------------------------
# bad input: exit 2 and one line, on every command

BAD_INPUT = {
    "list": [(["list", "nothing"], "invalid choice")],
    "evaluate": [(["evaluate", "--model", "lenet-mnist", "--attacks", "fgsm", "--defenses", "none", "--data",
                   "/nonexistent/data", "--out", "{tmp}/x.json"], "/nonexistent/data"),
                 (["evaluate", "--suite", "paper-nothing", "--out", "{tmp}/x.json"], "unknown suite")],
    "explain": [(["explain", "--model", "lenet-mnist", "--image", str(ROOT / "README.md"), "--out", "{tmp}/o"],
                 "image")],
    "train": [(["train", "efficientnet-lite0", "--out", "{tmp}/t"], "can be trained"),
              (["train", "lenet-mnist", "--epochs", "0", "--out", "{tmp}/t"], "epochs must be at least 1")],
    "profile": [(["profile", "--model", "lenet-mnist", "--layer", "conv9"], "no layer 'conv9'"),
                (["profile", "--model", "lenet-mnist", "--data", "/nonexistent/d.npz"], "/nonexistent/d.npz")],
    "surgery": [(["surgery", "--model", "lenet-mnist", "--image", str(ROOT / "README.md"), "--out", "{tmp}/s"],
                 "image"),
                (["surgery", "--model", "lenet-mnist", "--image", str(ROOT / "assets/gallery/imagenet/coffee.png"),
                  "--select", "front:0.9", "--out", "{tmp}/s"], "in (0, 0.5]")],
    "fragility": [(["fragility", "--model", "lenet-mnist", "--out", "{tmp}/f"], "needs --image"),
                  (["fragility", "--model", "lenet-mnist", "--image", str(ROOT / "assets/gallery/imagenet/coffee.png"),
                    "--attack", "cw-l2", "--out", "{tmp}/f"], "cw-l2")],
    "calibrate": [(["calibrate", "--model", "resnet8-cifar10"], "--data"),
                  (["calibrate", "--model", "lenet-mnist", "--data", "{tmp}/missing"], "missing")],
    "robustness": [(["robustness", "--model", "nope", "--out", "{tmp}/r.json"], "unknown model"),
                   (["robustness", "--model", "lenet-fashion", "--pgd-n", "0", "--out", "{tmp}/r.json"], "pgd_n must be")],
    "split-images": [(["split-images", "--model", "nope", "--out", "{tmp}/s.npz"], "nope"),
                     (["split-images", "--model", "lenet-mnist,lenet-fashion", "--out", "{tmp}/s.npz"],
                      "out takes one model")],
    "bench": [(["bench", "--models", "nope", "--out", "{tmp}/b.json"], "unknown model 'nope'"),
              (["bench", "--out", "{tmp}"], "is a folder")],
}


def test_every_command_has_bad_input_cases():
    assert set(BAD_INPUT) == set(subcommands())


def _one_line_exit_2(capsys, args) -> str:
    rc, stdout, err = cli(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, stdout, err)
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert stdout == ""
    return lines[0]


@pytest.mark.parametrize("command, args, needle",
                         [(c, a, n) for c, cases in BAD_INPUT.items() for a, n in cases],
                         ids=lambda v: v if isinstance(v, str) and " " not in v and "/" not in v else None)
def test_bad_input_exits_2_with_one_line(command, args, needle, tmp_path, capsys):
    line = _one_line_exit_2(capsys, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert needle.replace("{tmp}", str(tmp_path)) in line, line


@pytest.mark.parametrize("command", subcommands())
def test_unknown_option_exits_2_with_one_line(command, capsys):
    # argparse names a missing required argument first, else the unknown option
    line = _one_line_exit_2(capsys, [command, "--no-such-option"])
    assert "--no-such-option" in line or "required" in line, line
