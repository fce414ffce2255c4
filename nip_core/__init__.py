"""NIP Explorer engine: neuron influence, attacks and Neuron-level Inverse Perturbation.

Never imports Streamlit. See ``python -m nip_core --help``, and ``nip_core.api`` (``docs/api.md``)
for notebooks. Importing the package loads nothing else: ``nip_core.api`` is loaded on first access.
"""
__version__ = "0.1.0"

_LAZY = ("api",)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
