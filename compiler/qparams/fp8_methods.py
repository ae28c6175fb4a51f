"""Every Intel Neural Compressor (INC) Gaudi FP8 scale method as numpy math: a named method or INC's dict form
becomes a `ScaleRecipe`, which turns an activation amax or a weight into its `QuantType` (INC reference §3).

Facts from INC `fp8_quant/_core` (`scale_methods/scale_method_config.py` `scale_method_config_mapping`,
`round_scales_function.py`, `scales_method.py`, `fp_utils.py`, `_quant_common/quant_config.py`):

- scale = maxabs / (fullscale · backoff) (`calc_scale_from_maxabs`), fullscale 240 on Gaudi2 E4M3, 448 on Gaudi3
  E4M3, 57344 for E5M2 (`get_fullscale`); backoff 0.25 for activations and 0.5 for weights in every maxabs method;
  unit_scale and hw_aligned_single_scale are FIXED_VALUE scales, so their backoff (1.0) is never used.
- rounding: POW2 = 2^ceil(log2 s); HW_ALIGNED = POW2, then the exponent rounded up to a multiple of 4 (Gaudi2) or 1
  (Gaudi3) and clamped into the hardware set; HW_ALIGNED_FIXED = the first hardware scale; SCALE_UNIT = 1.
- `*_opt_weight` per tensor (`OptScalesPts`, `mmse_scale`): the candidate s of least ||w - dq(q(w/s))||; the list
  is absolute scales (the hardware set, or 2^-10 ... 2^9), backoff and maxabs are not used, and a tie goes to the
  later candidate (`err <= best`).
- `*_weights_pcs_opt_pow2` (`OptScalesPcs`, `mmse_scale_multi`): per output channel independently, candidates
  base·2^k for k in -3..4 where base is the channel's POW2 maxabs scale (backoff 0.5); the error is summed over the
  channel; a tie keeps the earlier (smaller) multiplier (`err < best`).

Where quantir departs from INC, and why:
- INC's HW_ALIGNED, HW_ALIGNED_FIXED and the maxabs_hw_opt_weight list always use the E4M3 set
  (`FP8_143_SCALES`), whatever the dtype. quantir uses the dtype's own set (`gaudi_scale_set`, INC
  `EXP_BIAS_SETS`), so Gaudi3 E5M2 hw scales lie in [2^-47, 2^15] (INC: [2^-55, 2^7]) and hw_single is 2^15 (INC:
  128); Gaudi2 E5M2, whose set is {1}, refuses hardware-aligned rounding (`check_recipe`).
- A zero amax gives scale 1 (pow2, arbitrary) or the smallest hw scale, as `compute_fp8_scale`; INC gives 0 for a
  per-tensor pow2 scale and floors a per-channel one at bfloat16's tiny (2^-126).
- Candidates are rounded before the search (INC rounds the winner after); the same for INC's default lists.
- The MSE search models Gaudi2's E4M3 range by saturating w/s at 240 (the reason INC's Gaudi2 fullscale is 240)
  before the float8_e4m3fn cast.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, get_args

import numpy as np

from quantir.compiler.qparams.scales import _HW_EXPONENTS, ScaleSet, _round_scale, compute_fp8_scale, fp8_fullscale
from quantir.ir import ConfigError, DType, Granularity, PassError, QuantType, Scheme
from quantir.ir.quant_math import fake_quantize

__all__ = [
    "DYNAMIC_ONLY", "SCALE_METHODS", "Device", "Rounding", "ScaleRecipe", "TensorRecipe", "activation_scale",
    "check_recipe", "gaudi_scale_set", "scale_recipe", "weight_scale",
]  # fmt: skip

Device: TypeAlias = Literal["gaudi2", "gaudi3"]
Rounding: TypeAlias = Literal["unit", "hw_single", "hw", "pow2", "arbitrary", "fixed"]

_DEVICES: tuple[str, ...] = get_args(Device)
_ROUNDINGS: tuple[str, ...] = get_args(Rounding)
_INC_DTYPE_NAMES = {DType.F8E4M3FN: "E4M3", DType.F8E5M2: "E5M2"}
_HW_ROUNDINGS = frozenset({"hw", "hw_single"})
_FIXED_ROUNDINGS = frozenset({"unit", "hw_single", "fixed"})
_OPT_POW2_SCALES = tuple(2.0**k for k in range(-10, 10))  # maxabs_pow2_opt_weight: 2^-10 ... 2^9
_OPT_PCS_MULTIPLIERS = tuple(2.0**k for k in range(-3, 5))  # *_weights_pcs_opt_pow2: base · 2^-3 ... base · 2^4
_GAUDI2_E4M3_MAX = 240.0


@dataclass(frozen=True, slots=True)
class TensorRecipe:
    """How one tensor (activation or weight) gets its scale.

    `opt` (weights only): MSE search; `candidates` overrides INC's list (absolute scales per tensor, multipliers of
    the channel's pow2 maxabs scale per channel; INC dict form `params.weight_scales`). `value`: the scale of
    rounding "fixed".
    """

    rounding: Rounding
    per_channel: bool = False
    opt: bool = False
    backoff: float = 1.0
    value: float | None = None
    candidates: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class ScaleRecipe:
    """An INC scale method: its name ("dict" for the dict form) and the recipe of each tensor role."""

    method: str
    activation: TensorRecipe
    weight: TensorRecipe


def _method(name: str, act: Rounding, weight: TensorRecipe) -> tuple[str, ScaleRecipe]:
    act_backoff = 1.0 if act in _FIXED_ROUNDINGS else 0.25
    return name, ScaleRecipe(name, TensorRecipe(act, backoff=act_backoff), weight)


SCALE_METHODS: Mapping[str, ScaleRecipe] = MappingProxyType(dict([
    _method("unit_scale", "unit", TensorRecipe("unit")),
    _method("hw_aligned_single_scale", "hw_single", TensorRecipe("hw_single")),
    _method("maxabs_hw", "hw", TensorRecipe("hw", backoff=0.5)),
    _method("maxabs_pow2", "pow2", TensorRecipe("pow2", backoff=0.5)),
    _method("maxabs_hw_opt_weight", "hw", TensorRecipe("hw", opt=True, backoff=0.5)),
    _method("maxabs_pow2_opt_weight", "pow2", TensorRecipe("pow2", opt=True, backoff=0.5)),
    _method("maxabs_arbitrary", "arbitrary", TensorRecipe("arbitrary", backoff=0.5)),
    _method("act_maxabs_hw_weights_pcs_maxabs_pow2", "hw", TensorRecipe("pow2", per_channel=True, backoff=0.5)),
    _method("act_maxabs_hw_weights_pcs_opt_pow2", "hw", TensorRecipe("pow2", True, True, 0.5)),
    _method("act_maxabs_pow2_weights_pcs_maxabs_pow2", "pow2", TensorRecipe("pow2", per_channel=True, backoff=0.5)),
    _method("act_maxabs_pow2_weights_pcs_opt_pow2", "pow2", TensorRecipe("pow2", True, True, 0.5)),
]))  # fmt: skip
"""Every static INC method (enum `ScaleMethodString`) -> its recipe."""

# INC quant_config.SUPPORTED_DYNAMIC_QUANTIZATION_SCALES, with the static method closest to each.
_DYNAMIC_SUGGESTION = {
    "act_maxabs_pcs_pow2_weight_maxabs_pts_pow2_hw": "maxabs_hw or maxabs_pow2",
    "maxabs_pcs_pow2": "act_maxabs_pow2_weights_pcs_maxabs_pow2",
}
DYNAMIC_ONLY: frozenset[str] = frozenset(_DYNAMIC_SUGGESTION)


def _check_target(dtype: DType, device: str) -> None:
    if dtype not in _INC_DTYPE_NAMES:
        names = ", ".join(f"{d.value} (INC {n})" for d, n in _INC_DTYPE_NAMES.items())
        raise ConfigError(f"fp8 dtype {dtype.value!r} has no INC Gaudi scale method; expected {names}")
    if device not in _DEVICES:
        raise ConfigError(f"device {device!r} has no Gaudi FP8 scales; expected one of {', '.join(_DEVICES)}")


def gaudi_scale_set(device: Device, dtype: DType) -> np.ndarray:
    """The hardware-aligned scales 2^(default_bias - bias) of INC `EXP_BIAS_SETS`, descending (float32).

    Gaudi2 E4M3 [16, 1, 1/16, 1/256]; Gaudi3 E4M3 2^7 ... 2^-55; Gaudi2 E5M2 [1]; Gaudi3 E5M2 2^15 ... 2^-47.
    """
    _check_target(dtype, device)
    lo, hi, step = _HW_EXPONENTS[(device, dtype)]
    return np.exp2(np.arange(hi, lo - 1, -step, dtype=np.float64)).astype(np.float32)


# ---- recipes --------------------------------------------------------------------------------------------------------


def scale_recipe(
    method: str | Mapping[str, Any], *, node: str = "", layer: int | None = None, layer_type: str = ""
) -> ScaleRecipe:
    """The recipe of a named INC method (case-insensitive), or of the INC dict form for one node.

    Dict form: {"default": {"weight": F, "activation": F}, "nodes": {name: ...}, "layers": {"<idx>": ...},
    "layer_types": {type: ...}}, F = {granularity: PTS|PCS, scale_value_type: MAXABS|OPT|FIXED_VALUE,
    rounding_method: IDENTITY|POW2|HW_ALIGNED|HW_ALIGNED_FIXED|SCALE_UNIT, backoff (default 1.0),
    params: {weight_scales: [...], value: v}}; values case-insensitive. Lookup: `node`, then the layer index (`layer`,
    else INC's `layers.N` / `layers/N` in the node name), then `layer_type`, then default; an override takes the
    default's field for each field it omits (INC `dict_to_scale_method_config`). FIXED_VALUE with IDENTITY and
    params.value is quantir's "fixed" scale (INC has no user fixed value).
    """
    if isinstance(method, str):
        return _named_recipe(method)
    if isinstance(method, Mapping):
        return _dict_recipe(method, node, layer, layer_type)
    raise ConfigError(f"scale_method must be a method name or a dict form; found {type(method).__name__}")


def _named_recipe(method: str) -> ScaleRecipe:
    name = method.strip().lower()
    if name in SCALE_METHODS:
        return SCALE_METHODS[name]
    if name in DYNAMIC_ONLY:
        raise ConfigError(
            f"scale_method {method!r} is allowed only with dynamic quantization; quantir's FP8 is static (scales "
            f"are calibrated once), so use a static method such as {_DYNAMIC_SUGGESTION[name]}"
        )
    close = difflib.get_close_matches(name, [*SCALE_METHODS, *DYNAMIC_ONLY], n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(
        f"scale_method {method!r} is not an INC FP8 scale method; {hint}valid: {', '.join(SCALE_METHODS)}, or the "
        "dict form {'default': {'weight': {...}, 'activation': {...}}}"
    )


_TOP_KEYS = ("default", "nodes", "layers", "layer_types")
_ROLES = ("weight", "activation")
_FIELDS = ("granularity", "scale_value_type", "rounding_method", "backoff", "params")
_ENUMS: dict[str, tuple[str, ...]] = {
    "granularity": ("PTS", "PCS"),
    "scale_value_type": ("MAXABS", "FIXED_VALUE", "OPT", "DUMMY_SCALES"),
    "rounding_method": ("IDENTITY", "POW2", "HW_ALIGNED", "HW_ALIGNED_FIXED", "SCALE_UNIT"),
}
_ROUNDING_OF: dict[str, Rounding] = {
    "IDENTITY": "arbitrary", "POW2": "pow2", "HW_ALIGNED": "hw", "HW_ALIGNED_FIXED": "hw_single", "SCALE_UNIT": "unit",
}  # fmt: skip
_PARAMS = ("weight_scales", "value")
_LAYER_IN_NAME = (re.compile(r"layers\.(\d+)"), re.compile(r"layers/(\d+)"))  # INC CfgStr.LAYERS_*_PATTERN

_Fields: TypeAlias = dict[str, Any]


def _mapping(raw: object, path: str) -> Mapping[Any, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"scale_method.{path} must be a dict; found {type(raw).__name__} {raw!r}")
    return raw


def _known_keys(raw: Mapping[Any, Any], allowed: tuple[str, ...], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k = str(key).strip().lower()
        if k not in allowed:
            raise ConfigError(f"scale_method.{path}{key} is not a dict-form key; expected one of {', '.join(allowed)}")
        out[k] = value
    return out


def _positive(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"scale_method.{path} = {value!r} must be a finite number > 0")
    return float(value)


def _parse_fields(raw: object, path: str) -> _Fields:
    fields = _known_keys(_mapping(raw, path), _FIELDS, f"{path}.")
    for key, allowed in _ENUMS.items():
        if key in fields:
            v = fields[key]
            name = v.strip().upper() if isinstance(v, str) else None
            if name not in allowed:
                raise ConfigError(f"scale_method.{path}.{key} = {v!r} is not one of {', '.join(allowed)}")
            fields[key] = name
    if "backoff" in fields:
        fields["backoff"] = _positive(fields["backoff"], f"{path}.backoff")
    if "params" in fields:
        params = _known_keys(_mapping(fields["params"], f"{path}.params"), _PARAMS, f"{path}.params.")
        if "value" in params:
            params["value"] = _positive(params["value"], f"{path}.params.value")
        if "weight_scales" in params:
            scales = params["weight_scales"]
            if isinstance(scales, (str, bytes)) or not hasattr(scales, "__iter__") or not list(scales):
                raise ConfigError(f"scale_method.{path}.params.weight_scales = {scales!r} must be a non-empty list")
            p = f"{path}.params.weight_scales"
            params["weight_scales"] = tuple(_positive(s, f"{p}[{i}]") for i, s in enumerate(scales))
        fields["params"] = params
    return fields


def _tensor_recipe(fields: _Fields, role: str, path: str) -> TensorRecipe:
    kind = fields.get("scale_value_type", "MAXABS")
    rounding_method = fields.get("rounding_method", "IDENTITY")
    params: dict[str, Any] = fields.get("params", {})
    per_channel = fields.get("granularity", "PTS") == "PCS"
    if role == "activation" and per_channel:
        raise ConfigError(
            f"scale_method.{path}.granularity = PCS: per-channel activation scales are allowed only with dynamic "
            "quantization; quantir's FP8 is static, use PTS"
        )
    if kind == "DUMMY_SCALES":
        raise ConfigError(f"scale_method.{path}.scale_value_type = DUMMY_SCALES is INC's dummy measurement; use "
                          "FIXED_VALUE with SCALE_UNIT (unit_scale)")  # fmt: skip
    if kind == "OPT" and role == "activation":
        raise ConfigError(f"scale_method.{path}.scale_value_type = OPT searches weights only; use MAXABS")
    fixed = kind == "FIXED_VALUE" and rounding_method == "IDENTITY"
    if fixed and "value" not in params:
        raise ConfigError(f"scale_method.{path}: FIXED_VALUE with rounding_method IDENTITY needs params.value, the "
                          "scale; or use SCALE_UNIT (1) or HW_ALIGNED_FIXED (the largest hardware scale)")  # fmt: skip
    if "value" in params and not fixed:
        raise ConfigError(f"scale_method.{path}.params.value applies only to FIXED_VALUE with IDENTITY rounding")
    if "weight_scales" in params and kind != "OPT":
        raise ConfigError(f"scale_method.{path}.params.weight_scales applies only to scale_value_type OPT")
    recipe = TensorRecipe(
        "fixed" if fixed else _ROUNDING_OF[rounding_method],
        per_channel=per_channel,
        opt=kind == "OPT",
        backoff=fields.get("backoff", 1.0),
        value=params.get("value"),
        candidates=params.get("weight_scales"),
    )
    _check_tensor(recipe, role, f"scale_method.{path}")
    return recipe


def _parse_entry(raw: object, path: str, default: Mapping[str, _Fields]) -> tuple[TensorRecipe, TensorRecipe]:
    entry = _known_keys(_mapping(raw, path), _ROLES, f"{path}.")
    act = {**default["activation"], **_parse_fields(entry.get("activation", {}), f"{path}.activation")}
    weight = {**default["weight"], **_parse_fields(entry.get("weight", {}), f"{path}.weight")}
    return _tensor_recipe(act, "activation", f"{path}.activation"), _tensor_recipe(weight, "weight", f"{path}.weight")


def _dict_recipe(form: Mapping[str, Any], node: str, layer: int | None, layer_type: str) -> ScaleRecipe:
    top = _known_keys(form, _TOP_KEYS, "")
    if "default" not in top:
        raise ConfigError("scale_method dict form needs a 'default' entry {'weight': {...}, 'activation': {...}}")
    raw_default = _known_keys(_mapping(top["default"], "default"), _ROLES, "default.")
    default = {r: _parse_fields(raw_default.get(r, {}), f"default.{r}") for r in _ROLES}
    chosen = _parse_entry(top["default"], "default", {r: {} for r in _ROLES})
    sections: dict[str, dict[str, tuple[TensorRecipe, TensorRecipe]]] = {}
    for section in ("nodes", "layers", "layer_types"):
        entries: dict[str, tuple[TensorRecipe, TensorRecipe]] = {}
        for key, raw in _mapping(top.get(section, {}), section).items():
            if section == "layers" and (isinstance(key, bool) or not (isinstance(key, int) or str(key).isdigit())):
                raise ConfigError(f"scale_method.layers.{key} must be a layer index such as '3'")
            entries[str(key)] = _parse_entry(raw, f"{section}.{key}", default)
        sections[section] = entries
    index = layer if layer is not None else _layer_index(node)
    layer_key = None if index is None else str(index)
    for section, key in (("nodes", node), ("layers", layer_key), ("layer_types", layer_type)):
        if key and key in sections[section]:
            chosen = sections[section][key]
            break
    return ScaleRecipe("dict", activation=chosen[0], weight=chosen[1])


def _layer_index(node: str) -> int | None:
    for pattern in _LAYER_IN_NAME:
        if match := pattern.search(node):
            return int(match.group(1))
    return None


def _check_tensor(t: TensorRecipe, role: str, where: str) -> None:
    if t.rounding not in _ROUNDINGS:
        raise ConfigError(f"{where}: {role} rounding {t.rounding!r} is not one of {', '.join(_ROUNDINGS)}")
    if not (math.isfinite(t.backoff) and t.backoff > 0):
        raise ConfigError(f"{where}: {role} backoff {t.backoff!r} must be a finite number > 0")
    if (t.rounding == "fixed") != (t.value is not None):
        raise ConfigError(f"{where}: {role} value {t.value!r} goes with rounding 'fixed' only, and 'fixed' needs it")
    if t.value is not None and not (math.isfinite(t.value) and t.value > 0):
        raise ConfigError(f"{where}: {role} fixed scale {t.value!r} must be a finite number > 0")
    if role == "activation" and t.per_channel:
        raise ConfigError(f"{where}: per-channel activation scales are allowed only with dynamic quantization; "
                          "quantir's FP8 is static")  # fmt: skip
    if role == "activation" and t.opt:
        raise ConfigError(f"{where}: the MSE search (opt) applies to weights only")
    if t.opt and t.rounding not in (("pow2",) if t.per_channel else ("pow2", "hw")):
        allowed = "'pow2' per channel" if t.per_channel else "'pow2' or 'hw'"
        raise ConfigError(f"{where}: an opt {role} scale needs rounding {allowed}; found {t.rounding!r}")
    if t.candidates is not None and (not t.opt or not t.candidates):
        raise ConfigError(f"{where}: {role} candidates {t.candidates!r} need opt=True and at least one scale")
    if t.candidates is not None and not all(math.isfinite(c) and c > 0 for c in t.candidates):
        raise ConfigError(f"{where}: {role} candidates {t.candidates!r} must be finite numbers > 0")


def check_recipe(recipe: ScaleRecipe, dtype: DType, device: Device) -> None:
    """Raise `ConfigError` if `recipe` cannot give scales for `dtype` on `device`.

    Gaudi2 E5M2's hardware set is {1}, so hardware-aligned rounding (hw, hw_single) is refused there.
    """
    _check_target(dtype, device)
    where = f"scale method {recipe.method!r}"
    _check_tensor(recipe.activation, "activation", where)
    _check_tensor(recipe.weight, "weight", where)
    hw = [f"{r} rounding {t.rounding!r}" for r, t in (("activation", recipe.activation), ("weight", recipe.weight))
          if t.rounding in _HW_ROUNDINGS]  # fmt: skip
    if device == "gaudi2" and dtype is DType.F8E5M2 and hw:
        raise ConfigError(
            f"{where} uses hardware-aligned scales ({', '.join(hw)}), but the Gaudi2 E5M2 hardware scale set is {{1}} "
            "(INC EXP_BIAS_SETS: bias 15 only); use maxabs_pow2, maxabs_arbitrary or unit_scale, or device 'gaudi3'"
        )


# ---- scales ---------------------------------------------------------------------------------------------------------


def _scale_set(rounding: Rounding, device: Device) -> ScaleSet:
    """The `compute_fp8_scale` rounding of a maxabs recipe; fixed roundings compute "arbitrary" and replace it."""
    if rounding == "hw":
        return device
    return "pow2" if rounding == "pow2" else "arbitrary"


def _qtype(scale: np.ndarray, dtype: DType, g: Granularity) -> QuantType:
    s = np.asarray(scale, dtype=np.float32)
    return QuantType(dtype, Scheme.SYM, g, s, np.zeros(s.shape), 0, 0, "maxabs")


def _fixed_scale(t: TensorRecipe, dtype: DType, device: Device) -> float:
    if t.rounding == "unit":
        return 1.0
    if t.rounding == "hw_single":
        return float(gaudi_scale_set(device, dtype)[0])
    assert t.value is not None  # _check_tensor: "fixed" has a value
    return t.value


def _from_amax(t: TensorRecipe, amax: np.ndarray, dtype: DType, device: Device, g: Granularity) -> QuantType:
    """s = amax / (fullscale · backoff), rounded; or the fixed scale of unit / hw_single / fixed."""
    q = compute_fp8_scale(amax, dtype, fullscale=fp8_fullscale(dtype, device), scale_set=_scale_set(t.rounding, device),
                          backoff=t.backoff, granularity=g, observer="maxabs")  # fmt: skip
    if t.rounding in _FIXED_ROUNDINGS:
        return _qtype(np.full(q.scale.shape, _fixed_scale(t, dtype, device)), dtype, g)
    return q


def activation_scale(recipe: ScaleRecipe, amax: float, dtype: DType, device: Device) -> QuantType:
    """Per-tensor activation scale from the calibrated max |x| (INC `MaxAbsPts.calc_scale_from_measurement`)."""
    check_recipe(recipe, dtype, device)
    return _from_amax(recipe.activation, np.asarray(amax, dtype=np.float64), dtype, device, Granularity.per_tensor())


def weight_scale(recipe: ScaleRecipe, weight: np.ndarray, out_axis: int, dtype: DType, device: Device) -> QuantType:
    """Weight scale: per tensor, or per channel along `out_axis` (Granularity.per_channel(out_axis)).

    maxabs: max |w| (per channel: over every axis but `out_axis`) into the activation formula with the weight
    backoff. opt: the MSE search of `_opt_per_tensor` / `_opt_per_channel`.
    """
    check_recipe(recipe, dtype, device)
    t = recipe.weight
    w = np.asarray(weight, dtype=np.float32)
    if not np.isfinite(w).all():
        raise PassError(f"weight of shape {w.shape} has NaN or Inf values; its FP8 scale is undefined")
    if t.per_channel:
        if not -w.ndim <= out_axis < w.ndim:
            raise PassError(f"out_axis {out_axis} is out of range for a weight of shape {w.shape}")
        axis = out_axis % w.ndim
        g = Granularity.per_channel(out_axis)
        amax = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis), initial=0.0)
        if t.opt:
            return _opt_per_channel(t, w, amax, axis, dtype, device, g)
    else:
        g = Granularity.per_tensor()
        amax = np.asarray(np.abs(w).max(initial=0.0))
        if t.opt:
            return _opt_per_tensor(t, w, dtype, device)
    return _from_amax(t, amax.astype(np.float64), dtype, device, g)


def _squared_error(w: np.ndarray, q: QuantType, scale: np.ndarray, device: Device) -> np.ndarray:
    """(w - fake_quantize(w))^2 in float64; on Gaudi2 E4M3 w/s first saturates at 240 (the hardware's range)."""
    x = w
    if device == "gaudi2" and q.dtype is DType.F8E4M3FN:
        limit = _GAUDI2_E4M3_MAX * scale.astype(np.float32)
        x = np.clip(w, -limit, limit)
    return np.square(fake_quantize(x, q).astype(np.float64) - w.astype(np.float64))


def _opt_per_tensor(t: TensorRecipe, w: np.ndarray, dtype: DType, device: Device) -> QuantType:
    """argmin_s ||w - dq(q(w/s))|| over absolute candidates (hw: the device set; pow2: 2^-10 ... 2^9), each rounded
    like `t`; a tie goes to the later candidate (INC `mmse_scale`)."""
    scale_set = _scale_set(t.rounding, device)
    default = gaudi_scale_set(device, dtype) if t.rounding == "hw" else _OPT_POW2_SCALES
    candidates = _round_scale(np.asarray(t.candidates or default, dtype=np.float64), dtype, scale_set)
    g = Granularity.per_tensor()
    best, best_err = float(candidates[0]), math.inf
    for s in candidates.astype(np.float32):
        q = _qtype(s, dtype, g)
        err = float(_squared_error(w, q, q.scale, device).sum())
        if err <= best_err:
            best, best_err = float(s), err
    return _qtype(np.asarray(best), dtype, g)


def _opt_per_channel(
    t: TensorRecipe, w: np.ndarray, amax: np.ndarray, axis: int, dtype: DType, device: Device, g: Granularity
) -> QuantType:
    """Per channel c: argmin over m of sum_c (w - dq(q(w/(base_c·m))))^2, base_c = pow2(amax_c / (fullscale ·
    backoff)) (1 for a zero channel), m in 2^-3 ... 2^4; a tie keeps the earlier multiplier (INC
    `mmse_scale_multi`)."""
    base = compute_fp8_scale(amax.astype(np.float64), dtype, fullscale=fp8_fullscale(dtype, device),
                             scale_set="pow2", backoff=t.backoff, granularity=g).scale.astype(np.float64)  # fmt: skip
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    shape = [-1 if i == axis else 1 for i in range(w.ndim)]
    best, best_err = base.copy(), np.full(base.shape, np.inf)
    for m in t.candidates or _OPT_PCS_MULTIPLIERS:
        s = _round_scale(base * m, dtype, "pow2").astype(np.float32)
        q = _qtype(s, dtype, g)
        err = _squared_error(w, q, s.reshape(shape), device).sum(axis=reduce)
        better = err < best_err
        best, best_err = np.where(better, s, best), np.where(better, err, best_err)
    return _qtype(best, dtype, g)
