"""The ONNX test zoo shipped in the onnx wheel, end to end: import, text round trip, emission, execution.

For every model in `onnx/backend/test/data/{simple,pytorch-converted,pytorch-operator,light}`: import it, print
it, save and load the text form (with its safetensors sidecar), check the reloaded graph is structurally equal,
emit it to ONNX (checker with full_check), check that re-importing the emitted model gives the same graph, and run
the original and the emitted model on the test's own inputs, requiring the same outputs (rtol 1e-5, atol 1e-6).
`light_*` models store no inputs; they get the deterministic input the onnx backend runner uses (`arange(n) / n`
in the input's shape, unknown dims = 1), and their weights (folded from ConstantOfShape) go to external data.

Models ONNX Runtime cannot run even in their original form are listed below with the reason; the test checks
that ORT fails on them for exactly that reason, then compares original and emitted with `onnx.reference`.
Models nothing here can execute are listed with their reason and checked up to emission.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from quantir.backends.onnx_proto import emit_model, save_model
from quantir.frontends.onnx import import_onnx
from quantir.ir import Graph, first_difference, printer, textio

ort.set_default_logger_severity(4)
DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SUITES = ("simple", "pytorch-converted", "pytorch-operator")

_NO_KERNEL = "ONNX Runtime has no CPU kernel for {} at this opset (the original model fails too)"
ORT_CANNOT_RUN: dict[str, tuple[str, str]] = {
    **{
        f"pytorch-converted/test_{n}": (_NO_KERNEL.format("AveragePool(1)"), "implementation for AveragePool(1)")
        for n in (
            "AvgPool1d",
            "AvgPool1d_stride",
            "AvgPool2d",
            "AvgPool2d_stride",
            "AvgPool3d",
            "AvgPool3d_stride",
            "AvgPool3d_stride1_pad0_gpu_input",
        )
    },
    **{
        f"pytorch-converted/test_{n}": (
            _NO_KERNEL.format("BatchNormalization(6)"),
            "implementation for BatchNormalization(6)",
        )
        for n in (
            "BatchNorm1d_3d_input_eval",
            "BatchNorm2d_eval",
            "BatchNorm2d_momentum_eval",
            "BatchNorm3d_eval",
            "BatchNorm3d_momentum_eval",
        )
    },
    **{
        f"pytorch-converted/test_{n}": (_NO_KERNEL.format("PRelu(6)"), "implementation for PRelu(6)")
        for n in (
            "PReLU_1d",
            "PReLU_1d_multiparam",
            "PReLU_2d",
            "PReLU_2d_multiparam",
            "PReLU_3d",
            "PReLU_3d_multiparam",
        )
    },
    **{
        f"pytorch-converted/test_{n}": (_NO_KERNEL.format("Mul(6)"), "implementation for Mul(6)")
        for n in ("GLU", "GLU_dim", "PoissonNLLLLoss_no_reduce")
    },
    "pytorch-converted/test_Linear": (_NO_KERNEL.format("Gemm(6)"), "implementation for Gemm(6)"),
    "pytorch-converted/test_Softsign": (_NO_KERNEL.format("Add(6)"), "implementation for Add(6)"),
    **{
        f"pytorch-operator/test_operator_{n}": (_NO_KERNEL.format("Add(6)"), "implementation for Add(6)")
        for n in (
            "add_broadcast",
            "add_size1_broadcast",
            "add_size1_right_broadcast",
            "add_size1_singleton_broadcast",
            "addconstant",
            "basic",
            "non_float_params",
            "params",
        )
    },
    **{
        f"pytorch-operator/test_operator_{n}": (_NO_KERNEL.format("Gemm(6)"), "implementation for Gemm(6)")
        for n in ("addmm", "mm")
    },
    "pytorch-operator/test_operator_pow": (_NO_KERNEL.format("Pow(1)"), "implementation for Pow(1)"),
}
"""Model -> (reason, text ORT's error must contain). Executed with onnx.reference instead."""

ORT_ENVIRONMENT: dict[str, tuple[str, str]] = {
    f"simple/test_strnorm_model_monday_{n}": (
        "ORT's StringNormalizer needs the en_US.UTF-8 locale, which this machine may lack",
        "Failed to construct locale",
    )
    for n in ("casesensintive_lower", "casesensintive_upper", "empty_output", "insensintive_upper_twodim")
}
"""Model -> (reason, error text) for ORT failures that depend on the machine; onnx.reference runs them then."""

CANNOT_EXECUTE: dict[str, tuple[str, str]] = {
    f"simple/test_{n}": (
        "ai.onnx.preview.training::Gradient is implemented by neither ONNX Runtime inference nor onnx.reference",
        "Gradient(-1) is not a registered function/op",
    )
    for n in ("gradient_of_add", "gradient_of_add_and_mul")
}
"""Model -> (reason, ORT error text): checked through emission, and that ORT refuses original and emitted alike."""

OUTCOMES: Counter[str] = Counter()
NOT_RUN_IN_ORT: dict[str, str] = {}
"""Models of this session that were not executed in ONNX Runtime, with the reason (printed by the summary)."""


def _zoo() -> list[tuple[str, Path]]:
    models = [
        (f"{suite}/{d.name}", d / "model.onnx")
        for suite in SUITES
        for d in sorted((DATA / suite).iterdir())
        if (d / "model.onnx").is_file()
    ]
    models += [(f"light/{p.stem.removeprefix('light_')}", p) for p in sorted((DATA / "light").glob("light_*.onnx"))]
    return models


ZOO = _zoo()


# ---------------------------------------------------------------- data


def _parse(path: str, tp: onnx.TypeProto) -> Any:
    raw = Path(path).read_bytes()
    kind = tp.WhichOneof("value")
    if kind == "sequence_type":
        seq = onnx.SequenceProto()
        seq.ParseFromString(raw)
        return numpy_helper.to_list(seq)
    if kind == "optional_type":
        opt = onnx.OptionalProto()
        opt.ParseFromString(raw)
        return numpy_helper.to_optional(opt)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(raw)
    return numpy_helper.to_array(tensor)


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _datasets(model_path: Path, model: onnx.ModelProto) -> list[dict[str, Any]]:
    inputs = _real_inputs(model)
    if model_path.name == "model.onnx":
        sets = []
        for ds in sorted(glob.glob(os.fspath(model_path.parent / "test_data_set_*"))):
            files = sorted(glob.glob(f"{ds}/input_*.pb"), key=lambda p: int(Path(p).stem.split("_")[1]))
            assert len(files) == len(inputs), f"{ds} has {len(files)} inputs for {len(inputs)} graph inputs"
            sets.append({vi.name: _parse(f, vi.type) for vi, f in zip(inputs, files)})
        return sets
    feeds = {}  # light models: the onnx backend runner's deterministic input
    for vi in inputs:
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return [feeds]


# ---------------------------------------------------------------- execution and comparison


def _ort_run(model: onnx.ModelProto | str, feeds: dict[str, Any]) -> list[Any]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 4
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def _reference_run(model: onnx.ModelProto, feeds: dict[str, Any]) -> list[Any]:
    return list(ReferenceEvaluator(model).run(None, feeds))


def _assert_same(expected: Any, actual: Any, where: str) -> None:
    if expected is None or actual is None:
        assert expected is None and actual is None, f"{where}: one output is None"
    elif isinstance(expected, Sequence) and not isinstance(expected, (str, bytes, np.ndarray)):
        assert isinstance(actual, Sequence) and len(expected) == len(actual), f"{where}: sequence lengths differ"
        for i, (e, a) in enumerate(zip(expected, actual)):
            _assert_same(e, a, f"{where}[{i}]")
    else:
        e, a = np.asarray(expected), np.asarray(actual)
        assert e.shape == a.shape, f"{where}: shape {a.shape}, expected {e.shape}"
        if e.dtype.kind in "fc":
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6, err_msg=where)
        else:
            np.testing.assert_array_equal(a, e, err_msg=where)


