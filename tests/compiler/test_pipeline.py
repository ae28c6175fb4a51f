"""The functional pipeline on the real digits CNN: `prepare` keeps the float graph and config-independent statistics,
`convert(prepared, quant_config)` never changes `prepared`, and each conversion equals a fresh
prepare + calibrate + convert with that config (structurally equal IR, byte-equal model file). Also the public
API's names, its refusals of what is not built, and calling a model converted for OpenVINO."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantir.backends.onnx_proto import OrtRunner
from quantir.compiler.api import PreparedModel
from quantir.ir import CalibrationError, QuantType
from quantir.ir.equality import first_difference
from quantir.ir.printer import print_graph
from quantir.tools.digits import DigitsSplit, bundled_model_path, load_digits_split

MODEL = str(bundled_model_path())


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


def _fallback_config() -> Any:
    from quantir.compiler import StaticQuantConfig

    cfg = StaticQuantConfig(w_granularity="per_tensor")
    cfg.set_local("conv1", StaticQuantConfig(w_dtype="fp32", act_dtype="fp32"))
    return cfg


def _prepared(cfg: Any, digits: DigitsSplit) -> PreparedModel:
    from quantir.compiler import prepare

    return prepare(MODEL, cfg).calibrate(digits.calib_x[:96], sampling_size=96)


def _artifact_bytes(model: Any, out: Path) -> tuple[bytes, dict[str, Any]]:
    path = model.save(out)
    manifest = json.loads((path / "quantir.json").read_text())
    manifest["calibration"].pop("seconds")  # wall-clock time of the calibration run
    return (path / "model.onnx").read_bytes(), manifest


def test_convert_twice_equals_fresh_conversions_and_leaves_prepared_unchanged(
    digits: DigitsSplit, tmp_path: Path
) -> None:
    from quantir.compiler import StaticQuantConfig, convert

    default, fallback = StaticQuantConfig(), _fallback_config()
    prepared = _prepared(default, digits)
    before = print_graph(prepared.graph)
    a = convert(prepared)
    b = convert(prepared, quant_config=fallback)
    a_again = convert(prepared)
    assert print_graph(prepared.graph) == before  # the float graph is never annotated
    assert not any(v.quant is not None for v in prepared.graph.values())

    fresh_a = convert(_prepared(default, digits))
    fresh_b = convert(_prepared(fallback, digits))
    for got, fresh in ((a, fresh_a), (b, fresh_b), (a_again, fresh_a)):
        assert first_difference(got.ir, fresh.ir) is None, first_difference(got.ir, fresh.ir)
    assert _artifact_bytes(a, tmp_path / "a") == _artifact_bytes(fresh_a, tmp_path / "fa")
    assert _artifact_bytes(b, tmp_path / "b") == _artifact_bytes(fresh_b, tmp_path / "fb")

    # the two configs really differ: conv1 falls back, weights are per tensor
    assert first_difference(a.ir, b.ir) is not None
    rows = {d.module: d for d in b.decisions()}
    assert not rows["conv1"].quantized and rows["conv2"].quantized
    assert {d.module: d for d in a.decisions()}["conv1"].quantized
    conv2_w = next(n for n in b.ir.nodes if n.op_type == "Conv" and n.source and n.source.module == "conv2").inputs[1]
    assert isinstance(conv2_w.quant, QuantType) and conv2_w.quant.scale.shape == ()


def test_histogram_statistics_serve_any_algorithm(digits: DigitsSplit) -> None:
    """A prepare config that uses a histogram algorithm collects histograms for every candidate tensor, so convert
    can switch algorithm (and fallback set) and still equal a fresh conversion."""
    from quantir.compiler import StaticQuantConfig, convert

    kl = StaticQuantConfig(act_algo="kl")
    prepared = _prepared(kl, digits)
    mse = _fallback_config()
    mse.act_algo = "mse"
    for cfg in (mse, StaticQuantConfig(act_algo="percentile"), StaticQuantConfig()):
        got, fresh = convert(prepared, cfg), convert(_prepared(cfg, digits))
        assert first_difference(got.ir, fresh.ir) is None, (cfg, first_difference(got.ir, fresh.ir))


def test_an_algorithm_prepare_did_not_collect_is_a_clear_error(digits: DigitsSplit) -> None:
    from quantir.compiler import StaticQuantConfig, convert

    prepared = _prepared(StaticQuantConfig(act_algo="minmax"), digits)
    with pytest.raises(CalibrationError, match=r"needs a 'kl' range, but calibration collected no histogram"):
        convert(prepared, StaticQuantConfig(act_algo="kl"))
    with pytest.raises(CalibrationError, match=r"SmoothQuant needs per-channel ranges of 2 MatMul/Gemm input"):
        convert(prepared, StaticQuantConfig(smooth_quant=True, act_algo="minmax"))
    smooth = _prepared(StaticQuantConfig(smooth_quant=True), digits)  # collects them; plain configs work too
    for cfg in (StaticQuantConfig(smooth_quant=True, smooth_quant_alpha=0.8), _fallback_config()):
        got, fresh = convert(smooth, cfg), convert(_prepared(cfg, digits))
        assert first_difference(got.ir, fresh.ir) is None, first_difference(got.ir, fresh.ir)


def test_public_api_names_and_what_is_not_built(digits: DigitsSplit) -> None:
    import quantir.compiler as qc
    from quantir.compiler import (
        FP8Config,
        RTNConfig,
        StaticQuantConfig,
        TuningConfig,
        autotune,
        convert,
        prepare,
        quantize,
    )

    assert callable(prepare) and callable(convert) and callable(quantize)
    assert set(qc.__all__) >= {"StaticQuantConfig", "RTNConfig", "FP8Config", "TuningConfig", "autotune"}
    assert prepare(MODEL, quant_config=RTNConfig()).config == RTNConfig()  # weight-only: tests/compiler/test_rtn.py
    fp8 = quantize(MODEL, quant_config=FP8Config(), calib_data=digits.calib_x[:8])  # Gaudi FP8: issue 13's tests
    assert sum(d.quantized for d in fp8.decisions("gaudi_fp8")) == 4
    with pytest.raises(NotImplementedError, match="FP8 quantization"):
        autotune(MODEL, TuningConfig(config_set=[FP8Config()]), eval_fn=lambda m: 1.0)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        qc.nothing  # noqa: B018
    q = quantize(MODEL, quant_config=StaticQuantConfig(), calib_data=digits.calib_x[:32])
    assert any(d.quantized for d in q.decisions())


def test_a_model_converted_for_openvino_runs_in_openvino_when_called(digits: DigitsSplit) -> None:
    """Calling it used to open model.onnx in ORT, which an OpenVINO artifact does not have."""
    from quantir.backends.openvino.verify import OvRunner
    from quantir.compiler import StaticQuantConfig, quantize

    q = quantize(MODEL, StaticQuantConfig(), calib_data=[digits.calib_x[:64]], backend="openvino")
    x = digits.test_x[:200]
    logits = q(x)
    assert isinstance(q.runner(), OvRunner)
    ref = OrtRunner(MODEL)({"x": x})[0]
    assert logits.shape == ref.shape
    y = digits.test_y[:200]
    assert float(np.mean(logits.argmax(1) == y)) >= float(np.mean(ref.argmax(1) == y)) - 0.02
    assert float(np.mean(logits.argmax(1) == ref.argmax(1))) > 0.97
