"""The trial order of a tuning run (INC 3.x): each config of the set expands to the cartesian product of its
list-valued fields in signature order, the sets are concatenated in the order given, duplicates are skipped; and the
configs of the fallback phase (a trial's config with some ops kept float)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from quantir.compiler.config.dynamic_config import DynamicQuantConfig
from quantir.compiler.config.expansion import expand_lists
from quantir.compiler.config.quant_config import FP8Config, StaticQuantConfig
from quantir.compiler.config.weight_only_config import RTNConfig
from quantir.ir import ConfigError

__all__ = ["describe", "fallback_key", "trial_configs", "with_fallback"]

TuningSpaceConfig = StaticQuantConfig | RTNConfig


def _identity(cfg: Any) -> str:
    """Two configs are the same trial when their class and dict form are equal."""
    return type(cfg).__name__ + json.dumps(cfg.to_dict(), sort_keys=True, default=str)


def trial_configs(config_set: Sequence[Any]) -> list[TuningSpaceConfig]:
    """Every trial's config, in INC's order, without duplicates. An empty set or a config of another kind is a
    ConfigError naming its position."""
    if not config_set:
        raise ConfigError("TuningConfig.config_set is empty: give at least one config (e.g. [StaticQuantConfig()], "
                          "or StaticQuantConfig(act_sym=[False, True]) for two trials)")  # fmt: skip
    out: list[TuningSpaceConfig] = []
    seen: set[str] = set()
    for i, cfg in enumerate(config_set):
        if isinstance(cfg, FP8Config):
            raise NotImplementedError(f"TuningConfig.config_set[{i}]: FP8 quantization (FP8Config) is not "
                                      "implemented yet")  # fmt: skip
        if not isinstance(cfg, (StaticQuantConfig, RTNConfig)):
            raise ConfigError(f"TuningConfig.config_set[{i}] is a {type(cfg).__name__}; expected StaticQuantConfig, "
                              "DynamicQuantConfig, RTNConfig, GPTQConfig or AWQConfig")  # fmt: skip
        for one in cfg.expand():
            key = _identity(one)
            if key not in seen:
                seen.add(key)
                out.append(one)
    return out


def describe(cfg: Any) -> str:
    """The config in one line: its class and the fields that differ from the class defaults (locals counted)."""
    default = type(cfg)()
    changed = [f"{f.name}={getattr(cfg, f.name)!r}" for f in fields(cfg)
               if f.init and getattr(cfg, f.name) != getattr(default, f.name)]  # fmt: skip
    local = getattr(cfg, "_local", {})
    if local:
        changed.append(f"{len(local)} set_local")
    return f"{type(cfg).__name__}({', '.join(changed)})"


def fallback_key(op: str) -> str:
    """The set_local key that selects exactly the op named `op` (a name regex anchored at both ends)."""
    return f"^{re.escape(op)}$"


def with_fallback(cfg: TuningSpaceConfig, ops: Sequence[str]) -> TuningSpaceConfig:
    """A copy of `cfg` that keeps the ops named `ops` in float (a set_local fp32 entry each, after its own)."""
    copy = expand_lists(cfg, ())[0]
    for op in ops:
        if isinstance(copy, RTNConfig):
            copy.set_local(fallback_key(op), RTNConfig(dtype="fp32"))
        else:
            local = StaticQuantConfig(w_dtype="fp32", act_dtype="fp32")
            copy.set_local(fallback_key(op), local)
    return copy


def is_calibrated(cfg: object) -> bool:
    """Static quantization (activation ranges from calibration), whose per-op error `layer_errors` measures."""
    return isinstance(cfg, StaticQuantConfig) and not isinstance(cfg, DynamicQuantConfig)
