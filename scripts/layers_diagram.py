"""The picture of the engine's layers in the README, generated from the code.

A module's layer is read from its path (:func:`engine_layer`); ``tests/test_import_graph.py`` holds the
rule that no module imports from a layer above its own, and checks that the README's picture is the one
this script draws today (so a new module cannot be left out of it).

    python scripts/layers_diagram.py            # print the Mermaid block
    python scripts/layers_diagram.py --write    # replace it in README.md
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- layers:begin (scripts/layers_diagram.py --write) -->", "<!-- layers:end -->"

# Bottom to top; each layer may import only from its own and the layers below.
FRONT_DOOR = ("nip_core", "nip_core.api", "nip_core.cli", "nip_core.__main__")
ENGINE_LAYERS = {"method": 0, "analyses": 1, "evaluation": 2, "figures": 3, "reports": 3, "front door": 4}
CAPTIONS = {
    "method": "method · nip_core/, models/, sources/: models, data, influence, attacks, defenses, NIP",
    "analyses": "analyses · nip_core/analyses/: one image or split, what attack and defense did to neurons",
    "evaluation": "evaluation · nip_core/evaluation/: grids on a split, shards, Ray, result files, bench",
    "figures": "figures · nip_core/figures/: Plotly figures, one module per view",
    "reports": "reports · nip_core/reports/: self-contained HTML of a result",
    "front door": "front door · nip_core.api (the CLI and the app call it)",
}


def engine_layer(module: str) -> str:
    """The layer of engine module ``module`` (dotted name), from its path alone."""
    if module in FRONT_DOOR:
        return "front door"
    sub = module.split(".")[1]
    return sub if sub in ENGINE_LAYERS else "method"


def engine_modules() -> list[str]:
    out = []
    for p in sorted((ROOT / "nip_core").rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            continue
        out.append(".".join(parts))
    return out


def short(module: str) -> str:
    """``nip_core.analyses.surgery`` → ``surgery``; ``nip_core.models.lenet`` → ``models.lenet``."""
    parts = module.split(".")[1:]
    return ".".join(parts[1:] if parts[0] in ENGINE_LAYERS else parts)


def render() -> str:
    """The Mermaid picture: one box per layer, its modules inside, arrows from each layer to the one below."""
    by_layer: dict[str, list[str]] = {name: [] for name in ENGINE_LAYERS}
    for m in engine_modules():
        by_layer[engine_layer(m)].append(short(m))
    lines = ["```mermaid", "flowchart TB", '  app["app/ · the Streamlit pages"]']
    ids = {"method": "method", "analyses": "analyses", "evaluation": "evaluation", "figures": "figures",
           "reports": "reports", "front door": "front"}
    for name in reversed(list(ENGINE_LAYERS)):
        mods = by_layer[name]
        rows = [" · ".join(mods[i:i + 7]) for i in range(0, len(mods), 7)]
        lines.append(f'  {ids[name]}["<b>{CAPTIONS[name]}</b><br/>' + "<br/>".join(rows) + '"]')
    lines += ["  app --> front", "  front --> figures & reports", "  figures --> evaluation", "  reports --> figures",
              "  evaluation --> analyses", "  analyses --> method", "```"]
    return "\n".join(lines)


def readme_block(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main(argv: list[str]) -> int:
    block = render()
    if "--write" not in argv:
        print(block)
        return 0
    text = README.read_text()
    if readme_block(text) is None:
        print(f"README.md has no {BEGIN} … {END} section", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    README.write_text(head + BEGIN + "\n" + block + "\n" + END + rest.split(END, 1)[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
