"""Ray backend for ``nip_core.evaluation.evaluate``: shards run on actors that each load the model once.

Follows Ray's batch-inference pattern: an actor class loads the model in ``__init__`` and maps
work items (here :class:`nip_core.evaluation.shards.Shard`) in a method; resources are declared
(``num_gpus`` when the cluster has GPUs, else ``num_cpus`` = torch threads per worker); actor
restarts (``max_restarts``) and task retries (``max_task_retries``) re-run the shard of a worker
that died, and since a shard is idempotent (its seed comes from its content) the result is the
same. The driver keeps one shard in flight per actor and hands the next one to whichever actor
finishes first; ``nip_core.evaluation.evaluate`` merges by shard, not by arrival.

``"local"`` starts a Ray runtime in this process's machine (``ray.init(num_cpus=…)``, no
dashboard); any other address is passed to ``ray.init(address=…)`` after a quick reachability
check, and the repository is shipped to the workers as the job's ``working_dir``.

Ray is optional: without it installed, asking for it is an :class:`~nip_core.errors.InputError`.
"""
from __future__ import annotations

import logging
import os
import socket
from collections import deque
from typing import Any, Iterator

import torch

from nip_core.errors import InputError
from nip_core.runtime import REPO_ROOT

MAX_RESTARTS = 3          # per actor; each retry re-runs the shard that was in flight
READY_TIMEOUT_S = float(os.environ.get("NIP_RAY_READY_TIMEOUT", "300"))
LOCAL_OBJECT_STORE = 256 * 2**20   # shards move a few kB: keep the local store small
# Never shipped to a remote cluster's workers (ray's working_dir upload).
UPLOAD_EXCLUDES = [".git", ".venv", "**/__pycache__", "tests/.cache-test", "tests/artifacts", "out", "runs",
                   ".cache", "docs/results", "scripts/research"]


def import_ray():
    """The ``ray`` module, or a one-line :class:`InputError` when it is not installed."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs the 'ray' package: pip install ray==2.60.0 (pinned in requirements.txt).") from None
    return ray


def _env_vars() -> dict[str, str]:
    """For workers on this machine: the repository importable, and the same NIP_* settings."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path} | {k: v for k, v in os.environ.items() if k.startswith("NIP_")}


LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_local(num_cpus: int) -> None:
    """Start a Ray runtime on this machine with ``num_cpus`` CPU slots (tests reuse it).

    It listens on loopback only: Ray's single-machine mode (the one it uses on macOS and
    Windows) binds 127.0.0.1 instead of the machine's network address. The raylet and the workers
    inherit the setting from this process's environment.
    """
    os.environ[LOOPBACK_ONLY] = "0"
    ray = import_ray()
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False   # when ray was imported before the variable was set
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             object_store_memory=LOCAL_OBJECT_STORE,
             runtime_env={"env_vars": _env_vars() | {LOOPBACK_ONLY: "0"}})


