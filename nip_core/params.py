"""Declared, validated parameters shared by attacks, defenses, the CLI and the app.

Each registered unit declares its parameters as :class:`Param` objects; :func:`validate`
turns user values (strings from the CLI, numbers from sliders) into checked Python values or
raises :class:`~nip_core.errors.InputError` naming the parameter and its allowed range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from nip_core.errors import InputError


@dataclass(frozen=True)
class Param:
    """One parameter: name, kind (``float``, ``int``, ``choice``, ``bool``), default and range."""

    name: str
    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: Sequence[Any] = ()
    help: str = ""
    # UI hint: slider step; also shows the unit in the label.
    step: float | None = None
    unit: str = ""

    def describe_range(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        return f"{self.kind} in [{self.low:g}, {self.high:g}]"

    def coerce(self, value: Any) -> Any:
        """Return the checked value or raise InputError naming this parameter."""
        where = f"parameter '{self.name}' must be {self.describe_range()}"
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"1", "true", "yes", "0", "false", "no"}:
                return value.lower() in {"1", "true", "yes"}
            raise InputError(f"{where}; got {value!r}.")
        if self.kind == "choice":
            for c in self.choices:
                if value == c or str(value) == str(c):
                    return c
            raise InputError(f"{where}; got {value!r}.")
        if isinstance(value, bool):
            raise InputError(f"{where}; got {value!r}.")
        try:
            number = float(value) if not isinstance(value, (int, float)) else value
        except (TypeError, ValueError):
            raise InputError(f"{where}; got {value!r}.") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise InputError(f"{where}; got {value!r}.")
        if self.kind == "int":
            if float(number) != int(float(number)):
                raise InputError(f"{where}; got {value!r} (not a whole number).")
            number = int(float(number))
        else:
            number = float(number)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise InputError(f"{where}; got {value!r}.")
        return number


@dataclass(frozen=True)
class Spec:
    """A registered unit's name, summary and parameters."""

    name: str
    summary: str
    params: tuple[Param, ...] = field(default_factory=tuple)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with ``values``; unknown names and bad values raise InputError."""
        values = dict(values or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(values) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise InputError(f"'{self.name}' has no parameter {unknown[0]!r}; its parameters are: {allowed}.")
        out = self.defaults()
        for key, value in values.items():
            out[key] = known[key].coerce(value)
        return out

    def validate_for(self, dataset_defaults: Mapping[str, Mapping[str, Any]], dataset: str | Sequence[str],
                     values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Spec defaults, then the dataset's defaults, then ``values``; validated as :meth:`validate`.

        ``dataset`` is one dataset key or a chain of them, most general first
        (``nip_core.data.defaults_chain``: CIFAR-10 takes ImageNet's defaults unless it has its own).
        """
        merged: dict[str, Any] = {}
        for key in ([dataset] if isinstance(dataset, str) else dataset):
            merged.update(dataset_defaults.get(key, {}))
        merged.update(values or {})
        return self.validate(merged)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "params": [_param_json(p) for p in self.params]}


def _param_json(p: Param) -> dict[str, Any]:
    out = {k: v for k, v in p.__dict__.items() if v not in (None, "", ())}
    if p.kind == "choice":
        out["choices"] = list(p.choices)
    return out


def unit_label(name: str, params: Mapping[str, Any]) -> str:
    """``pgd`` with ``{"eps": 0.1, "max_iter": 40}`` → ``"pgd[eps=0.1;max_iter=40]"`` (floats to 4 digits)."""
    if not params:
        return name
    return name + "[" + ";".join(f"{k}={_fmt(v)}" for k, v in params.items()) + "]"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def parse_kv(text: str) -> dict[str, str]:
    """Parse ``"eps=0.1,steps=10"`` into a dict of strings (values validated later)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise InputError(f"expected name=value in {part!r} (e.g. eps=0.1,steps=10).")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


class Registry(dict):
    """Name → registered unit (an attack, a defense, a model, a dataset); lookup failures raise
    InputError listing valid names (sorted, or in registration order with ``sort=False``)."""

    def __init__(self, kind: str, name_of: Callable[[Any], str] = lambda unit: unit.spec.name,
                 sort: bool = True) -> None:
        super().__init__()
        self.kind, self.name_of, self.sort = kind, name_of, sort

    def register(self, unit: Any) -> Any:
        name = self.name_of(unit)
        if name in self:
            raise RuntimeError(f"{self.kind} {name!r} registered twice")
        self[name] = unit
        return unit

    def get_unit(self, name: str) -> Any:
        if name not in self:
            names = sorted(self) if self.sort else list(self)
            raise InputError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(names)}.")
        return self[name]
