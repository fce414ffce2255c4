"""Nothing downloads at run time: with every socket refused, ``explain`` and a small ``evaluate``
run on every built-in model, in a fresh process (so model loading is covered too)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DRIVER = r"""
import json, socket, sys
from pathlib import Path

attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args[1:] or args)[:200])
    raise OSError("network access refused by the test")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from nip_core.cli import main
from nip_core.data import gallery
from nip_core.images import tensor_to_png_bytes
from nip_core.models import MODELS, load_model

out = Path(sys.argv[1])
runs = {}
for name in list(MODELS):
    image = out / f"{name}.png"
    image.write_bytes(tensor_to_png_bytes(gallery(load_model(name).spec.gallery)[0].image))
    runs[name] = {
        "explain": main(["explain", "--model", name, "--image", str(image), "--out", str(out / name)]),
        "evaluate": main(["evaluate", "--model", name, "--attacks", "fgsm", "--defenses", "none,jpeg", "--n", "2",
                          "--no-adaptive", "--no-cache", "--out", str(out / f"{name}.json")]),
    }
print(json.dumps({"runs": runs, "attempts": attempts}))
"""


def test_explain_and_evaluate_every_builtin_model_with_sockets_refused(tmp_path):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [], report["attempts"]
    assert set(report["runs"]) == {"lenet-mnist", "lenet-fashion", "lenet-fashion-at", "resnet8-cifar10", "efficientnet-lite0"}
    for name, rcs in report["runs"].items():
        assert rcs == {"explain": 0, "evaluate": 0}, (name, r.stderr[-3000:])
        assert json.loads((tmp_path / f"{name}.json").read_text())["n_images"] == 2
        assert (tmp_path / name / "summary.json").exists()
