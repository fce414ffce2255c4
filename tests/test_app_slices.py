"""The Benchmark page's slices (facet by true class, a row's images with Explore links) and Explore
opening a split image, under AppTest (issue 21)."""
from __future__ import annotations

import json
from urllib.parse import parse_qsl

import pytest
from streamlit.testing.v1 import AppTest

import app.warmup
from tests.app_support import _app, _ok
from nip_core.evaluation import slices as S
from nip_core.figures import bare_names

app.warmup.ENABLED = False   # no background warm-up thread inside the test process

K = "benchmark.slices.open."




@pytest.fixture(scope="module")
def report() -> dict:
    from nip_core.evaluation.results import shipped_result

    shipped = shipped_result("paper-mnist-report.json")
    assert S.has_per_image(shipped), "the shipped MNIST report carries per-image records (research round 8)"
    return shipped


def _opened(report: dict) -> AppTest:
    """The Benchmark page with the report opened as a results JSON and the slices panel switched on."""
    at = _app()
    at.switch_page("views/benchmark.py").run()
    at.radio(key="benchmark.source").set_value("open").run()
    at.file_uploader(key="benchmark.result_file").set_value(
        ("mnist.json", json.dumps(report).encode(), "application/json")).run()
    _ok(at)
    at.toggle(key=K + "open").set_value(True).run()
    _ok(at)
    return at


def _links(at: AppTest) -> list[dict[str, str]]:
    """The thumbnails' "open in Explore" links (markdown links to ``./?<query>``: a new tab)."""
    import re

    found = [re.search(r"\]\(\./\?([^)]*)\)", m.value) for m in at.markdown if m.value.startswith("[open in Explore")]
    return [dict(parse_qsl(f.group(1))) for f in found if f]


def test_benchmark_facets_a_table_by_true_class(report) -> None:
    at = _opened(report)
    sb = at.selectbox(key=K + "inputs")
    assert sb.options == bare_names(S.facets(report), 40)               # the attacks, then the other inputs
    for inputs in (S.attacks(report)[3], S.BENIGN, S.ADAPTIVE):          # pgd, benign, the BPDA column
        sb.set_value(inputs).run()
        _ok(at)
        table = S.per_class_accuracy(report, inputs)
        [shown] = [d.value for d in at.dataframe
                   if list(d.value.columns) == ["defense"] + [str(c) for c in table["classes"]]]
        assert list(shown["defense"]) == table["defenses"]
        fig = json.loads(at.get("plotly_chart")[-1].proto.spec)          # the panel's heatmap, last on the page
        assert [c.split(" (n=")[0] for c in fig["data"][0]["x"]] == [str(c) for c in table["classes"]]
        counts = [int(c.split("(n=")[1].rstrip(")")) for c in fig["data"][0]["x"]]
        assert sum(counts) == report["n_images"] == 350               # per-class counts sum to n
        # each defense's per-class accuracies give back its overall accuracy on these inputs
        for d, accs in zip(shown["defense"], shown.drop(columns="defense").itertuples(index=False)):
            overall = sum(a * n for a, n in zip(accs, counts)) / 350
            if inputs == S.BENIGN:
                want = report["benign"][d]["accuracy"]
            elif inputs == S.ADAPTIVE:
                want = report["adaptive"][d]["accuracy"]
            else:
                want = next(r for r in report["rows"] if r["attack"] == inputs and r["defense"] == d)[
                    "defended_adv_accuracy"]
            assert overall == pytest.approx(want)
    caption = " ".join(c.value for c in at.caption)
    assert "(sum 350 of 350)" in caption


def test_benchmark_lists_a_rows_images_forty_to_a_page_with_explore_links(report) -> None:
    at = _opened(report)
    attack, defense = "fgsm[eps=0.2]", "jpeg[quality=50]"
    at.selectbox(key=K + "attack").set_value(attack).run()
    at.selectbox(key=K + "defense").set_value(defense).run()
    _ok(at)
    row = S.row_images(report, attack, defense)
    assert len(at.get("image")) == 40 and len(_links(at)) == 40               # page 1 of all 350
    assert _links(at)[7] == S.explore_link(report, attack, defense, 7)
    at.radio(key=K + "filter").set_value("wrong").run()
    wrong = [im for im in row if not im["correct"]]
    assert 0 < len(wrong) < 350
    assert len(at.get("image")) == min(40, len(wrong))
    assert [ln["image"].split("@")[0] for ln in _links(at)] == [f"report:{im['index']}" for im in wrong[:40]]
    assert all(f"#{im['index']} · true {im['label']}" in md.value
               for im, md in zip(wrong, [m for m in at.markdown if m.value.startswith("#")]))
    at.radio(key=K + "filter").set_value("right").run()
    right = [im for im in row if im["correct"]]
    pages = (len(right) + 39) // 40
    at.number_input(key=K + "page").set_value(pages).run()
    _ok(at)
    assert len(at.get("image")) == len(right) - 40 * (pages - 1)
    assert _links(at)[-1]["image"].startswith(f"report:{right[-1]['index']}@")


def test_a_result_without_records_says_slicing_needs_a_rerun() -> None:
    from nip_core.evaluation.results import shipped_result

    old = shipped_result("paper-imagenet.json")
    assert not S.has_per_image(old)
    at = _opened(old)
    assert any("re-run" in i.value for i in at.info) and not _links(at)


def test_an_explore_link_reopens_the_image_with_the_files_outcome(report) -> None:
    """A link from the thumbnails (seeded PGD, random-sign control): Explore opens the split image,
    re-runs its shard with the shard's seed, and shows the prediction the file records."""
    attack, defense = "pgd[eps=0.3;eps_step=0.01;max_iter=40]", "random-sign[steps=20;step_size=0.03;budget=0.3]"
    im = S.row_images(report, attack, defense)[101]
    link = S.explore_link(report, attack, defense, 101)
    at = _app(link)
    _ok(at)
    assert not at.warning
    assert at.selectbox(key="explore.lenet-mnist.image").value == link["image"] == "report:101@64:128"
    assert at.number_input(key="explore.lenet-mnist.seed").value == int(link["seed"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["adversarial prediction"] == str(im["adv_pred"])
    assert metrics["defended prediction"] == str(im["pred"])
    assert at.query_params["image"] == link["image"]                     # the page's own link keeps it


def test_an_unknown_split_image_warns_once_and_uses_the_defaults() -> None:
    at = _app({"model": "lenet-mnist", "image": "report:9999", "attack": "fgsm", "defense": "none"})
    assert not at.exception
    [w] = [w.value for w in at.warning]
    assert "no image 9999 in the report split of lenet-mnist" in w
    from nip_core.data import gallery

    assert at.selectbox(key="explore.lenet-mnist.image").value == gallery("mnist")[0].key     # the default
    assert at.selectbox(key="explore.lenet-mnist.attack").value == "fgsm"                    # the rest is used
