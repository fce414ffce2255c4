"""One Explore run as a value: the request type of the engine's front door (:mod:`nip_core.api`).

A :class:`Run` names everything that determines an Explore result: model, image, label, attack and
defense with their parameters, where influence is measured (layer, method, k) and the seed. It is
frozen and hashable, so the app keys its caches on it and a share link round-trips it; fields are
read by name, never by position.

:meth:`Run.build` is the one place the settings are validated and normalised: unknown attacks or
defenses raise :class:`~nip_core.errors.InputError`; parameters equal to the unit's defaults on this
model are dropped (one cache entry however the defaults were reached, shorter links); NIP-family
defenses measure and act at the run's layer, method and k.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nip_core.errors import InputError

if TYPE_CHECKING:
    from nip_core.models.base import LoadedModel

Params = tuple[tuple[str, Any], ...]
NIP_SHARED = ("layer", "method", "k")     # a NIP defense acts at the run's own layer, method and k


@dataclass(frozen=True)
class Run:
    """Explore's settings for one result (see the module docstring)."""

    model: str
    image_key: str
    image_bytes: bytes | None = None      # an upload's bytes (image_key names it); None for a named image
    label: int | None = None              # None: the gallery's label, or the benign prediction
    attack: str = "fgsm"
    attack_params: Params = ()
    defense: str = "none"
    defense_params: Params = ()
    layer: str = ""
    method: str = "conductance"
    k: float = 0.2
    seed: int = 0

    @classmethod
    def build(cls, model: LoadedModel, image_key: str, *, image_bytes: bytes | None = None,
              label: int | None = None, attack: str = "fgsm", attack_params: dict[str, Any] | None = None,
              defense: str = "none", defense_params: dict[str, Any] | None = None, layer: str | None = None,
              method: str = "conductance", k: float = 0.2, seed: int = 0) -> Run:
        """A validated, normalised run of ``model`` (a loaded model)."""
        from nip_core.attacks import ATTACKS
        from nip_core.defenses import DEFENSES

        a_unit, d_unit = ATTACKS.get_unit(attack), DEFENSES.get_unit(defense)
        if not a_unit.applies_to(model):
            raise InputError(f"attack {attack!r} does not apply to {model.name}.")
        layer = layer or model.spec.default_layer
        model.layer(layer)                                   # raises InputError for a layer it lacks
        if not 0 < float(k) <= 0.5:
            raise InputError(f"parameter 'k' must be float in (0, 0.5]; got {k!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"seed must be an integer ≥ 0; got {seed!r}.")
        a_def, d_def = a_unit.params_for(model), d_unit.params_for(model)
        a_all = a_unit.params_for(model, dict(attack_params or {}))      # validates: InputError on a bad value
        d_all = d_unit.params_for(model, dict(defense_params or {}))
        ap = {n: a_all.get(n, v) for n, v in (attack_params or {}).items() if a_def.get(n) != a_all.get(n, v)}
        dp = {n: d_all.get(n, v) for n, v in (defense_params or {}).items() if d_def.get(n) != d_all.get(n, v)}
        if d_unit.family == "nip":
            dp.update(layer=layer, method=method, k=float(k))
        return cls(model.name, image_key, image_bytes, label, attack, tuple(sorted(ap.items())), defense,
                   tuple(sorted(dp.items())), layer, method, float(k), int(seed))

    def with_(self, **changes: Any) -> Run:
        """A copy with ``changes`` (field names). A new attack or defense without its own parameters
        starts from its defaults (a NIP-family defense at the run's layer, method and k); the values are
        not re-validated: use :meth:`build` for a user's input."""
        from nip_core.defenses import DEFENSES

        if "attack" in changes and "attack_params" not in changes and changes["attack"] != self.attack:
            changes["attack_params"] = ()
        if "defense" in changes and "defense_params" not in changes and changes["defense"] != self.defense:
            nip = DEFENSES.get_unit(changes["defense"]).family == "nip"
            where = {"layer": changes.get("layer", self.layer), "method": changes.get("method", self.method),
                     "k": float(changes.get("k", self.k))}
            changes["defense_params"] = tuple(sorted(where.items())) if nip else ()
        return replace(self, **changes)

    @property
    def attack_kwargs(self) -> dict[str, Any]:
        return dict(self.attack_params)

    @property
    def defense_kwargs(self) -> dict[str, Any]:
        return dict(self.defense_params)

    def _defense_label(self) -> str:
        """The defense and its own parameters (a NIP defense's layer, method and k are the run's: named apart)."""
        from nip_core.params import unit_label

        return unit_label(self.defense, {n: v for n, v in self.defense_kwargs.items() if n not in NIP_SHARED})

    def differences(self, other: Run) -> list[str]:
        """The settings in which ``other`` differs from this run, in words, most important first
        (``["model lenet-fashion → lenet-fashion-at", "attack pgd → fgsm"]``)."""
        from nip_core.params import unit_label

        out = []
        pairs = [("model", self.model, other.model),
                 ("image", self.image_key if self.image_bytes is None else "an upload",
                  other.image_key if other.image_bytes is None else "an upload"),
                 ("attack", unit_label(self.attack, self.attack_kwargs), unit_label(other.attack, other.attack_kwargs)),
                 ("defense", self._defense_label(), other._defense_label()),
                 ("layer", self.layer, other.layer), ("method", self.method, other.method),
                 ("k", f"{self.k:g}", f"{other.k:g}"), ("seed", str(self.seed), str(other.seed)),
                 ("label", str(self.label), str(other.label))]
        for name, a, b in pairs:
            if a != b:
                out.append(f"{name} {a} → {b}")
        return out
