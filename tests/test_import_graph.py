"""The module graph of ``nip_core`` and ``app``: no cycles (issue 11), and its layers (issue 22).

Every ``import`` statement counts, also those inside functions: a lazy import that closes a
cycle still ties the two modules together, and a newcomer has to read both to understand either.

Layers: the engine (``nip_core``) never imports Streamlit or the app; the pages (``app/views/``)
may import app modules and the engine, but no other app module imports a page. Every name a
module imports from the project exists, also where the import runs late (``app.warmup``'s step
imports the pages' cached functions only when the warm-up runs).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nip_core.runtime import REPO_ROOT

PACKAGES = ("nip_core", "app")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO_ROOT / pkg).rglob("*.py"))}


def import_targets(source: str, name: str, is_package: bool = False) -> list[tuple[str, str | None, int]]:
    """Every import in ``source`` (module ``name``), anywhere in its body: ``(module, imported name or
    None, line)``. ``from a.b import c`` gives ``("a.b", "c")``; relative imports are resolved."""
    package = name if is_package else name.rpartition(".")[0]
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out += [(base, a.name, node.lineno) for a in node.names]
    return out


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules that the file at ``path`` (module ``name``) imports anywhere in its body."""
    out: set[str] = set()
    for base, alias, _ in import_targets(path.read_text(), name, path.name == "__init__.py"):
        # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
        t = f"{base}.{alias}" if f"{base}.{alias}" in known else base
        while t and t not in known:
            t = t.rpartition(".")[0]
        if t and t != name:
            out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {name: imported_modules(path, name, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_detector_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_sees_lazy_and_package_imports():
    graph = import_graph()
    assert "nip_core.models.base" in graph["nip_core.models.lenet"]
    # an import inside a function body counts
    assert "nip_core.data" in graph["nip_core.influence"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


# ----------------------------------------------------------------------------- layers (issue 22)

def _within(module: str, prefixes: tuple[str, ...]) -> str | None:
    return next((p for p in prefixes if module == p or module.startswith(p + ".")), None)


def forbidden_imports(sources: dict[str, str], forbidden: tuple[str, ...]) -> list[str]:
    """``module:line imports target`` for each import of a module under one of ``forbidden``
    (``from app import views`` imports ``app.views``)."""
    found = []
    for name, source in sorted(sources.items()):
        for base, alias, line in import_targets(source, name, _is_package(name)):
            for target in (base, f"{base}.{alias}" if alias and alias != "*" else None):
                if target and _within(target, forbidden):
                    found.append(f"{name}:{line} imports {target}")
                    break
    return found


def _sources(select) -> dict[str, str]:
    return {name: path.read_text() for name, path in project_modules().items() if select(name)}


def _is_package(name: str) -> bool:
    path = project_modules().get(name)
    return path is not None and path.name == "__init__.py"


ENGINE_FORBIDDEN = ("streamlit", "app")


def test_layer_check_sees_every_way_of_importing():
    engine = {"nip_core.x": "import streamlit as st\n",
              "nip_core.y": "def f():\n    from app.loaders import get_model\n",
              "nip_core.z": "from nip_core import errors\nimport json\n"}
    assert forbidden_imports(engine, ENGINE_FORBIDDEN) == [
        "nip_core.x:1 imports streamlit", "nip_core.y:2 imports app.loaders"]
    app = {"app.a": "from app import views\n", "app.b": "from app.views.explore import key\n",
           "app.c": "import app.views.tour\n", "app.d": "from .views import explore\n",
           "app.e": "from app import tour, widgets\nfrom app.runqueue import RUNS\n"}
    assert [f.split(" ")[0] for f in forbidden_imports(app, ("app.views",))] == [
        "app.a:1", "app.b:1", "app.c:1", "app.d:1"]


def test_engine_source_never_imports_streamlit_or_the_app():
    """Also the imports inside functions, which importing a module does not run."""
    offenders = forbidden_imports(_sources(lambda n: _within(n, ("nip_core",)) is not None), ENGINE_FORBIDDEN)
    assert not offenders, "\n".join(offenders)


def test_app_modules_never_import_the_pages():
    """Pages (app/views/) may import app modules and the engine; nothing else in app/ imports a page."""
    outside = _sources(lambda n: _within(n, ("app",)) is not None and _within(n, ("app.views",)) is None)
    assert "app.widgets" in outside and "app.warmup" in outside and not any("views" in n for n in outside)
    offenders = forbidden_imports(outside, ("app.views",))
    assert not offenders, "\n".join(offenders)


LOADED = r"""
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    before = set(sys.modules)
    importlib.import_module(name)
    new = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("streamlit", "app"))
    if new:
        found[name] = new
print(json.dumps(found))
"""


def loaded_in_fresh_interpreter(modules: list[str]) -> dict[str, list[str]]:
    """Import ``modules`` in order in a new interpreter: module → the ``streamlit``/``app`` modules
    that importing it loaded (only modules that loaded some)."""
    out = subprocess.run([sys.executable, "-c", LOADED, *modules], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_engine_loads_neither_streamlit_nor_the_app():
    engine = [n for n in project_modules() if _within(n, ("nip_core",)) and not n.endswith("__main__")]
    assert {"nip_core", "nip_core.cli", "nip_core.analyses.explain", "nip_core.sources.userdata"} <= set(engine)
    assert loaded_in_fresh_interpreter(engine) == {}
    # the probe sees it when a module does load them
    found = loaded_in_fresh_interpreter(["nip_core.errors", "app.widgets"])
    assert list(found) == ["app.widgets"] and "streamlit" in found["app.widgets"]


# ----------------------------------------------------------------------------- every imported name exists

def missing_names(sources: dict[str, str], known: set[str]) -> list[str]:
    """``module:line: from X import n`` for each project import whose module or name does not exist."""
    missing = []
    for name, source in sorted(sources.items()):
        for base, alias, line in import_targets(source, name, _is_package(name)):
            if _within(base, PACKAGES) is None:
                continue
            try:
                mod = importlib.import_module(base)
            except ImportError:
                missing.append(f"{name}:{line}: import {base}")
                continue
            if alias and alias != "*" and not hasattr(mod, alias) and f"{base}.{alias}" not in known:
                missing.append(f"{name}:{line}: from {base} import {alias}")
    return missing


def test_missing_name_check_can_fail():
    src = {"app.x": "def f():\n    from app.loaders import get_model, no_such_loader\n    import app.no_such_module\n"}
    assert missing_names(src, set(project_modules())) == [
        "app.x:2: from app.loaders import no_such_loader", "app.x:3: import app.no_such_module"]


def test_warmup_finds_every_name_it_imports():
    """The warm-up imports the pages' cached functions only when it runs, in a background thread
    whose failures are logged, not raised: a renamed function would silently stop the warm-up."""
    source = (REPO_ROOT / "app" / "warmup.py").read_text()
    used = {(base, alias) for base, alias, _ in import_targets(source, "app.warmup")}
    assert {("app.runqueue", "ACTIVITY"), ("app.runqueue", "RUNS"), ("app.loaders", "get_model"),
            ("app.compute", "explanation"), ("app.tour", "step_image")} <= used
    assert missing_names({"app.warmup": source}, set(project_modules())) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_a_module_imports_from_the_project_exists(package):
    """Also imports inside functions (run only when called), which an import of the module misses."""
    sources = _sources(lambda n: _within(n, (package,)) is not None and not n.endswith("__main__"))
    assert missing_names(sources, set(project_modules())) == []


# ----------------------------------------------------------------------------- the engine's layers (issue 27)

# A module's layer is read from its path (scripts/layers_diagram.py holds the rule and draws the README's
# picture from it); no module imports from a layer above its own. The method (the top level of nip_core
# and its models/ and sources/) at the bottom, the analyses built on it, the evaluation machinery on those,
# figures and reports on all of them, and the front door (api, cli) on top.
_spec = importlib.util.spec_from_file_location("layers_diagram", REPO_ROOT / "scripts" / "layers_diagram.py")
layers_diagram = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layers_diagram)
ENGINE_LAYERS, engine_layer = layers_diagram.ENGINE_LAYERS, layers_diagram.engine_layer
TOP_LEVEL_LIMIT = 20


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a (layer) imports b (layer)`` for each engine import that runs up the layers."""
    rank = lambda m: ENGINE_LAYERS[engine_layer(m)]  # noqa: E731
    return [f"{a} ({engine_layer(a)}) imports {b} ({engine_layer(b)})"
            for a in sorted(graph) if a.startswith("nip_core")
            for b in sorted(graph[a]) if b.startswith("nip_core") and rank(b) > rank(a)]


def test_layer_of_a_module_is_read_from_its_path():
    assert engine_layer("nip_core.attacks") == engine_layer("nip_core.models.lenet") == "method"
    assert engine_layer("nip_core.analyses.surgery") == "analyses"
    assert engine_layer("nip_core.evaluation.evaluate") == "evaluation"
    assert engine_layer("nip_core.figures.explore") == "figures"
    assert engine_layer("nip_core.api") == "front door"
    # the check sees an import that runs up, and lets one that runs down pass
    assert upward_imports({"nip_core.analyses.x": {"nip_core.evaluation.y", "nip_core.attacks"}}) == [
        "nip_core.analyses.x (analyses) imports nip_core.evaluation.y (evaluation)"]


def test_no_engine_module_imports_from_a_layer_above_its_own():
    offenders = upward_imports(import_graph())
    assert not offenders, "\n".join(offenders)


def test_top_level_of_the_engine_stays_small():
    top = sorted(p.stem for p in (REPO_ROOT / "nip_core").glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= TOP_LEVEL_LIMIT, top


def test_readme_shows_the_layers_as_the_code_has_them():
    """The README's picture is the one scripts/layers_diagram.py draws from today's modules."""
    text = (REPO_ROOT / "README.md").read_text()
    block = layers_diagram.readme_block(text)
    assert block is not None, "README.md lost its layers picture"
    assert block == layers_diagram.render(), "run: python scripts/layers_diagram.py --write"
    for module in layers_diagram.engine_modules():
        assert layers_diagram.short(module) in block, module
