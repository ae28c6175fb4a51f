"""User configs: INC defaults, every validation message, set_local/2.x precedence, file round trips, resolution
errors and warnings, and the reasons shown to users."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from quantir.compiler.config.quant_config import (
    ConfigWarning,
    FP8Config,
    StaticQuantConfig,
    load_config,
    save_config,
)
from quantir.compiler.config.resolve import OpRef, QuantRequest, ResolvedOpConfig, resolve_op_configs
from quantir.compiler.config.weight_only_config import RTNConfig
from quantir.ir.dtypes import DType
from quantir.ir.errors import ConfigError
from quantir.ir.types import Granularity, GranularityKind, QuantSpec, Scheme

LINEAR = "torch.nn.modules.linear.Linear"
CONV2D = "torch.nn.modules.conv.Conv2d"
OPS = [
    OpRef(0, "Conv", "node_conv1", "conv1", CONV2D),
    OpRef(1, "Gemm", "node_fc1", "fc1", LINEAR),
    OpRef(2, "Gemm", "node_fc2", "fc2", LINEAR),
    OpRef(3, "Relu", "node_relu", None, None),
    OpRef(4, "MatMul", "/head/MatMul", "head.proj", "mymodels.blocks.MyProj"),
]
FP32 = {"w_dtype": "fp32", "act_dtype": "fp32"}
GLOBAL_REASON = "global config -> weights int8 sym per_channel minmax, activations uint8 asym per_tensor mse"


def fp32() -> StaticQuantConfig:
    return StaticQuantConfig(w_dtype="fp32", act_dtype="fp32")


@contextmanager
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def resolve(cfg: StaticQuantConfig, ops: list[OpRef] | None = None, **kw: Any) -> dict[str, ResolvedOpConfig]:
    with no_warnings():
        return {r.op.module_path or r.op.name: r for r in resolve_op_configs(cfg, OPS if ops is None else ops, **kw)}


# ---- defaults ------------------------------------------------------------------------------------------------------


def test_static_defaults_are_incs_except_where_quantir_measured_better() -> None:
    """INC's defaults, except act_algo 'mse' (INC: 'minmax') and SmoothQuant: None (on where the IR has
    transformer blocks; INC: False) with alpha None (INC's 0.5 when smooth_quant=True, 0.95 when transformer
    blocks turned it on). The reasons are measured in quant_config.py and recipes.py."""
    d = StaticQuantConfig().to_dict()
    assert d == {
        "w_dtype": "int8", "w_sym": True, "w_granularity": "per_channel", "w_algo": "minmax",
        "act_dtype": "uint8", "act_sym": False, "act_granularity": "per_tensor", "act_algo": "mse",
        "excluded_precisions": [], "reduce_range": None, "percentile": 99.999, "calibration_sampling_size": 100,
        "smooth_quant": None, "smooth_quant_alpha": None,
    }  # fmt: skip


def test_rtn_and_fp8_defaults_are_incs() -> None:
    r = RTNConfig()
    assert (r.dtype, r.bits, r.use_sym, r.group_size, r.group_dim) == ("int", 4, True, 32, 1)
    assert (r.use_double_quant, r.double_quant_bits, r.double_quant_group_size, r.quant_lm_head) == (
        False,
        8,
        256,
        False,
    )
    f = FP8Config()
    assert (f.fp8_config, f.hp_dtype, f.mode, f.scale_method, f.observer) == (
        "E4M3",
        "bf16",
        "AUTO",
        "maxabs_hw",
        "maxabs",
    )
    assert (f.measure_exclude, f.scale_format, f.dump_stats_path) == ("OUTPUT", "scalar", "./hqt_output/measure")


# ---- validation messages -------------------------------------------------------------------------------------------

DTYPES = "int8, uint8, int4, uint4, int16, uint16, fp8_e4m3, fp8_e5m2, fp32, bf16, fp16"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"act_algo": "avg"}, "StaticQuantConfig.act_algo='avg': expected one of minmax, kl, percentile, mse"),
        ({"w_algo": "kl"}, "StaticQuantConfig.w_algo='kl': expected one of minmax"),
        ({"w_dtype": "int3"}, f"StaticQuantConfig.w_dtype='int3': expected one of {DTYPES}"),
        ({"act_dtype": "s8"}, f"StaticQuantConfig.act_dtype='s8': expected one of {DTYPES}"),
        ({"w_sym": "yes"}, "StaticQuantConfig.w_sym='yes': expected True or False"),
        ({"act_sym": 1}, "StaticQuantConfig.act_sym=1: expected True or False"),
        (
            {"w_granularity": "per_group"},
            "StaticQuantConfig.w_granularity='per_group': expected one of per_channel, per_tensor",
        ),
        (
            {"act_granularity": "tensor"},
            "StaticQuantConfig.act_granularity='tensor': expected one of per_channel, per_tensor",
        ),
        (
            {"excluded_precisions": ["int8"]},
            "StaticQuantConfig.excluded_precisions=['int8']: expected a list drawn from bf16, fp16",
        ),
        (
            {"excluded_precisions": "bf16"},
            "StaticQuantConfig.excluded_precisions='bf16': expected a list drawn from bf16, fp16",
        ),
        (
            {"reduce_range": "auto"},
            "StaticQuantConfig.reduce_range='auto': expected True, False or None (None: decide from the CPU's ISA)",
        ),
        ({"percentile": 0}, "StaticQuantConfig.percentile=0: expected a number in (0, 100]"),
        ({"percentile": 100.5}, "StaticQuantConfig.percentile=100.5: expected a number in (0, 100]"),
        ({"calibration_sampling_size": 0}, "StaticQuantConfig.calibration_sampling_size=0: expected an int >= 1"),
        ({"calibration_sampling_size": True}, "StaticQuantConfig.calibration_sampling_size=True: expected an int >= 1"),
        ({"op_name_dict": []}, "StaticQuantConfig.op_name_dict=[]: expected a dict"),
        ({"act_dtype": "fp8_e4m3"}, "StaticQuantConfig.act_sym=False: fp8_e4m3 is symmetric only; set act_sym=True"),
        (
            {"w_dtype": "fp8_e5m2", "w_sym": False},
            "StaticQuantConfig.w_sym=False: fp8_e5m2 is symmetric only; set w_sym=True",
        ),
        (
            {"act_dtype": "bf16", "excluded_precisions": ["bf16"]},
            "StaticQuantConfig.act_dtype='bf16': bf16 is in excluded_precisions",
        ),
    ],
)
def test_static_validation_names_field_value_and_allowed(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        StaticQuantConfig(**kwargs)
    assert str(e.value) == message


def test_validate_catches_assignment_after_construction() -> None:
    cfg = StaticQuantConfig()
    cfg.act_algo = "avg"
    with pytest.raises(ConfigError, match=r"StaticQuantConfig.act_algo='avg'"):
        resolve_op_configs(cfg, OPS)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"activation": {"scheme": ["both"]}},
            "op_name_dict['fc1'].activation.scheme='both': expected one of sym, asym",
        ),
        (
            {"activation": {"algorithm": ["avg"]}},
            "op_name_dict['fc1'].activation.algorithm='avg': expected one of minmax, kl, percentile, mse",
        ),
        ({"weight": {"dtype": []}}, "op_name_dict['fc1'].weight.dtype=[]: expected a value or a non-empty list"),
        ({"weights": {"dtype": ["fp32"]}}, "unknown key 'weights' in op_name_dict['fc1']; did you mean 'weight'?"),
        ({"weight": {"dtypes": ["fp32"]}}, "unknown key 'dtypes' in op_name_dict['fc1'].weight; did you mean 'dtype'?"),
        ({"weight": "fp32"}, "op_name_dict['fc1'].weight: expected a mapping, found str 'fp32'"),
    ],
)
def test_2x_entry_validation(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        StaticQuantConfig(op_name_dict={"fc1": entry})
    assert str(e.value) == message


def test_2x_invalid_regex_key() -> None:
    with pytest.raises(ConfigError, match=r"op_name_dict key 'fc\[' is not a valid regular expression: unterminated"):
        StaticQuantConfig(op_name_dict={"fc[": {"weight": {"dtype": "fp32"}}})


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (RTNConfig, {"bits": 9}, "RTNConfig.bits=9: expected an int in [1, 8]"),
        (RTNConfig, {"group_size": 0}, "RTNConfig.group_size=0: expected an int >= 1 or -1"),
        (RTNConfig, {"use_sym": "true"}, "RTNConfig.use_sym='true': expected True or False"),
        (
            RTNConfig,
            {"dtype": "int3"},
            "RTNConfig.dtype='int3': expected one of int, int8, int4, nf4, fp4, fp4_e2m1_bnb, fp4_e2m1, fp8_e5m2, "
            "fp8_e5m2fnuz, fp8_e4m3fn, fp8_e4m3fnuz, fp32",
        ),
        (FP8Config, {"fp8_config": "E3M4"}, "FP8Config.fp8_config='E3M4': expected one of E4M3, E5M2"),
        (FP8Config, {"hp_dtype": "fp64"}, "FP8Config.hp_dtype='fp64': expected one of bf16, fp16, fp32"),
        (
            FP8Config,
            {"mode": "auto"},
            "FP8Config.mode='auto': expected one of AUTO, MEASURE, QUANTIZE, LOAD, SHAPE, NONE",
        ),
        (
            FP8Config,
            {"measure_exclude": "BOTH"},
            "FP8Config.measure_exclude='BOTH': expected one of NONE, INPUT, OUTPUT, PARAMS, ALL",
        ),
        (
            FP8Config,
            {"observer": "minmax"},
            "FP8Config.observer='minmax': expected one of maxabs, maxabs_per_channel, shape, save",
        ),
        (FP8Config, {"allowlist": {"name": []}}, "unknown key 'name' in FP8Config.allowlist; did you mean 'names'?"),
    ],
)
def test_rtn_and_fp8_validation(cls: type, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        cls(**kwargs)
    assert str(e.value) == message


def test_fp8_scale_method_lists_the_methods() -> None:
    with pytest.raises(ConfigError, match=r"FP8Config.scale_method='maxabs': .* did you mean maxabs_hw, maxabs_pow2\? "
                       r"valid: unit_scale, hw_aligned_single_scale, maxabs_hw"):  # fmt: skip
        FP8Config(scale_method="maxabs")
    with pytest.raises(ConfigError, match=r"'maxabs_pcs_pow2' is allowed only with dynamic quantization"):
        FP8Config(scale_method="maxabs_pcs_pow2")
    assert FP8Config(scale_method={"default": {}}).scale_method == {"default": {}}


@pytest.mark.parametrize(
    ("key", "cfg", "message"),
    [
        ("fc1", RTNConfig(), "set_local('fc1'): the config must be a StaticQuantConfig, found RTNConfig"),
        (
            "fc1",
            StaticQuantConfig(calibration_sampling_size=8),
            "set_local('fc1'): calibration_sampling_size is set on the global config only, not in a local config",
        ),
        ("", fp32(), "set_local key '': expected an op type or a name regex"),
        (3, fp32(), "set_local key 3: expected a string, a class or a function"),
    ],
)
def test_set_local_argument_errors(key: Any, cfg: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        StaticQuantConfig().set_local(key, cfg)
    assert str(e.value) == message


def test_set_local_invalid_regex_names_key_and_re_message() -> None:
    with pytest.raises(ConfigError) as e:
        StaticQuantConfig().set_local("layer1.(conv", fp32())
    assert str(e.value) == (
        "set_local key 'layer1.(conv' is not a valid regular expression: "
        "missing ), unterminated subpattern at position 7"
    )


def test_local_config_cannot_nest() -> None:
    inner = fp32().set_local("fc1", fp32())
    with pytest.raises(
        ConfigError, match=r"set_local\('fc2'\): a local config cannot have set_local entries of its own"
    ):
        StaticQuantConfig().set_local("fc2", inner)


# ---- resolution: precedence ----------------------------------------------------------------------------------------


def test_global_config_everywhere_without_rules() -> None:
    r = resolve(StaticQuantConfig())
    assert all(x.quantize and x.reason == GLOBAL_REASON for x in r.values())
    assert r["fc1"].weight == QuantRequest(DType.I8, Scheme.SYM, GranularityKind.PER_CHANNEL, "minmax")
    assert r["fc1"].activation == QuantRequest(DType.U8, Scheme.ASYM, GranularityKind.PER_TENSOR, "mse")


@pytest.mark.parametrize("name_first", [True, False])
def test_name_beats_type_regardless_of_order(name_first: bool) -> None:
    cfg = StaticQuantConfig()
    rules = [("fc1", fp32()), ("Gemm", StaticQuantConfig(act_sym=True))]
    for key, local in rules if name_first else rules[::-1]:
        cfg.set_local(key, local)
    r = resolve(cfg)
    assert not r["fc1"].quantize
    assert r["fc1"].reason == "set_local('fc1') -> fp32 (fallback) (overrides set_local('Gemm'))"
    assert r["fc2"].activation is not None and r["fc2"].activation.scheme is Scheme.SYM
    assert (
        r["fc2"].reason
        == "set_local('Gemm') -> weights int8 sym per_channel minmax, activations uint8 sym per_tensor mse"
    )


def test_later_entry_wins_within_names_and_within_types() -> None:
    cfg = StaticQuantConfig().set_local("fc", fp32()).set_local("fc2", StaticQuantConfig(act_algo="kl"))
    cfg.set_local("Gemm", StaticQuantConfig(act_algo="mse")).set_local("Linear", StaticQuantConfig(act_algo="kl"))
    cfg.set_local("Relu", StaticQuantConfig(act_algo="percentile"))
    with pytest.warns(ConfigWarning, match=r"set_local\('Relu'\) was already set; the new config replaces it"):
        cfg.set_local("Relu", StaticQuantConfig(act_algo="mse"))
    r = resolve(cfg, OPS[:4])
    assert not r["fc1"].quantize
    assert r["fc2"].activation is not None and r["fc2"].activation.observer == "kl"
    assert r["fc2"].reason.startswith("set_local('fc2') -> ")
    assert r["fc2"].reason.endswith("(overrides set_local('Gemm'), set_local('Linear'), set_local('fc'))")
    assert r["node_relu"].activation is not None and r["node_relu"].activation.observer == "mse"


def test_setting_a_key_again_keeps_its_first_position_as_in_inc() -> None:
    cfg = StaticQuantConfig().set_local("fc", fp32()).set_local("f.*", StaticQuantConfig(act_algo="kl"))
    with pytest.warns(ConfigWarning):
        cfg.set_local("fc", StaticQuantConfig(act_algo="mse"))
    assert list(cfg.local_config) == ["fc", "f.*"]
    act = resolve(cfg, OPS[1:2])["fc1"].activation
    assert act is not None and act.observer == "kl"


def test_list_key_sets_each_key() -> None:
    cfg = StaticQuantConfig().set_local(["fc1", "conv1"], fp32())
    r = resolve(cfg, OPS[:2])
    assert not r["fc1"].quantize and not r["conv1"].quantize


def test_set_local_regex_is_re_match_prefix() -> None:
    ops = [*OPS[1:3], OpRef(9, "Gemm", "n9", "xfc", LINEAR)]
    r = resolve(StaticQuantConfig().set_local("fc", fp32()), ops)
    assert (r["fc1"].quantize, r["fc2"].quantize, r["xfc"].quantize) == (False, False, True)


def test_2x_op_name_dict_is_fullmatch() -> None:
    entry = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}
    with pytest.warns(ConfigWarning, match=r"op_name_dict\['fc'\] matches no op \(a name regex, re.fullmatch"):
        resolve_op_configs(StaticQuantConfig(op_name_dict={"fc": entry}), OPS)
    r = resolve(StaticQuantConfig(op_name_dict={"fc.": entry}))
    assert (r["fc1"].quantize, r["fc2"].quantize, r["conv1"].quantize) == (False, False, True)
    assert r["fc1"].reason == "op_name_dict['fc.'] -> fp32 (fallback)"


def test_name_regex_matches_module_path_or_node_name() -> None:
    r = resolve(StaticQuantConfig().set_local("/head/", fp32()).set_local("node_relu", fp32()))
    assert not r["head.proj"].quantize and not r["node_relu"].quantize and r["fc1"].quantize


def test_2x_op_type_dict_regex_and_partial_merge() -> None:
    cfg = StaticQuantConfig(
        op_type_dict={"Conv|Gemm": {"activation": {"dtype": ["fp32"]}}},
        op_name_dict={"conv1": {"weight": {"granularity": ["per_tensor"], "scheme": ["asym"], "dtype": "uint8"}}},
    )
    r = resolve(cfg)
    assert r["fc1"].activation is None and r["fc1"].weight is not None and r["fc1"].quantize
    assert (
        r["fc1"].reason
        == "op_type_dict['Conv|Gemm'] -> weights int8 sym per_channel minmax, activations fp32 (not quantized)"
    )
    assert r["conv1"].weight == QuantRequest(DType.U8, Scheme.ASYM, GranularityKind.PER_TENSOR, "minmax")
    assert r["conv1"].reason == (
        "op_type_dict['Conv|Gemm'], then op_name_dict['conv1'] -> "
        "weights uint8 asym per_tensor minmax, activations fp32 (not quantized)"
    )


def test_set_local_after_2x_dicts_wins_and_2x_overrides_stack() -> None:
    cfg = StaticQuantConfig(op_name_dict={"fc1": {"activation": {"algorithm": "kl"}}})
    cfg.set_local("fc1", fp32())
    assert not resolve(cfg)["fc1"].quantize
    cfg2 = StaticQuantConfig(op_name_dict={"fc1": {"activation": {"algorithm": "kl"}}}).set_local("Gemm", fp32())
    r = resolve(cfg2)["fc1"]
    assert r.weight is None and r.activation is None  # the 2.x name entry changes only the algorithm
    assert r.reason == "set_local('Gemm'), then op_name_dict['fc1'] -> fp32 (fallback)"


def test_2x_merge_that_breaks_a_cross_field_rule_names_the_op() -> None:
    cfg = StaticQuantConfig(op_type_dict={"Conv": {"activation": {"dtype": "fp8_e4m3"}}})
    with pytest.raises(ConfigError) as e:
        resolve_op_configs(cfg, OPS)
    assert str(e.value) == (
        "op 'node_conv1' (Conv): op_type_dict['Conv'].act_sym=False: fp8_e4m3 is symmetric only; set act_sym=True"
    )


def test_torch_type_key_and_class_name_string_match_module_type() -> None:
    import torch

    by_class = resolve(StaticQuantConfig().set_local(torch.nn.Linear, fp32()))
    by_name = resolve(StaticQuantConfig().set_local("Linear", fp32()))
    for r in (by_class, by_name):
        assert (r["fc1"].quantize, r["fc2"].quantize, r["conv1"].quantize, r["node_relu"].quantize) == (False,) * 2 + (
            True,
        ) * 2
    assert by_class["fc1"].reason == "set_local(torch.nn.modules.linear.Linear) -> fp32 (fallback)"
    assert by_name["fc1"].reason == "set_local('Linear') -> fp32 (fallback)"


def test_custom_module_class_in_model_is_a_type() -> None:
    r = resolve(StaticQuantConfig().set_local("MyProj", fp32()))
    assert not r["head.proj"].quantize and r["fc1"].quantize


def test_type_key_can_be_a_callable() -> None:
    class Gemm:  # a stand-in for a torch module class, matched by __name__
        pass

    assert not resolve(StaticQuantConfig().set_local(Gemm, fp32()))["fc2"].quantize


def test_fallback_and_specs() -> None:
    cfg = StaticQuantConfig(act_algo="percentile", percentile=99.9, reduce_range=True)
    cfg.set_local("fc1", fp32()).set_local("fc2", StaticQuantConfig(w_dtype="bf16", act_dtype="bf16"))
    cfg.set_local("conv1", StaticQuantConfig(w_dtype="fp8_e4m3", act_dtype="fp8_e5m2", act_sym=True))
    r = resolve(cfg)
    fc1 = r["fc1"]
    assert (fc1.quantize, fc1.weight, fc1.activation, fc1.fallback_dtype) == (False, None, None, DType.F32)
    assert fc1.reason == "set_local('fc1') -> fp32 (fallback)"
    assert fc1.weight_spec(0) is None and fc1.activation_spec() is None
    assert r["fc2"].fallback_dtype is DType.BF16 and r["fc2"].reason == "set_local('fc2') -> bf16 (fallback)"
    relu = r["node_relu"]
    assert (relu.reduce_range, relu.percentile, relu.fallback_dtype) == (True, 99.9, None)
    assert relu.weight_spec(1) == QuantSpec(DType.I8, Scheme.SYM, Granularity.per_channel(1), "minmax")
    assert relu.activation_spec() == QuantSpec(DType.U8, Scheme.ASYM, Granularity.per_tensor(), "percentile")
    conv = r["conv1"]
    assert conv.weight_spec(0) == QuantSpec(DType.F8E4M3FN, Scheme.SYM, Granularity.per_channel(0), "minmax")
    assert conv.activation_spec() == QuantSpec(DType.F8E5M2, Scheme.SYM, Granularity.per_tensor(), "mse")
    assert conv.percentile == 99.999 and conv.reduce_range is None  # a local config is a full config (INC)
    with pytest.raises(ValueError, match="per_channel quantization needs the tensor's channel axis"):
        conv.weight.spec() if conv.weight else None


def test_mixed_float_sides_reason() -> None:
    r = resolve(StaticQuantConfig().set_local("fc1", StaticQuantConfig(w_dtype="fp32", act_dtype="bf16")), OPS[1:2])
    assert r["fc1"].reason == "set_local('fc1') -> weights fp32, activations bf16 (fallback)"


# ---- resolution: errors and warnings -------------------------------------------------------------------------------


def test_unknown_op_type_suggests_close_types() -> None:
    cfg = StaticQuantConfig().set_local("Convv", fp32())
    with pytest.raises(ConfigError) as e:
        resolve_op_configs(cfg, OPS)
    assert str(e.value) == (
        "set_local key 'Convv' is not a known op type (ONNX op types, torch.nn module classes and the module "
        "classes in this model) and matches no op name; did you mean 'Conv', 'Conv2d', 'Conv1d'?"
    )


def test_unknown_op_type_in_op_type_dict() -> None:
    cfg = StaticQuantConfig(op_type_dict={"Linaer": {"weight": {"dtype": "fp32"}}})
    with pytest.raises(ConfigError) as e:
        resolve_op_configs(cfg, OPS)
    assert str(e.value).startswith("op_type_dict key 'Linaer' is not a known op type")
    assert "; did you mean 'Linear', " in str(e.value)


def test_type_shaped_key_that_matches_a_name_is_a_name_regex() -> None:
    ops = [OpRef(0, "Gemm", "Head_0", None, None), OpRef(1, "Gemm", "body", None, None)]
    r = resolve(StaticQuantConfig().set_local("Head", fp32()), ops)
    assert not r["Head_0"].quantize and r["body"].quantize


def test_known_op_types_extends_the_type_vocabulary() -> None:
    cfg = StaticQuantConfig().set_local("FusedLinearAdd", fp32())
    with pytest.raises(ConfigError):
        resolve_op_configs(cfg, OPS)
    with pytest.warns(ConfigWarning, match=r"set_local\('FusedLinearAdd'\) matches no op \(an op type\)"):
        resolve_op_configs(cfg, OPS, known_op_types=["FusedLinearAdd"])


def test_unmatched_type_warns_with_the_model_op_types() -> None:
    ops = [OpRef(0, "Conv", "c", None, None), OpRef(1, "Relu", "r", None, None)]
    with pytest.warns(ConfigWarning) as w:
        resolve_op_configs(StaticQuantConfig().set_local("Linear", fp32()), ops)
    assert str(w[0].message) == "set_local('Linear') matches no op (an op type); op types in the model: Conv, Relu"


def test_unmatched_name_warns_with_nearest_names() -> None:
    with pytest.warns(ConfigWarning) as w:
        out = resolve_op_configs(StaticQuantConfig().set_local("fc3", fp32()), OPS)
    assert all(r.quantize for r in out)
    assert str(w[0].message) == (
        "set_local('fc3') matches no op (a name regex, re.match on module paths and node names); "
        "nearest names: 'fc1', 'fc2'"
    )


def test_unmatched_name_without_close_names_shows_examples() -> None:
    with pytest.warns(ConfigWarning, match=r"no similar names; e.g. 'conv1', 'node_conv1', 'fc1'"):
        resolve_op_configs(StaticQuantConfig().set_local("decoder\\.layers", fp32()), OPS)


def test_resolution_keeps_order_and_caller_keys() -> None:
    out = resolve_op_configs(StaticQuantConfig(), OPS)
    assert [r.op.key for r in out] == [0, 1, 2, 3, 4]


# ---- dict and file form --------------------------------------------------------------------------------------------


def _rich_config() -> StaticQuantConfig:
    cfg = StaticQuantConfig(act_sym=True, act_algo="kl", reduce_range=False, excluded_precisions=["bf16"])
    cfg.op_type_dict = {"Conv": {"weight": {"dtype": ["fp32"]}, "activation": {"dtype": ["fp32"]}}}
    cfg.op_name_dict = {"layer2.0.conv1": {"activation": {"dtype": ["uint8"], "scheme": ["sym"]}}}
    return cfg.set_local("fc1", fp32()).set_local("Gemm", StaticQuantConfig(act_algo="percentile", percentile=99.9))


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_file_round_trip(tmp_path: Path, suffix: str) -> None:
    cfg = _rich_config()
    path = tmp_path / f"cfg{suffix}"
    save_config(cfg, path)
    loaded = load_config(path)
    assert loaded == cfg
    assert loaded.to_dict() == cfg.to_dict()
    assert loaded.to_dict()["local"] == {"fc1": FP32, "Gemm": {"act_algo": "percentile", "percentile": 99.9}}


def test_torch_type_key_round_trips_as_the_same_type(tmp_path: Path) -> None:
    import torch

    cfg = StaticQuantConfig().set_local(torch.nn.Linear, fp32())
    save_config(cfg, tmp_path / "cfg.yaml")
    loaded = load_config(tmp_path / "cfg.yaml")
    assert list(loaded.local_config) == ["Linear"]
    assert (
        [r.quantize for r in resolve(loaded).values()]
        == [r.quantize for r in resolve(cfg).values()]
        == [True, False, False, True, True]
    )


def test_inc_global_local_form(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"global": {"act_algo": "kl"}, "local": {"fc1": FP32}}))
    cfg = load_config(path)
    assert cfg.act_algo == "kl" and not resolve(cfg)["fc1"].quantize


def test_hand_written_yaml(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(
        "act_sym: true\nlocal:\n  Conv:\n    w_dtype: fp32\n    act_dtype: fp32\n  'fc.*':\n    act_algo: mse\n"
    )
    r = resolve(load_config(path))
    assert not r["conv1"].quantize and r["conv1"].reason == "set_local('Conv') -> fp32 (fallback)"
    assert r["fc2"].activation is not None and r["fc2"].activation.observer == "mse"
    assert r["fc2"].activation.scheme is Scheme.ASYM  # a local entry is a full config: unset fields are defaults


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("act_algoo: kl\n", "unknown key 'act_algoo' in {path}; did you mean 'act_algo', 'w_algo'?"),
        (
            "local:\n  fc1:\n    w_dtyp: fp32\n",
            "unknown key 'w_dtyp' in local['fc1'] in {path}; did you mean 'w_dtype', 'act_dtype'?",
        ),
        (
            "local:\n  fc1:\n    calibration_sampling_size: 4\n",
            "key 'calibration_sampling_size' in local['fc1'] in {path} is set on the global config only, "
            "not in a local config",
        ),
        ("act_algo: avg\n", "{path}: StaticQuantConfig.act_algo='avg': expected one of minmax, kl, percentile, mse"),
        (
            "local:\n  fc1:\n    act_sym: maybe\n",
            "local['fc1'] in {path}: StaticQuantConfig.act_sym='maybe': expected True or False",
        ),
        ("- a\n- b\n", "{path}: expected a mapping, found list ['a', 'b']"),
        ("local: [fc1]\n", "'local' in {path}: expected a mapping, found list ['fc1']"),
    ],
)
def test_file_errors_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == message.format(path=path)


def test_unknown_key_without_close_match_lists_allowed(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text('{"zzz": 1}')
    with pytest.raises(ConfigError, match=r"unknown key 'zzz' in .*cfg.json; expected one of w_dtype, w_sym, "):
        load_config(path)


def test_bad_file_format_and_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config format '.toml'; expected a .yaml, .yml or .json file"):
        load_config(tmp_path / "cfg.toml")
    bad = tmp_path / "cfg.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match=r"cfg.json: not valid JSON: "):
        load_config(bad)
    bad_yaml = tmp_path / "cfg.yaml"
    bad_yaml.write_text("a: [")
    with pytest.raises(ConfigError, match=r"cfg.yaml: not valid YAML: "):
        load_config(bad_yaml)


def test_to_dict_does_not_alias_the_config() -> None:
    cfg = _rich_config()
    d = cfg.to_dict()
    d["op_type_dict"]["Conv"]["weight"]["dtype"].append("int8")
    d["excluded_precisions"].append("fp16")
    assert cfg.op_type_dict["Conv"]["weight"]["dtype"] == ["fp32"] and cfg.excluded_precisions == ["bf16"]
