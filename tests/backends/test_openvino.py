"""The openvino backend's rules and failure modes, on the digits CNN's quantized IR with quant types edited to hit
each rule: asymmetric weights, per-channel activations and unquantized inputs stay float with a reason; the
emitter refuses a converter result without any int8 pattern and leaves nothing behind; targets are wired."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from quantir.backends.openvino import legalize_for_openvino
from quantir.backends.openvino.emit import emit
from quantir.backends.registry import backend_names, get_backend
from quantir.compiler.api import convert, prepare
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.qparams.scales import Convention
from quantir.compiler.quantized_model import QuantizedModel
from quantir.ir import Granularity, Graph, QuantType, SerializationError
from quantir.ir.clone import clone_graph
from quantir.tools.digits import bundled_model_path, load_digits_split


@pytest.fixture(scope="module")
def model() -> QuantizedModel:
    digits = load_digits_split()
    prepared = prepare(str(bundled_model_path()), StaticQuantConfig(), backend="openvino")
    return convert(prepared.calibrate(digits.calib_x[:64], sampling_size=64))


def _graph(model: QuantizedModel) -> Graph:
    return clone_graph(model.ir)[0]


def _conv1(g: Graph):  # type: ignore[no-untyped-def]
    return next(n for n in g.nodes if n.op_type == "Conv")


def test_target_and_backend_table() -> None:
    backend = get_backend("openvino")
    caps = backend.capabilities
    assert Convention[backend.convention.upper()] is Convention.OPENVINO and "MatMul" in caps.weight_inputs_only
    assert "activation x activation" in caps.float_reason("MatMul")
    assert backend_names()[:2] == ("onnx_qdq", "openvino")


def test_clean_graph_keeps_every_conv_and_gemm(model: QuantizedModel) -> None:
    report = legalize_for_openvino(_graph(model))
    heavy = [r for r in report.nodes if r.op_type in ("Conv", "Gemm")]
    assert len(heavy) == 4 and all(r.quantized for r in heavy)
    assert not report.removed
    assert report.to_json()["nodes"][0]["node"] == report.nodes[0].name


def test_asymmetric_weights_stay_float_with_reason(model: QuantizedModel) -> None:
    g = _graph(model)
    w = _conv1(g).inputs[1]
    q = w.quant
    assert isinstance(q, QuantType)
    w.quant = dataclasses.replace(q, zero_point=np.ones_like(q.zero_point))
    report = legalize_for_openvino(g)
    row = next(r for r in report.nodes if r.module == "conv1")
    assert not row.quantized and "asymmetric" in row.reason
    assert w.quant is None and report.removed_reason(w.name) is not None  # a float conv reads float weights


def test_per_channel_activation_stays_float(model: QuantizedModel) -> None:
    g = _graph(model)
    x = _conv1(g).inputs[0]
    q = x.quant
    assert isinstance(q, QuantType)
    x.quant = dataclasses.replace(q, granularity=Granularity.per_channel(1), scale=np.full(1, q.scale, np.float32),
                                  zero_point=np.full(1, q.zero_point, q.zero_point.dtype))  # fmt: skip
    row = next(r for r in legalize_for_openvino(g).nodes if r.module == "conv1")
    assert not row.quantized and "per_channel" in row.reason


def test_unquantized_input_stays_float(model: QuantizedModel) -> None:
    g = _graph(model)
    _conv1(g).inputs[0].quant = None
    report = legalize_for_openvino(g)
    row = next(r for r in report.nodes if r.module == "conv1")
    assert not row.quantized and "not quantized" in row.reason
    assert _conv1(g).inputs[1].quant is None  # weight-only int8 would run FP32 (decompressed): dropped


def test_converter_without_int8_patterns_is_refused(model: QuantizedModel, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    legal = model.legalized("openvino")
    emit_module = sys.modules["quantir.backends.openvino.emit"]  # the package attribute `emit` is the function
    monkeypatch.setattr(emit_module, "ov_pattern_counts", lambda m: {"FakeQuantize": 0, "int8_constants": 0})
    with pytest.raises(SerializationError, match="produced no int8 pattern"):
        emit(legal.graph, tmp_path / "out", manifest={})
    assert list(tmp_path.iterdir()) == []


def test_reserved_manifest_keys_and_non_artifact_folder(model: QuantizedModel, tmp_path: Path) -> None:
    legal = model.legalized("openvino")
    with pytest.raises(SerializationError, match="manifest keys"):
        emit(legal.graph, tmp_path / "a", manifest={"backend": "x"})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("user data")
    with pytest.raises(SerializationError, match="refusing to replace"):
        emit(legal.graph, tmp_path / "b", manifest={})
    assert (tmp_path / "b" / "keep.txt").exists()


def test_save_replaces_a_previous_artifact(model: QuantizedModel, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    model.save(out, backend="openvino")
    model.save(out, backend="openvino")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ov"]
    assert (out / "model.xml").exists()
