"""Cached loaders, computations keyed on plain values, and small shared UI helpers.

Caching rules (see docs/STYLE): models and influence profiles are shared objects
(``st.cache_resource``, never mutated here); explanations, comparisons and evaluations are
``st.cache_data`` results keyed on plain values only (names, numbers, tuples, image bytes).
Long computations run in a worker thread so the page can show their progress messages
without the cached function itself touching Streamlit (cached functions that draw would be
replayed on a cache hit into containers that no longer exist).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import streamlit as st
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from nip_core.errors import InputError
from nip_core.params import Param

log = logging.getLogger("nip_explorer.app")

ParamsKey = tuple[tuple[str, Any], ...]
COMPARE_DEFENSES = ("none", "jpeg", "bitdepth", "median", "gaussian", "random-sign", "nip-global", "nip",
                    "nip-oracle")


def label_free_note() -> str:
    """Why label-free NIP is hard, with the numbers of the shipped MNIST report (``nip_core.results``)."""
    from nip_core.results import headline

    h = headline("paper-mnist", "nip")
    return (
        "**Label-free NIP is hard.** A deployable defense does not know the true class, so `nip` guesses it: "
        "on MNIST it flags inputs whose `conv1` neurons leave the range they take on benign digits, and runs NIP "
        "toward the class of the nearest benign digits, compared at `conv1` on the binarised input; when few "
        "neurons moved (a minimal attack such as DeepFool), toward the class the model predicts under small random "
        f"noise ({h.split} split, {h.n_images} digits: mean adversarial accuracy {h.fmt('mean_adv_accuracy')}, "
        f"benign {h.fmt('benign_accuracy')}). That guess is its weak point: an attacker who also targets the vote "
        f"brings it down to {h.fmt('aware_accuracy')}, and the binarised vote holds only because MNIST pixels are "
        "nearly binary. "
        "`nip` needs a **calibration** (labelled benign images in the model's classes): the MNIST and "
        "Fashion-MNIST models ship one; on ImageNet, CIFAR-10 and your own models it passes inputs through "
        "unchanged until you calibrate it (`python -m nip_core calibrate --model M --data PATH`), so it never "
        "harms a benign input. `nip-topk` (top-K candidate classes) and `nip-global` (one all-class profile) "
        "stay selectable by name. "
        "`nip-oracle` uses the TRUE label to pick the profile: it shows what NIP could do with perfect "
        "knowledge, and is **not deployable**. Expect the label-free modes to fall well short of the oracle; "
        "compare against the `random-sign` control (same budget, random direction)."
    )


def aware_note() -> str:
    """How often ``nip`` wins against the attack that knows it, from the shipped MNIST report."""
    from nip_core.results import headline

    h = headline("paper-mnist", "nip")
    return f"on the MNIST {h.split} split `nip` still wins {h.pct('aware_accuracy')} of the time against it"


# ----------------------------------------------------------------------------- torch threads

def configure_torch() -> int:
    """One torch thread per computation (``NIP_TORCH_THREADS``, default 1), set once per process.

    The server shares a small machine with its visitors' browsers: with two OpenMP threads per op,
    every op spin-waits for a core the browsers hold, and a LeNet Explore run was about seventy
    times slower on a loaded 2-core machine (docs/performance.md). One thread is also what the run
    queue gives each run.
    """
    from nip_core.runtime import set_torch_threads

    return set_torch_threads()


# ----------------------------------------------------------------------------- the run queue

class RunQueue:
    """First come, first served admission for the heavy computations of every session.

    ``slots`` runs at a time get the CPU; the others wait their turn and are told their place
    ("your run starts after 3 others") instead of many threads fighting over one model lock on a
    small machine. Re-entrant per thread: a run that needs another cached computation does not
    queue behind itself.
    """

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self._cond = threading.Condition()
        self._tickets: deque[object] = deque()
        self._running = 0
        self._local = threading.local()
        self._last_visit = float("-inf")   # monotonic time a visitor's run last ended

    def waiting(self) -> int:
        """Runs waiting for a slot now."""
        with self._cond:
            return len(self._tickets)

    def held(self) -> bool:
        """Whether the calling thread holds a slot."""
        return getattr(self._local, "depth", 0) > 0

    @contextmanager
    def lent(self, held: bool) -> Iterator[None]:
        """In a worker thread: act as the holder of the slot its starting thread holds (``held``),
        so the worker's own turns pass through instead of queueing behind that slot."""
        if not held:
            yield
            return
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth

    @contextmanager
    def turn(self, report: Callable[[int], None] | None = None, background: bool = False,
             quiet_s: float = 0.0) -> Iterator[None]:
        """Hold a slot for the block; while waiting, ``report(runs ahead)`` whenever that number changes.

        A ``background`` turn (the server's warm-up) starts only when no visitor's run is running or
        waiting and none has ended in the last ``quiet_s`` seconds, so a visitor waits for at most one
        background step and a busy class is not slowed down by warming models nobody asked for.
        """
        if background:
            yield from self._background_turn(quiet_s)
            return
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        ticket, told = object(), None
        with self._cond:
            self._tickets.append(ticket)
        try:
            while True:
                with self._cond:
                    pos = self._tickets.index(ticket)
                    if pos < self.slots - self._running:
                        self._tickets.remove(ticket)
                        self._running += 1
                        break
                    ahead = pos + self._running
                    if ahead == told:
                        self._cond.wait(timeout=0.5)
                        continue
                told = ahead
                if report is not None:
                    report(ahead)
        except BaseException:
            with self._cond:
                if ticket in self._tickets:
                    self._tickets.remove(ticket)
                self._cond.notify_all()
            raise
        yield from self._hold(visit=True)

    def _background_turn(self, quiet_s: float) -> Iterator[None]:
        if getattr(self._local, "depth", 0):
            yield
            return
        with self._cond:
            while self._tickets or self._running or time.monotonic() - self._last_visit < quiet_s:
                self._cond.wait(timeout=0.5)
            self._running += 1
        yield from self._hold(visit=False)

    def _hold(self, visit: bool) -> Iterator[None]:
        """Run the caller's block in the slot taken, then give it back (a visitor's run also
        marks the time, so background turns wait for quiet)."""
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with self._cond:
                self._running -= 1
                if visit:
                    self._last_visit = time.monotonic()
                self._cond.notify_all()