def check_address(address: str) -> None:
    """Refuse, in one line and within seconds, an address nothing listens on (``ray.init`` itself
    would wait for minutes). ``auto`` is left to Ray."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"cannot read the Ray address {address!r}: give 'local', 'auto' or HOST:PORT "
                         "(the head node's GCS port, e.g. 10.0.0.5:6379).")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise InputError(f"cannot connect to the Ray cluster at {address}: {e.strerror or e}.") from None


class ShardWorker:
    """The actor: one evaluation context (model, units, images) per process, shards on demand.

    Args:
        job: the ``nip_core.evaluation.evaluate.EvalJob`` (plain values).
        threads: torch threads in this worker, so workers sharing a node do not oversubscribe it.
    """

    def __init__(self, job, threads: int) -> None:
        torch.set_num_threads(threads)
        self.ctx, self.error = None, None
        try:
            self.ctx = job.context()   # the job carries its own code: no import back into evaluate
        except (InputError, OSError) as e:   # e.g. data or weights not readable on this node
            self.error = f"on node {socket.gethostname()}: {e}"

    def ready(self) -> dict[str, Any]:
        """Where this worker runs and what it sees (``error`` if it could not load the job)."""
        from nip_core.runtime import get_device
        return {"error": self.error, "host": socket.gethostname(), "pid": os.getpid(),
                "device": str(get_device()), "threads": torch.get_num_threads(),
                "fingerprint": self.ctx.fingerprint() if self.ctx is not None else None}

    def run(self, shard) -> dict[str, Any]:
        """``{"result": …}`` of ``nip_core.evaluation.evaluate.evaluate_shard``, or ``{"error": …}`` for bad input."""
        try:
            return {"result": self.ctx.run(shard)}
        except InputError as e:
            return {"error": str(e)}


class RayPool:
    """Connect to Ray, start the actors, run shards; a context manager that cleans up after itself.

    Args:
        address: ``"local"`` (start Ray on this machine) or a cluster address for ``ray.init``.
        job: the evaluation (``nip_core.evaluation.evaluate.EvalJob``); fingerprint: the driver's
            ``EvalContext.fingerprint()``, which every worker must reproduce.
        workers: actors (default: one per GPU, else one per ``threads`` CPUs).
        threads: torch threads per actor (default: CPUs / workers).
    """

    def __init__(self, address: str, job, fingerprint: str, workers: int | None = None,
                 threads: int | None = None) -> None:
        for name, v in (("workers", workers), ("threads", threads)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise InputError(f"parameter '{name}' must be an integer ≥ 1; got {v!r}.")
        self.ray = ray = import_ray()
        self.address, self.job, self.fingerprint = address, job, fingerprint
        self.started = False
        if not ray.is_initialized():
            if address == "local":
                cpus = os.cpu_count() or 1
                w = workers or cpus
                init_local(max(cpus, w * (threads or max(1, cpus // w))))
            else:
                check_address(address)
                try:
                    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                             runtime_env={"working_dir": str(REPO_ROOT), "excludes": UPLOAD_EXCLUDES})
                except (ConnectionError, RuntimeError, ValueError, ImportError) as e:
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    raise InputError(f"cannot connect to the Ray cluster at {address}: {first}") from None
            self.started = True
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
        self.workers = workers or (int(gpus) if gpus >= 1 else max(1, int(cpus // (threads or 1))))
        self.threads = threads or max(1, int(cpus // self.workers))
        self.gpus_per_worker = min(1.0, gpus / self.workers) if gpus else 0.0
        self.device = "cuda" if self.gpus_per_worker else "cpu"
        self.actors: list = []
        self._pending: dict = {}
        self.hosts: list[str] = []

    def _start(self) -> None:
        """Start the actors and check each loaded the job and reads the driver's images."""
        ray = self.ray
        cls = ray.remote(ShardWorker).options(
            num_cpus=self.threads, num_gpus=self.gpus_per_worker, max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS)
        self.actors = [cls.remote(self.job, self.threads) for _ in range(self.workers)]
        ready, waiting = ray.wait([a.ready.remote() for a in self.actors], num_returns=len(self.actors),
                                  timeout=READY_TIMEOUT_S)
        if waiting:
            raise InputError(f"only {len(ready)} of {self.workers} Ray workers started within "
                             f"{READY_TIMEOUT_S:.0f} s: the cluster lacks room for {self.workers} × "
                             f"{self.threads} CPUs" + (" and a GPU share" if self.gpus_per_worker else "")
                             + "; use fewer --workers.")
        for info in ray.get(ready):
            if info["error"]:
                raise InputError(info["error"])
            if info["fingerprint"] != self.fingerprint:
                raise InputError(f"the Ray worker on {info['host']} reads different held-out images than "
                                 "this machine: install the same data (and package versions) on every node.")
            self.hosts.append(info["host"])

    def close(self) -> None:
        """Kill the actors; shut Ray down if this pool started it."""
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors, self._pending = [], {}
        if self.started:
            self.ray.shutdown()
            self.started = False

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> list:
        """Actors with a shard in flight now (tests kill one of them)."""
        return [a for a, _ in self._pending.values()]

    def run(self, shards: list) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Yield ``(shard, result)`` as shards finish, one in flight per actor.

        The costliest kinds go first (adaptive, then attacks), so no worker is left with a long
        shard at the end; the order does not change any result.
        """
        ray = self.ray
        if not shards:
            return
        if not self.actors:
            self._start()
        queue = deque(sorted(shards, key=lambda s: (-s.order[0], s.order[1:])))
        idle = list(self.actors)
        while queue or self._pending:
            while idle and queue:
                actor, shard = idle.pop(0), queue.popleft()
                self._pending[actor.run.remote(shard)] = (actor, shard)
            [ref], _ = ray.wait(list(self._pending), num_returns=1)
            actor, shard = self._pending.pop(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                raise RuntimeError(f"a Ray worker died {MAX_RESTARTS + 1} times, last on shard {shard}: "
                                   f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
            idle.append(actor)
            if "error" in out:
                raise InputError(out["error"])
            yield shard, out["result"]

    def info(self) -> dict[str, Any]:
        """The ``distributed`` block of the result (no deterministic field depends on it)."""
        return {"backend": "ray", "address": self.address, "ray": self.ray.__version__, "workers": self.workers,
                "threads_per_worker": self.threads, "gpus_per_worker": self.gpus_per_worker,
                "hosts": sorted(set(self.hosts))}
