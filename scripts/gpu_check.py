"""``make gpu-check``: the engine on the GPU against the CPU, on every built-in model (issue 28).

Where CUDA exists, runs three things on every built-in model once with ``NIP_DEVICE=cuda`` and once with
``NIP_DEVICE=cpu`` (each in its own process and its own empty engine cache), through ``nip_core.api``:

* **explain**: ``explain_image`` on the model's first gallery image, FGSM then ``nip-global`` (both
  deterministic: no random start, no random draws), influence at the default layer;
* **surgery**: ``run_surgery`` on the same image, FGSM, the front 20 % of the default layer set to their
  benign values;
* **evaluate**: ``run_evaluation`` on ``--n`` report-split images, FGSM × ``none, jpeg, nip-global``
  (no adaptive columns).

and reports, per model and check, whether the two devices agree and how long each took (the first call,
which pays for CUDA's start-up and cuDNN's choices, and a second, warm one). Without CUDA it prints one
line and exits 0.

**Agreement** (the tolerance): every predicted class, selected neuron and evaluation outcome equal; every
logit, probability and influence tensor within ``RTOL`` of the tensor's largest magnitude
(``max|gpu − cpu| ≤ 1e-2 · max|cpu|``): cuDNN convolutions use TF32 by default on Ampere and later
(a 10-bit mantissa, about 5e-4 relative per operation), and the sums run in another order. An
iterative attack or defense steps by gradient signs, so a borderline step can legitimately go the other
way on another device (the CPU alone does so between one and two threads); such a case is reported as a
disagreement with its numbers, not hidden.

    .venv/bin/python scripts/gpu_check.py                       # cuda against cpu, text report
    .venv/bin/python scripts/gpu_check.py --out docs/results/gpu-check.json
    .venv/bin/python scripts/gpu_check.py --devices cpu,cpu --models lenet-mnist --n 2   # the logic, on a CPU

Exit status: 0 when everything agrees (or there is no GPU), 1 on a disagreement, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RTOL = 1e-2          # max|a − b| ≤ RTOL · max|b| for every compared tensor
DEVICES = ("cuda", "cpu")
ATTACK = "fgsm"
DEFENSES = "none,jpeg,nip-global"


# ----------------------------------------------------------------------------- one device (a worker process)

def _tensors(**named) -> dict[str, Any]:
    return {k: v.detach().float().cpu().tolist() for k, v in named.items()}


def check_explain(name: str) -> dict[str, Any]:
    from nip_core import api

    image, label = api.gallery_image(name, 0)
    e = api.explain_image(name, image, label, attack=ATTACK, defense="nip-global", seed=0)
    variants = list(e.logits)
    return {"classes": {f"prediction.{v}": e.prediction(v) for v in variants}
            | {"front": sorted(e.front.tolist()), "tail": sorted(e.tail.tolist())},
            "tensors": _tensors(**{f"logits.{v}": e.logits[v] for v in variants},
                                **{f"influence.{v}": e.influence[v] for v in variants})}


def check_surgery(name: str) -> dict[str, Any]:
    from nip_core import api

    image, label = api.gallery_image(name, 0)
    r = api.run_surgery(name, image, label, attack=ATTACK, select="front:0.2", value="benign", seed=0)
    passes = {"benign": r.benign, "adversarial": r.adversarial, "patched": r.patched}
    return {"classes": {f"prediction.{k}": p.predictions.tolist() for k, p in passes.items()}
            | {"neurons": r.selected(0)},
            "tensors": _tensors(**{f"logits.{k}": p.logits for k, p in passes.items()},
                                **{f"probabilities.{k}": p.probabilities for k, p in passes.items()})}


def check_evaluate(name: str, n: int) -> dict[str, Any]:
    from nip_core import api

    r = api.run_evaluation(name, ATTACK, DEFENSES, n=n, seed=0, split="report", adaptive=False)
    classes = {f"benign.{d}": [v["correct"], v["pred"]] for d, v in r["benign"].items()}
    classes |= {f"{row['attack']} → {row['defense']}": [row["correct"], row["pred"]] for row in r["rows"]}
    import torch
    acc = [r["benign"][d]["accuracy"] for d in sorted(r["benign"])] + [row["defended_adv_accuracy"] for row in r["rows"]]
    return {"classes": classes, "tensors": _tensors(accuracies=torch.tensor(acc)), "n_images": r["n_images"]}


CHECKS = {"explain": lambda name, n: check_explain(name), "surgery": lambda name, n: check_surgery(name),
          "evaluate": check_evaluate}


def worker(models: list[str], n: int, repeat: int) -> dict[str, Any]:
    """Every check on every model on this process's device (``NIP_DEVICE``)."""
    import torch

    from nip_core.models import load_model
    from nip_core.runtime import get_device

    device = get_device()
    out: dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                           "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                           or platform.machine(), "models": {}}
    for name in models:
        t = time.perf_counter()
        load_model(name)
        per: dict[str, Any] = {"load_seconds": round(time.perf_counter() - t, 4)}
        for check, fn in CHECKS.items():
            try:
                seconds = []
                for _ in range(repeat):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    res = fn(name, n)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds.append(round(time.perf_counter() - t, 4))
                per[check] = res | {"seconds": seconds}
            except Exception as exc:  # one line per failed check, the others still run
                per[check] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
        out["models"][name] = per
    return out