RUNS = RunQueue(slots=1)


class Activity:
    """Page runs in progress and when the last one ended (the warm-up waits for a pause)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._last_end = float("-inf")

    @contextmanager
    def page_run(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_end = time.monotonic()
                self._cond.notify_all()

    def wait_quiet(self, quiet_s: float) -> None:
        """Until no page run is in progress and none ended in the last ``quiet_s`` seconds."""
        with self._cond:
            while self._active or time.monotonic() - self._last_end < quiet_s:
                self._cond.wait(timeout=0.25)


ACTIVITY = Activity()


def queue_message(ahead: int) -> str:
    return f"waiting: your run starts after {ahead} other{'s' if ahead != 1 else ''}"


def _queued(progress: Callable[[float, str], None] | None):
    """``RUNS.turn`` reporting the place in the queue through a progress callback."""
    return RUNS.turn(None if progress is None else lambda ahead: progress(0.0, queue_message(ahead)))


@contextmanager
def page_turn(active: bool = True) -> Iterator[None]:
    """Hold one run-queue slot for a whole page run (compute *and* draw), showing the place in the
    queue while waiting: a class's sessions then finish one after another, first come first served,
    instead of all drawing at once at the end. ``active=False``: no turn (cheap reruns)."""
    if not active:
        yield
        return
    slot = st.empty()
    with RUNS.turn(lambda ahead: slot.progress(0.0, text=queue_message(ahead))):
        slot.empty()
        yield


# ----------------------------------------------------------------------------- loaders

@st.cache_resource(show_spinner=False)
def get_model(name: str):
    """The loaded model (shared by every session; never mutate it)."""
    from nip_core.models import load_model
    return load_model(name)


@st.cache_resource(show_spinner=False)
def get_profile(model_name: str, layer: str, method: str):
    """The benign influence profile (shared; the engine locks its lazy per-class fills)."""
    from nip_core.influence import influence_profile
    return influence_profile(get_model(model_name), layer, method)


@st.cache_data(show_spinner=False)
def gallery_entries(model_name: str) -> list[dict[str, Any]]:
    """The model's example images as plain dicts (key, label, label_name, source, png)."""
    from nip_core.data import gallery
    from nip_core.images import tensor_to_png_bytes

    model = get_model(model_name)
    return [{"key": it.key, "label": it.label, "label_name": it.label_name, "source": it.source,
             "png": tensor_to_png_bytes(it.image)} for it in gallery(model.spec.gallery)]


BYOM_KEY = "byom.models"   # session state: names of the custom models this session loaded


