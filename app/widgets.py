"""The widgets every page shares: errors shown in one line, widget state, a declared parameter's
input and its text in a share link, the model picker and the bring-your-own-model panel."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import streamlit as st

from app.loaders import BYOM_KEY, get_model, load_custom, visible_models
from nip_core.errors import InputError
from nip_core.params import Param

log = logging.getLogger("nip_explorer.app")


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


def query_signature(params: dict[str, str]) -> tuple:
    """A link's query parameters as a comparable value (Explore remembers the one it last read or wrote)."""
    return tuple(sorted((str(k), str(v)) for k, v in params.items()))


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


def model_picker(key: str, default: str, on_change=None) -> tuple[str, Any] | None:
    """The "Model" select box (shipped models and this session's own) and the loaded model, or None
    after showing why it could not be loaded. ``on_change``: called when the user picks another model."""
    from nip_core.models import MODELS

    name = st.selectbox("Model", visible_models(st.session_state.get(BYOM_KEY, [])),
                        key=init_state(key, default), format_func=lambda m: f"{m} — {MODELS[m].summary}",
                        on_change=on_change)
    try:
        return name, get_model(name)
    except Exception as exc:
        show_error(exc, "loading model")
        return None


def byom_panel(parent=None) -> None:
    """Sidebar form (or in ``parent``): bring your own model as safetensors weights + class names."""
    from nip_core.byom import ARCHITECTURES

    with (parent if parent is not None else st.sidebar).expander("Bring your own model"):
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