# ----------------------------------------------------------------------------- comparing two devices

def compare_tensors(a: Any, b: Any, rtol: float = RTOL) -> dict[str, Any]:
    """``max|a − b|`` and that over ``max|b|``; within tolerance when the latter is ≤ ``rtol``."""
    import torch

    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if ta.shape != tb.shape:
        return {"agree": False, "why": f"shapes {list(ta.shape)} and {list(tb.shape)}"}
    diff = float((ta - tb).abs().max()) if ta.numel() else 0.0
    scale = float(tb.abs().max()) if tb.numel() else 0.0
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
    return {"agree": rel <= rtol, "max_abs_diff": diff, "max_rel_diff": rel}


def compare_check(a: dict[str, Any], b: dict[str, Any], rtol: float = RTOL) -> dict[str, Any]:
    """One check's results on two devices: classes must be equal, tensors within tolerance."""
    if "error" in a or "error" in b:
        return {"agree": False, "errors": {k: r["error"] for k, r in (("first", a), ("second", b)) if "error" in r}}
    unequal = {k: [a["classes"].get(k), b["classes"].get(k)] for k in sorted(set(a["classes"]) | set(b["classes"]))
               if a["classes"].get(k) != b["classes"].get(k)}
    tensors = {k: compare_tensors(a["tensors"][k], b["tensors"][k], rtol) if k in a["tensors"] and k in b["tensors"]
               else {"agree": False, "why": "missing on one device"}
               for k in sorted(set(a["tensors"]) | set(b["tensors"]))}
    worst = max((t.get("max_rel_diff", math.inf) for t in tensors.values()), default=0.0)
    return {"agree": not unequal and all(t["agree"] for t in tensors.values()),
            "classes_compared": len(set(a["classes"]) | set(b["classes"])), "classes_unequal": unequal,
            "tensors_compared": len(tensors), "max_rel_diff": worst,
            "tensors_outside": {k: t for k, t in tensors.items() if not t["agree"]},
            "seconds": {"first": a["seconds"], "second": b["seconds"]}}


def compare(first: dict[str, Any], second: dict[str, Any], rtol: float = RTOL) -> dict[str, Any]:
    models = {}
    for name in first["models"]:
        a, b = first["models"][name], second["models"].get(name, {})
        models[name] = {check: compare_check(a.get(check, {"error": "not run"}), b.get(check, {"error": "not run"}), rtol)
                        for check in CHECKS}
        models[name]["load_seconds"] = {"first": a.get("load_seconds"), "second": b.get("load_seconds")}
    agree = all(c["agree"] for m in models.values() for k, c in m.items() if k in CHECKS)
    return {"agree": agree, "models": models}


# ----------------------------------------------------------------------------- driver