def load_custom(arch: str, weights: bytes, classes: bytes, input_size: int | None) -> str:
    """Register a user's safetensors classifier (never unpickled) and return its model name."""
    from nip_core.byom import load_custom_model
    return load_custom_model(arch, weights, classes, input_size=input_size).name


def visible_models(own: list[str]) -> list[str]:
    """Shipped models plus this session's own uploaded ones (never another session's)."""
    from nip_core.byom import is_custom
    from nip_core.models import MODELS
    return [m for m in MODELS if not is_custom(m)] + [m for m in own if m in MODELS]


def model_picker(key: str, default: str) -> tuple[str, Any] | None:
    """The "Model" select box (shipped models and this session's own) and the loaded model, or None
    after showing why it could not be loaded."""
    from nip_core.models import MODELS

    name = st.selectbox("Model", visible_models(st.session_state.get(BYOM_KEY, [])),
                        key=init_state(key, default), format_func=lambda m: f"{m} — {MODELS[m].summary}")
    try:
        return name, get_model(name)
    except Exception as exc:
        show_error(exc, "loading model")
        return None


def byom_panel() -> None:
    """Sidebar form: bring your own model as safetensors weights + class names."""
    from nip_core.byom import ARCHITECTURES

    with st.sidebar.expander("Bring your own model"):
        st.caption("Weights must be a **safetensors** state dict for a listed architecture (pickled .pt/.pth "
                   "files are refused, never opened). Class names: a text file, one per line, or a JSON list.")
        with st.form("byom.form"):
            arch = st.selectbox("Architecture", sorted(ARCHITECTURES),
                                format_func=lambda a: f"{a} — {ARCHITECTURES[a].summary}")
            weights = st.file_uploader("Weights (.safetensors)", type=["safetensors"])
            classes = st.file_uploader("Class names (.txt or .json)", type=["txt", "json"])
            size = st.number_input("Input size in pixels (0 = the architecture's default)", 0, 1024, 0)
            submitted = st.form_submit_button("Load model")
        if submitted:
            if weights is None or classes is None:
                st.error("Upload both the weights and the class names.")
                return
            try:
                name = load_custom(arch, weights.getvalue(), classes.getvalue(), int(size) or None)
            except Exception as exc:
                show_error(exc, "loading your model")
                return
            own = st.session_state.setdefault(BYOM_KEY, [])
            if name not in own:
                own.append(name)
            st.success(f"Loaded as {name}; pick it in the Model box.")


def load_upload(model_name: str, data: bytes):
    """Decode uploaded bytes for the model through the one safe loader (raises InputError)."""
    from nip_core.images import load_image

    spec = get_model(model_name).spec
    return load_image(data, channels=spec.input_channels, size=spec.input_size, preprocess=spec.preprocess)


def _image(model_name: str, image_key: str, image_bytes: bytes | None):
    from nip_core.data import gallery

    if image_bytes is not None:
        return load_upload(model_name, image_bytes), None
    for it in gallery(get_model(model_name).spec.gallery):
        if it.key == image_key:
            return it.image, it.label
    raise InputError(f"no example image {image_key!r} for model {model_name!r}.")


# ----------------------------------------------------------------------------- computations

@st.cache_data(show_spinner=False, max_entries=48)
def explanation(model_name: str, image_key: str, image_bytes: bytes | None, label: int | None, attack: str,
                attack_params: ParamsKey, defense: str, defense_params: ParamsKey, layer: str, method: str,
                k: float, seed: int, _progress: Callable[[float, str], None] | None = None):
    """``nip_core.explain.explain`` for one request; every argument is a plain value."""
    from nip_core.explain import explain

    with _queued(_progress):
        image, gallery_label = _image(model_name, image_key, image_bytes)
        label = gallery_label if label is None else label
        return explain(get_model(model_name), image, label, attack=attack, attack_params=dict(attack_params),
                       defense=defense, defense_params=dict(defense_params), layer=layer, method=method, k=k,
                       seed=seed, progress=_progress)


@st.cache_data(show_spinner=False, max_entries=48)
def neuron_maps(request: tuple, neuron: int):
    """Activation maps ``[3, H, W]`` of one neuron for benign / adversarial / defended."""
    import torch
    from nip_core.influence import spatial_map

    expl = explanation(*request)
    x = torch.stack([expl.images[v] for v in ("benign", "adversarial", "defended")])
    with _queued(None):
        return spatial_map(get_model(expl.model_name), x, expl.layer, neuron)


