"""Quantization configs with INC 3.x semantics: `StaticQuantConfig` (with `set_local`), `RTNConfig`, `FP8Config`,
`TuningConfig`; YAML/JSON loading; and the per-op resolution of a config against a graph (`resolve`)."""

from __future__ import annotations

from quantir.compiler.config.dynamic_config import DynamicQuantConfig
from quantir.compiler.config.quant_config import (
    ConfigWarning,
    FP8Config,
    StaticQuantConfig,
    load_config,
    save_config,
)
from quantir.compiler.config.tuning_config import TuningConfig
from quantir.compiler.config.weight_only_config import AWQConfig, GPTQConfig, RTNConfig

__all__ = [
    "AWQConfig", "ConfigWarning", "DynamicQuantConfig", "FP8Config", "GPTQConfig", "RTNConfig", "StaticQuantConfig",
    "TuningConfig", "load_config", "save_config",
]  # fmt: skip