def run_worker(device: str, models: list[str], n: int, repeat: int, out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"nip-gpu-check-{device}-") as cache:
        env = {**os.environ, "NIP_DEVICE": device, "NIP_CACHE_DIR": cache}
        proc = subprocess.run([sys.executable, __file__, "--worker", "--models", ",".join(models), "--n", str(n),
                               "--repeat", str(repeat), "--out", str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {device} run failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return json.loads(out.read_text())


def text_report(result: dict[str, Any]) -> str:
    first, second = result["devices"]
    lines = [f"gpu-check: {first['device']} ({first['name']}) against {second['device']} ({second['name']}), "
             f"torch {first['torch']}; tolerance: equal classes, tensors within {RTOL:g} of their largest magnitude"]
    for name, checks in result["comparison"]["models"].items():
        for check in CHECKS:
            c = checks[check]
            if "errors" in c:
                lines.append(f"  {name:18} {check:8} ERROR {c['errors']}")
                continue
            s1, s2 = c["seconds"]["first"], c["seconds"]["second"]
            warm = lambda s: f"{s[0]:.3f} s" + (f" (then {s[-1]:.3f} s)" if len(s) > 1 else "")  # noqa: E731
            verdict = "agree" if c["agree"] else "DIFFER"
            extra = "" if c["agree"] else f"  classes {c['classes_unequal']}  tensors {sorted(c['tensors_outside'])}"
            lines.append(f"  {name:18} {check:8} {verdict:6} max rel diff {c['max_rel_diff']:.2e}  "
                         f"{first['device']} {warm(s1)}  {second['device']} {warm(s2)}{extra}")
    lines.append("all agree" if result["comparison"]["agree"] else "some results differ (see above)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default=",".join(DEVICES), help="two devices, the first compared against the second")
    ap.add_argument("--models", default="all", help="comma-separated built-in models, or all")
    ap.add_argument("--n", type=int, default=8, help="images of the small evaluation (1–64)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each check (the first pays for start-up)")
    ap.add_argument("--out", help="also write the JSON report here (docs/results/gpu-check.json)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from nip_core.models import model_names

    builtin = model_names()
    models = builtin if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in builtin]
    if unknown or not models:
        ap.error(f"unknown model {unknown[0] if unknown else args.models!r}; built-in: {', '.join(builtin)}")
    if not 1 <= args.n <= 64 or not 1 <= args.repeat <= 5:
        ap.error("--n must be in [1, 64] and --repeat in [1, 5]")
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(models, args.n, args.repeat)) + "\n")
        return 0
    devices = [d.strip() for d in args.devices.split(",")]
    if len(devices) != 2 or any(d.split(":")[0] not in DEVICES for d in devices):
        ap.error("--devices must be two of cuda, cuda:N, cpu (e.g. cuda,cpu)")
    import torch

    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        print(f"no GPU: torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda or 'none'}); "
              "nothing to compare")
        return 0
    with tempfile.TemporaryDirectory(prefix="nip-gpu-check-") as d:
        runs = [run_worker(dev, models, args.n, args.repeat, Path(d) / f"{i}-{dev}.json")
                for i, dev in enumerate(devices)]
    result = {"command": "python scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "tolerance": {"classes": "equal", "tensors": f"max|a - b| <= {RTOL:g} * max|b|", "rtol": RTOL},
              "checks": {"explain": f"api.explain_image(gallery image 0, attack={ATTACK}, defense=nip-global, seed=0)",
                         "surgery": f"api.run_surgery(gallery image 0, attack={ATTACK}, select=front:0.2, value=benign)",
                         "evaluate": f"api.run_evaluation({ATTACK} x {DEFENSES}, n={args.n}, split=report, "
                                     "adaptive=False)"},
              "load_avg": os.getloadavg(), "comparison": compare(runs[0], runs[1]),
              # what each device gave, without the tensors (the comparison holds their differences)
              "devices": [r | {"models": {m: {c: ({k: v for k, v in res.items() if k != "tensors"}
                                                   if isinstance(res, dict) else res) for c, res in per.items()}
                                          for m, per in r["models"].items()}} for r in runs]}
    print(text_report(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["comparison"]["agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
