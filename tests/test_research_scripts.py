"""The research record (``research/``) stays apart from the product and keeps importing (issue 11).

The scripts are one-off experiments and are not run here (they take minutes to hours). What is
checked: every script byte-compiles, every name it imports from ``nip_core`` or ``research``
exists (an engine rename breaks this test, not a reader months later), and nothing in
``nip_core/`` or ``app/`` imports ``research``.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from nip_core.runtime import REPO_ROOT

RESEARCH = REPO_ROOT / "research"
SCRIPTS = sorted(RESEARCH.rglob("*.py"))


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every absolute import in the file; names is empty for ``import m``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.append((node.module or "", [a.name for a in node.names]))
    return out


def top_level_names(path: Path) -> set[str]:
    """Names a module defines at top level (assignments, defs, classes, imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        targets = []
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        for t in targets:
            names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def test_there_are_research_scripts():
    assert len(SCRIPTS) > 20 and (RESEARCH / "README.md").exists()


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(RESEARCH)))
def test_script_compiles_and_its_imports_resolve(path: Path):
    compile(path.read_text(), str(path), "exec")
    for module, names in imports(path):
        if module == "research" or module.startswith("research."):
            # Importing a research module runs its experiment: read it instead.
            target = REPO_ROOT / Path(*module.split("."))
            target = target / "__init__.py" if target.is_dir() else target.with_suffix(".py")
            assert target.exists(), f"{path.name}: no module {module}"
            missing = set(names) - top_level_names(target)
        else:
            mod = importlib.import_module(module)
            missing = {n for n in names if n != "*" and not hasattr(mod, n)}
        assert not missing, f"{path.name}: {module} has no {sorted(missing)}"


def test_product_never_imports_research():
    for pkg in ("nip_core", "app"):
        for path in (REPO_ROOT / pkg).rglob("*.py"):
            for module, _ in imports(path):
                assert module.split(".")[0] != "research", f"{path.relative_to(REPO_ROOT)} imports {module}"
