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
            "light = not any(m in sys.modules for m in ('torch', 'nip_core.api', 'nip_core.analyses.explain'))\n"
            "api = nip_core.api\n"
            "from nip_core import api as again\n"
            "print(light, api is again, 'api' in dir(nip_core), 'torch' in sys.modules)\n"
            "nip_core.nothing\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["True", "True", "True", "False"], r.stderr
    assert "has no attribute 'nothing'" in r.stderr


def test_explain_image_is_the_engines_explanation_with_its_figures(lenet):
    from nip_core import api, figures
    from nip_core.analyses.explain import explain

    image, label = api.gallery_image(lenet, 3)
    e = api.explain_image("lenet-mnist", image, label, attack="pgd[eps=0.2;max_iter=3]", defense="random-sign",
                          seed=5)
    direct = explain(lenet, image, label, attack="pgd", attack_params={"eps": 0.2, "max_iter": 3},
                     defense="random-sign", seed=5)
    assert json.dumps(e.summary() | {"seconds": 0}) == json.dumps(direct.summary() | {"seconds": 0})
    assert e.attack_params["eps"] == 0.2 and e.attack_params["max_iter"] == 3
    same = lambda a, b: a.to_json() == b.to_json()  # noqa: E731
    figs = api.explore_figures(e)
    assert same(figs["influence_heatmaps"], figures.influence_heatmaps(e))
    assert same(figs["difference_heatmaps"], figures.difference_heatmaps(e))
    assert same(figs["group_chart"], figures.group_chart(e))
    assert same(figs["predictions_defended"], figures.prediction_bars(e, "defended"))
    assert set(figs) == {"influence_heatmaps", "difference_heatmaps", "group_chart", "predictions_benign",
                                "predictions_adversarial", "predictions_defended"}
    from nip_core.data import gallery
    by_key = api.gallery_image(lenet, gallery("mnist")[3].key)
    assert torch.equal(by_key[0], image) and by_key[1] == label


def test_run_evaluation_reads_units_as_the_cli_does(lenet):
    from nip_core import api
    from nip_core.evaluation.evaluate import evaluate

    grid = dict(n=3, split="tune", adaptive=False, seed=2)
    a = api.run_evaluation(lenet, "fgsm[eps=0.2],pgd[max_iter=2]", ["none", ("jpeg", {"quality": "30"})], **grid)
    b = evaluate("lenet-mnist", [("fgsm", {"eps": "0.2"}), ("pgd", {"max_iter": "2"})],
                 [("none", {}), ("jpeg", {"quality": "30"})], observe=True, **grid)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds_total", "environment", "rows", "benign")}  # noqa: E731
    assert strip(a) == strip(b)
    assert [r["correct"] for r in a["rows"]] == [r["correct"] for r in b["rows"]]
    assert api.evaluation_figure(a).data


def test_run_surgery_is_the_engines_surgery_after_the_attack_and_defense(lenet, tmp_path):
    from nip_core import api, figures
    from nip_core.attacks import ATTACKS, run_attack
    from nip_core.defenses import DEFENSES, apply_defense
    from nip_core.images import tensor_to_png_bytes
    from nip_core.analyses.surgery import surgery

    image, label = api.gallery_image(lenet, 2)
    r = api.run_surgery("lenet-mnist", image, label, attack="pgd[eps=0.2]", attack_params={"max_iter": 3},
                        defense="median", layer="fc1", select="changed:10", value="defended", seed=4)
    # The same steps, by hand: the attack and the defense of the registry, then the engine's surgery.
    x, y = image.unsqueeze(0), torch.tensor([label])
    ar = run_attack(lenet, "pgd", x, y, ATTACKS.get_unit("pgd").params_for(lenet, {"eps": "0.2", "max_iter": 3}),
                    seed=4)
    dr = apply_defense(lenet, "median", ar.x_adv, DEFENSES.get_unit("median").params_for(lenet, {}), seed=4,
                       x_benign=x)
    direct = surgery(lenet, x, ar.x_adv, "fc1", "changed:10", "defended", label=label, x_def=dr.x_def, seed=4)
    direct.inputs = {"attack": "pgd", "attack_params": ar.params, "defense": "median", "defense_params": dr.params}
    without_time = lambda res: {k: v for k, v in res.to_json().items() if k != "seconds"}  # noqa: E731
    assert without_time(r) == without_time(direct)
    assert r.to_json()["settings"]["attack_params"]["max_iter"] == 3
    assert (r.layer, r.selection, r.value, r.label) == ("fc1", "changed:10", "defended", [label])
    assert len(r.selected()) == 10 and r.defended is not None
    assert {"attack", "defense", "sources", "select", "patch"} <= set(r.seconds)
    assert api.surgery_figure(r).to_json() == figures.surgery_bars(r).to_json()
    # An image file gives what its decoded tensor gives; without a label the benign prediction is the reference.
    path = tmp_path / "digit.png"
    path.write_bytes(tensor_to_png_bytes(image))
    from_file = api.run_surgery(lenet, path, select="3,17", value="zero")
    from_tensor = api.run_surgery(lenet, api.load_image(path, lenet), select=[3, 17], value="zero")
    assert without_time(from_file) == without_time(from_tensor)
    assert from_file.label is None and from_file.reference_class.tolist() == from_file.benign.predictions.tolist()
    assert from_file.selected() == [3, 17]


