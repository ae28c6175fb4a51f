"""`quantir layers` / `layer_errors`: per-tensor error of a quantized model against its float self, on the digits
CNN with real calibration images."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from quantir.compiler.api import quantize
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.layer_error import layer_errors
from quantir.compiler.quantized_model import QuantizedModel
from quantir.frontends.onnx import import_onnx
from quantir.ir import QuantirError, QuantType
from quantir.tools.cli import main as cli_main
from quantir.tools.dev.ort_baseline import ort_quantize_digits
from quantir.tools.digits import bundled_model_path, load_digits_split

MODEL = bundled_model_path()


def _batches(x: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    return ({"x": x[i : i + 32]} for i in range(0, len(x), 32))


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return load_digits_split().calib_x


@pytest.fixture(scope="module")
def quantized(calib: np.ndarray) -> QuantizedModel:
    return quantize(str(MODEL), StaticQuantConfig(calibration_sampling_size=256), _batches(calib))


def test_every_quantized_activation_and_the_output_is_compared(quantized: QuantizedModel, calib: np.ndarray) -> None:
    report = layer_errors(quantized.ir, _batches(calib))
    acts = [v.name for v in quantized.ir.values() if v.const is None and isinstance(v.quant, QuantType)]
    assert sorted(r.value for r in report.rows) == sorted([*acts, "logits"])
    assert report.samples == 256 and report.unmatched == []
    assert "already quantized" not in report.reference  # in memory, the constants hold the float weights
    for r in report.rows:
        assert 20 < r.sqnr_db < 80 and r.rel_l2 < 0.1, r
    (logits,) = [r for r in report.rows if r.value == "logits"]
    assert logits.step is None and logits.max_abs_lsb is None
    text = report.format()
    assert text.splitlines()[0] == f"per-layer error on 256 samples (all {len(acts) + 1} compared tensors)"
    assert [ln.split(" | ")[0] for ln in text.splitlines()[4:]] == [
        f"| {r.value}" for r in sorted(report.rows, key=lambda r: r.position)
    ]


def test_a_coarse_quantizer_is_found_as_the_worst_tensor(quantized: QuantizedModel, calib: np.ndarray) -> None:
    """Make one activation's step 16x coarser: its SQNR collapses and it tops the report."""
    ir = quantized.ir
    (victim,) = [v for v in ir.values() if v.name == "relu_2"]
    baseline = {r.value: r.sqnr_db for r in layer_errors(ir, _batches(calib[:64])).rows}
    q = victim.quant
    assert isinstance(q, QuantType)
    victim.quant = dataclasses.replace(q, scale=q.scale * 16)
    try:
        worst = layer_errors(ir, _batches(calib[:64])).worst(1)[0]
    finally:
        victim.quant = q
    assert worst.value == "relu_2" and worst.sqnr_db < baseline["relu_2"] - 15


def test_cli_on_an_artifact_with_and_without_the_float_model(
    quantized: QuantizedModel, calib: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    art = quantized.save(tmp_path / "art")
    np.savez(tmp_path / "calib.npz", x=calib)
    assert cli_main(["layers", str(art), "--calib", str(tmp_path / "calib.npz"), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "the 2 worst of" in out and "activation error only" in out  # a file holds its weights quantized
    js = tmp_path / "rows.json"
    argv = ["layers", str(art), "--calib", str(tmp_path / "calib.npz"), "--float", str(MODEL), "--json", str(js)]
    assert cli_main(argv) == 0
    assert "float side: the given float model" in capsys.readouterr().out
    rows = json.loads(js.read_text())["rows"]
    assert {r["value"] for r in rows} >= {"x", "relu", "relu_2", "logits"}
    assert all(r["sqnr_db"] is not None and r["sqnr_db"] > 20 for r in rows)


def test_ort_tool_model_needs_the_float_model(calib: np.ndarray, tmp_path: Path) -> None:
    """ORT's tool deletes the Relu after each BN into the Q before it, so its Q/DQ-free graph is not the float
    model (the BN output keeps its negatives); with --float the same tensors match the float model."""
    graph = import_onnx(ort_quantize_digits(tmp_path / "ort.onnx"))
    stripped = {r.value: r.sqnr_db for r in layer_errors(graph, _batches(calib[:64])).rows}
    real = layer_errors(graph, _batches(calib[:64]), float_graph=import_onnx(MODEL, qdq=False))
    matched = {r.value: r.sqnr_db for r in real.rows}
    assert stripped["relu"] < 10 < 25 < matched["relu"]
    assert not real.unmatched and all(not math.isinf(v) and v > 25 for v in matched.values())


def test_bad_inputs(calib: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(QuantirError, match="no quantized activation"):
        layer_errors(import_onnx(MODEL), _batches(calib[:8]))
    np.savez(tmp_path / "calib.npz", x=calib[:8])
    assert cli_main(["layers", str(tmp_path), "--calib", str(tmp_path / "calib.npz")]) == 2
    assert "but not a quantir artifact" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(("name", "match"), [("x", "cannot run the float side"), ("z", "float model's inputs")])
def test_a_float_model_that_does_not_fit_is_a_clear_error(
    quantized: QuantizedModel, calib: np.ndarray, tmp_path: Path, name: str, match: str
) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", [name], ["y"])], "g",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])  # fmt: skip
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(QuantirError, match=match):
        layer_errors(quantized.ir, _batches(calib[:32]), float_graph=import_onnx(path, qdq=False))