@st.cache_data(show_spinner=False)
def is_conv_layer(model_name: str, layer: str) -> bool:
    """Whether the layer's neurons are conv channels (they have a spatial activation map)."""
    import torch
    from nip_core.influence import layer_output

    model = get_model(model_name)
    s = model.spec
    return layer_output(model, torch.zeros(1, s.input_channels, s.input_size, s.input_size), layer).dim() > 2


@st.cache_data(show_spinner=False, max_entries=32)
def defense_comparison(request: tuple, nip_params: ParamsKey,
                       _progress: Callable[[float, str], None] | None = None) -> list[dict[str, Any]]:
    """The request's adversarial through each baseline defense, the control and NIP's modes."""
    with _queued(_progress):
        return _defense_comparison(request, nip_params, _progress)


def _defense_comparison(request: tuple, nip_params: ParamsKey,
                        _progress: Callable[[float, str], None] | None) -> list[dict[str, Any]]:
    from nip_core.defenses import DEFENSES, apply_defense
    import torch

    expl = explanation(*request)
    model = get_model(expl.model_name)
    x_adv = expl.images["adversarial"].unsqueeze(0)
    ref = expl.reference_class
    names = [d for d in COMPARE_DEFENSES if d != "nip-oracle" or expl.label is not None]
    rows = []
    for i, name in enumerate(names):
        if _progress:
            _progress(i / len(names), f"defense {name}")
        unit = DEFENSES[name]
        known = {p.name for p in unit.spec.params}
        params = {k: v for k, v in nip_params if k in known} if unit.family in ("nip", "control") else {}
        y = torch.tensor([expl.label]) if unit.needs_labels else None
        try:
            dr = apply_defense(model, name, x_adv, params, y=y, seed=int(request[-1]),
                               x_benign=expl.images["benign"].unsqueeze(0))
        except InputError as exc:  # one refusing defense must not hide the others
            rows.append({"defense": name, "deployable": unit.deployable, "family": unit.family, "error": str(exc)})
            continue
        p = model.probabilities(dr.x_def)[0]
        pred = int(p.argmax())
        rows.append({
            "defense": name, "deployable": unit.deployable, "family": unit.family,
            "prediction": pred, "prediction_name": expl.class_names[pred],
            "prediction_confidence": float(p[pred]), "reference_confidence": float(p[ref]),
            "correct": pred == ref, "linf_change": float((dr.x_def - x_adv).abs().max()),
            "seconds": dr.seconds,
        })
    if _progress:
        _progress(1.0, "done")
    return rows


