"""Fragility (issue 20, §4): the grid and the search on hand-made cases, the search against a brute-force
1/255 scan, seeded reproducibility, the distribution image by image and its percentiles, the report files,
and one-line exit-2 errors."""
import json

import pytest
import torch

import nip_core.analyses.fragility as fr
from nip_core.attacks import run_attack
from nip_core.cli import main
from nip_core.data import heldout_split
from nip_core.analyses.elasticity import scaled_params
from nip_core.figures import fragility_figure
from nip_core.analyses.fragility import (find_flip, flip_grid, fragility, fragility_distribution, grid_for, percentile)
from nip_core.images import tensor_to_png_bytes

QUICK = {"max_iter": 3, "eps_step": 0.1}     # PGD-3, steps of ε/3: a real attack on LeNet, in milliseconds


@pytest.fixture(scope="module")
def tune(lenet):
    x, y = heldout_split(lenet, "tune")
    return x[:3], y[:3]


def test_grids_by_hand(lenet):
    g = flip_grid(0.3, 8)                       # 1/255 … 76/255, then 0.3 (between 76/255 and 77/255)
    assert len(g.eps) == 77 and g.eps[0] == 1 / 255 and g.eps[75] == 76 / 255 and g.eps[76] == 0.3
    assert g.coarse == (7, 15, 23, 31, 39, 47, 55, 63, 71, 76)       # 8/255, 16/255, …, 72/255, 0.3
    p = flip_grid(16 / 255, 4)
    assert len(p.eps) == 16 and p.eps[-1] == 16 / 255 and p.coarse == (3, 7, 11, 15)
    assert grid_for(lenet) == g


def test_search_on_hand_made_failure_sets():
    g = flip_grid(0.3, 8)

    def run(failing):
        seen = []

        def fails(i):
            seen.append(i)
            return failing(i)
        return find_flip(fails, g), seen

    # a threshold at index 37: coarse 7…31 hold, 39 fails, then 32…37 are walked
    assert run(lambda i: i >= 37) == (37, [7, 15, 23, 31, 39, 32, 33, 34, 35, 36, 37])
    # the first coarse point fails: walk from the first index (ε = 1/255)
    assert run(lambda i: i >= 2) == (2, [7, 0, 1, 2])
    # a failure at the coarse point only
    assert run(lambda i: i == 15 or i >= 60)[0] == 15
    assert run(lambda i: False) == (None, list(g.coarse))
    # not monotone: inside the refined interval the smallest failure is found (33, not 35) …
    assert run(lambda i: i in (33, 35) or i >= 39)[0] == 33
    # … but a failure below the last coarse point that held is not searched (the documented assumption)
    assert run(lambda i: i == 3 or i >= 40)[0] == 40


def test_percentile_by_hand():
    dist = [0.1, 0.2, 0.2, None]
    assert percentile(0.05, dist) == 0 and percentile(0.1, dist) == 12.5
    assert percentile(0.2, dist) == 50 and percentile(0.3, dist) == 75 and percentile(None, dist) == 87.5


def test_refinement_equals_a_brute_force_scan(lenet, tune):
    """FGSM on the model with no defense: every 1/255 budget tried; where the failures are monotone in ε the
    search returns the first of them, and otherwise a failing ε no smaller than the first (an upper bound)."""
    x, y = tune
    g = grid_for(lenet)
    base = {"eps": 0.3}
    monotone = 0
    for j in range(len(y)):
        eps_params = [scaled_params(lenet, "fgsm", base, e) for e in g.eps]
        adv = torch.cat([run_attack(lenet, "fgsm", x[j:j + 1], y[j:j + 1], p, seed=0).x_adv for p in eps_params])
        fails = (lenet.predict(adv) != y[j]).tolist()
        found = fragility(lenet, x[j], int(y[j]), attack="fgsm", defenses=[("none", {})]).result["defenses"]["none"]
        first = fails.index(True) if any(fails) else None
        if first is not None and all(fails[first:]):
            monotone += 1
            assert found["flip_eps"] == g.eps[first] and found["prediction"] != int(y[j])
        elif first is None:
            assert found["flip_eps"] is None
        else:
            assert fails[g.eps.index(found["flip_eps"])] and found["flip_eps"] >= g.eps[first]
    assert monotone >= 1


