"""List-valued config fields as a tuning space: a config whose tunable fields hold lists stands for the cartesian
product of their values, in signature order (INC 3.x's expansion), each copy keeping the set_local entries."""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import fields, replace
from typing import Any, TypeVar

__all__ = ["expand_lists", "list_fields"]

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
