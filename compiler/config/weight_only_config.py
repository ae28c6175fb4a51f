"""Weight-only quantization configs with INC 3.x fields and defaults: `RTNConfig` (neural-compressor-and-gaudi-fp8.md
§1), with `set_local`, the 2.x `op_name_dict`/`op_type_dict` weight entries, and list-valued fields that `expand`
into the cartesian product of configs in signature order (what INC's tuning walks).

INC adds an fp32 local for LM-head names (`LM_HEAD_NAMES`) unless `quant_lm_head=True`; `lm_head_locals` says which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from quantir.compiler.config.expansion import Tunable
from quantir.compiler.config.quant_config import (
    _BOOL,
    _DICT,
    _STR,
    LocalKey,
    _Check,
    _int_at_least,
    _int_in,
    _mapping,
    _one_of,
    _plain,
    _unknown_key,
    check_local_entry,
    compile_key,
    construct_config,
    store_local,
)
from quantir.ir import ConfigError

__all__ = [
    "LM_HEAD_NAMES", "WEIGHT_ONLY_DTYPES_BUILT", "WOQ_PER_OP_FIELDS", "AWQConfig", "GPTQConfig", "RTNConfig",
    "weight_bits",
]  # fmt: skip

LM_HEAD_NAMES = (".*lm_head", ".*output_layer", ".*embed_out")
"""INC's name regexes of language-model heads, kept fp32 unless `quant_lm_head=True`."""

_RTN_DTYPES = (
    "int", "int8", "int4", "nf4", "fp4", "fp4_e2m1_bnb", "fp4_e2m1", "fp8_e5m2", "fp8_e5m2fnuz", "fp8_e4m3fn",
    "fp8_e4m3fnuz", "fp32",
)  # fmt: skip
WEIGHT_ONLY_DTYPES_BUILT = ("int", "int8", "int4", "fp32")
"""The `dtype`s quantir implements (integer RTN and fallback); INC's nf4/fp4/fp8 weight formats are refused by name."""


def weight_bits(values: Mapping[str, Any]) -> int:
    """The storage width of resolved weight-only fields: `dtype` "int4"/"int8" names it, else `bits` does."""
    bits = {"int4": 4, "int8": 8}.get(str(values["dtype"]), values["bits"])
    assert isinstance(bits, int)
    return bits


WOQ_PER_OP_FIELDS = ("dtype", "bits", "use_sym", "group_size", "group_dim", "use_full_range", "use_mse_search")
"""RTNConfig fields that can differ per op (set_local, 2.x dicts) and that may be lists (tuning)."""

_CHECKS: dict[str, _Check] = {
    "dtype": _one_of(*_RTN_DTYPES), "bits": _int_in(1, 8), "use_sym": _BOOL, "group_size": _int_at_least(1, (-1,)),
    "group_dim": _int_in(0, 1), "use_full_range": _BOOL, "use_mse_search": _BOOL, "use_layer_wise": _BOOL,
    "model_path": _STR, "use_double_quant": _BOOL, "double_quant_dtype": _one_of("int"),
    "double_quant_bits": _int_in(1, 8), "double_quant_use_sym": _BOOL,
    "double_quant_group_size": _int_at_least(1, (-1,)), "quant_lm_head": _BOOL, "op_name_dict": _DICT,
    "op_type_dict": _DICT,
}  # fmt: skip

_FRACTION = _Check(
    "a fraction in (0, 1)", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1
)

_2X_WEIGHT = {"dtype": "dtype", "bits": "bits", "group_size": "group_size", "scheme": "use_sym",
              "algorithm": "", "group_dim": "group_dim"}  # fmt: skip
"""2.x weight-only `op_type_dict`/`op_name_dict` `weight` items -> RTNConfig fields (algorithm must be RTN)."""


