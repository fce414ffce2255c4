"""Content fingerprints that key the engine's on-disk caches.

A cached number must be recomputed when something that determines it changes, and only then:

* :func:`code_fingerprint` hashes the engine's numeric modules **as they run**: each file is
  parsed and unparsed with :mod:`ast` after its docstrings are dropped, so comments, docstrings
  and formatting never invalidate a cache, while any change to a statement, a constant or a
  default does;
* :func:`shipped_fingerprint` hashes the contents of the shipped files numbers are read from
  (weights, influence profiles, calibrations in ``assets/``).

Both hash paths relative to their root, so a copy of the repository elsewhere has the same
fingerprints.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import threading
from functools import lru_cache
from pathlib import Path

from nip_core.runtime import ASSETS, REPO_ROOT

ENGINE_ROOT = REPO_ROOT / "nip_core"
SHIPPED_ROOT = ASSETS
# Engine files that never change a cached number (paths under nip_core/; a folder ends in "/"): editing
# them keeps every cache valid (fragility and pathway compute only what they return; nothing they
# compute is cached or read by evaluate; figures and reports only draw).
NOT_NUMERIC = frozenset({"cli.py", "__main__.py", "api.py", "fingerprint.py", "evaluation/bench.py",
                         "evaluation/distributed.py", "evaluation/shards.py", "analyses/fragility.py",
                         "analyses/pathway.py", "figures/", "reports/"})


def is_numeric(relative: str) -> bool:
    """Whether the engine file at ``relative`` (a posix path under ``nip_core/``) can change a cached number."""
    return relative not in NOT_NUMERIC and not any(relative.startswith(d) for d in NOT_NUMERIC if d.endswith("/"))
# The shipped files numbers are read from: weights, influence profiles, calibration banks.
SHIPPED_PATTERNS = ("models/*.safetensors", "profiles/*.safetensors", "calibration/*.npz")


def _is_docstring(node: ast.AST) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str))


def stripped_source(text: str) -> str:
    """Python source as it runs: no comments (the parser drops them), no docstrings or other bare
    string statements (no-ops), one canonical layout (``ast.unparse``)."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and any(_is_docstring(s) for s in stmts):
                kept = [s for s in stmts if not _is_docstring(s)]
                setattr(node, field, kept or [ast.Pass()])
    return ast.unparse(tree)


def source_digest(path: Path, root: Path) -> bytes:
    """sha256 of one file's relative path and its :func:`stripped_source` (raw bytes if it does not parse)."""
    raw = path.read_bytes()
    try:
        body = stripped_source(raw.decode("utf-8")).encode()
    except (SyntaxError, UnicodeDecodeError, ValueError):
        body = raw
    return hashlib.sha256(str(path.relative_to(root)).encode() + b"\0" + body).digest()


def _memo_path() -> Path:
    from nip_core.runtime import cache_dir
    return cache_dir() / "fingerprints.json"


@lru_cache(maxsize=8)
def _code_fingerprint(root: Path) -> str:
    # Parsing and unparsing the engine takes about 0.2 s; the stripped digest of each file is
    # remembered on disk under the sha256 of its raw bytes, so a later process only hashes bytes.
    try:
        memo = json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        memo = {}
    used: dict[str, str] = {}
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if not is_numeric(path.relative_to(root).as_posix()):
            continue
        raw = hashlib.sha256(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes()).hexdigest()
        used[raw] = memo.get(raw) or source_digest(path, root).hex()
        h.update(bytes.fromhex(used[raw]))
    if not used.items() <= memo.items():
        try:
            tmp = _memo_path().with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-fingerprints.json")
            tmp.write_text(json.dumps(used))
            os.replace(tmp, _memo_path())
        except OSError:   # a read-only cache only costs the parsing next time
            pass
    return h.hexdigest()


def code_fingerprint(root: str | Path | None = None) -> str:
    """sha256 over the engine's numeric modules (``nip_core/**/*.py`` but :data:`NOT_NUMERIC`),
    comments and docstrings stripped. Computed once per process and root."""
    return _code_fingerprint(Path(root or ENGINE_ROOT).resolve())


@lru_cache(maxsize=8)
def _shipped_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    files = sorted({p for pattern in SHIPPED_PATTERNS for p in root.glob(pattern) if p.is_file()})
    for path in files:
        h.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def shipped_fingerprint(root: str | Path | None = None) -> str:
    """sha256 over the contents of the shipped weights, profiles and calibrations
    (:data:`SHIPPED_PATTERNS` under ``assets/``). Computed once per process and root."""
    return _shipped_fingerprint(Path(root or SHIPPED_ROOT).resolve())
