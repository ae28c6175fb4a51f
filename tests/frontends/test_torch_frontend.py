"""The torch frontend on real torch models: provenance (module paths, classes, parameter names) survives
torch.export -> dynamo ONNX -> IR; default and explicit dynamic batch; training-mode modules; and each export
failure (data-dependent control flow, wrong arity, an op the ONNX exporter refuses) as a FrontendError in user terms.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from quantir.compiler.torch_export import export
from quantir.frontends.torch import import_torch
from quantir.ir import SourceInfo
from quantir.ir.errors import FrontendError
from quantir.tools.dev.train_digits import load_bundled_module


def digits_module() -> torch.nn.Module:
    """The digits CNN with the bundled weights."""
    module: torch.nn.Module = load_bundled_module()
    return module


@pytest.fixture(scope="module")
def digits_graph():  # type: ignore[no-untyped-def]
    return import_torch(digits_module(), (torch.zeros(4, 1, 8, 8),))


def test_every_conv_and_gemm_carries_its_module_path_and_class(digits_graph) -> None:  # type: ignore[no-untyped-def]
    heavy = {n.source.module: n.source.module_type for n in digits_graph.nodes if n.op_type in ("Conv", "Gemm")}
    assert heavy == {
        "conv1": "torch.nn.modules.conv.Conv2d",
        "conv2": "torch.nn.modules.conv.Conv2d",
        "fc1": "torch.nn.modules.linear.Linear",
        "fc2": "torch.nn.modules.linear.Linear",
    }
    bn = [n.source for n in digits_graph.nodes if n.op_type == "BatchNormalization"]
    assert bn == [SourceInfo("bn1", "torch.nn.modules.batchnorm.BatchNorm2d"),
                  SourceInfo("bn2", "torch.nn.modules.batchnorm.BatchNorm2d")]  # fmt: skip


def test_constants_keep_their_parameter_names(digits_graph) -> None:  # type: ignore[no-untyped-def]
    names = set(digits_graph.constants)
    assert {"conv1.weight", "conv1.bias", "conv2.weight", "fc1.weight", "fc1.bias", "fc2.weight"} <= names
    assert {"bn1.running_mean", "bn2.running_var"} <= names


def test_default_marks_dim0_dynamic(digits_graph) -> None:  # type: ignore[no-untyped-def]
    (x,) = digits_graph.inputs
    assert x.name == "x"
    batch, *rest = x.type.shape
    assert isinstance(batch, str) and tuple(rest) == (1, 8, 8)


def test_batch_one_example_stays_static_by_default() -> None:
    # torch.export specializes sizes 0/1, so Dim.AUTO on a batch-1 example gives a static batch of 1
    (x,) = import_torch(digits_module(), torch.zeros(1, 1, 8, 8)).inputs
    assert tuple(x.type.shape) == (1, 1, 8, 8)


def test_explicit_dim_and_names() -> None:
    batch = torch.export.Dim("batch", min=1, max=64)
    g = import_torch(
        digits_module(), (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},), input_names=["image"],
        output_names=["logits"],
    )  # fmt: skip
    assert [v.name for v in g.inputs] == ["image"] and [v.name for v in g.outputs] == ["logits"]
    assert isinstance(g.inputs[0].type.shape[0], str)  # symbolic (torch names it s77; the Dim name is not kept)


def test_export_returns_an_exported_program_that_imports_the_same() -> None:
    program = export(digits_module(), (torch.zeros(3, 1, 8, 8),))
    assert isinstance(program, torch.export.ExportedProgram)
    g = import_torch(program)
    assert {n.source.module for n in g.nodes if n.op_type == "Gemm"} == {"fc1", "fc2"}


def test_dict_example_inputs_are_keyword_inputs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 3)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.proj(a) + b

    g = import_torch(Two().eval(), {"a": torch.ones(2, 4), "b": torch.ones(2, 3)})
    assert [v.name for v in g.inputs] == ["a", "b"]
    assert {n.source.module for n in g.nodes if n.op_type in ("Gemm", "MatMul")} == {"proj"}


# ---- training mode -------------------------------------------------------------------------------------------------


class DropNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.fc(x)))


def test_training_mode_module_is_exported_in_eval_mode_with_a_warning() -> None:
    torch.manual_seed(0)
    model = DropNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    model.train()
    x = torch.randn(16, 8)
    with pytest.warns(UserWarning, match=r"DropNet is in training mode; quantir switched it to eval mode"):
        program = export(model, (x,))
    assert not model.training  # left in eval mode, as INC does
    with torch.no_grad():
        expected = model(x)
    got = program.module()(x)
    torch.testing.assert_close(got, expected)

    import onnxruntime as ort

    from quantir.frontends.torch import to_onnx

    sess = ort.InferenceSession(to_onnx(program).SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_eval_module_gives_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        export(DropNet().eval(), (torch.randn(4, 8),))


# ---- errors --------------------------------------------------------------------------------------------------------


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


class CumulativeMax(nn.Module):
    """torch.cummax has no ONNX lowering in torch 2.13 / onnxscript (a module the exporter really refuses)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(self.fc(x), dim=1)[0]


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = CumulativeMax()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_data_dependent_control_flow_points_to_torch_cond_and_draft_export() -> None:
    with pytest.raises(FrontendError) as info:
        import_torch(DataDependent().eval(), (torch.randn(2, 4),))
    msg = str(info.value)
    print("\n" + msg)
    assert msg.startswith("torch.export cannot trace DataDependent: its forward has data-dependent control flow")
    assert "torch.cond" in msg and "torch.export.draft_export" in msg
    assert "test_torch_frontend.py" in msg  # the user's line
    assert type(info.value.__cause__).__name__ == "GuardOnDataDependentSymNode"
    assert "Traceback" not in msg


def test_wrong_arity_names_expected_and_given_inputs() -> None:
    with pytest.raises(FrontendError) as info:
        import_torch(digits_module(), (torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)))
    msg = str(info.value)
    print("\n" + msg)
    assert msg.startswith("example_inputs do not fit DigitsCNN.forward(x: 'torch.Tensor') -> 'torch.Tensor': ")
    assert "it expects 1 required input(s) (x), but 2 positional input(s) were given" in msg
    assert isinstance(info.value.__cause__, TypeError)

    with pytest.raises(FrontendError, match=r"it expects 1 required input\(s\) \(x\), but 0 positional and keyword y"):
        import_torch(digits_module(), {"y": torch.zeros(2, 1, 8, 8)})


def test_missing_example_inputs_is_a_frontend_error() -> None:
    with pytest.raises(FrontendError, match="needs example_inputs"):
        import_torch(digits_module())


def test_op_without_onnx_lowering_names_op_and_module() -> None:
    with pytest.raises(FrontendError) as info:
        import_torch(Outer().eval(), (torch.randn(2, 4),))
    msg = str(info.value)
    print("\n" + msg)
    assert msg.startswith("the ONNX exporter cannot translate torch.ops.aten.cummax.default in module 'head' "
                          "(CumulativeMax): No ONNX function found for")  # fmt: skip
    assert "no ONNX lowering" in msg and "\n" not in msg
    assert type(info.value.__cause__).__name__ == "ConversionError"


def test_not_a_module() -> None:
    with pytest.raises(FrontendError, match="cannot export a str"):
        import_torch("model.pt", (torch.zeros(1),))
