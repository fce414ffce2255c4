"""``make gpu-check`` (scripts/gpu_check.py) without a GPU: the one-line answer, and the comparison
itself run on the CPU against the CPU (issue 28)."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


def test_without_cuda_one_line_and_success():
    out = _run(CUDA_VISIBLE_DEVICES="")          # no device visible, as on a machine without a GPU
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no GPU:"), out.stdout


def test_bad_arguments_exit_2_with_one_line():
    for args in (["--devices", "cuda"], ["--devices", "tpu,cpu"], ["--models", "nope"], ["--n", "0"]):
        out = _run(*args)
        assert out.returncode == 2, (args, out.stdout)
        assert "error:" in out.stderr.strip().splitlines()[-1], args


def test_cpu_against_cpu_on_lenet_compares_every_check_and_agrees(tmp_path):
    report = tmp_path / "gpu-check.json"
    out = _run("--devices", "cpu,cpu", "--models", "lenet-mnist", "--n", "2", "--repeat", "1", "--out", str(report))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(report.read_text())
    assert [d["device"] for d in result["devices"]] == ["cpu", "cpu"]
    checks = result["comparison"]["models"]["lenet-mnist"]
    assert result["comparison"]["agree"] is True and result["tolerance"]["rtol"] == gpu_check.RTOL
    for name in ("explain", "surgery", "evaluate"):
        c = checks[name]
        assert c["agree"] and c["classes_compared"] >= 3 and c["tensors_compared"] >= 1, (name, c)
        assert c["max_rel_diff"] <= gpu_check.RTOL and not c["classes_unequal"] and not c["tensors_outside"]
        assert all(s > 0 for s in c["seconds"]["first"] + c["seconds"]["second"])
    # the evaluation compared each image's outcome under every defense (benign and attacked)
    assert len(checks["evaluate"]["classes_unequal"]) == 0 and checks["evaluate"]["classes_compared"] == 6
    assert "lenet-mnist" in out.stdout and "all agree" in out.stdout


def test_the_comparison_flags_a_changed_class_and_a_tensor_outside_the_tolerance():
    base = {"device": "cpu", "models": {"m": {
        "explain": {"classes": {"prediction.benign": 3, "front": [1, 2]}, "tensors": {"logits.benign": [10.0, -2.0, 0.5]},
                    "seconds": [0.1]},
        "surgery": {"classes": {"neurons": [1]}, "tensors": {"logits.patched": [1.0, 2.0]}, "seconds": [0.1]},
        "evaluate": {"classes": {"benign.none": ["11", "37"]}, "tensors": {"accuracies": [1.0]}, "seconds": [0.1]}}}}
    near = copy.deepcopy(base)
    near["models"]["m"]["explain"]["tensors"]["logits.benign"] = [10.05, -2.0, 0.5]   # 0.5 % of the largest
    assert gpu_check.compare(base, near)["agree"] is True
    far = copy.deepcopy(base)
    far["models"]["m"]["explain"]["tensors"]["logits.benign"] = [10.0, -2.0, 0.7]     # 2 % of the largest
    far["models"]["m"]["evaluate"]["classes"]["benign.none"] = ["10", "31"]
    res = gpu_check.compare(base, far)
    assert res["agree"] is False
    assert list(res["models"]["m"]["explain"]["tensors_outside"]) == ["logits.benign"]
    assert res["models"]["m"]["evaluate"]["classes_unequal"] == {"benign.none": [["11", "37"], ["10", "31"]]}
    assert res["models"]["m"]["surgery"]["agree"] is True
    broken = copy.deepcopy(base)
    broken["models"]["m"]["surgery"] = {"error": "RuntimeError: CUDA out of memory"}
    assert gpu_check.compare(base, broken)["models"]["m"]["surgery"]["agree"] is False
