"""Shards of an evaluation: the unit of work, its seed, and the on-disk cache that makes runs resumable.

An evaluation (``nip_core.evaluation.evaluate``) is split into shards whose structure depends only on the
grid and ``shard_size``, never on how many workers run them: the benign pass, each attack, and
each adaptive column, each on one chunk of ``shard_size`` images. One function evaluates one
shard (``nip_core.evaluation.evaluate.evaluate_shard``); the serial path calls it in a loop and the Ray
backend (``nip_core.evaluation.distributed``) from actors, and the merge sorts by shard, so the result does
not depend on which worker finished first.

Finished shards are written to a :class:`ShardCache` keyed by everything that determines their
numbers (weights, units and parameters, seed, the shard's images, the calibration ``nip`` uses,
the engine code as it runs and the shipped files it reads, library versions), so a re-run
computes only the missing ones (``nip_core.fingerprint``).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nip_core.fingerprint import code_fingerprint, shipped_fingerprint
from nip_core.runtime import cache_dir

KINDS = ("benign", "attack", "adaptive")
# Bump when the content of a shard result changes meaning: old cache entries are then ignored.
SHARD_FORMAT = 2   # 2: shards also hold predictions (per-image records, nip_core.evaluation.slices)


@dataclass(frozen=True)
class Shard:
    """One unit of work: ``kind`` of unit number ``unit`` on held-out images ``[start, stop)``.

    * ``benign``   – every defense on the benign images (``unit`` is 0);
    * ``attack``   – attack number ``unit``, then every defense on its adversarials (and the
      front/tail observation);
    * ``adaptive`` – BPDA PGD through defense number ``unit`` (and its defense-aware attack).
    """

    kind: str
    unit: int
    start: int
    stop: int

    @property
    def order(self) -> tuple[int, int, int]:
        """Sort key of the merge: kind, unit, first image."""
        return (KINDS.index(self.kind), self.unit, self.start)

    def __str__(self) -> str:
        return f"{self.kind} #{self.unit} · images {self.start}–{self.stop - 1}"


def plan(n_attacks: int, adaptive_units: list[int], n: int, shard_size: int) -> list[Shard]:
    """All shards of a grid, in merge order.

    Args:
        n_attacks: number of attack units.
        adaptive_units: indices of the defenses that get an adaptive column.
        n: number of images; chunks are ``[0, s), [s, 2s), …`` with ``s = shard_size``.
    """
    chunks = [(lo, min(lo + shard_size, n)) for lo in range(0, n, shard_size)]
    units = [("benign", 0)] + [("attack", i) for i in range(n_attacks)] + [("adaptive", i) for i in adaptive_units]
    return [Shard(kind, unit, lo, hi) for kind, unit in units for lo, hi in chunks]


def shard_seed(seed: int, kind: str, label: str, start: int) -> int:
    """The seed of one shard: from its content (base seed, kind, unit label, first image), never
    from the worker that runs it. In [0, 2**31)."""
    h = hashlib.sha256(f"{seed}|{kind}|{label}|{start}".encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose arithmetic ends up in a shard."""
    import art
    import numpy
    import torch

    return {"torch": torch.__version__, "art": art.__version__, "numpy": numpy.__version__}


def data_key(split: str, data_sha256: str | None = None, data_seed: int = 0) -> dict[str, Any]:
    """What identifies the images a shard reads, besides their positions.

    Held-out splits are fixed by the shipped data and the model (whose weights hash is in the key
    already), so the split name is enough. The user's data (``--data``) is identified by its
    content hash and the seed of its split.
    """
    if data_sha256 is None:
        return {"source": "heldout", "split": split}
    return {"source": "user", "sha256": data_sha256, "split": split, "seed": data_seed}


def shard_key(fields: dict[str, Any], shard: Shard) -> str:
    """The cache key of ``shard``: sha256 over ``fields`` (what the evaluation declares, see
    ``nip_core.evaluation.evaluate``), the shard itself, the engine code as it runs (comments and docstrings
    stripped), the contents of the shipped weights, profiles and calibrations, and library versions."""
    payload = {"format": SHARD_FORMAT, "code": code_fingerprint(), "shipped": shipped_fingerprint(),
               "versions": library_versions(), "shard": asdict(shard), **fields}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class ShardCache:
    """Finished shards on disk: ``<root>/<key[:2]>/<key>.json``, written atomically (a temporary
    file in the same folder, then a rename), so an interrupted run never leaves half a shard.

    Args:
        root: the folder (default ``nip_core.runtime.cache_dir() / "shards"``). On a cluster the
            driver reads and writes it; workers never touch it.
        fresh: ignore existing entries (they are overwritten as shards finish).
    """

    def __init__(self, root: str | os.PathLike | None = None, fresh: bool = False) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "shards"
        self.fresh = fresh
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from nip_core.errors import InputError
            raise InputError(f"cannot use {str(self.root)!r} as the shard cache: {e.strerror or e}.") from None

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached result of shard ``key``, or None (also for an unreadable entry)."""
        if self.fresh:
            return None
        try:
            return json.loads(self._path(key).read_text())["result"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, result: dict[str, Any], about: dict[str, Any] | None = None) -> None:
        """Store ``result`` under ``key`` (``about``: a readable note of what it is)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"about": about or {}, "result": result}, f, default=str)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __str__(self) -> str:
        return str(self.root)