@st.cache_data(show_spinner=False, max_entries=16)
def evaluation(model_name: str, attacks: tuple, defenses: tuple, n: int, seed: int, adaptive: bool,
               split: str = "all", upload: tuple[str, bytes] | None = None,
               _progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """``nip_core.evaluate.evaluate`` keyed on plain values (attacks/defenses: (name, params) tuples).

    ``upload``: (file name, bytes) of the user's labelled data (see :func:`user_data`); ``split``
    then applies to it (the engine's seeded 30/40/30 split, ``data_seed`` 0 as in the CLI).
    """
    from nip_core.evaluate import evaluate

    units = ([(a, dict(p)) for a, p in attacks], [(d, dict(p)) for d, p in defenses])
    with _queued(_progress):
        if upload is None:
            return evaluate(model_name, *units, n=n, seed=seed, split=split, adaptive=adaptive, progress=_progress)
        if not evaluate_takes_data():
            raise InputError("this version of the engine cannot evaluate on uploaded data yet "
                             "(nip_core.evaluate.evaluate has no data= argument); use the built-in images.")
        user_data(model_name, *upload)             # refuse an unusable file before any work, with its reason
        with _upload_on_disk(*upload) as path:     # evaluate reads it (safe_extract_zip for a .zip)
            result = evaluate(model_name, *units, n=n, seed=seed, split=split, adaptive=adaptive,
                              progress=_progress, data=str(path))
        block = result.get("data")
        if isinstance(block, dict):                # name the user's file, not the temporary path
            block.update({k: str(v).replace(str(path), upload[0]) for k, v in block.items()
                          if isinstance(v, str) and str(path) in v})
        return result


def evaluate_takes_data() -> bool:
    """Whether the engine's ``evaluate`` accepts ``data=LabelledData`` (the user's own images)."""
    import inspect

    from nip_core.evaluate import evaluate
    return "data" in inspect.signature(evaluate).parameters


DATA_UPLOAD_MAX_MB = 50   # also Streamlit's server.maxUploadSize (.streamlit/config.toml)
DATA_MAX_IMAGES = 5000


@st.cache_data(show_spinner=False, max_entries=4)
def user_data(model_name: str, file_name: str, data: bytes):
    """The user's labelled images (an uploaded .zip holding an ImageFolder or a .npz, or a .npz) for
    the model: ``nip_core.sources.userdata.LabelledData``, with ``.skipped`` and ``.summary_line()``.

    The bytes are written to a private temporary folder under a fixed name; a .zip is extracted by
    ``safe_extract_zip`` (no path traversal, links or zip bombs) inside ``load_labelled_data``.
    Raises InputError for an unusable file.
    """
    from nip_core.sources.userdata import load_labelled_data

    spec = get_model(model_name).spec
    with _upload_on_disk(file_name, data) as path:
        out = load_labelled_data(path, class_names=get_model(model_name).class_names,
                                 channels=spec.input_channels, size=spec.input_size, preprocess=spec.preprocess,
                                 max_images=DATA_MAX_IMAGES, max_bytes=4 * DATA_UPLOAD_MAX_MB * 2**20)
    out.source = file_name   # what the summary line names: the user's file, not the temporary path
    return out


@contextmanager
def _upload_on_disk(file_name: str, data: bytes) -> Iterator[Any]:
    """The uploaded bytes as ``upload.zip``/``upload.npz`` in a private temporary folder (removed after)."""
    import tempfile
    from pathlib import Path

    if len(data) > DATA_UPLOAD_MAX_MB * 2**20:
        raise InputError(f"{file_name} is {len(data) / 2**20:.1f} MB, over the {DATA_UPLOAD_MAX_MB} MB limit for "
                         "uploaded data; upload a smaller subset.")
    suffix = Path(file_name).suffix.lower()
    if suffix not in (".zip", ".npz"):
        raise InputError(f"{file_name} is not a .zip or .npz file; upload a .zip of class folders of images, "
                         "or a .npz with arrays x and y.")
    with tempfile.TemporaryDirectory(prefix="nip-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        yield path


@st.cache_data(show_spinner=False, ttl=60)
def has_calibration(model_name: str) -> bool:
    """Whether the label-free ``nip`` has a calibration for the model (else it passes inputs through)."""
    from nip_core.calibration import calibration_for
    return calibration_for(get_model(model_name)) is not None


def calibration_hint(model_name: str) -> str:
    """One line: ``nip`` passes inputs through on this model, and how to calibrate it."""
    from nip_core.calibration import how_to_calibrate
    return how_to_calibrate(get_model(model_name))


@st.cache_data(show_spinner=False)
def demo_image(model_name: str, attack: str = "fgsm", restore: tuple[str, ...] = ("nip-oracle",),
               defeat: tuple[str, ...] = ()) -> str:
    """A gallery image that shows a step of the guided tour (``nip_core.explain.demo_image``)."""
    from nip_core.explain import demo_image as pick

    with _queued(None):
        return pick(get_model(model_name), attack=attack, restore=restore, defeat=defeat)


def build_request(model_name: str, image_key: str, image_bytes: bytes | None, label: int | None, attack: str,
                  attack_params: dict[str, Any], defense: str, defense_params: dict[str, Any], layer: str,
                  method: str, k: float, seed: int) -> tuple:
    """The plain-value key of one Explore view (:func:`explanation`'s arguments).

    Only parameters that differ from the unit's defaults on this model are kept (shorter share
    links, and one cache entry however the defaults were reached); NIP defenses measure and act
    at the influence section's layer, method and k.
    """
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES

    model = get_model(model_name)
    a_def = ATTACKS[attack].params_for(model)
    d_def = DEFENSES[defense].params_for(model)
    ap = {n: v for n, v in attack_params.items() if a_def.get(n) != v}
    dp = {n: v for n, v in defense_params.items() if d_def.get(n) != v}
    if DEFENSES[defense].family == "nip":
        dp.update(layer=layer, method=method, k=float(k))
    return (model_name, image_key, image_bytes, label, attack, tuple(sorted(ap.items())),
            defense, tuple(sorted(dp.items())), layer, method, float(k), int(seed))


# ----------------------------------------------------------------------------- UI helpers

def run_with_progress(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, _progress=cb, **kwargs)`` in a worker thread, showing its progress in a bar.

    The cached function only puts messages on a queue; this (script) thread draws them, including
    the run queue's "your run starts after N others". A plain progress bar, not an animated status
    box: a browser tab showing a spinning status for the length of a queue burns a tenth of a core,
    and a class waiting together would spend more on spinners than on their runs. The bar is
    removed when the run is done. Exceptions from ``fn`` are re-raised here.
    """
    messages: queue.Queue[tuple[float, str]] = queue.Queue()
    box: dict[str, Any] = {}

    held = RUNS.held()   # the page's turn, lent to its worker

    def work() -> None:
        try:
            with RUNS.lent(held):
                box["value"] = fn(*args, _progress=lambda f, m: messages.put((float(f), str(m))), **kwargs)
        except BaseException as exc:  # re-raised in the script thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="nip-explorer-worker", daemon=True)
    add_script_run_ctx(worker, get_script_run_ctx())
    slot = st.empty()
    worker.start()
    shown = None
    while worker.is_alive() or not messages.empty():
        try:
            frac, msg = messages.get(timeout=0.1)
        except queue.Empty:
            continue
        if (frac, msg) != shown:
            slot.progress(min(max(frac, 0.0), 1.0), text=f"{label}: {msg}")
            shown = (frac, msg)
    worker.join()
    slot.empty()
    if "error" in box:
        raise box["error"]
    return box["value"]


QUIET_CSS = "<style>[data-testid='stStatusWidget'] { display: none; }</style>"


def quiet_running_indicator() -> None:
    """Hide Streamlit's animated "running" indicator: the pages show their own progress bars, and
    the animation costs every open tab CPU for as long as its script runs (a queued class)."""
    st.html(QUIET_CSS)


def show_error(exc: BaseException, where: str) -> None:
    """InputError → its message; anything else → one line plus a log entry (never a traceback)."""
    if isinstance(exc, InputError):
        st.error(str(exc))
        return
    log.exception("%s failed", where)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    st.error(f"Something went wrong: {type(exc).__name__}: {first}" if first else
             f"Something went wrong: {type(exc).__name__}")


@contextmanager
def guarded(where: str) -> Iterator[None]:
    """Show errors raised in the block instead of a traceback (Streamlit's own control flow passes)."""
    try:
        yield
    except Exception as exc:  # ScriptControlException (rerun/stop) is a BaseException and passes through
        show_error(exc, where)


def init_state(key: str, default: Any) -> str:
    """Give a widget key its default once, so widgets never get both ``value=`` and session state."""
    if key not in st.session_state:
        st.session_state[key] = default
    return key


def param_label(p: Param) -> str:
    unit = f" ({p.unit})" if p.unit else ""
    return f"{p.name}{unit}"


def param_help(p: Param) -> str:
    extra = f"{p.help}. " if p.help else ""
    if p.unit == "[0,1] pixel":
        extra += "Pixel values are in [0,1]: 1/255 ≈ 0.0039 is one grey level. "
    return extra + f"Allowed: {p.describe_range()}."


def param_input(p: Param, default: Any, key: str, high: float | None = None,
                choices: list[Any] | None = None) -> Any:
    """One widget for a declared parameter (defaults come from the registry, not the UI).

    ``choices`` narrows a choice parameter to the options that apply (e.g. the model's layers).
    """
    init_state(key, default)
    label, help_ = param_label(p), param_help(p)
    if p.kind == "choice":
        options = list(p.choices) if choices is None else list(choices)
        if st.session_state[key] not in options:
            st.session_state[key] = default if default in options else options[0]
        return st.selectbox(label, options, key=key, help=help_)
    if p.kind == "bool":
        return st.checkbox(label, key=key, help=help_)
    hi = p.high if high is None else high
    if p.kind == "int":
        return int(st.number_input(label, min_value=int(p.low), max_value=int(hi), step=1, key=key, help=help_))
    step = float(p.step) if p.step else (0.01 if (hi or 1) <= 10 else 0.1)
    return float(st.number_input(label, min_value=float(p.low), max_value=float(hi), step=step, format="%.4f",
                                 key=key, help=help_))


def params_text(params: dict[str, Any]) -> str:
    """``{"eps": 0.1, "max_iter": 10}`` → ``"eps=0.1;max_iter=10"`` (for links)."""
    return ";".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def parse_params_text(text: str) -> dict[str, str]:
    """Inverse of :func:`params_text`; values are validated by the registry later."""
    out: dict[str, str] = {}
    for part in filter(None, (s.strip() for s in text.split(";"))):
        if "=" not in part:
            raise InputError(f"cannot read {part!r}: write name=value;name=value.")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out
