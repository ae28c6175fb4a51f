"""INC Gaudi FP8 scale methods (compiler/qparams/fp8_methods.py): golden scales computed by hand, numpy only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from quantir.compiler.qparams.fp8_methods import (
    DYNAMIC_ONLY,
    SCALE_METHODS,
    ScaleRecipe,
    TensorRecipe,
    activation_scale,
    check_recipe,
    gaudi_scale_set,
    scale_recipe,
    weight_scale,
)
from quantir.ir import ConfigError, DType, Granularity, PassError, Scheme

E4M3, E5M2 = DType.F8E4M3FN, DType.F8E5M2


def act(method: str, amax: float, device: str = "gaudi2", dtype: DType = E4M3) -> float:
    return float(activation_scale(scale_recipe(method), amax, dtype, device).scale)  # type: ignore[arg-type]


def wscale(method: str | dict[str, Any], w: Any, axis: int = 0, device: str = "gaudi2", dtype: DType = E4M3) -> Any:
    return weight_scale(scale_recipe(method), np.asarray(w, np.float32), axis, dtype, device).scale  # type: ignore[arg-type]


# ---- tables ---------------------------------------------------------------------------------------------------------


def test_hardware_scale_sets_are_inc_exp_bias_sets() -> None:
    # 2^(default_bias - bias): Gaudi2 E4M3 biases 3,7,11,15 -> 2^4, 2^0, 2^-4, 2^-8
    assert gaudi_scale_set("gaudi2", E4M3).tolist() == [16.0, 1.0, 1 / 16, 1 / 256]
    # Gaudi3 E4M3 biases 0..62 -> 2^7 ... 2^-55 (63 scales); E5M2 (default bias 15) -> 2^15 ... 2^-47
    assert gaudi_scale_set("gaudi3", E4M3).tolist() == [2.0**e for e in range(7, -56, -1)]
    assert gaudi_scale_set("gaudi3", E5M2).tolist() == [2.0**e for e in range(15, -48, -1)]
    assert gaudi_scale_set("gaudi2", E5M2).tolist() == [1.0]  # bias 15 only


def test_every_static_inc_method_and_its_backoffs() -> None:
    assert set(SCALE_METHODS) == {
        "unit_scale", "hw_aligned_single_scale", "maxabs_hw", "maxabs_pow2", "maxabs_hw_opt_weight",
        "maxabs_pow2_opt_weight", "maxabs_arbitrary", "act_maxabs_hw_weights_pcs_maxabs_pow2",
        "act_maxabs_hw_weights_pcs_opt_pow2", "act_maxabs_pow2_weights_pcs_maxabs_pow2",
        "act_maxabs_pow2_weights_pcs_opt_pow2",
    }  # fmt: skip
    assert {"act_maxabs_pcs_pow2_weight_maxabs_pts_pow2_hw", "maxabs_pcs_pow2"} == DYNAMIC_ONLY
    for name, r in SCALE_METHODS.items():
        assert r.method == name
        fixed = name in ("unit_scale", "hw_aligned_single_scale")  # FIXED_VALUE: backoff 1.0, never used
        assert (r.activation.backoff, r.weight.backoff) == ((1.0, 1.0) if fixed else (0.25, 0.5)), name
        assert not r.activation.per_channel and not r.activation.opt
        assert r.weight.per_channel == ("_pcs_" in name) and r.weight.opt == ("opt" in name)
    assert scale_recipe("act_maxabs_hw_weights_pcs_opt_pow2").activation.rounding == "hw"
    assert scale_recipe("act_maxabs_pow2_weights_pcs_opt_pow2").weight == TensorRecipe("pow2", True, True, 0.5)
    assert scale_recipe(" MaxAbs_HW ") is SCALE_METHODS["maxabs_hw"]


# ---- activation scales ----------------------------------------------------------------------------------------------


def test_maxabs_hw_activation() -> None:
    # Gaudi2: 3/(240·0.25) = 0.05, ceil(log2 0.05) = ceil(-4.32) = -4, rounded up to a multiple of 4: -4 -> 1/16
    assert act("maxabs_hw", 3.0, "gaudi2") == 1 / 16
    # Gaudi3: 3/(448·0.25) = 0.02679, ceil(log2) = ceil(-5.22) = -5, multiple of 1 -> 2^-5
    assert act("maxabs_hw", 3.0, "gaudi3") == 2.0**-5
    # Gaudi2: 10/60 = 0.1667, ceil(log2) = ceil(-2.58) = -2, up to a multiple of 4: 0 -> 1
    assert act("maxabs_hw", 10.0, "gaudi2") == 1.0


def test_maxabs_pow2_and_arbitrary_activation() -> None:
    # 10/(240·0.25) = 0.1667 -> 2^ceil(-2.58) = 2^-2; Gaudi3 10/(448·0.25) = 0.0893 -> 2^ceil(-3.49) = 2^-3
    assert act("maxabs_pow2", 10.0, "gaudi2") == 0.25
    assert act("maxabs_pow2", 10.0, "gaudi3") == 0.125
    # E5M2: 3/(57344·0.25) = 2.09e-4 -> 2^ceil(-12.22) = 2^-12
    assert act("maxabs_pow2", 3.0, "gaudi3", E5M2) == 2.0**-12
    assert act("maxabs_pow2", 3.0, "gaudi2", E5M2) == 2.0**-12  # pow2 is allowed for Gaudi2 E5M2
    # arbitrary: unrounded 10/60 and 10/112
    assert act("maxabs_arbitrary", 10.0, "gaudi2") == np.float32(10 / 60)
    assert act("maxabs_arbitrary", 10.0, "gaudi3") == np.float32(10 / 112)


def test_unit_and_hw_single_ignore_amax() -> None:
    for amax in (0.0, 3.0, 1e6):
        assert act("unit_scale", amax) == 1.0
        assert act("hw_aligned_single_scale", amax, "gaudi2") == 16.0  # first of [16, 1, 1/16, 1/256]
        assert act("hw_aligned_single_scale", amax, "gaudi3") == 128.0  # 2^7
    assert act("hw_aligned_single_scale", 3.0, "gaudi3", E5M2) == 2.0**15  # the E5M2 set's first entry


def test_hw_scales_clamp_into_the_set() -> None:
    # 1e6/60 = 16667 -> 2^15 -> clamped to 16 (Gaudi2) / 2^7 (Gaudi3); 1e-9/60 -> 2^-35 -> clamped to 1/256 (Gaudi2)
    assert act("maxabs_hw", 1e6, "gaudi2") == 16.0
    assert act("maxabs_hw", 1e6, "gaudi3") == 128.0
    assert act("maxabs_hw", 1e-9, "gaudi2") == 1 / 256
    assert act("maxabs_hw", 1e-30, "gaudi3") == 2.0**-55  # 1e-30/112 = 2^-106.5 -> clamped to 2^-55


def test_zero_amax_gives_no_zero_scale() -> None:
    assert act("maxabs_hw", 0.0, "gaudi2") == 1 / 256  # the smallest hw scale
    assert act("maxabs_hw", 0.0, "gaudi3") == 2.0**-55
    assert act("maxabs_pow2", 0.0) == 1.0
    assert act("maxabs_arbitrary", 0.0) == 1.0


def test_quant_type_fields() -> None:
    q = activation_scale(scale_recipe("maxabs_hw"), 3.0, E4M3, "gaudi2")
    assert (q.dtype, q.scheme, q.granularity, q.observer, q.qmin, q.qmax) == (
        E4M3, Scheme.SYM, Granularity.per_tensor(), "maxabs", 0, 0,
    )  # fmt: skip
    assert q.scale.shape == () and q.zero_point.shape == () and float(q.zero_point) == 0.0
    w = weight_scale(scale_recipe("act_maxabs_hw_weights_pcs_maxabs_pow2"), np.ones((3, 2)), 1, E4M3, "gaudi2")
    assert w.granularity == Granularity.per_channel(1) and w.scale.shape == (2,) and w.observer == "maxabs"
    assert w.zero_point.tolist() == [0.0, 0.0]


# ---- weight scales --------------------------------------------------------------------------------------------------


def test_per_tensor_weight_maxabs() -> None:
    w = [[192.0, -3.0], [1.0, 0.5]]
    assert float(wscale("maxabs_hw", w)) == 16.0  # 192/(240·0.5) = 1.6 -> 2^ceil(0.68) = 2 -> exponent 1 -> 4: 16
    assert float(wscale("maxabs_pow2", w)) == 2.0  # 2^1
    assert float(wscale("maxabs_pow2", w, device="gaudi3")) == 1.0  # 192/224 = 0.857 -> 2^0
    assert float(wscale("maxabs_arbitrary", w)) == np.float32(1.6)
    assert float(wscale("unit_scale", w)) == 1.0


def test_per_channel_weight_maxabs_pow2_along_axis_0_and_1() -> None:
    # rows = output channels, amax [1.125, 113, 0] over (240·0.5):
    # 1.125/120 = 0.009375 -> 2^ceil(-6.74) = 2^-6; 113/120 = 0.942 -> 2^ceil(-0.09) = 1; zero channel -> 1
    w = np.array([[1.125, -0.5, 0.0], [3.0, -113.0, 7.0], [0.0, 0.0, 0.0]], np.float32)
    method = "act_maxabs_pow2_weights_pcs_maxabs_pow2"
    assert wscale(method, w, 0).tolist() == [2.0**-6, 1.0, 1.0]
    assert wscale(method, w.T, 1).tolist() == [2.0**-6, 1.0, 1.0]
    # columns: amax 3 -> 3/120 = 0.025 -> 2^ceil(-5.32) = 2^-5; 113 -> 1; 7 -> 0.0583 -> 2^ceil(-4.1) = 2^-4
    assert wscale(method, w, 1).tolist() == [2.0**-5, 1.0, 2.0**-4]
    assert wscale(method, w, -2).tolist() == [2.0**-6, 1.0, 1.0]


def test_opt_pow2_per_tensor_picks_least_mse_and_inc_tie_rule() -> None:
    # Gaudi3 E4M3, candidates 2^-10 ... 2^9. w = ±1.125 = 1.001b: w/2^k is exact for k in -8..6 (k = -9: 576 > 448
    # saturates; k = 7: 2^-7 + 2^-10 is a subnormal between codes of step 2^-9, error > 0). Error 0 for k = -8..6;
    # INC's mmse_scale keeps the later of equal errors, so 2^6; maxabs_pow2 would give 1.125/224 -> 2^-7.
    w = [1.125, -1.125]
    assert float(wscale("maxabs_pow2_opt_weight", w, device="gaudi3")) == 64.0
    assert float(wscale("maxabs_pow2", w, device="gaudi3")) == 2.0**-7


def test_opt_hw_per_tensor_gaudi2() -> None:
    # candidates [16, 1, 1/16, 1/256]; w = [192, 1.125·2^-6]. s=1: both exact (192 = 1.1b·2^7), error 0.
    # s=16: 12 exact but 1.125·2^-10 is below the subnormal step 2^-9 and rounds to 2^-9: error > 0.
    # s=1/16: 192·16 saturates at 240 -> error 177^2. Least error: 1, where maxabs_hw gives 16 (see above).
    w = [192.0, 1.125 * 2**-6]
    assert float(wscale("maxabs_hw_opt_weight", w)) == 1.0
    assert float(wscale("maxabs_hw", w)) == 16.0


def test_opt_search_saturates_at_240_on_gaudi2() -> None:
    # w = [300]. s=1: Gaudi2 E4M3 saturates at 240 -> error 60^2 = 3600 (the e4m3fn cast alone would give 288, error
    # 144). s=16: 18.75 -> 18 (grid step 2 in [16, 32)) -> 288, error 144. So 16 wins; without the 240 limit s=1 and
    # s=16 would tie and the later candidate, 1, would win.
    assert float(wscale("maxabs_hw_opt_weight", [300.0])) == 16.0
    # Gaudi3 (448 range): s=1 gives 288 (error 144), as s=16 and s=2^k for k in 1..3 -> the later one, 1, wins.
    assert float(wscale("maxabs_hw_opt_weight", [300.0], device="gaudi3")) == 1.0


def test_opt_pow2_per_channel_along_axis_0_and_1() -> None:
    # Gaudi3 E4M3, base = pow2(amax/(448·0.5)), candidates base·2^k, k = -3..4, earliest of equal errors wins.
    # channel 0 = ±1.125: base = pow2(0.00502) = 2^-7; base/8, base/4 saturate (1.125·2^10, ·2^9 > 448); base/2 =
    #   2^-8 is exact (288 = 1.001b·2^8) and the earliest zero-error candidate -> 2^-8.
    # channel 1 = [113, 2^-11]: base = pow2(113/224) = 1. 113 costs 1^2 at every scale 1/4 ... 16 (452 saturates to
    #   448 -> 112; 226 -> 224 -> 112; 113 -> 112 ...) and 57^2 at 1/8 (904 -> 448 -> 56). 2^-11 is exact only at
    #   1/4 (2^-9, the smallest subnormal); at 1/2 it is 2^-10, half way to 2^-9, rounds to even 0 (error 2^-22).
    #   Least error at 1/4.
    w = np.array([[1.125, -1.125], [113.0, 2.0**-11]], np.float32)
    method = "act_maxabs_pow2_weights_pcs_opt_pow2"
    assert wscale(method, w, 0, "gaudi3").tolist() == [2.0**-8, 0.25]
    assert wscale(method, w.T, 1, "gaudi3").tolist() == [2.0**-8, 0.25]
    assert wscale("act_maxabs_pow2_weights_pcs_maxabs_pow2", w, 0, "gaudi3").tolist() == [2.0**-7, 1.0]
    q = weight_scale(scale_recipe("act_maxabs_hw_weights_pcs_opt_pow2"), w, 0, E4M3, "gaudi3")
    assert q.granularity == Granularity.per_channel(0) and q.scale.tolist() == [2.0**-8, 0.25]


# ---- dict form ------------------------------------------------------------------------------------------------------


def _f(rounding: str, value_type: str = "maxabs", granularity: str = "pts", **extra: Any) -> dict[str, Any]:
    return {"granularity": granularity, "scale_value_type": value_type, "rounding_method": rounding, **extra}


UNIT_WEIGHT = {"weight": {"rounding_method": "scale_unit", "scale_value_type": "Fixed_Value"}}
FORM: dict[str, Any] = {
    "default": {"weight": _f("hw_aligned", backoff=0.5), "activation": _f("HW_ALIGNED", backoff=0.25)},
    "nodes": {"model.layers.3.mlp.fc1": UNIT_WEIGHT},
    "layers": {"3": {"activation": {"rounding_method": "Pow2"}}},
    "layer_types": {"Linear": {"weight": _f("pow2", granularity="PCS")}},
}  # fmt: skip


def test_dict_form_precedence_node_layer_type_default() -> None:
    default = scale_recipe(FORM, node="lm_head", layer_type="Embedding")
    assert default == ScaleRecipe("dict", TensorRecipe("hw", backoff=0.25), TensorRecipe("hw", backoff=0.5))
    by_type = scale_recipe(FORM, node="model.layers.1.fc", layer_type="Linear")
    assert by_type.weight == TensorRecipe("pow2", per_channel=True, backoff=0.5)  # backoff from the default
    by_layer = scale_recipe(FORM, node="model.layers.3.attn.q", layer_type="Linear")  # index parsed from the name
    assert by_layer.activation == TensorRecipe("pow2", backoff=0.25) and by_layer.weight.rounding == "hw"
    assert scale_recipe(FORM, node="encoder/layers/3/q").activation.rounding == "pow2"  # INC's slash pattern
    assert scale_recipe(FORM, node="q", layer=3).activation.rounding == "pow2"  # an explicit layer index
    assert scale_recipe(FORM, node="model.layers.3.attn.q", layer=4).activation.rounding == "hw"
    by_node = scale_recipe(FORM, node="model.layers.3.mlp.fc1", layer_type="Linear")
    assert by_node.weight == TensorRecipe("unit", backoff=0.5) and by_node.activation.rounding == "hw"


def test_dict_form_maps_every_inc_spelling() -> None:
    def weight(**f: Any) -> TensorRecipe:
        return scale_recipe({"default": {"weight": f}}).weight

    assert weight() == TensorRecipe("arbitrary")  # INC defaults: PTS, MAXABS, IDENTITY, backoff 1.0
    assert weight(rounding_method="POW2").rounding == "pow2"
    assert weight(rounding_method="hw_aligned_fixed", scale_value_type="FIXED_VALUE").rounding == "hw_single"
    assert weight(scale_value_type="opt", rounding_method="pow2", granularity="pcs") == TensorRecipe("pow2", True, True)
    fixed = weight(scale_value_type="fixed_value", params={"value": 0.125})
    assert fixed == TensorRecipe("fixed", value=0.125)
    q = weight_scale(ScaleRecipe("dict", TensorRecipe("unit"), fixed), np.ones(3), 0, E4M3, "gaudi2")
    assert float(q.scale) == 0.125
    assert scale_recipe({"default": {"activation": {"rounding_method": "identity"}}}).activation.rounding == "arbitrary"


def test_dict_form_custom_opt_candidates() -> None:
    # candidates [4, 2^-9] for w = 1.125 (Gaudi3): 1.125/4 = 0.28125 = 1.001b·2^-2 is exact; 1.125·2^9 = 576
    # saturates at 448. The first candidate wins although INC's tie rule favours later ones.
    form = {"default": {"weight": _f("pow2", "opt", params={"weight_scales": [4.0, 2.0**-9]})}}
    assert scale_recipe(form).weight.candidates == (4.0, 2.0**-9)
    assert float(wscale(form, [1.125], device="gaudi3")) == 4.0


# ---- errors ---------------------------------------------------------------------------------------------------------


def test_unknown_method_lists_nearest_and_valid_names() -> None:
    with pytest.raises(ConfigError) as e:
        scale_recipe("maxabs_hw2")
    msg = str(e.value)
    assert "'maxabs_hw2'" in msg and "did you mean maxabs_hw" in msg
    assert all(name in msg for name in SCALE_METHODS)


@pytest.mark.parametrize("name", sorted(DYNAMIC_ONLY))
def test_dynamic_only_methods_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}.*allowed only with dynamic quantization; quantir's FP8 is static"):
        scale_recipe(name)


@pytest.mark.parametrize(
    ("method", "culprit"),
    [
        ("maxabs_hw", "activation rounding 'hw', weight rounding 'hw'"),
        ("hw_aligned_single_scale", "activation rounding 'hw_single', weight rounding 'hw_single'"),
        ("act_maxabs_hw_weights_pcs_maxabs_pow2", "(activation rounding 'hw')"),
        ("maxabs_hw_opt_weight", "weight rounding 'hw'"),
    ],
)
def test_gaudi2_e5m2_refuses_hardware_aligned_scales(method: str, culprit: str) -> None:
    recipe = scale_recipe(method)
    check_recipe(recipe, E5M2, "gaudi3")  # the Gaudi3 E5M2 set has 63 scales
    check_recipe(recipe, E4M3, "gaudi2")
    for call in (
        lambda: check_recipe(recipe, E5M2, "gaudi2"),
        lambda: activation_scale(recipe, 1.0, E5M2, "gaudi2"),
        lambda: weight_scale(recipe, np.ones((2, 2)), 0, E5M2, "gaudi2"),
    ):
        with pytest.raises(ConfigError) as e:
            call()
        msg = str(e.value)
        assert f"scale method {method!r}" in msg and culprit in msg and "Gaudi2 E5M2 hardware scale set is {1}" in msg
        assert all(s in msg for s in ("maxabs_pow2", "maxabs_arbitrary", "unit_scale", "gaudi3"))


def test_non_gaudi_targets_are_refused() -> None:
    with pytest.raises(ConfigError, match="fp8 dtype 'f8e4m3fnuz' has no INC Gaudi scale method"):
        check_recipe(SCALE_METHODS["maxabs_pow2"], DType.F8E4M3FNUZ, "gaudi2")
    with pytest.raises(ConfigError, match="device 'gaudi1' has no Gaudi FP8 scales"):
        gaudi_scale_set("gaudi1", E4M3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"scale method 'x': weight backoff 0.0 must be a finite number > 0"):
        check_recipe(ScaleRecipe("x", TensorRecipe("pow2"), TensorRecipe("pow2", backoff=0.0)), E4M3, "gaudi2")
    with pytest.raises(ConfigError, match="opt weight scale needs rounding 'pow2' per channel; found 'hw'"):
        check_recipe(ScaleRecipe("x", TensorRecipe("hw"), TensorRecipe("hw", True, True)), E4M3, "gaudi3")
    with pytest.raises(PassError, match="out_axis 2 is out of range for a weight of shape \\(2, 2\\)"):
        wscale("act_maxabs_pow2_weights_pcs_maxabs_pow2", np.ones((2, 2)), 2)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"default": {}, "node": {}}, "scale_method.node is not a dict-form key; expected one of default, nodes"),
        ({"nodes": {}}, "needs a 'default' entry"),
        ({"default": {"weights": {}}}, "scale_method.default.weights is not a dict-form key"),
        ({"default": {}, "nodes": {"fc1": {"weight": {"rounding": "pow2"}}}},
         "scale_method.nodes.fc1.weight.rounding is not a dict-form key; expected one of granularity"),
        ({"default": {"weight": {"rounding_method": "pow3"}}},
         "scale_method.default.weight.rounding_method = 'pow3' is not one of IDENTITY, POW2, HW_ALIGNED"),
        ({"default": {}, "layers": {"2": {"weight": {"granularity": "per_channel"}}}},
         "scale_method.layers.2.weight.granularity = 'per_channel' is not one of PTS, PCS"),
        ({"default": {"activation": {"granularity": "pcs"}}},
         "default.activation.granularity = PCS: per-channel activation scales are allowed only with dynamic"),
        ({"default": {"activation": {"scale_value_type": "opt", "rounding_method": "pow2"}}},
         "default.activation.scale_value_type = OPT searches weights only"),
        ({"default": {"weight": {"scale_value_type": "fixed_value"}}}, "IDENTITY needs params.value"),
        ({"default": {"weight": {"params": {"value": 2.0}}}}, "default.weight.params.value applies only to"),
        ({"default": {"weight": {"params": {"scale": 2.0}}}}, "scale_method.default.weight.params.scale is not a dict"),
        ({"default": {"weight": {"backoff": -1}}}, "scale_method.default.weight.backoff = -1 must be a finite number"),
        ({"default": {}, "layers": {"first": {}}}, "scale_method.layers.first must be a layer index"),
        ({"default": {"weight": {"scale_value_type": "opt"}}}, "an opt weight scale needs rounding 'pow2' or 'hw'"),
        ({"default": {"weight": {"scale_value_type": "dummy_scales"}}}, "DUMMY_SCALES is INC's dummy measurement"),
        ({"default": {"weight": "pow2"}}, "scale_method.default.weight must be a dict; found str"),
    ],
)  # fmt: skip
def test_malformed_dict_form_names_the_key_path(form: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        scale_recipe(form)
    assert message in str(e.value)
