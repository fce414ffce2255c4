"""Helpers shared by the AppTest files (not tests themselves): start the app, press a button, check a
page has no error, the test images and models, and counters of the engine's heavy calls."""
from __future__ import annotations

import importlib
from pathlib import Path

from streamlit.testing.v1 import AppTest

import app.warmup

app.warmup.ENABLED = False   # no background warm-up thread inside the test process

ENTRY = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")
TIMEOUT = 300
VIEW_CHARTS = 0    # an Explore view draws its result as images and metrics: no Plotly until asked for (issue 26)
INTERACTIVE_CHARTS = 8   # "Interactive charts": 2 perturbations, 3 top-5 bars, 2 heatmap rows, group chart
VIEW_METRICS = {"benign prediction", "adversarial prediction", "defended prediction"}
SURGERY_CHARTS = 2  # the surgery panel: the three passes' bars and the neuron grid to pick on


def _app(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _submit(at: AppTest, label: str) -> AppTest:
    [button] = [b for b in at.button if b.label == label]
    return button.click().run()


def _png_digit() -> bytes:
    from nip_core.data import gallery
    from nip_core.images import tensor_to_png_bytes
    return tensor_to_png_bytes(gallery("mnist")[0].image)


def _lenet_safetensors(seed: int, classes: int = 3) -> bytes:
    import torch
    from safetensors.torch import save

    from nip_core.models.lenet import LeNet5

    torch.manual_seed(seed)
    return save({k: v.contiguous() for k, v in LeNet5(num_classes=classes).state_dict().items()})


def _load_own_model(at: AppTest, weights: bytes, classes: bytes) -> str:
    """The sidebar's "Bring your own model" form (a LeNet) through its real select box, uploaders and
    submit button; returns the name the app gave the model."""
    [arch] = [sb for sb in at.sidebar.selectbox if sb.label == "Architecture"]
    arch.set_value("lenet")
    [w] = [u for u in at.sidebar.file_uploader if u.label == "Weights (.safetensors)"]
    [c] = [u for u in at.sidebar.file_uploader if u.label == "Class names (.txt or .json)"]
    w.set_value(("mine.safetensors", weights, "application/octet-stream"))
    c.set_value(("classes.txt", classes, "text/plain"))
    [submit] = [b for b in at.sidebar.button if b.label == "Load model"]
    submit.click().run()
    _ok(at)
    [ok] = [m.value for m in at.success if m.value.startswith("Loaded as ")]
    return ok.removeprefix("Loaded as ").split(";")[0]


def engine_counters(monkeypatch, targets: list[str]) -> dict[str, list]:
    """Count calls of each ``module.function`` in ``targets`` (and call through): how many engine
    computations a widget change costs."""
    calls: dict[str, list] = {}
    for target in targets:
        mod_name, attr = target.rsplit(".", 1)
        mod = importlib.import_module(mod_name)
        real, log = getattr(mod, attr), calls.setdefault(target, [])

        def counted(*a, _real=real, _log=log, **kw):
            _log.append(1)
            return _real(*a, **kw)
        monkeypatch.setattr(mod, attr, counted)
    return calls


def calls_made(calls: dict[str, list], short: str | None = None) -> dict[str, int]:
    """Calls made since the last reset (then reset); names under the module ``short`` by function alone."""
    out = {t.rsplit(".", 1)[1] if short and t.startswith(short) else t: len(c) for t, c in calls.items() if c}
    for c in calls.values():
        c.clear()
    return out
