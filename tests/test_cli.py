"""The CLI contract: list, evaluate, explain, and one-line errors with exit status 2."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, timeout=600):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "nip_core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_list_attacks_json_has_at_least_13():
    r = run("list", "attacks", "--json")
    assert r.returncode == 0, r.stderr
    names = [a["name"] for a in json.loads(r.stdout)]
    assert len(names) >= 13 and {"fgsm", "pgd", "cw-l2", "deepfool", "square", "hsj"} <= set(names)


def test_list_models_and_defenses():
    models = json.loads(run("list", "models", "--json").stdout)
    assert {m["name"] for m in models} >= {"lenet-mnist", "efficientnet-lite0"}
    defenses = json.loads(run("list", "defenses", "--json").stdout)
    by_name = {d["name"]: d for d in defenses}
    assert by_name["nip"]["deployable"] and not by_name["nip-oracle"]["deployable"]
    assert {"jpeg", "bitdepth", "median", "tvm", "gaussian", "random-sign"} <= set(by_name)


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "--model", "nope", "--attacks", "fgsm", "--defenses", "none", "--out", "x.json"], "unknown model"),
    (["evaluate", "--model", "lenet-mnist", "--attacks", "fgsm[eps=7]", "--defenses", "none", "--out", "x.json"],
     "'eps' must be"),
    (["evaluate", "--model", "lenet-mnist", "--attacks", "zap", "--defenses", "none", "--out", "x.json"],
     "unknown attack"),
    (["evaluate", "--model", "lenet-mnist", "--attacks", "fgsm", "--defenses", "none", "--n", "0", "--out", "x.json"],
     "'n'"),
    (["explain", "--model", "lenet-mnist", "--image", "/nonexistent.png", "--out", "o"], "image"),
    (["explain", "--model", "lenet-mnist", "--image", str(ROOT / "README.md"), "--out", "o"], "image"),
    (["explain", "--model", "lenet-mnist", "--image", str(ROOT / "README.md"), "--k", "x", "--out", "o"], "--k"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0]


def test_evaluate_writes_json_and_csv(tmp_path):
    out = tmp_path / "res.json"
    r = run("evaluate", "--model", "lenet-mnist", "--attacks", "fgsm,pgd[max_iter=10]",
            "--defenses", "none,random-sign,nip-oracle", "--n", "12", "--seed", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["n_images"] == 12 and len(res["rows"]) == 6
    assert res["summary"]["benign_accuracy"]["none"] == 1.0
    assert res["adaptive"]["nip-oracle[layer=default;method=conductance;k=0.2;steps=20;step_size=0.03;budget=0.3;"
                           "candidates=3;rule=margin;n_steps=16]"]["accuracy"] is None
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 6 and {"adv_accuracy", "defense_success_rate", "adaptive_accuracy",
                               "adaptive_aware_accuracy"} <= set(rows[0])
    assert res["summary"]["adaptive_aware_accuracy"]["none"] is None      # no defense-aware attack for these
    assert r.stdout.splitlines()[0].split()[-2:] == ["aware", "black-box"]  # the printed summary has the columns
    assert "fc1" in res["observation"]["fgsm[eps=0.2]"]
    # per-image correctness backs every accuracy; no `nip` in this grid, so no paired summary
    for row in res["rows"]:
        assert len(row["correct"]) == 12 and set(row["correct"]) <= {"0", "1"}
        assert row["correct"].count("1") / 12 == pytest.approx(row["defended_adv_accuracy"])
    assert "paired" not in res["summary"] and "against its closest" not in r.stdout


@pytest.mark.parametrize("model, image, attack", [
    ("lenet-mnist", None, "fgsm"),
    ("efficientnet-lite0", ROOT / "assets/gallery/imagenet/coffee.png", "pgd"),
])
def test_explain_writes_summary_and_figures(tmp_path, model, image, attack):
    if image is None:
        from nip_core.data import mnist
        from nip_core.images import tensor_to_png_bytes
        x, _ = mnist("test")
        image = tmp_path / "digit.png"
        image.write_bytes(tensor_to_png_bytes(x[0]))
    out = tmp_path / "ex"
    extra = ["--attack-params", "max_iter=3"] if attack == "pgd" else []
    extra += ["--defense-params", "steps=3"] if model == "efficientnet-lite0" else []
    r = run("explain", "--model", model, "--image", str(image), "--attack", attack, *extra, "--out", str(out))
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert set(s["predictions"]) == {"benign", "adversarial", "defended"}
    assert (out / "influence_heatmaps.html").stat().st_size > 1000
    assert (out / "influence.npz").exists() and (out / "adversarial.png").exists()