def test_same_seed_same_eps_and_every_try_recorded(lenet, tune):
    x, y = tune
    args = dict(attack="pgd", attack_params=QUICK, defenses=[("none", {}), ("random-sign", {}), ("jpeg", {})])
    a = fragility(lenet, x[1], **args, seed=4).result
    b = fragility(lenet, x[1], **args, seed=4).result
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert a["label"] is None and a["reference"] == "the model's benign prediction"
    for dl, c in a["defenses"].items():
        assert c["tried"][0] == [0.0, a["reference_class"]]           # the benign image first
        if c["status"] == "flipped":
            assert c["flip_eps"] == min(e for e, p in c["tried"] if p != a["reference_class"])
            assert c["flip_eps_255"] == pytest.approx(c["flip_eps"] * 255)
    assert a["step_ratio"] == pytest.approx(0.1 / 0.3)


def test_an_image_the_model_gets_wrong_is_not_searched(lenet, tune):
    x, y = tune
    wrong = (int(y[0]) + 1) % 10
    r = fragility(lenet, x[0], wrong, defenses=[("none", {})]).result
    assert r["status"] == "misclassified" and r["defenses"] == {} and "already gets this image wrong" in r["message"]
    assert "attacks_run" not in r


def test_distribution_is_the_search_image_by_image_and_gives_percentiles(lenet, tune, tmp_path):
    x, y = tune
    args = dict(attack="pgd", attack_params=QUICK, defenses=[("none", {}), ("jpeg", {})], seed=1)
    dist = fragility_distribution(lenet, split="tune", n=3, **args)
    assert dist["n_images"] == 3 and set(dist["defenses"]) == {"none", "jpeg"}
    path = tmp_path / "fragility-lenet-mnist.json"
    path.write_text(json.dumps(dist))
    for j in range(3):
        r = fragility(lenet, x[j], int(y[j]), **args, distribution=path).result
        for dl in ("none", "jpeg"):
            assert r["defenses"][dl]["flip_eps"] == dist["defenses"][dl]["flip_eps"][j]
            assert r["defenses"][dl]["percentile"] == percentile(r["defenses"][dl]["flip_eps"],
                                                                 dist["defenses"][dl]["flip_eps"])
    assert r["distribution"]["file"] == "fragility-lenet-mnist.json"        # outside the repository: its name
    # other attack settings, or a defense the distribution lacks: no percentile, and why
    r = fragility(lenet, x[0], int(y[0]), attack="pgd", attack_params={"max_iter": 4}, defenses=[("none", {})],
                  seed=1, distribution=path).result
    assert r["defenses"]["none"]["percentile"] is None and "not comparable" in r["distribution"]["note"]
    r = fragility(lenet, x[0], int(y[0]), **(args | {"defenses": [("median", {})]}), distribution=path).result
    assert r["defenses"]["median"]["percentile_note"] == "the distribution has no 'median'"
    r = fragility(lenet, x[0], int(y[0]), **args, distribution=tmp_path / "absent.json").result
    assert r["defenses"]["none"]["percentile"] is None and "no distribution exists" in r["distribution"]["note"]


def test_the_shipped_distribution_is_recorded_relative_to_the_repository(lenet, tune):
    """fragility.json names the shipped file as the repository does, never by a machine's absolute path."""
    x, y = tune
    r = fragility(lenet, x[0], int(y[0]), defenses=[("none", {})]).result
    assert r["distribution"]["file"] == "docs/results/fragility-lenet-mnist.json"
    assert r["defenses"]["none"]["percentile"] is not None


def test_a_users_model_has_no_distribution(tmp_path, tune):
    from pathlib import Path

    from nip_core.byom import load_custom_model

    root = Path(__file__).resolve().parent.parent
    model = load_custom_model("lenet", str(root / "assets/models/lenet-mnist.safetensors"),
                              [str(i) for i in range(10)])
    x, _ = tune
    r = fragility(model, x[0], attack="fgsm", defenses=[("none", {})]).result
    assert "no distribution exists for a user's model" in r["distribution"]["note"]


