"""The Python API (issue 22 §3): a lazy facade giving the CLI's and the app's results, and
docs/api.md, whose code blocks run here so the page cannot go stale."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nip_core.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def test_import_nip_core_stays_light_and_api_loads_on_first_use():
    code = ("import sys, nip_core\n"
            "light = not any(m in sys.modules for m in ('torch', 'nip_core.api', 'nip_core.explain'))\n"
            "api = nip_core.api\n"
            "from nip_core import api as again\n"
            "print(light, api is again, 'api' in dir(nip_core), 'torch' in sys.modules)\n"
            "nip_core.nothing\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["True", "True", "True", "False"], r.stderr
    assert "has no attribute 'nothing'" in r.stderr


def test_explain_image_is_the_engines_explanation_with_its_figures(lenet):
    from nip_core import api, figures
    from nip_core.explain import explain

    image, label = api.gallery_image(lenet, 3)
    e = api.explain_image("lenet-mnist", image, label, attack="pgd[eps=0.2;max_iter=3]", defense="random-sign",
                          seed=5)
    direct = explain(lenet, image, label, attack="pgd", attack_params={"eps": 0.2, "max_iter": 3},
                     defense="random-sign", seed=5)
    assert json.dumps(e.summary() | {"seconds": 0}) == json.dumps(direct.summary() | {"seconds": 0})
    assert e.attack_params["eps"] == 0.2 and e.attack_params["max_iter"] == 3
    same = lambda a, b: a.to_json() == b.to_json()  # noqa: E731
    assert same(e.influence_heatmaps(), figures.influence_heatmaps(e))
    assert same(e.difference_heatmaps("activations"), figures.difference_heatmaps(e, "activations"))
    assert same(e.group_chart(), figures.group_chart(e))
    assert same(e.prediction_bars("defended"), figures.prediction_bars(e, "defended"))
    assert same(e.perturbation_figure(), figures.perturbation_figure(e))
    assert set(e.figures()) == {"influence_heatmaps", "difference_heatmaps", "group_chart", "predictions_benign",
                                "predictions_adversarial", "predictions_defended"}
    from nip_core.data import gallery
    by_key = api.gallery_image(lenet, gallery("mnist")[3].key)
    assert torch.equal(by_key[0], image) and by_key[1] == label


def test_run_evaluation_reads_units_as_the_cli_does(lenet):
    from nip_core import api
    from nip_core.evaluate import evaluate

    grid = dict(n=3, split="tune", adaptive=False, seed=2)
    a = api.run_evaluation(lenet, "fgsm[eps=0.2],pgd[max_iter=2]", ["none", ("jpeg", {"quality": "30"})], **grid)
    b = evaluate("lenet-mnist", [("fgsm", {"eps": "0.2"}), ("pgd", {"max_iter": "2"})],
                 [("none", {}), ("jpeg", {"quality": "30"})], observe=True, **grid)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds_total", "environment", "rows", "benign")}  # noqa: E731
    assert strip(a) == strip(b)
    assert [r["correct"] for r in a["rows"]] == [r["correct"] for r in b["rows"]]
    assert api.evaluation_figure(a).data


@pytest.mark.parametrize("call, match", [
    (lambda api: api.load("no-such-model"), "unknown model"),
    (lambda api: api.load("lenet-mnist", weights=b"x"), "not both"),
    (lambda api: api.gallery_image("lenet-mnist", 10_000), "out of range"),
    (lambda api: api.gallery_image("lenet-mnist", "nope"), "no gallery image"),
    (lambda api: api.explain_image("lenet-mnist", torch.rand(1, 28, 28), attack="fgsm,pgd"), "one attack"),
    (lambda api: api.run_evaluation("lenet-mnist", "zap", "none", n=2), "unknown attack"),
])
def test_bad_input_is_an_input_error(call, match):
    from nip_core import api

    with pytest.raises(InputError, match=match):
        call(api)


def test_every_name_in_all_exists_and_surgery_is_not_pretended():
    from nip_core import api

    assert all(callable(getattr(api, name)) for name in api.__all__)
    assert not hasattr(api, "run_surgery") and not hasattr(api, "run_fragility")
    assert "lenet-mnist" in api.models() and "fgsm" in api.attacks() and "nip" in api.defenses()


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_docs_api_page_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks((ROOT / "docs" / "api.md").read_text())
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)                    # the example writes my_digits.npz where it runs
    namespace: dict = {"__name__": "docs_api"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "custom-lenet-" in printed and "bank images" in printed
    assert (tmp_path / "my_digits.npz").exists()
