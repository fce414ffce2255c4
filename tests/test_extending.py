"""docs/extending.md: its recipes' code blocks run, in order, in one namespace, so the page cannot go
stale; the toy units they register are removed afterwards."""
from __future__ import annotations

import re

import pytest

from nip_core.runtime import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "extending.md"
TOYS = {"attacks": ["toy-sign-noise"], "defenses": ["toy-blur"]}


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


@pytest.fixture
def clean_registries():
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES
    from nip_core.models.base import MODELS, unregister_model

    yield
    for name in TOYS["attacks"]:
        ATTACKS.pop(name, None)
    for name in TOYS["defenses"]:
        DEFENSES.pop(name, None)
    for name in [m for m in MODELS if m.startswith("toy-")]:
        unregister_model(name)
    from app.views import panel
    panel._ADDED.clear()


def test_every_recipe_is_six_steps_or_fewer():
    text = PAGE.read_text()
    recipes = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(recipes) >= 4
    for recipe in recipes:
        steps = re.findall(r"^(\d+)\. ", recipe, flags=re.M)
        assert 1 <= len(steps) <= 6, recipe.splitlines()[0]


def test_extending_page_runs_and_its_toys_work(clean_registries, capsys):
    namespace: dict = {"__name__": "docs_extending"}
    for i, block in enumerate(python_blocks(PAGE.read_text())):
        exec(compile(block, f"docs/extending.md block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "toy attack:" in printed and "toy model: conv has 4 neurons" in printed
    # the toy attack kept its budget, and the toy defense ran in a grid beside `none`
    assert 0.19 <= namespace["toy"].norms("adversarial")["linf"] <= 0.2 + 1e-6
    grid = namespace["grid"]
    assert [d.split("[")[0] for d in grid["defenses"]] == ["none", "toy-blur"]
    assert "front neurons" in printed


def test_the_toy_panel_is_drawn_under_a_run_and_opens_from_its_link(clean_registries):
    """The recipe's panel in the real app: Explore draws its switch under the run, and a link with
    ``toy=1`` opens it with its computed sentence."""
    from tests.app_support import _app, _ok

    namespace: dict = {"__name__": "docs_extending"}
    for block in python_blocks(PAGE.read_text()):
        exec(compile(block, "docs/extending.md", "exec"), namespace)
    at = _app({"model": "lenet-mnist", "attack": "fgsm", "defense": "nip", "seed": "0", "toy": "1"})
    _ok(at)
    assert any(t.label.startswith("Toy: the front neurons") and t.value for t in at.toggle)
    assert any("of the front neurons" in m.value for m in at.markdown)