def test_figure_from_a_hand_made_result():
    result = {"status": "searched", "attack": "pgd", "reference_name": "7", "benign_prediction_name": "7",
              "grid": {"max_eps": 0.3}, "defenses": {
                  "none": {"flip_eps": 0.1, "status": "flipped", "prediction_name": "3", "percentile": 40.0},
                  "jpeg": {"flip_eps": None, "status": "held to the maximum", "prediction_name": "7"},
                  "nip": {"flip_eps": 0.0, "status": "wrong without attack", "prediction_name": "1"}}}
    fig = fragility_figure(result, torch.zeros(1, 28, 28))
    bars = [t for t in fig.data if t.type == "bar"][0]
    assert list(bars.x) == ["none", "jpeg", "nip"] and list(bars.y) == [0.1, 0.3, 0.0]
    assert list(bars.text) == ["0.100 (25.5/255) · pct 40", "held", "wrong at 0"]


def test_cli_writes_json_and_a_self_contained_report(lenet, tune, tmp_path, capsys, monkeypatch):
    x, y = tune
    image = tmp_path / "digit.png"
    image.write_bytes(tensor_to_png_bytes(x[2]))
    monkeypatch.setattr(fr, "RESULTS_DIR", tmp_path)       # where the shipped distribution would be
    dist = tmp_path / "fragility-lenet-mnist.json"
    assert main(["fragility", "--distribution", "--model", "lenet-mnist", "--split", "tune", "--n", "3",
                 "--attack-params", "max_iter=3,eps_step=0.1", "--seed", "2", "--out", str(dist)]) == 0
    out = tmp_path / "rep"
    args = ["fragility", "--model", "lenet-mnist", "--image", str(image), "--label", str(int(y[2])),
            "--attack-params", "max_iter=3,eps_step=0.1", "--defenses", "none,jpeg", "--seed", "2", "--out", str(out)]
    assert main(args) == 0
    r = json.loads((out / "fragility.json").read_text())
    assert r["status"] == "searched" and set(r["defenses"]) == {"none", "jpeg"}
    assert all(c["percentile"] is not None for c in r["defenses"].values())
    page = (out / "fragility.html").read_text()
    # plotly.js inline, no CDN
    assert "<script src=\"https://cdn.plot.ly" not in page and "Plotly.newPlot" in page and len(page) > 1_000_000
    assert page.count("data:image/png;base64,") >= 1 + sum(c["status"] == "flipped" for c in r["defenses"].values())
    capsys.readouterr()
    assert main(args) == 0                                   # the same seed: the same file
    assert json.loads((out / "fragility.json").read_text())["defenses"] == r["defenses"]


def cli(argv, capsys):
    """``python -m nip_core`` in this process: its exit status and its stderr lines (no progress bars)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:          # argparse's own refusals
        code = e.code
    return code, [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip() and "%|" not in ln]


@pytest.mark.parametrize("extra, needle", [
    (["--attack", "cw-l2"], "has none"),
    (["--attack", "zap"], "unknown attack"),
    (["--defenses", "zap"], "unknown defense"),
    (["--defenses", "nip-oracle"], "needs the true label"),
    (["--label", "12"], "label must be a class"),
    (["--attack-params", "eps_step=0.0002"], "out of range"),     # at ε = 1/255 the step is below 1e-4
    (["--split", "tune"], "--split only applies with --distribution"),
    (["--distribution"], "drop --image"),
    (["--image", "/nonexistent.png"], "image"),
    ([], "needs --image"),
])
def test_bad_values_are_one_line_exit_2(tmp_path, capsys, tune, extra, needle):
    x, _ = tune
    image = tmp_path / "digit.png"
    image.write_bytes(tensor_to_png_bytes(x[0]))
    if extra and extra[0] != "--image":
        extra = ["--image", str(image), *extra]
    code, err = cli(["fragility", "--model", "lenet-mnist", *extra, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("extra, needle", [
    (["--n", "0"], "'n' must be an integer"),
    (["--label", "3"], "drop --label"),
    (["--split", "nope"], "invalid choice"),
    (["--seed", "x"], "invalid int value"),
])
def test_bad_distribution_values_are_one_line_exit_2(tmp_path, capsys, extra, needle):
    code, err = cli(["fragility", "--distribution", "--model", "lenet-mnist", *extra,
                     "--out", str(tmp_path / "d.json")], capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "d.json").exists()
