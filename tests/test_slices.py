"""Per-image records of an evaluation, the split images that ship, and the Explore link that re-runs
one image of a row as its shard ran it (``nip_core.evaluation.slices``; issue 21)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from nip_core.evaluation import slices as S
from nip_core.errors import InputError


@pytest.fixture(scope="module")
def small():
    """A small grid on the MNIST report split: 40 images in shards of 16 (3 shards), a deterministic
    and a random-start attack, a deterministic and a random defense."""
    from nip_core.evaluation.evaluate import evaluate

    return evaluate("lenet-mnist", [("fgsm", {"eps": 0.2}), ("pgd", {"eps": 0.3, "max_iter": 5})],
                    [("none", {}), ("jpeg", {}), ("random-sign", {})], n=40, seed=7, split="report",
                    adaptive=False, observe=False, shard_size=16)


# The shipped MNIST report carries per-image records (research round 8, docs/nip-research.md).


@pytest.fixture(scope="module")
def report():
    from nip_core.evaluation.results import shipped_result

    shipped = shipped_result("paper-mnist-report.json")
    assert S.has_per_image(shipped), "the shipped MNIST report carries per-image records (research round 8)"
    return shipped


def test_classes_round_trip_as_digits_or_lists() -> None:
    assert S.encode_classes([7, 2, 1, 0], 10) == "7210"
    assert S.encode_classes([7, 2, 11], 1000) == [7, 2, 11]
    assert S.decode_classes("7210") == [7, 2, 1, 0] and S.decode_classes([7, 2, 11]) == [7, 2, 11]


def test_evaluate_stores_labels_and_predictions_per_image(small, lenet) -> None:
    from nip_core.data import heldout_split

    _, y = heldout_split(lenet, "report")
    block = small["per_image"]
    assert block["split"] == "report" and block["index"] == list(range(40)) and block["shard_size"] == 16
    assert S.labels(small) == y[:40].tolist()
    labels = S.labels(small)
    for row in small["rows"]:
        pred = S.decode_classes(row["pred"])
        # the defended prediction is right exactly where the row's bit says so
        assert [str(int(p == t)) for p, t in zip(pred, labels)] == list(row["correct"])
        adv = S.decode_classes(block["adv_pred"][row["attack"]])
        assert sum(a == t for a, t in zip(adv, labels)) == round(row["adv_accuracy"] * 40)
        if row["defense"] == "none":
            assert pred == adv                        # no defense: the adversarial's own prediction
    for d, b in small["benign"].items():
        assert [str(int(p == t)) for p, t in zip(S.decode_classes(b["pred"]), labels)] == list(b["correct"])
    assert json.loads(json.dumps(small)) == small     # plain JSON


def test_per_class_counts_sum_to_n_and_rebuild_each_accuracy(small) -> None:
    labels = S.labels(small)
    for inputs in S.facets(small):
        t = S.per_class_accuracy(small, inputs)
        assert sum(t["n"]) == small["n_images"] == 40
        assert t["n"] == [labels.count(c) for c in t["classes"]]
        assert t["defenses"] == small["defenses"]
        for d, k in zip(t["defenses"], t["correct"]):
            if inputs == S.BENIGN:
                want = small["benign"][d]["correct"].count("1")
            elif inputs == S.ALL_ATTACKS:
                want = sum(r["correct"].count("1") for r in small["rows"] if r["defense"] == d)
            else:
                want = next(r for r in small["rows"] if r["attack"] == inputs and r["defense"] == d)["correct"].count("1")
            assert sum(k) == want
    t = S.per_class_accuracy(small, S.ALL_ATTACKS)
    assert t["repeats"] == 2
    j = t["defenses"].index("none")
    mean = sum(r["defended_adv_accuracy"] for r in small["rows"] if r["defense"] == "none") / 2
    assert sum(a * n for a, n in zip(t["accuracy"][j], t["n"])) / 40 == pytest.approx(mean)
    from nip_core.figures import per_class_figure

    fig = per_class_figure(t, [str(c) for c in range(10)])
    assert len(fig.data[0].x) == len(t["classes"]) and list(fig.data[0].y) == ["none", "jpeg", "random-sign"]


def test_row_images_list_every_image_with_its_bit(small) -> None:
    row = next(r for r in small["rows"] if r["attack"].startswith("pgd") and r["defense"] == "jpeg[quality=50]")
    ims = S.row_images(small, row["attack"], row["defense"])
    assert [im["position"] for im in ims] == list(range(40))
    assert "".join("1" if im["correct"] else "0" for im in ims) == row["correct"]
    assert all(im["correct"] == (im["pred"] == im["label"]) for im in ims)
    with pytest.raises(InputError, match="no row"):
        S.row_images(small, row["attack"], "median")


def test_a_result_without_records_still_loads_and_says_slicing_needs_a_rerun(small) -> None:
    from nip_core.evaluation.results import read_result

    old = copy.deepcopy(small)
    del old["per_image"]
    for r in old["rows"] + list(old["benign"].values()):
        r.pop("pred")
    r = read_result(json.dumps(old).encode(), "old.json")
    assert r["n_images"] == 40 and not S.has_per_image(r)
    for call in (lambda: S.per_class_accuracy(r, S.BENIGN), lambda: S.row_images(r, "fgsm[eps=0.2]", "none"),
                 lambda: S.explore_link(r, "fgsm[eps=0.2]", "none", 0)):
        with pytest.raises(InputError, match="re-run"):
            call()
    bad = copy.deepcopy(small)
    bad["per_image"]["labels"] = bad["per_image"]["labels"][:-1]
    with pytest.raises(InputError, match="per-image records"):
        read_result(json.dumps(bad).encode(), "bad.json")


def test_the_link_names_the_shard_and_its_seed(small) -> None:
    from nip_core.evaluation.shards import shard_seed

    link = S.explore_link(small, "pgd[eps=0.3;eps_step=0.01;max_iter=5]", "random-sign[steps=20;step_size=0.03;budget=0.3]", 21)
    assert link["image"] == "report:21@16:32" and link["model"] == "lenet-mnist"
    assert link["attack"] == "pgd" and link["defense"] == "random-sign"
    assert link["seed"] == str(shard_seed(7, "attack", "pgd[eps=0.3;eps_step=0.01;max_iter=5]", 16))
    assert S.explore_link(small, "fgsm[eps=0.2]", "none", 39)["image"] == "report:39@32:40"   # the short last shard
    assert S.parse_image_key(link["image"]) == S.SplitImage(None, "report", 21, (16, 32))
    assert S.parse_image_key("lenet-fashion/report:3") == S.SplitImage("lenet-fashion", "report", 3, None)
    assert S.parse_image_key("seven") is None and S.parse_image_key("report:x") is None
    with pytest.raises(InputError, match="position"):
        S.explore_link(small, "fgsm[eps=0.2]", "none", 40)
    # a run on another model's images (evaluate --images-of) names whose split the image is
    other = copy.deepcopy(small)
    other["data"]["images_of"] = "lenet-mnist-other"
    assert S.images_owner(other) == "lenet-mnist-other" and S.images_owner(small) == "lenet-mnist"
    assert S.explore_link(other, "fgsm[eps=0.2]", "none", 3)["image"] == "lenet-mnist-other/report:3@0:16"


@pytest.mark.parametrize("model_name", ["lenet-mnist", "lenet-fashion"])
def test_shipped_split_images_equal_the_loaders_report_split(model_name) -> None:
    from nip_core.data import dataset_of, heldout_split
    from nip_core.models import load_model

    model = load_model(model_name)
    path = S.split_asset_path(model_name, "report")
    assert path.is_file() and path.stat().st_size < 600 * 1024
    with np.load(path) as f:
        assert f["images"].dtype == np.uint8 and str(f["weights_sha256"]) == model.weights_sha256
        held = torch.from_numpy(f["heldout_index"])
    x, y = heldout_split(model, "report")
    sx, sy = S.split_images(model, "report")
    assert S.split_source(model, "report") == str(path)
    assert torch.equal(sx, x) and torch.equal(sy, y)                 # bit for bit, as float32
    hx, hy = dataset_of(model).heldout(model)
    assert torch.equal(hx[held], x) and torch.equal(hy[held], y)     # and where they sit in the held-out set


def test_split_image_keys_and_their_errors(lenet) -> None:
    x, y = S.split_images(lenet, "report")
    image, label, batch = S.split_image(lenet, "report:5")
    assert torch.equal(image, x[5]) and label == int(y[5]) and batch is None
    image, label, (bx, by, pos) = S.split_image(lenet, "report:70@64:128")
    assert torch.equal(bx, x[64:128]) and torch.equal(by, y[64:128]) and pos == 6 and torch.equal(bx[pos], image)
    with pytest.raises(InputError, match="no image 350 in the report split of lenet-mnist"):
        S.split_image(lenet, "report:350")
    with pytest.raises(InputError, match="must hold the image"):
        S.split_image(lenet, "report:5@64:128")
    with pytest.raises(InputError, match="not a split image"):
        S.split_image(lenet, "seven")
    assert torch.equal(S.split_image(lenet, "lenet-mnist/report:5")[0], x[5])          # the owner named
    with pytest.raises(InputError, match="from fashion, not lenet-mnist's dataset"):
        S.split_image(lenet, "lenet-fashion/report:5")


def test_cli_writes_the_split_file(tmp_path, lenet) -> None:
    from nip_core.cli import main

    out = tmp_path / "s.npz"
    assert main(["split-images", "--model", "lenet-mnist", "--out", str(out)]) == 0
    with np.load(out) as f, np.load(S.split_asset_path("lenet-mnist", "report")) as shipped:
        assert np.array_equal(f["images"], shipped["images"]) and np.array_equal(f["labels"], shipped["labels"])
    assert main(["split-images", "--model", "lenet-mnist,lenet-fashion", "--out", str(out)]) == 2


# ----------------------------------------------------------------------------- the link re-runs the image

def _open(link: dict[str, str]):
    """What Explore computes for a link: the link's values through the app's request and its
    cached explanation (``app.compute``), the engine path the page uses."""
    from app.compute import build_run, explanation
    from app.widgets import parse_params_text
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES
    from nip_core.models import load_model

    m = load_model(link["model"])
    _, label, _ = S.split_image(m, link["image"])
    ap = ATTACKS[link["attack"]].params_for(m, parse_params_text(link["ap"]))
    dp = DEFENSES[link["defense"]].params_for(m, parse_params_text(link["dp"]))
    layer = link.get("layer", m.spec.default_layer)
    run = build_run(link["model"], link["image"], None, label, link["attack"], ap, link["defense"], dp,
                    layer, link.get("method", "conductance"), float(link.get("k", 0.2)), int(link["seed"]))
    return explanation(run)


def _check_row(result: dict, attack: str, defense: str, positions: list[int]) -> None:
    ims = S.row_images(result, attack, defense)
    for i in positions:
        expl = _open(S.explore_link(result, attack, defense, i))
        im = ims[i]
        assert expl.label == im["label"]
        assert expl.prediction("adversarial") == im["adv_pred"], (attack, defense, i)
        assert expl.prediction("defended") == im["pred"], (attack, defense, i)
        assert (expl.prediction("defended") == expl.label) == im["correct"]      # the image's bit


def _pick(result: dict, attack: str, defense: str, k: int = 2) -> list[int]:
    """Right and wrong images of a row, from different shards (the first and last shard included)."""
    ims = S.row_images(result, attack, defense)
    right = [im["position"] for im in ims if im["correct"]]
    wrong = [im["position"] for im in ims if not im["correct"]]
    return sorted(set(right[:1] + right[-1:] + wrong[:1] + wrong[-1:]))[:2 * k]


@pytest.mark.parametrize("defense", ["none", "jpeg[quality=50]"])
def test_link_reproduces_fgsm_rows_of_the_mnist_report(report, defense) -> None:
    _check_row(report, "fgsm[eps=0.2]", defense, _pick(report, "fgsm[eps=0.2]", defense))


@pytest.mark.parametrize("defense", ["none", "random-sign[steps=20;step_size=0.03;budget=0.3]"])
def test_link_reproduces_seeded_rows_of_the_mnist_report(report, defense) -> None:
    """PGD's random start and the random-sign control draw their noise per shard: the link re-runs
    the shard with its seed, so the image's outcome is the file's."""
    attack = "pgd[eps=0.3;eps_step=0.01;max_iter=40]"
    _check_row(report, attack, defense, _pick(report, attack, defense))


def test_link_reproduces_random_sign_on_a_small_grid(small) -> None:
    _check_row(small, "fgsm[eps=0.2]", "random-sign[steps=20;step_size=0.03;budget=0.3]", [0, 17, 39])


def test_the_shard_matters_an_image_run_alone_would_not_reproduce_a_random_defense(report) -> None:
    """The random-sign control draws its noise for the whole shard: run alone with the shard's seed,
    some images of shard 64–127 get another outcome than the file's; through the link (the shard
    re-run) they get the file's."""
    from nip_core.attacks import run_attack
    from nip_core.defenses import apply_defense
    from nip_core.models import load_model

    attack, defense = "fgsm[eps=0.2]", "random-sign[steps=20;step_size=0.03;budget=0.3]"
    m = load_model("lenet-mnist")
    x, y = S.split_images(m, "report")
    ims = S.row_images(report, attack, defense)
    dp = report["defense_params"][defense]
    alone_differs = []
    for i in range(64, 128):
        seed = int(S.explore_link(report, attack, defense, i)["seed"])
        adv = run_attack(m, "fgsm", x[i:i + 1], y[i:i + 1], {"eps": 0.2}, seed=seed).x_adv
        pred = int(m.predict(apply_defense(m, "random-sign", adv, dp, y=y[i:i + 1], seed=seed).x_def)[0])
        if (pred == ims[i]["label"]) != ims[i]["correct"]:
            alone_differs.append(i)
    assert alone_differs
    _check_row(report, attack, defense, alone_differs[:3])
