"""List-valued config fields as a tuning space: a config whose tunable fields hold lists stands for the cartesian
product of their values, in signature order (INC 3.x's expansion), each copy keeping the set_local entries."""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import fields, replace
from typing import Any, ClassVar, TypeVar

__all__ = ["Tunable", "expand_lists", "list_fields"]

C = TypeVar("C")


def list_fields(cfg: object, tunable: Collection[str]) -> list[str]:
    """The `tunable` fields of `cfg` that hold a list, in signature order."""
    return [f.name for f in fields(cfg) if f.name in tunable and isinstance(getattr(cfg, f.name), list)]  # type: ignore[arg-type]


def expand_lists(cfg: C, tunable: Collection[str]) -> list[C]:
    """Every combination of `cfg`'s list-valued `tunable` fields (the last field varies fastest); `[cfg]` when none
    is a list. The copies share nothing mutable with `cfg` but their set_local entries' configs."""
    names = list_fields(cfg, tunable)
    out: list[C] = []
    for combo in itertools.product(*(getattr(cfg, n) for n in names)):
        copy: Any = replace(cfg, **dict(zip(names, combo, strict=True)))  # type: ignore[type-var]
        copy._local = dict(getattr(cfg, "_local", {}))
        out.append(copy)
    return out


T = TypeVar("T", bound="Tunable")


class Tunable:
    """Mixin of the config classes: `TUNABLE_FIELDS` may hold lists, and then the config stands for several."""

    __slots__ = ()
    TUNABLE_FIELDS: ClassVar[tuple[str, ...]] = ()

    @property
    def tunable(self) -> bool:
        """Some tunable field is a list (see `expand`)."""
        return bool(list_fields(self, self.TUNABLE_FIELDS))

    def expand(self: T) -> list[T]:
        """The configs a list-valued config stands for: the cartesian product of its list fields in signature order
        (INC's order), each keeping the set_local entries; a config without lists is itself."""
        return expand_lists(self, self.TUNABLE_FIELDS)
