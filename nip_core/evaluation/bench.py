"""Performance against the compute floor: ``python -m nip_core bench [--quick] --out bench.json``.

NIP and neuron influence are gradient computations, so each has a floor measured on the same
machine in the same run (see ``docs/performance.md``):

* **fwd+bwd** – one forward pass of the full model plus the backward pass to the *input*
  (``autograd.grad(logit_y.sum(), x)``; weights are frozen, so no weight gradients), for a
  batch of the same shape as one pass of the measured operation.
* **NIP floor** – ``T · K`` fwd+bwd per image: T steps over K candidate classes (K = 1 for
  ``nip-global`` and ``nip-oracle``). NIP fuses the K candidates of each image into one batch
  and runs it in passes of at most ``nip_chunk`` images, so the floor for B images is
  ``T · (B·K / p) · fwdbwd(p)`` with ``p`` the images per NIP pass.
* **conductance floor** – ``n_steps + 1`` interpolants per image, each one fwd+bwd:
  ``(B·(n+1) / p) · fwdbwd(p)`` with ``p`` the interpolants per conductance pass.

Ratios are ``operation time / floor time``, measured interleaved (floor, operation, floor,
operation, …) so that load from other processes hits both alike; the reported ratio is the
median of the per-repeat ratios, and the first call (warm-up) is excluded unless it alone takes
longer than ``SLOW`` seconds (then one-off costs are negligible and it counts as a repeat). Each
mode runs at its default number of steps T, at both batch sizes. NIP stops its
forward pass at the hooked layer and conductance only back-propagates from the logits to the
layer, so both can be *below* the full-model floor; the tighter floors the bench also reports
(``nip_layer_floor_ratio``: fwd+bwd truncated at the layer; ``conductance_fwd_ratio``: the
forward passes alone) say how much is left.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

FULL = {"batch_sizes": (1, 64), "repeats": 5}
SHIPPED_BENCH = "docs/bench.json"
TOPK_NAMES = ("nip-topk", "nip")  # the top-K class-conditional NIP (issue 5's "nip [topk]"), by registry name
QUICK_IMAGENET_SKIP = ("pixel", "bim", "pgd-l2", "mifgsm", "apgd", "ead", "jsma", "deepfool", "simba", "universal")
QUICK_CHANGES = ("LeNet at batch 64 only; EfficientNet at batch 2 only", "3 repeats (LeNet), 2 (EfficientNet)",
                 "NIP steps T = 5 (LeNet), 2 (EfficientNet); conductance n_steps = 16 (default)",
                 "attacks with 1–5 iterations on 8 digits / 1 photo (on ImageNet only fgsm, pgd, cw-l2, square and hsj); defenses on 4 digits / 1 photo",
                 "evaluation: LeNet, 16 digits, fgsm + pgd[max_iter=3], none/jpeg/nip, adaptive column on")
# Attack settings per dataset when the defaults would take minutes per image. Full runs keep the
# registry defaults for MNIST; ImageNet defaults of the slow attacks are cut (recorded in the JSON).
IMAGENET_FULL_ATTACKS = {"jsma": {"gamma": 0.0005}, "hsj": {"max_iter": 2, "max_eval": 50, "init_eval": 10},
                         "pixel": {"max_iter": 2}, "simba": {"max_iter": 100}, "universal": {"max_iter": 1},
                         "square": {"max_iter": 50}, "deepfool": {"max_iter": 10}, "ead": {"max_iter": 5,
                                                                                          "binary_search_steps": 1},
                         "cw-l2": {"max_iter": 5, "binary_search_steps": 1}}
QUICK_ATTACKS = {"bim": {"max_iter": 3}, "pgd": {"max_iter": 3}, "pgd-l2": {"max_iter": 3}, "mifgsm": {"max_iter": 3},
                 "apgd": {"max_iter": 3}, "cw-l2": {"max_iter": 3, "binary_search_steps": 1},
                 "deepfool": {"max_iter": 3}, "jsma": {"gamma": 0.01}, "ead": {"max_iter": 3, "binary_search_steps": 1},
                 "square": {"max_iter": 5}, "hsj": {"max_iter": 1, "max_eval": 20, "init_eval": 5},
                 "pixel": {"max_iter": 1}, "simba": {"max_iter": 10}, "universal": {"max_iter": 1}}
QUICK_IMAGENET_ATTACKS = QUICK_ATTACKS | {"jsma": {"gamma": 0.0001}, "deepfool": {"max_iter": 1},
                                          "bim": {"max_iter": 1}, "pgd": {"max_iter": 1}, "pgd-l2": {"max_iter": 1},
                                          "mifgsm": {"max_iter": 1}, "apgd": {"max_iter": 1},
                                          "cw-l2": {"max_iter": 1, "binary_search_steps": 1},
                                          "ead": {"max_iter": 1, "binary_search_steps": 1}}
SLOW = 2.0  # seconds: a first call this long is its own measurement (one-off costs are < 1%)
TARGETS = {"nip_floor_ratio": 1.2, "conductance_floor_ratio": 1.3, "evaluation_ratio": 1.3}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _paired(op: Callable[[], Any], bases: dict[str, tuple[Callable[[], Any], float]], repeats: int,
            device: torch.device, warmup: bool = True) -> dict[str, Any]:
    """Time ``op`` against one or more floors (``scale × base``), interleaved; medians.

    ``bases`` maps a floor's name to ``(base, scale)``; each repeat times every base, then ``op``
    once, so an expensive operation is run once per repeat however many floors it is compared
    with. The warm-up call is excluded unless it takes longer than ``SLOW``; then one-off costs
    are < 1% of it and it is kept as the first measurement (so slow operations are not run twice).
    """
    ops: list[float] = []
    floors: dict[str, list[float]] = {k: [] for k in bases}
    ratios: dict[str, list[float]] = {k: [] for k in bases}

    def record(to: float, tbs: dict[str, float]) -> None:
        ops.append(to)
        for k, tb in tbs.items():
            floors[k].append(tb)
            ratios[k].append(to / tb)

    if warmup:
        for base, _ in bases.values():
            base()
        first = _timed(op, device)
        if first > SLOW:
            record(first, {k: _timed(b, device) * sc for k, (b, sc) in bases.items()})
            repeats = min(repeats, 2) - 1
    for _ in range(repeats):
        tbs = {k: _timed(b, device) * sc for k, (b, sc) in bases.items()}
        record(_timed(op, device), tbs)
    return {"seconds": statistics.median(ops), "repeats": len(ops),
            "floor_seconds": {k: statistics.median(v) for k, v in floors.items()},
            "ratio": {k: statistics.median(v) for k, v in ratios.items()}}


def _median(fn: Callable[[], Any], repeats: int, device: torch.device, warmup: bool = True) -> float:
    first = _timed(fn, device)
    if not warmup or first > SLOW:
        return first if repeats <= 1 or first > SLOW else statistics.median(
            [first] + [_timed(fn, device) for _ in range(repeats - 1)])
    return statistics.median(_timed(fn, device) for _ in range(repeats))


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1 << 20) if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def _inputs(model, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real inputs: held-out digits, or the gallery photos and their mirror images, cycled."""
    from nip_core.data import dataset_of, gallery

    ds = dataset_of(model)
    if ds.builtin_calibration:      # a large labelled held-out set (MNIST, Fashion-MNIST)
        x, y = ds.heldout(model)
    else:
        items = gallery(model.spec.gallery)
        x = torch.stack([it.image for it in items])
        y = torch.tensor([it.label for it in items])
        x, y = torch.cat([x, x.flip(-1)]), torch.cat([y, y])
    idx = torch.arange(n) % len(y)
    return x[idx].contiguous(), y[idx].contiguous()