def test_run_surgery_refuses_a_bad_selection_before_the_attack_runs(monkeypatch):
    import nip_core.attacks
    from nip_core import api

    attacks = []
    monkeypatch.setattr(nip_core.attacks, "run_attack", lambda *a, **k: attacks.append(a))
    with pytest.raises(InputError, match="neuron index 120 is outside layer 'fc1'"):
        api.run_surgery("lenet-mnist", torch.rand(1, 28, 28), select="3,120", layer="fc1")
    with pytest.raises(InputError, match="asks for 121 neurons"):
        api.run_surgery("lenet-mnist", torch.rand(1, 28, 28), select="random:121", layer="fc1")
    assert attacks == []


@pytest.mark.parametrize("call, match", [
    (lambda api: api.load("no-such-model"), "unknown model"),
    (lambda api: api.load("lenet-mnist", weights=b"x"), "not both"),
    (lambda api: api.gallery_image("lenet-mnist", 10_000), "out of range"),
    (lambda api: api.gallery_image("lenet-mnist", "nope"), "no gallery image"),
    (lambda api: api.explain_image("lenet-mnist", torch.rand(1, 28, 28), attack="fgsm,pgd"), "one attack"),
    (lambda api: api.run_evaluation("lenet-mnist", "zap", "none", n=2), "unknown attack"),
    (lambda api: api.run_surgery("lenet-mnist", torch.rand(1, 28, 28), select="front:0.9"), r"in \(0, 0.5\]"),
    (lambda api: api.run_surgery("lenet-mnist", torch.rand(1, 28, 28), value="scale:11"), r"\[-10, 10\]"),
    (lambda api: api.run_surgery("lenet-mnist", torch.rand(1, 28, 28), value="defended"), "needs a defended input"),
    (lambda api: api.run_surgery("lenet-mnist", torch.rand(1, 28, 28), defense="nip-oracle"), "needs the true label"),
    (lambda api: api.run_surgery("lenet-mnist", torch.rand(1, 28, 28), 10), "label must be a class"),
    (lambda api: api.run_surgery("lenet-mnist", torch.rand(3, 28, 28)), "image must have shape"),
    (lambda api: api.run_surgery("lenet-mnist", torch.rand(1, 28, 28), layer="fc9"), "no layer 'fc9'"),
    (lambda api: api.run_surgery("lenet-mnist", torch.rand(1, 28, 28), attack="fgsm[eps=2]"), "eps"),
])
def test_bad_input_is_an_input_error(call, match):
    from nip_core import api

    with pytest.raises(InputError, match=match):
        call(api)


def test_every_name_in_all_exists_and_fragility_is_not_pretended():
    from nip_core import api

    assert all(callable(getattr(api, name)) for name in api.__all__)
    assert "run_surgery" in api.__all__
    assert "run_fragility" in api.__all__
    assert "lenet-mnist" in api.models() and "fgsm" in api.attacks() and "nip" in api.defenses()


def test_run_fragility_is_the_engines_fragility(lenet):
    from nip_core import api
    from nip_core.analyses.fragility import fragility

    image, label = api.gallery_image(lenet, 1)
    f = api.run_fragility("lenet-mnist", image, label, attack="fgsm", defenses="none,jpeg[quality=75]", seed=2)
    g = fragility(lenet, image, label, attack="fgsm", defenses=[("none", {}), ("jpeg", {"quality": "75"})], seed=2)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert strip(f.result) == strip(g.result) and set(f.result["defenses"]) == {"none", "jpeg[quality=75]"}


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
    assert "front neurons back at their benign values: recovery share" in printed
    assert namespace["r"].recovery() is not None               # the example's attack flips the digit
    assert "recovery share" in namespace["bars"].layout.title.text
    assert (tmp_path / "my_digits.npz").exists()
    assert printed.count(" flips at ") == 2 and namespace["f"].result["defenses"]["none"]["percentile"] is None


def test_docs_api_page_shows_every_api_function_in_a_block_that_runs():
    from nip_core import api

    code = "\n".join(python_blocks((ROOT / "docs" / "api.md").read_text()))
    missing = [n for n in api.__all__ if f"api.{n}(" not in code]
    assert not missing, f"docs/api.md has no worked example of: {', '.join(missing)}"
