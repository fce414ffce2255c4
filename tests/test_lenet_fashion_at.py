"""lenet-fashion-at: the adversarially trained built-in, its card's robust figures (`robustness`), and
`evaluate --images-of` (one model on another's split images, counted unconditionally).
Needs `make fashion-data` (make test runs it)."""
import json

import pytest
import torch

from nip_core.cli import main
from nip_core.data import heldout_split
from nip_core.evaluation.evaluate import EvalContext, EvalJob, evaluate
from nip_core.models import MODELS, load_model
from nip_core.models.base import file_sha256
from nip_core.models.lenet import FASHION_AT_CARD, FASHION_AT_WEIGHTS, FASHION_CARD
from nip_core.evaluation.robustness import card_robustness, robust_accuracy
from nip_core.sources.fashion import fashion_mnist


@pytest.fixture(scope="module")
def at():
    return load_model("lenet-fashion-at")


def test_registered_like_lenet_fashion_and_listed(capsys):
    a, s = MODELS["lenet-fashion-at"], MODELS["lenet-fashion"]
    assert (a.gallery, a.preprocess, a.layers, a.default_layer, a.input_size) == \
        (s.gallery, s.preprocess, s.layers, s.default_layer, s.input_size)
    assert "adversarially trained" in a.summary and a.card == FASHION_AT_CARD
    assert main(["list", "models", "--json"]) == 0
    assert "lenet-fashion-at" in {m["name"] for m in json.loads(capsys.readouterr().out)}


def test_card_matches_weights_training_and_the_full_test_set(at):
    card = json.loads(FASHION_AT_CARD.read_text())
    assert card["sha256"] == file_sha256(FASHION_AT_WEIGHTS) == at.weights_sha256
    assert card["adversarial_training"].items() >= {"norm": "Linf", "eps": 0.1, "steps": 10, "step_size": 0.025,
                                                    "random_start": True}.items()
    assert card["command"].startswith("python -m nip_core train lenet-fashion-at") and card["train_seconds"] > 0
    x, y = fashion_mnist("test")
    acc = float((at.predict(x) == y).float().mean())
    assert abs(acc - card["test_accuracy"]) < 1e-3
    # the card's robust figures: the clean one is this same accuracy, and each names the command it came from
    rob = card_robustness("lenet-fashion-at")
    assert rob["clean"]["n"] == 10_000 and abs(rob["clean"]["accuracy"] - acc) < 1e-3
    assert rob["pgd"]["n"] == 10_000 and rob["autoattack"]["n"] == 1_000
    assert rob["command"].startswith("python -m nip_core robustness --model lenet-fashion-at")
    assert rob["autoattack"]["correct"] <= rob["autoattack"]["clean_accuracy"] * 1000 + 1e-9
    assert rob["pgd"]["accuracy"] <= rob["clean"]["accuracy"]
    std = card_robustness("lenet-fashion")     # the comparison, measured the same way
    assert std["weights_sha256"] == json.loads(FASHION_CARD.read_text())["sha256"]
    assert std["pgd"]["params"] == rob["pgd"]["params"] and std["autoattack"]["params"] == rob["autoattack"]["params"]


def test_robust_accuracy_counts_images_wrong_when_clean_as_wrong_and_is_seeded():
    m = load_model("lenet-fashion")
    x, y = fashion_mnist("test")
    clean = m.predict(x[:40]) == y[:40]
    assert 0 < int(clean.sum()) < 40          # some of these images are misclassified when clean
    tiny = dict(pgd={"eps": 1e-4, "eps_step": 1e-4, "max_iter": 2}, autoattack_n=0)
    r = robust_accuracy(m, pgd_n=40, seed=3, **tiny)
    # a budget too small to move any prediction: robust = clean on these 40, not 40 out of 40
    assert r["pgd"]["correct"] == int(clean.sum()) and r["pgd"]["clean_accuracy"] == round(float(clean.float().mean()), 4)
    assert "autoattack" not in r
    strong = robust_accuracy(m, pgd_n=40, seed=3, autoattack_n=8,
                             autoattack={"restarts": 1, "max_iter": 5, "square_queries": 10})
    again = robust_accuracy(m, pgd_n=40, seed=3, autoattack_n=8,
                            autoattack={"restarts": 1, "max_iter": 5, "square_queries": 10})
    for k in ("clean", "pgd", "autoattack"):
        assert {f: strong[k][f] for f in ("n", "correct", "accuracy")} == {f: again[k][f] for f in ("n", "correct", "accuracy")}
    assert strong["pgd"]["correct"] < r["pgd"]["correct"]   # PGD-20 at ε 0.1 breaks the standard model
    assert strong["autoattack"]["n"] == 8 and strong["autoattack"]["params"]["restarts"] == 1


