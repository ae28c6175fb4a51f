"""Proof of the backend contract: a backend defined only in this file (float ONNX with fp16 weights, run by ONNX
Runtime) is registered, then prepared for, converted, saved, verified, called and driven through `quantir convert`
with no change to compiler/ or tools/."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantir.backends.contract import Backend, CapabilityTable, LegalizeReport, OpDecision, OutputRow, VerifyReport
from quantir.backends.onnx_proto import OrtRunner, emit_model
from quantir.backends.onnx_proto.artifact import SCHEMA, check_destination, manifest_text, read_manifest, write_artifact
from quantir.backends.registry import backend_names, get_backend, register, unregister
from quantir.compiler import StaticQuantConfig, convert, prepare
from quantir.ir import Graph
from quantir.tools.cli import main
from quantir.tools.digits import DigitsSplit, bundled_model_path, load_digits_split

RUNTIME = "ONNX Runtime (fp16 weights)"


def _legalize(graph: Graph) -> LegalizeReport:
    """Nothing runs quantized: drop every quant type (the table is empty, so annotate set none)."""
    report = LegalizeReport(opset_before=graph.opset, opset_after=graph.opset)
    for v in graph.values():
        v.quant = None
    for node in graph.nodes:
        module = node.source.module if node.source is not None else ""
        report.nodes.append(OpDecision(node.name, node.op_type, module, False, "float compute, fp16 weights"))
    return report


def _fp16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store every float32 initializer as float16, cast back to float32 where it is read."""
    g = model.graph
    casts = []
    for init in list(g.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
        g.initializer.remove(init)
        g.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
    for i, node in enumerate(casts):
        g.node.insert(i, node)
    return model


def _emit(graph: Graph, out_dir: str | os.PathLike[str], *, manifest: dict[str, Any]) -> Path:
    out = Path(out_dir).absolute()
    check_destination(out)
    doc = {"schema": SCHEMA, "backend": "toy_fp16", "model": "model.onnx", "reference": "reference.onnx"}
    doc.update(manifest)
    reference = emit_model(graph)

    def write(tmp: Path) -> None:
        onnx.save_model(reference, os.fspath(tmp / "reference.onnx"))
        onnx.save_model(_fp16_weights(emit_model(graph)), os.fspath(tmp / "model.onnx"))

    return write_artifact(out, write, manifest_text(doc, out))


def _load(artifact_dir: Path) -> OrtRunner:
    return OrtRunner(artifact_dir / "model.onnx")


def _verify(artifact_dir: str | os.PathLike[str], inputs: Mapping[str, np.ndarray], **_: Any) -> VerifyReport:
    folder = Path(artifact_dir)
    runner = _load(folder)
    reference = OrtRunner(folder / "reference.onnx")
    report = VerifyReport("toy_fp16", folder, RUNTIME, runner=runner)
    for name, got, ref in zip(runner.output_names, runner(inputs), reference(inputs), strict=True):
        rel = float(np.max(np.abs(got - ref))) / max(float(np.max(np.abs(ref))), 1e-30)
        report.outputs.append(OutputRow(name, float(np.max(np.abs(got - ref))), None, rel, rel < 1e-2))
    return report


TOY = Backend(
    name="toy_fp16",
    aliases=("toy-fp16",),
    runtime=RUNTIME,
    convention="ort",
    capabilities=CapabilityTable(RUNTIME, {}),
    legalize=_legalize,
    emit=_emit,
    verify=_verify,
    load=_load,
    description="float ONNX with fp16 weights (a test of the backend contract)",
    reference_model=lambda d: d / "reference.onnx",
)


@pytest.fixture
def toy() -> Iterator[Backend]:
    register(TOY)
    try:
        yield TOY
    finally:
        unregister(TOY.name)


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


def _float_logits(x: np.ndarray) -> np.ndarray:
    return OrtRunner(bundled_model_path())({"x": x})[0]


def test_toy_backend_converts_saves_verifies_and_runs(toy: Backend, digits: DigitsSplit, tmp_path: Path) -> None:
    assert get_backend("toy-fp16") is toy and "toy_fp16" in backend_names()
    prepared = prepare(str(bundled_model_path()), StaticQuantConfig(), backend="toy-fp16")
    prepared.calibrate(digits.calib_x[:64], sampling_size=64)
    model = convert(prepared)
    decisions = model.decisions()
    assert decisions and not any(d.quantized for d in decisions)
    assert all(RUNTIME in d.reason for d in decisions if d.op_type == "Conv"), model.report()

    path = model.save(tmp_path / "toy")
    manifest = read_manifest(path)
    assert manifest is not None and manifest["backend"] == "toy_fp16"
    weights = onnx.load(os.fspath(path / "model.onnx")).graph.initializer
    assert weights and all(w.data_type != TensorProto.FLOAT for w in weights)  # fp16 on disk

    report = get_backend("toy_fp16").verify(path, {"x": digits.test_x[:32]})
    assert report.ok and report.coverage is None and report.coverage_text().startswith("n/a")

    x = digits.test_x[:128]
    got = model(x)
    ref = _float_logits(x)
    assert got.shape == ref.shape and float(np.max(np.abs(got - ref))) < 0.05 * float(np.max(np.abs(ref)))
    assert float(np.mean(got.argmax(1) == ref.argmax(1))) > 0.99


def test_toy_backend_through_the_cli(toy: Backend, digits: DigitsSplit, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    data = tmp_path / "calib.npz"
    np.savez(data, x=digits.calib_x[:64])
    out = tmp_path / "out"
    rc = main(["convert", str(bundled_model_path()), "--calib", str(data), "--to", "toy-fp16", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "toy_fp16" in text and "int8 kernel coverage: n/a" in text
    assert json.loads((out / "quantir.json").read_text())["backend"] == "toy_fp16"