def _compare(
    run: Any, original: onnx.ModelProto | str, emitted: onnx.ModelProto | str, sets: list[dict[str, Any]]
) -> None:
    for k, feeds in enumerate(sets):
        want, got = run(original, feeds), run(emitted, feeds)
        assert len(want) == len(got)
        for i, (e, a) in enumerate(zip(want, got)):
            _assert_same(e, a, f"data set {k}, output {i}")


def _expose_logits(model_path: str, out_path: Path) -> str:
    """A copy of a light model that also outputs its final node's input (the logits before softmax).

    The light models' weights are constant fills, so their softmax outputs are uniform; the logits still depend on
    every layer. External data stays where it is (the copy is written next to the original).
    """
    model = onnx.load(model_path, load_external_data=False)
    logits = model.graph.node[-1].input[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
    onnx.save(model, os.fspath(out_path))
    return os.fspath(out_path)


def _ort_error(model: onnx.ModelProto | str, feeds: dict[str, Any]) -> str | None:
    try:
        _ort_run(model, feeds)
    except Exception as e:  # ORT raises its own exception types (Fail, NotImplemented, InvalidGraph, ...)
        return str(e)
    return None


# ---------------------------------------------------------------- the test


def _text_round_trip(graph: Graph, tmp_path: Path) -> Graph:
    text = printer.print_graph(graph)
    assert text.strip()
    path = tmp_path / "model.qir"
    textio.save(graph, path)
    back = textio.load(path)
    diff = first_difference(graph, back)
    assert diff is None, f"text round trip changed the graph: {diff}"
    assert printer.print_graph(back) == text
    return back


@pytest.mark.parametrize(("name", "path"), ZOO, ids=[n for n, _ in ZOO])
def test_zoo_model(name: str, path: Path, tmp_path: Path) -> None:
    original = onnx.load(os.fspath(path))
    graph = import_onnx(path)
    back = _text_round_trip(graph, tmp_path)
    sets = _datasets(path, original)
    if name.startswith("light/"):  # large folded weights: exercise streamed external data
        emitted_path = tmp_path / "emitted.onnx"
        save_model(back, emitted_path, external_data=True)
        onnx.checker.check_model(os.fspath(emitted_path), full_check=True)
        emitted: onnx.ModelProto | str = os.fspath(emitted_path)
        assert emitted_path.stat().st_size < 1 << 20
    else:
        emitted = emit_model(back)
        onnx.checker.check_model(emitted, full_check=True)
    again = import_onnx(emitted)  # ONNX -> IR -> ONNX -> IR is the identity (ir_version may only rise)
    assert again.ir_version >= back.ir_version
    again.ir_version = back.ir_version
    diff = first_difference(back, again)
    assert diff is None, f"re-importing the emitted model changed the graph: {diff}"

    if name in CANNOT_EXECUTE:
        _, needle = CANNOT_EXECUTE[name]
        for model in (original, emitted):
            err = _ort_error(model, sets[0])
            assert err is not None and needle in err, f"expected ORT to refuse with {needle!r}, got {err!r}"
        OUTCOMES["cannot execute (checked up to emission)"] += 1
        NOT_RUN_IN_ORT[name] = CANNOT_EXECUTE[name][0]
        return
    expected_failure = ORT_CANNOT_RUN.get(name) or ORT_ENVIRONMENT.get(name)
    if expected_failure is not None:
        err = _ort_error(original, sets[0])
        if err is not None or name in ORT_CANNOT_RUN:
            reason, needle = expected_failure
            for model in (original, emitted):
                err = _ort_error(model, sets[0])
                assert err is not None and needle in err, f"expected ORT to refuse with {needle!r}, got {err!r}"
            _compare(_reference_run, original, emitted, sets)
            OUTCOMES["passed with onnx.reference (ORT cannot run the original)"] += 1
            NOT_RUN_IN_ORT[name] = reason
            return
    if name.startswith("light/"):
        assert isinstance(emitted, str)
        original_path = _expose_logits(os.fspath(path), tmp_path / "original_logits.onnx")
        emitted = _expose_logits(emitted, tmp_path / "emitted_logits.onnx")
        _compare(_ort_run, original_path, emitted, sets)
    else:
        _compare(_ort_run, os.fspath(path), emitted, sets)
    OUTCOMES["passed in ONNX Runtime"] += 1


def test_zoo_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Print how many zoo models passed, and how (runs after the parametrized cases)."""
    ran = sum(OUTCOMES.values())
    lines = [f"ONNX zoo: {ran} of {len(ZOO)} models checked in this session"]
    lines += [f"  {count:4d} {what}" for what, count in sorted(OUTCOMES.items())]
    by_reason: dict[str, list[str]] = {}
    for name, reason in sorted(NOT_RUN_IN_ORT.items()):
        by_reason.setdefault(reason, []).append(name.split("/")[-1].removeprefix("test_"))
    if by_reason:
        lines.append("not executed in ONNX Runtime, by reason:")
        lines += [f"  {reason}: {', '.join(names)}" for reason, names in by_reason.items()]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    if ran == len(ZOO):
        assert OUTCOMES["passed in ONNX Runtime"] >= len(ZOO) - len(ORT_CANNOT_RUN) - len(ORT_ENVIRONMENT) - len(
            CANNOT_EXECUTE
        )