@dataclass(slots=True)
class RTNConfig(Tunable):
    """Round-to-nearest weight-only quantization: INC 3.x `RTNConfig` fields and defaults (`dtype="fp32"`: fallback).

    `group_size` weights share a scale along the input channels (`group_dim=1`, INC's layout of a Linear weight
    [out, in]); -1 is one scale per output channel. A group size that does not divide the input channels leaves a
    shorter last group, as ONNX's blocked DequantizeLinear and MatMulNBits do (they pad it with zeros).
    """

    dtype: Any = "int"
    bits: Any = 4
    use_sym: Any = True
    group_size: Any = 32
    group_dim: Any = 1
    use_full_range: Any = False
    use_mse_search: Any = False
    use_layer_wise: bool = False
    model_path: str = ""
    use_double_quant: bool = False
    double_quant_dtype: str = "int"
    double_quant_bits: int = 8
    double_quant_use_sym: bool = False
    double_quant_group_size: int = 256
    quant_lm_head: bool = False
    op_name_dict: dict[str, Any] = field(default_factory=dict)
    op_type_dict: dict[str, Any] = field(default_factory=dict)
    _local: dict[LocalKey, RTNConfig] = field(default_factory=dict, init=False, repr=False)
    TUNABLE_FIELDS: ClassVar[tuple[str, ...]] = WOQ_PER_OP_FIELDS
    KEY: ClassVar[str] = "rtn"
    """The config's key in INC's dict form (`{"rtn": {"global": ...}}`)."""
    EXTRA_CHECKS: ClassVar[dict[str, _Check]] = {}
    """A subclass's own fields and their checks."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ConfigError naming the field, the value and what is allowed; a list-valued tunable field checks each item."""
        owner = type(self).__name__
        for name, check in {**_CHECKS, **self.EXTRA_CHECKS}.items():
            value = getattr(self, name)
            items = value if name in WOQ_PER_OP_FIELDS and isinstance(value, list) else [value]
            if not items:
                raise ConfigError(f"{owner}.{name}=[]: a tuning list needs at least one value")
            for item in items:
                if not check.ok(item):
                    raise ConfigError(f"{owner}.{name}={item!r}: expected {check.expect}")
        for dict_name in ("op_name_dict", "op_type_dict"):
            for key, entry in getattr(self, dict_name).items():
                self.op_dict_fields(dict_name, key, entry)

    # ---- per-op rules ----

    def per_op_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in WOQ_PER_OP_FIELDS}

    @property
    def local_config(self) -> Mapping[LocalKey, RTNConfig]:
        """The set_local entries, then INC's fp32 locals for LM heads (unless `quant_lm_head=True`)."""
        local: dict[LocalKey, RTNConfig] = dict(self._local)
        if not self.quant_lm_head:
            for name in LM_HEAD_NAMES:
                local.setdefault(name, RTNConfig(dtype="fp32"))
        return local

    @property
    def implicit_locals(self) -> tuple[LocalKey, ...]:
        """The locals `local_config` adds on its own (no warning when they match no op)."""
        return () if self.quant_lm_head else tuple(k for k in LM_HEAD_NAMES if k not in self._local)

    def set_local(self, key: LocalKey | list[LocalKey] | tuple[LocalKey, ...], cfg: RTNConfig) -> RTNConfig:
        """Use `cfg` (a full RTNConfig, as in INC) for the ops `key` selects (an op type or a name regex)."""
        store_local(self._local, key, cfg, self._check_local)
        return self

    def _check_local(self, key: LocalKey, cfg: object) -> None:
        check_local_entry(key, cfg, RTNConfig, WOQ_PER_OP_FIELDS)

    def op_dict_fields(self, dict_name: str, key: object, entry: object) -> dict[str, Any]:
        """One 2.x weight-only entry, `{"weight": {"bits": 4, "group_size": 32, "scheme": "sym", "algorithm": "RTN"}}`
        (or `{"weight": {"dtype": "fp32"}}`), as RTNConfig field overrides; lists take their first element."""
        where = f"RTNConfig.{dict_name}[{key!r}]"
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys are regular expressions (strings), found {type(key).__name__}")
        compile_key(key, f"{dict_name} key {key!r}")
        out: dict[str, Any] = {}
        for section, items in _mapping(entry, where).items():
            if section == "activation":
                continue  # weight-only: activations stay float whatever 2.x wrote for them
            if section != "weight":
                raise _unknown_key(section, where, ("weight", "activation"))
            for item, raw in _mapping(items, f"{where}.weight").items():
                if item not in _2X_WEIGHT:
                    raise _unknown_key(item, f"{where}.weight", _2X_WEIGHT)
                value = raw[0] if isinstance(raw, (list, tuple)) and raw else raw
                at = f"{where}.weight.{item}={value!r}"
                if item == "algorithm":
                    if str(value).upper() != "RTN":
                        raise ConfigError(f"{at}: an RTNConfig runs RTN; use the config of that algorithm")
                elif item == "scheme":
                    if value not in ("sym", "asym"):
                        raise ConfigError(f"{at}: expected one of sym, asym")
                    out["use_sym"] = value == "sym"
                else:
                    if not _CHECKS[_2X_WEIGHT[item]].ok(value):
                        raise ConfigError(f"{at}: expected {_CHECKS[_2X_WEIGHT[item]].expect}")
                    out[_2X_WEIGHT[item]] = value
        return out

    # ---- dict form ----

    def to_dict(self) -> dict[str, Any]:
        """INC's `{KEY: {"global": {...}, "local": {...}}}` form (locals list only what differs from defaults)."""
        body: dict[str, Any] = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.init}
        for dict_name in ("op_name_dict", "op_type_dict"):
            if not body[dict_name]:
                del body[dict_name]
        out: dict[str, Any] = {"global": body}
        if self._local:
            defaults = RTNConfig().per_op_fields()
            out["local"] = {
                str(getattr(k, "__name__", k)): {n: v for n, v in c.per_op_fields().items() if v != defaults[n]}
                for k, c in self._local.items()
            }
        return {self.KEY: out}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> RTNConfig:
        """From `to_dict`'s form (the KEY level optional); `source` (a file name) is named in every error."""
        body = dict(_mapping(data, source))
        if set(body) == {cls.KEY}:
            body = dict(_mapping(body[cls.KEY], f"{cls.KEY!r} in {source}"))
        body.update(_mapping(body.pop("global", {}), f"'global' in {source}"))
        local = _mapping(body.pop("local", {}), f"'local' in {source}")
        cfg = _construct(body, source, [f.name for f in fields(cls) if f.init], cls)
        for key, entry in local.items():
            where = f"local[{key!r}] in {source}"
            cfg.set_local(key, _construct(_mapping(entry, where), where, WOQ_PER_OP_FIELDS, cls))
        return cfg