def _fwd(model, x: torch.Tensor) -> Callable[[], Any]:
    xd = x.to(model.device)

    def run():
        with torch.no_grad():
            return model.net(xd)
    return run


def _fwd_bwd(model, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Any]:
    """Full forward + backward to the input for target logits ``y``."""
    xd, yd = x.to(model.device), y.to(model.device).view(-1, 1)

    def run():
        with torch.enable_grad():
            xg = xd.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model.net(xg).gather(1, yd).sum(), xg)
        return g
    return run


def _fwd_bwd_to_layer(model, x: torch.Tensor, layer: str) -> Callable[[], Any]:
    """Forward stopped at ``layer`` + backward of a per-neuron objective to the input."""
    from nip_core.influence import layer_output

    xd = x.to(model.device)

    def run():
        with torch.enable_grad():
            xg = xd.clone().requires_grad_(True)
            out = layer_output(model, xg, layer, grad=True)
            (g,) = torch.autograd.grad(out.sum(), xg)
        return g
    return run


def _cycle(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(n) % len(x)
    return x[idx], y[idx]


def _bench_batch(model, b: int, cfg: dict, device: torch.device) -> dict[str, Any]:
    from nip_core.defenses import DEFENSES, apply_defense, nip_profile
    from nip_core.influence import conductance_chunk, neuron_influence
    from nip_core.nip import _chunks

    reps = cfg["repeats"]
    x, y = _inputs(model, b)
    layer = model.spec.default_layer
    out: dict[str, Any] = {"batch": b, "layer": layer}
    fwd = _median(_fwd(model, x), reps, device)
    fb = _median(_fwd_bwd(model, x, y), reps, device)
    out["forward_seconds"], out["forward_backward_seconds"] = fwd, fb
    out["forward_per_image"], out["forward_backward_per_image"] = fwd / b, fb / b

    # NIP, each mode, against T·K fwd+bwd at the NIP pass size.
    nip: dict[str, Any] = {}
    for name in _nip_defenses():
        p = DEFENSES[name].params_for(model, cfg["nip_params"])
        prof = nip_profile(model, p)
        topk = name in TOPK_NAMES
        kk = min(p.get("candidates", 1), model.num_classes) if topk else 1
        if topk:  # candidates' class profiles are filled once, outside the timing
            prof.prefill(model.logits(x).topk(kk, dim=1).indices.flatten().unique().tolist())
        else:
            prof.prefill(y.unique().tolist()) if name == "nip-oracle" and prof._fill else None
        xs, ys = _cycle(x, y, b * kk)
        per_pass = max(s.stop - s.start for s in _chunks(xs))
        xp, yp = xs[:per_pass], ys[:per_pass]
        scale = p["steps"] * (b * kk) / per_pass
        op = lambda name=name, p=p: apply_defense(model, name, x, p, y=y)  # noqa: E731
        r = _paired(op, {"full": (_fwd_bwd(model, xp, yp), scale),
                         "layer": (_fwd_bwd_to_layer(model, xp, p["layer"] if p["layer"] != "default" else layer),
                                   scale)}, reps, device)
        nip[name] = {"T": p["steps"], "K": kk, "images_per_pass": per_pass, "seconds": r["seconds"],
                     "repeats": r["repeats"], "per_image": r["seconds"] / b,
                     "floor_seconds": r["floor_seconds"]["full"], "nip_floor_ratio": r["ratio"]["full"],
                     "layer_floor_seconds": r["floor_seconds"]["layer"],
                     "nip_layer_floor_ratio": r["ratio"]["layer"]}
    out["nip"] = nip
    head = next(iter(nip))
    out["nip_floor_ratio_defense"] = head
    out["nip_floor_ratio"] = nip[head]["nip_floor_ratio"]
    out["nip_layer_floor_ratio"] = nip[head]["nip_layer_floor_ratio"]

    # Conductance: (n+1) interpolants per image, fwd+bwd at the conductance pass size.
    n = cfg["n_steps"]
    chunk = min(conductance_chunk(x, n), b)
    per_pass = chunk * (n + 1)
    xi, yi = _cycle(x, y, per_pass)
    scale = b * (n + 1) / per_pass
    cond = lambda: neuron_influence(model, x, y, layer, "conductance", n)  # noqa: E731
    r = _paired(cond, {"full": (_fwd_bwd(model, xi, yi), scale), "fwd": (_fwd(model, xi), scale)}, reps, device)
    out["conductance"] = {"n_steps": n, "interpolants_per_pass": per_pass, "seconds": r["seconds"],
                          "repeats": r["repeats"], "per_image": r["seconds"] / b,
                          "floor_seconds": r["floor_seconds"]["full"], "conductance_floor_ratio": r["ratio"]["full"],
                          "forward_floor_seconds": r["floor_seconds"]["fwd"],
                          "conductance_fwd_ratio": r["ratio"]["fwd"]}
    out["conductance_floor_ratio"] = r["ratio"]["full"]
    gxa = lambda: neuron_influence(model, x, y, layer, "grad_x_act")  # noqa: E731
    r = _paired(gxa, {"full": (_fwd_bwd(model, x, y), 1.0)}, reps, device)
    out["grad_x_act"] = {"seconds": r["seconds"], "per_image": r["seconds"] / b,
                         "floor_seconds": r["floor_seconds"]["full"], "floor_ratio": r["ratio"]["full"]}
    out["peak_rss_mb"] = _maxrss_mb()
    if device.type == "cuda":
        out["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / (1 << 20)
    return out


def _nip_defenses() -> list[str]:
    """The NIP modes: top-K (``nip-topk``, or ``nip`` where that is the top-K unit), global,
    oracle, and any other registered NIP-family defense."""
    from nip_core.defenses import DEFENSES

    # `nip-neighbours` is registered as the same unit as `nip`: time it once.
    names = [d for d in DEFENSES if DEFENSES[d].family == "nip" and d != "nip-neighbours"]
    return sorted(names, key=lambda d: (d != _topk(), d != "nip-global", d != "nip-oracle", d))


def _topk() -> str:
    from nip_core.defenses import DEFENSES

    return next(d for d in TOPK_NAMES if d in DEFENSES)


def _python_heap_peak(model, cfg: dict) -> float:
    """Peak Python-heap allocation (tracemalloc, MB) of one untimed NIP call at the smallest batch."""
    from nip_core.defenses import apply_defense

    x, y = _inputs(model, min(cfg["batch_sizes"]))
    tracemalloc.start()
    try:
        apply_defense(model, _nip_defenses()[0], x, cfg["nip_params"], y=y)
        return tracemalloc.get_traced_memory()[1] / (1 << 20)
    finally:
        tracemalloc.stop()


def _bench_attacks(model, cfg: dict, names: list[str] | None, device: torch.device) -> dict[str, Any]:
    from nip_core.attacks import ATTACKS, run_attack

    x, y = _inputs(model, cfg["attack_images"])
    out = {}
    run_attack(model, "fgsm", x[:1], y[:1])  # warm-up: ART import and first classifier
    for name in names or list(ATTACKS):
        if name in cfg.get("skip_attacks", ()):
            out[name] = {"skipped": "too slow for --quick on this model (differential evolution over every pixel)"}
            continue
        if not ATTACKS[name].applies_to(model):
            out[name] = {"skipped": "does not apply to this model"}
            continue
        params = dict(cfg["attack_params"].get(name, {}))
        try:
            t = _timed(lambda: run_attack(model, name, x, y, params, seed=0), device)
        except Exception as e:  # one broken unit must not sink the whole bench: record it
            out[name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        out[name] = {"per_image": t / len(x), "images": len(x),
                     "params": ATTACKS.get_unit(name).params_for(model, params)}
    return out


def _bench_defenses(model, cfg: dict, names: list[str] | None, device: torch.device) -> dict[str, Any]:
    from nip_core.defenses import DEFENSES, apply_defense

    x, y = _inputs(model, cfg["defense_images"])
    out = {}
    for name in names or [d for d in DEFENSES if DEFENSES[d].family != "nip"]:
        try:
            t = _median(lambda: apply_defense(model, name, x, {}, y=y, x_benign=x), cfg["repeats"], device)
        except Exception as e:
            out[name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        out[name] = {"per_image": t / len(x), "images": len(x)}
    return out


def _bench_evaluation(model_name: str, ecfg: dict) -> dict[str, Any]:
    """Wall time of ``evaluate`` against the sum of the attack and defense times it reports."""
    from nip_core.evaluation.evaluate import evaluate

    t0 = time.perf_counter()
    res = evaluate(model_name, ecfg["attacks"], ecfg["defenses"], n=ecfg["n"], adaptive=ecfg["adaptive"])
    wall = time.perf_counter() - t0
    n = res["n_images"]
    attacks = {r["attack"]: r["attack_seconds_per_image"] * n for r in res["rows"]}
    defenses = sum(r["defense_seconds_per_image"] * n for r in res["rows"])
    defenses += sum(v["seconds_per_image"] * n for v in res["benign"].values())
    adaptive = sum(v.get("seconds_per_image", 0.0) * n for v in res["adaptive"].values())
    parts = sum(attacks.values()) + defenses + adaptive
    return {"n_images": n, "attacks": res["attacks"], "defenses": res["defenses"], "adaptive": ecfg["adaptive"],
            "wall_seconds": wall, "evaluate_seconds_total": res["seconds_total"],
            "attack_seconds": sum(attacks.values()), "defense_seconds": defenses, "adaptive_seconds": adaptive,
            "parts_seconds": parts, "evaluation_ratio": wall / parts,
            "images_per_second": n / wall}


def _config(name: str, quick: bool, tiny: bool) -> dict[str, Any]:
    imagenet = name != "lenet-mnist"
    if tiny:
        return {"batch_sizes": (2,), "repeats": 1, "nip_params": {"steps": 1}, "n_steps": 4, "attack_images": 2,
                "defense_images": 2, "attack_params": QUICK_IMAGENET_ATTACKS if imagenet else QUICK_ATTACKS}
    if quick:
        return {"batch_sizes": (2,) if imagenet else (64,), "repeats": 2 if imagenet else 3,
                "nip_params": {"steps": 2 if imagenet else 5}, "n_steps": 16,
                "attack_images": 1 if imagenet else 8, "defense_images": 1 if imagenet else 4,
                "attack_params": QUICK_IMAGENET_ATTACKS if imagenet else QUICK_ATTACKS,
                # On ImageNet, --quick times one attack of each kind; the full bench times them all.
                "skip_attacks": QUICK_IMAGENET_SKIP if imagenet else ()}
    return {"batch_sizes": FULL["batch_sizes"], "repeats": 3 if imagenet else FULL["repeats"],
            # Every mode at its default T (10 on ImageNet); batch 64 on ImageNet is timed once.
            "nip_params": {}, "n_steps": 16,
            "repeats_by_batch": {64: 1} if imagenet else {},
            "attack_images": 2 if imagenet else 16, "defense_images": 4 if imagenet else 64,
            "attack_params": IMAGENET_FULL_ATTACKS if imagenet else {}}


def _eval_config(quick: bool, tiny: bool) -> dict[str, Any]:
    if tiny:
        return {"n": 2, "attacks": [("fgsm", {})], "defenses": [("none", {}), (_topk(), {"steps": 1})], "adaptive": False}
    if quick:
        return {"n": 16, "attacks": [("fgsm", {}), ("pgd", {"max_iter": 3})],
                "defenses": [("none", {}), ("jpeg", {}), (_topk(), {"steps": 5})], "adaptive": True}
    return {"n": 64, "attacks": [("fgsm", {}), ("pgd", {"max_iter": 10})],
            "defenses": [("none", {}), ("jpeg", {}), ("bitdepth", {}), (_topk(), {}), ("nip-global", {})],
            "adaptive": True}


def environment(threads: int) -> dict[str, Any]:
    import art
    import captum

    from nip_core.runtime import get_device

    dev = get_device()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": threads,
            "device": str(dev), "cuda": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "versions": {"torch": torch.__version__, "captum": captum.__version__, "art": art.__version__,
                         "numpy": np.__version__}}


def run_bench(quick: bool = False, out: str | Path | None = None, *, models: list[str] | None = None,
              tiny: bool = False, attacks: list[str] | None = None, defenses: list[str] | None = None,
              evaluation: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Measure every registered model against its compute floors; write the JSON to ``out``.

    Args:
        quick: a reduced configuration that finishes within a minute on a 2-core CPU
            (what it changes is listed under ``"quick_changes"`` in the result).
        out: JSON path (parent folders are created); nothing is written when ``None``.
        models: model names (default: all of ``nip_core.models.MODELS``).
        tiny: a seconds-long configuration for tests (batch 2, one repeat, one NIP step).
        attacks, defenses: restrict the attacks and baseline defenses timed per image.
        evaluation: also time ``evaluate`` against the sum of its parts (LeNet only).
        threads: torch intra-op threads (default ``NIP_BENCH_THREADS`` or 1: on a shared
            2-core machine one thread gives repeatable ratios; set 2 on an idle machine).
    Returns:
        ``{"machine", "config", "models": {name: {"batch_<B>": {...}, "attacks", "defenses",
        "peak_rss_mb", ...}}, "evaluation", "summary"}``; ``summary`` collects
        ``nip_floor_ratio``, ``conductance_floor_ratio`` and ``evaluation_ratio``.
    """
    from nip_core.models import MODELS, load_model
    from nip_core.runtime import get_device

    t_start = time.perf_counter()
    threads = int(threads or os.environ.get("NIP_BENCH_THREADS", 1))
    torch.set_num_threads(threads)
    device = get_device()
    result: dict[str, Any] = {
        "machine": environment(threads),
        "config": {"quick": quick, "tiny": tiny, "quick_changes": list(QUICK_CHANGES) if quick and not tiny else [],
                   "floors": {
                       "forward_backward": "full-model forward + backward to the input (weights frozen), same batch "
                                           "shape as one pass of the measured operation; target = true-label logit",
                       "nip": "T · (B·K / p) · fwdbwd(p); p = images per NIP pass (K candidates fused, ≤ nip_chunk)",
                       "nip_layer": "the same with the forward stopped at the NIP layer (what NIP must compute)",
                       "conductance": "(B·(n_steps+1) / p) · fwdbwd(p); p = interpolants per conductance pass",
                       "conductance_fwd": "(B·(n_steps+1) / p) · forward(p): the forward passes alone",
                       "ratio": "median over repeats of operation / floor, measured interleaved; warm-up excluded"},
                   "targets": TARGETS},
        "models": {},
    }
    summary: dict[str, Any] = {"nip_floor_ratio": {}, "nip_layer_floor_ratio": {}, "conductance_floor_ratio": {},
                               "conductance_fwd_ratio": {}, "evaluation_ratio": {}}
    for name in models or list(MODELS):
        model = load_model(name)
        cfg = _config(name, quick, tiny)
        m_out: dict[str, Any] = {"default_layer": model.spec.default_layer,
                                 "config": {k: v for k, v in cfg.items() if k != "attack_params"}}
        from nip_core.defenses import DEFENSES, nip_profile
        t_prof = time.perf_counter()
        nip_profile(model, DEFENSES[_topk()].params_for(model, {}))
        m_out["profile_load_seconds"] = time.perf_counter() - t_prof
        for b in cfg["batch_sizes"]:
            bcfg = cfg | {"repeats": cfg.get("repeats_by_batch", {}).get(b, cfg["repeats"]),
                          "nip_params": cfg["nip_params"] | cfg.get("nip_params_by_batch", {}).get(b, {})}
            r = _bench_batch(model, b, bcfg, device)
            m_out[f"batch_{b}"] = r
            for key in ("nip_floor_ratio", "nip_layer_floor_ratio", "conductance_floor_ratio"):
                summary[key].setdefault(name, {})[f"batch_{b}"] = r[key]
            summary["conductance_fwd_ratio"].setdefault(name, {})[f"batch_{b}"] = \
                r["conductance"]["conductance_fwd_ratio"]
        m_out["attacks"] = _bench_attacks(model, cfg, attacks, device)
        m_out["defenses"] = _bench_defenses(model, cfg, defenses, device)
        m_out["python_heap_peak_mb"] = _python_heap_peak(model, cfg)
        m_out["peak_rss_mb"] = _maxrss_mb()
        if device.type == "cuda":
            m_out["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / (1 << 20)
        result["models"][name] = m_out
    if evaluation and "lenet-mnist" in (models or list(MODELS)):
        ev = _bench_evaluation("lenet-mnist", _eval_config(quick, tiny))
        result["evaluation"] = {"lenet-mnist": ev}
        summary["evaluation_ratio"]["lenet-mnist"] = ev["evaluation_ratio"]
    summary["peak_rss_mb"] = _maxrss_mb()
    summary["wall_seconds"] = time.perf_counter() - t_start
    summary["targets"] = TARGETS
    result["summary"] = summary
    result["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if out is not None:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    return result


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return v


def _shipped_attack_times() -> dict[str, dict[str, Any]]:
    """Per model, the attack entries of the shipped bench (empty if the file is missing)."""
    from nip_core.runtime import REPO_ROOT

    global _ATTACK_TIMES
    if _ATTACK_TIMES is None:
        try:
            models = json.loads((REPO_ROOT / SHIPPED_BENCH).read_text())["models"]
            _ATTACK_TIMES = {m: v.get("attacks", {}) for m, v in models.items()}
        except (OSError, ValueError, KeyError):
            _ATTACK_TIMES = {}
    return _ATTACK_TIMES


_ATTACK_TIMES: dict[str, dict[str, Any]] | None = None


def expected_attack_seconds(model_name: str, attack: str, params: dict[str, Any]) -> float | None:
    """Seconds one image is expected to take under ``attack`` with ``params``, from the shipped
    bench (``docs/bench.json``, a 2-core CPU): the measured time per image, scaled by the ratio of
    ``max_iter`` when the bench ran a different number of iterations. An estimate: other settings
    (restarts, search steps) are not scaled. None where the bench has no number."""
    entry = _shipped_attack_times().get(model_name, {}).get(attack)
    if not entry or "per_image" not in entry:
        return None
    seconds = float(entry["per_image"])
    ran, wanted = entry.get("params", {}).get("max_iter"), params.get("max_iter")
    if ran and wanted:
        seconds *= wanted / ran
    return seconds


def estimate_sweep_seconds(model_name: str, attack: str, attack_params: dict[str, Any], n: int | None = None,
                     measured: dict[str, float] | None = None) -> float | None:
    """Seconds a :func:`nip_core.analyses.strength.strength_sweep` of ``n`` strengths is expected to take, before it starts.

    A sweep is ``n`` attacks, ``n + 1`` defenses and two forward passes over ``2n + 1`` images.
    ``measured``: one attack and one defense of this image timed already (Explore's run,
    ``Explanation.seconds`` with keys ``attack`` and ``defense``). Without it, the shipped bench's attack
    time per image (``docs/bench.json``, a 2-core CPU; :func:`expected_attack_seconds`),
    the defense not counted. The forward passes use the bench's time per image in a batch of 64 (0 for a
    model it has not measured). None where no attack time is known.
    """
    from nip_core.analyses.strength import DEFAULT_N, _check_n

    n = DEFAULT_N if n is None else n
    _check_n(n)
    if measured is not None and "attack" in measured:
        attack_s, defense_s = float(measured["attack"]), float(measured.get("defense", 0.0))
    else:
        attack_s, defense_s = expected_attack_seconds(model_name, attack, attack_params), 0.0
    if attack_s is None:
        return None
    return n * attack_s + (n + 1) * defense_s + 2 * (2 * n + 1) * _forward_per_image(model_name)


@functools.lru_cache(maxsize=None)
def _forward_per_image(model_name: str) -> float:
    """The shipped bench's forward time per image in a batch of 64 (0 where it has none)."""
    import json

    from nip_core.runtime import REPO_ROOT

    try:
        models = json.loads((REPO_ROOT / SHIPPED_BENCH).read_text())["models"]
        return float(models[model_name]["batch_64"]["forward_per_image"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
