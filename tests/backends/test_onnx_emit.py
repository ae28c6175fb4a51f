"""Float ONNX emission of IR graphs: checker, ONNX Runtime, streamed external data, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantir.backends.onnx_proto import emit_model, save_model
from quantir.backends.onnx_proto.save import ALIGNMENT
from quantir.ir import (
    Attr,
    AttrKind,
    DType,
    ExternalData,
    Graph,
    Node,
    QuantSpec,
    SerializationError,
    SourceInfo,
    Tensor,
    TensorType,
    Value,
)

F32 = DType.F32


def _run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return list(ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feeds))


def _mlp(hidden: int = 8, *, name: str = "mlp") -> tuple[Graph, dict[str, np.ndarray]]:
    """x[N,4] -> Gemm(fc1) -> Relu -> MatMul(fc2) -> Add -> LeakyRelu: every attribute kind but tensors/strings."""
    rng = np.random.default_rng(0)
    w = {
        "fc1.weight": rng.standard_normal((hidden, 4)).astype(np.float32),
        "fc1.bias": rng.standard_normal(hidden).astype(np.float32),
        "fc2.weight": rng.standard_normal((hidden, 3)).astype(np.float32),
        "fc2.bias": rng.standard_normal(3).astype(np.float32),
    }
    g = Graph(name, opset_imports={"": 17})
    c = {k: g.add_constant(k, Tensor.from_numpy(v)) for k, v in w.items()}
    x = Value("x", TensorType(F32, ("N", 4)))
    g.inputs.append(x)
    h = Value("h", TensorType(F32, ("N", hidden)))
    g.append(
        Node(
            "Gemm",
            [x, c["fc1.weight"], c["fc1.bias"]],
            [h],
            name="fc1/Gemm",
            attrs={"transB": Attr.of(1), "alpha": Attr.of(1.0)},
            source=SourceInfo("fc1", "torch.nn.Linear"),
        )
    )
    r = Value("r", TensorType(F32, ("N", hidden)), quant=QuantSpec(DType.U8))  # annotations are ignored here
    g.append(Node("Relu", [h], [r], name="relu"))
    m = Value("m", TensorType(F32, ("N", 3)))
    g.append(Node("MatMul", [r, c["fc2.weight"]], [m], name="fc2/MatMul", source=SourceInfo("fc2", "torch.nn.Linear")))
    a = Value("a", TensorType(F32, ("N", 3)))
    g.append(Node("Add", [m, c["fc2.bias"]], [a], name="fc2/Add", source=SourceInfo("fc2", "torch.nn.Linear")))
    y = Value("y", TensorType(F32, ("N", 3)))
    g.append(Node("LeakyRelu", [a], [y], attrs={"alpha": Attr(AttrKind.FLOAT, 0.125)}))
    g.outputs.append(y)
    return g, w


def _reference(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0) @ w["fc2.weight"] + w["fc2.bias"]
    return np.where(h >= 0, h, 0.125 * h)


def test_emitted_model_passes_full_check_and_runs() -> None:
    g, w = _mlp()
    model = emit_model(g)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.initializer] == list(w)
    assert [n.name for n in model.graph.node] == ["fc1/Gemm", "relu", "fc2/MatMul", "fc2/Add", ""]
    gemm = model.graph.node[0]
    assert {p.key: p.value for p in gemm.metadata_props} == {
        "quantir.source.module": "fc1",
        "quantir.source.type": "torch.nn.Linear",
    }
    assert {vi.name for vi in model.graph.value_info} == {"h", "r", "m", "a"}
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert (dims[0].dim_param, dims[1].dim_value) == ("N", 4)
    assert model.producer_name == "quantir" and model.opset_import[0].version == 17
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(model, {"x": x})[0], _reference(w, x), rtol=1e-5, atol=1e-5)


def test_string_and_tensor_attributes_and_missing_domain_import() -> None:
    g = Graph("misc", opset_imports={"": 17})
    x = Value("x", TensorType(F32, (2, 3)))
    g.inputs.append(x)
    k = Value("k", TensorType(F32, (3,)))
    g.append(Node("Constant", [], [k], attrs={"value": Attr.of(Tensor.from_numpy(np.array([1, 2, 3], np.float32)))}))
    s = Value("s", TensorType(F32, (2, 3)))
    g.append(Node("Add", [x, k], [s]))
    y = Value("y", TensorType(F32, (2, 3)))
    g.append(Node("Gelu", [s], [y], domain="com.microsoft", name="gelu"))
    z = Value("z", TensorType(F32, (2, 3)))
    g.append(Node("Gelu", [s], [z], attrs={"approximate": Attr.of("tanh")}))  # opset-20 Gelu: needs opset 20
    g.opset_imports[""] = 20
    g.outputs += [y, z]
    model = emit_model(g)
    assert {o.domain: o.version for o in model.opset_import} == {"": 20, "com.microsoft": 1}
    onnx.checker.check_model(model, full_check=True)
    out_y, out_z = _run(model, {"x": np.zeros((2, 3), np.float32)})
    assert out_y.shape == out_z.shape == (2, 3) and abs(float(out_z[0, 0]) - 0.8412) < 1e-3


def test_ir_version_is_raised_to_what_the_graph_needs() -> None:
    g, _ = _mlp()
    g.ir_version = 3  # IR 3 would require initializers among the inputs; opset 17 needs IR 8
    assert emit_model(g).ir_version == 8
    g.ir_version = 10
    assert emit_model(g).ir_version == 10


def test_save_model_streams_external_data(tmp_path: Path) -> None:
    g, w = _mlp(hidden=1024)  # fc1.weight and fc2.weight go external; the biases of 3 floats stay inline
    path = tmp_path / "mlp.onnx"
    save_model(g, path, external_data=True)
    data = tmp_path / "mlp.onnx.data"
    assert data.is_file() and path.stat().st_size < 4096
    proto = onnx.load(os.fspath(path), load_external_data=False)
    ext = {}
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in init.external_data}
            assert entries["location"] == "mlp.onnx.data" and int(entries["offset"]) % ALIGNMENT == 0
            ext[init.name] = int(entries["length"])
    assert ext == {"fc1.weight": 1024 * 4 * 4, "fc1.bias": 1024 * 4, "fc2.weight": 1024 * 3 * 4}
    onnx.checker.check_model(os.fspath(path), full_check=True)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(os.fspath(path), {"x": x})[0], _reference(w, x), rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "mlp.onnx.data"]


def test_external_constants_are_streamed_without_loading(tmp_path: Path) -> None:
    weight = np.arange(64 * 4, dtype=np.float32).reshape(4, 64)
    src = tmp_path / "src.bin"
    src.write_bytes(b"\0" * 100 + weight.tobytes())
    g = Graph("lazy", opset_imports={"": 17})
    t = Tensor(F32, (4, 64), external=ExternalData(os.fspath(src), 100, weight.nbytes))
    wv = g.add_constant("w", t)
    x = Value("x", TensorType(F32, (1, 4)))
    y = Value("y", TensorType(F32, (1, 64)))
    g.inputs.append(x)
    g.append(Node("MatMul", [x, wv], [y]))
    g.outputs.append(y)
    (tmp_path / "out").mkdir()
    save_model(g, tmp_path / "out" / "m.onnx", external_data=True)
    assert not t.is_loaded
    written = (tmp_path / "out" / "m.onnx.data").read_bytes()
    assert written == weight.tobytes()
    got = _run(os.fspath(tmp_path / "out" / "m.onnx"), {"x": np.ones((1, 4), np.float32)})[0]
    np.testing.assert_array_equal(got, weight.sum(0, keepdims=True))


def test_inline_save_and_size_threshold(tmp_path: Path) -> None:
    g, w = _mlp()
    save_model(g, tmp_path / "inline.onnx")
    assert not (tmp_path / "inline.onnx.data").exists()
    save_model(g, tmp_path / "t.onnx", external_data=True, size_threshold=100)  # only fc1.weight: 128 bytes
    proto = onnx.load(os.fspath(tmp_path / "t.onnx"), load_external_data=False)
    external = [i.name for i in proto.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert external == ["fc1.weight"]
    x = np.ones((1, 4), np.float32)
    for name in ("inline.onnx", "t.onnx"):
        np.testing.assert_allclose(_run(os.fspath(tmp_path / name), {"x": x})[0], _reference(w, x), rtol=1e-5)


def _graph_with_truncated_weight(tmp_path: Path) -> Graph:
    g, _ = _mlp(hidden=1024)
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 1000)  # a tensor claiming 12 KiB from a 1000-byte file: fails mid-stream
    bad = Tensor(F32, (1024, 3), external=ExternalData(os.fspath(short), 0, 1024 * 3 * 4))
    node = next(n for n in g if n.op_type == "MatMul")
    replacement = g.add_constant("fc2.weight.bad", bad)
    old = node.inputs[1]
    node.set_input(1, replacement)
    assert old is not None
    g.remove_constant(old)
    return g


@pytest.mark.parametrize("external", [True, False])
def test_failed_save_leaves_no_partial_file(tmp_path: Path, external: bool) -> None:
    g = _graph_with_truncated_weight(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"previous model")  # an earlier good save must survive a failed one
    with pytest.raises(SerializationError, match=r"short\.bin"):
        save_model(g, out / "m.onnx", external_data=external)
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx"]
    assert (out / "m.onnx").read_bytes() == b"previous model"


def test_over_2gb_needs_external_data(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # a sparse 2.5 GiB file; nothing here reads it
        f.truncate(5 << 29)
    g = Graph("big", opset_imports={"": 17})
    t = Tensor(F32, (5 << 27,), external=ExternalData(os.fspath(big), 0, 5 << 29))
    wv = g.add_constant("w", t)
    y = Value("y", TensorType(F32, (5 << 27,)))
    g.append(Node("Identity", [wv], [y]))
    g.outputs.append(y)
    with pytest.raises(SerializationError, match="over protobuf's 2 GiB limit"):
        emit_model(g)
    with pytest.raises(SerializationError, match="above 2 GB ONNX needs external data"):
        save_model(g, tmp_path / "big.onnx", external_data=False)
    assert not t.is_loaded and not (tmp_path / "big.onnx").exists()


def test_untyped_graph_input_and_missing_folder_are_refused(tmp_path: Path) -> None:
    g = Graph("untyped", opset_imports={"": 17})
    x = Value("x")
    y = Value("y", TensorType(F32, (2,)))
    g.inputs.append(x)
    g.append(Node("Relu", [x], [y]))
    g.outputs.append(y)
    with pytest.raises(SerializationError, match=r"graph input %x has no type; ONNX requires a type"):
        emit_model(g)
    good, _ = _mlp()
    with pytest.raises(SerializationError, match=r"folder '.*no_such_dir' does not exist"):
        save_model(good, tmp_path / "no_such_dir" / "m.onnx")


def test_save_model_streams_with_bounded_memory(tmp_path: Path) -> None:
    import psutil

    src = tmp_path / "src.bin"
    with open(src, "wb") as f:  # 256 MiB of weights, held only on disk
        f.truncate(256 << 20)
    g = Graph("streamed", opset_imports={"": 17})
    t = Tensor(F32, (1 << 16, 1 << 10), external=ExternalData(os.fspath(src), 0, 256 << 20))
    wv = g.add_constant("w", t)
    x = Value("x", TensorType(F32, (1, 1 << 16)))
    y = Value("y", TensorType(F32, (1, 1 << 10)))
    g.inputs.append(x)
    g.append(Node("MatMul", [x, wv], [y]))
    g.outputs.append(y)
    proc = psutil.Process()
    before = proc.memory_info().rss
    save_model(g, tmp_path / "m.onnx", external_data=True)
    grown = proc.memory_info().rss - before
    assert (tmp_path / "m.onnx.data").stat().st_size == 256 << 20
    assert (tmp_path / "m.onnx").stat().st_size < 1024
    assert grown < 64 << 20, f"streaming 256 MiB grew RSS by {grown >> 20} MiB"
