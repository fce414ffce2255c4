"""One front door (issue 27): every CLI subcommand goes through ``nip_core.api``, the CLI imports no
engine module but ``api`` (and ``byom`` to register a user's model from its flags), and ``api`` offers
every capability."""
from __future__ import annotations

import ast

from nip_core import api, cli
from nip_core.runtime import REPO_ROOT

CLI = REPO_ROOT / "nip_core" / "cli.py"
CAPABILITIES = {  # capability → the api function(s) that offer it
    "explain": ["explore", "explain_image"], "surgery": ["run_surgery"], "pathway": ["run_pathway"],
    "strength": ["run_strength"], "compare": ["compare"], "fragility": ["run_fragility", "run_fragility_distribution"],
    "elasticity": ["elasticity"], "mediation": ["mediation"], "slices": ["per_class_accuracy", "row_images",
                                                                          "explore_link"],
    "evaluate": ["run_evaluation"], "calibrate": ["calibrate_model"], "train": ["train_model"],
    "robustness": ["run_robustness"],
}
ALLOWED_ENGINE_IMPORTS = {"nip_core.api", "nip_core.byom", "nip_core.errors", "nip_core.params", "nip_core.runtime"}


def _handlers() -> dict[str, str]:
    """Subcommand → the name of the function that runs it (``set_defaults(fn=...)``)."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: p.get_default("fn").__name__ for name, p in sub.choices.items()}


def _api_calls(tree: ast.Module, fn: str) -> set[str]:
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == fn)
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "api"}


def test_every_cli_subcommand_calls_the_api():
    tree = ast.parse(CLI.read_text())
    handlers = _handlers()
    assert {"evaluate", "explain", "surgery", "fragility", "train", "robustness", "calibrate"} <= set(handlers)
    missing = [f"{cmd} ({fn})" for cmd, fn in handlers.items() if not _api_calls(tree, fn)]
    assert not missing, "subcommands that do not go through nip_core.api: " + ", ".join(missing)
    for fn in {f for f in handlers.values()}:
        for name in _api_calls(tree, fn):
            assert hasattr(api, name), f"{fn} calls api.{name}, which does not exist"


def test_the_check_sees_a_subcommand_that_bypasses_the_api():
    tree = ast.parse("def cmd_x(args):\n    from nip_core.train import train_lenet\n    return train_lenet()\n"
                     "def cmd_y(args):\n    return api.train_model('lenet-mnist')\n")
    assert _api_calls(tree, "cmd_x") == set() and _api_calls(tree, "cmd_y") == {"train_model"}


def test_cli_imports_no_engine_module_but_the_front_door():
    found = set()
    for node in ast.walk(ast.parse(CLI.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nip_core"):
            found |= {node.module if node.module != "nip_core" else f"nip_core.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("nip_core")}
    assert found <= ALLOWED_ENGINE_IMPORTS, sorted(found - ALLOWED_ENGINE_IMPORTS)


def test_api_offers_every_capability_and_lists_it():
    for capability, names in CAPABILITIES.items():
        for name in names:
            assert callable(getattr(api, name, None)), f"{capability}: api.{name} is missing"
            assert name in api.__all__, f"api.{name} is not in api.__all__"
            assert getattr(api, name).__doc__, f"api.{name} has no docstring"


APP_COMPUTE = REPO_ROOT / "app" / "compute.py"
# What app/compute.py may import from the engine: the front door, the run type, and what it draws with.
APP_ALLOWED = {"nip_core.api", "nip_core.run", "nip_core.errors", "nip_core.images", "nip_core.figures",
               "nip_core.figures.strength"}


def test_app_computations_go_through_the_front_door():
    found = set()
    for node in ast.walk(ast.parse(APP_COMPUTE.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nip_core"):
            found |= {node.module if node.module != "nip_core" else f"nip_core.{a.name}" for a in node.names}
    assert "nip_core.api" in found
    assert found <= APP_ALLOWED, sorted(found - APP_ALLOWED)