def _construct(
    values: Mapping[str, Any], where: str, allowed: list[str] | tuple[str, ...], cls: type[RTNConfig]
) -> RTNConfig:
    cfg: RTNConfig = construct_config(values, where, allowed, cls, _CHECKS)
    return cfg


@dataclass(slots=True)
class GPTQConfig(RTNConfig):
    """GPTQ weight-only quantization: INC 3.x `GPTQConfig`'s fields and defaults on top of RTNConfig's. It needs
    calibration data (the Hessian of each layer's inputs). `act_order` quantizes input channels in order of
    decreasing Hessian diagonal (with `static_groups=True` when grouped); `true_sequential` (re-calibrating after
    each layer) is not implemented and refused."""

    act_order: bool = False
    percdamp: float = 0.01
    block_size: int = 2048
    static_groups: bool = False
    true_sequential: bool = False
    calibration_sampling_size: int = 128
    """Calibration samples the Hessians use (INC 2.x's GPTQ `nsamples` default; 3.x leaves it to `run_fn`)."""

    KEY: ClassVar[str] = "gptq"
    EXTRA_CHECKS: ClassVar[dict[str, _Check]] = {
        "act_order": _BOOL, "static_groups": _BOOL, "true_sequential": _BOOL, "percdamp": _FRACTION,
        "block_size": _int_at_least(1), "calibration_sampling_size": _int_at_least(1),
    }  # fmt: skip


@dataclass(slots=True)
class AWQConfig(RTNConfig):
    """AWQ weight-only quantization: INC 3.x `AWQConfig`'s `use_auto_scale` and `use_auto_clip` (both on) on top of
    RTNConfig's fields. It needs calibration data (each layer input's mean |x| and Hessian)."""

    use_auto_scale: bool = True
    use_auto_clip: bool = True
    calibration_sampling_size: int = 128
    """Calibration samples the statistics use (INC 2.x's AWQ `nsamples` default)."""

    KEY: ClassVar[str] = "awq"
    EXTRA_CHECKS: ClassVar[dict[str, _Check]] = {
        "use_auto_scale": _BOOL, "use_auto_clip": _BOOL, "calibration_sampling_size": _int_at_least(1),
    }  # fmt: skip