@pytest.mark.parametrize("args, needle", [
    (["robustness", "--model", "nope", "--out", "r.json"], "unknown model"),
    (["robustness", "--model", "efficientnet-lite0", "--out", "r.json"], "has none here"),
    (["robustness", "--model", "lenet-fashion", "--pgd-n", "0", "--out", "r.json"], "pgd_n must be"),
    (["robustness", "--model", "lenet-fashion", "--autoattack-n", "10001", "--out", "r.json"], "autoattack_n must be"),
    (["robustness", "--model", "lenet-fashion"], "--write-card"),
    (["robustness", "--model", "resnet8-cifar10", "--write-card"], "has none here"),
])
def test_robustness_bad_input_is_one_line_exit_2(args, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err


def test_robustness_cli_writes_json_with_its_command(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["robustness", "--model", "lenet-fashion", "--pgd-n", "30", "--autoattack-n", "0", "--seed", "1",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["command"] == ("python -m nip_core robustness --model lenet-fashion --pgd-n 30 --autoattack-n 0 "
                            "--seed 1 --write-card")
    assert r["pgd"]["n"] == 30 and r["pgd"]["params"] == {"eps": 0.1, "eps_step": 0.01, "max_iter": 20}
    assert r["clean"]["n"] == 10_000 and "pgd" in capsys.readouterr().out


# ----------------------------------------------------------------------------- evaluate --images-of

def test_images_of_runs_on_the_other_models_report_images_counting_unconditionally(at):
    std = load_model("lenet-fashion")
    ctx = EvalContext(EvalJob("lenet-fashion-at", [("fgsm", {})], [("none", {})], n=64, split="report",
                              images_of="lenet-fashion"))
    x_std, y_std = heldout_split(std, "report")
    assert torch.equal(ctx.x, x_std[:64]) and torch.equal(ctx.y, y_std[:64])
    x_own, _ = heldout_split(at, "report")
    assert not torch.equal(ctx.x, x_own[:64])          # not the AT model's own report images
    r = evaluate("lenet-fashion-at", [("fgsm", {"eps": 0.02})], [("none", {}), ("jpeg", {})], n=64, split="report",
                 adaptive=False, images_of="lenet-fashion")
    clean = (at.predict(x_std[:64]) == y_std[:64]).tolist()
    assert r["data"]["images_of"] == "lenet-fashion" and r["data"]["clean_correct"] == sum(clean) < 64
    for row in r["rows"]:
        assert row["clean_accuracy"] == sum(clean) / 64
        bits = row["correct"]
        assert all(b == "0" for b, ok in zip(bits, clean) if not ok)      # wrong when clean → wrong
        assert row["adv_accuracy"] <= row["clean_accuracy"]
    assert r["rows"][0]["n_successful_adv"] == sum(clean) - round(r["rows"][0]["adv_accuracy"] * 64)


def test_images_of_bad_input_is_one_line_exit_2(tmp_path, capsys):
    base = ["evaluate", "--model", "lenet-fashion-at", "--attacks", "fgsm", "--defenses", "none", "--n", "2",
            "--no-adaptive", "--no-cache", "--out", str(tmp_path / "x.json")]
    for extra, needle in ((["--images-of", "efficientnet-lite0"], "same dataset"),
                          (["--images-of", "nope"], "unknown model"),
                          (["--images-of", "lenet-fashion", "--data", str(tmp_path / "d.npz")], "two sources")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and needle in err, err
    assert not (tmp_path / "x.json").exists()


def test_suite_runs_on_another_model_of_its_dataset_only(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["evaluate", "--suite", "paper-fashion", "--model", "lenet-mnist", "--n", "1",
                 "--out", str(out)]) == 2
    assert "fashion models" in capsys.readouterr().err
    assert main(["evaluate", "--suite", "paper-fashion", "--model", "lenet-fashion-at", "--images-of", "lenet-fashion",
                 "--split", "report", "--n", "3", "--attacks", "fgsm[eps=0.1]", "--defenses", "none", "--no-adaptive",
                 "--no-cache", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["suite"] == "paper-fashion" and r["model"] == "lenet-fashion-at" and r["data"]["images_of"] == "lenet-fashion"
