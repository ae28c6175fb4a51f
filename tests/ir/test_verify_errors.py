"""One test per verifier message: each names the node (with its source module) and shows the IR around it.

Bad graphs are built through the IR API, or by corrupting internals where the API refuses to build them.
"""

from __future__ import annotations

import numpy as np
import pytest

from quantir.ir import (
    DType,
    Granularity,
    Graph,
    Node,
    QuantSpec,
    QuantType,
    Scheme,
    SourceInfo,
    Tensor,
    TensorType,
    Usage,
    Value,
    VerifyError,
    verify,
)
from quantir.ir.core import Attr


def f32(*shape: int | str) -> TensorType:
    return TensorType(DType.F32, tuple(shape))


def chain() -> tuple[Graph, list[Node]]:
    """x -> conv1 (Relu, from layer1.conv) -> relu2 -> relu3."""
    g = Graph("chain")
    x = Value("x", f32("N", 4))
    g.inputs = [x]
    nodes: list[Node] = []
    cur = x
    for i, name in enumerate(("conv1", "relu2", "relu3")):
        src = SourceInfo("layer1.conv", "torch.nn.Conv2d") if i == 0 else None
        nodes.append(g.append(Node("Relu", [cur], [Value(f"r{i}", f32("N", 4))], name=name, source=src)))
        cur = nodes[-1].output()
    g.outputs = [cur]
    return g, nodes


def verify_error(g: Graph) -> str:
    with pytest.raises(VerifyError) as info:
        verify(g)
    return str(info.value)


def assert_node_context(message: str, node: Node, line_text: str) -> None:
    """The message names `node` and shows its printed line marked with >>."""
    assert message.startswith(node.describe() + ": ")
    marked = [line for line in message.splitlines() if line.lstrip().startswith(">>")]
    assert len(marked) == 1 and line_text in marked[0], message


def quant(
    scale: object,
    zp: object = 0,
    *,
    dtype: DType = DType.I8,
    scheme: Scheme = Scheme.SYM,
    granularity: Granularity | None = None,
    qmin: int = -127,
    qmax: int = 127,
) -> QuantType:
    return QuantType(
        dtype, scheme, granularity or Granularity.per_tensor(), np.asarray(scale), np.asarray(zp), qmin, qmax
    )


def test_the_valid_chain_verifies() -> None:
    verify(chain()[0])


# ---- structure ---------------------------------------------------------------------------------------------


def test_value_defined_twice() -> None:
    g, nodes = chain()
    nodes[1].output().name = "r0"
    message = verify_error(g)
    assert "value name %r0 is defined twice (output 0 of Relu node 'conv1'" in message
    assert "hint: rename one of them" in message
    assert_node_context(message, nodes[1], "%r0: f32[N,4] = Relu(%r0)")


def test_graph_input_produced_by_a_node() -> None:
    g, nodes = chain()
    g.inputs.append(nodes[0].output())
    message = verify_error(g)
    assert message == "graph input %r0 must not be produced by a node or be a constant"


def test_constant_without_payload() -> None:
    g, _ = chain()
    c = g.add_constant("w", Tensor.from_numpy(np.ones(2, np.float32)))
    c.const = None
    assert verify_error(g) == "constant %w has no payload"


def test_constant_registered_under_another_name() -> None:
    g, _ = chain()
    g.add_constant("w", Tensor.from_numpy(np.ones(2, np.float32))).name = "v"
    assert verify_error(g) == "constant registered as 'w' is named %v"


def test_constant_type_differs_from_payload() -> None:
    g, _ = chain()
    g.add_constant("w", Tensor.from_numpy(np.ones(2, np.float32))).type = f32(3)
    assert verify_error(g).startswith("constant %w has type TensorType(dtype=<DType.F32: 'f32'>, shape=(3,)) but")


def test_node_not_pointing_back_to_the_graph() -> None:
    g, nodes = chain()
    nodes[1].graph = Graph("other")
    message = verify_error(g)
    assert "node does not point back to this graph" in message
    assert_node_context(message, nodes[1], "%r1: f32[N,4] = Relu(%r0)")


def test_input_used_before_definition() -> None:
    g, nodes = chain()
    g._nodes.reverse()  # corrupt the order the API keeps
    message = verify_error(g)
    assert "input 0 %r1 is used before it is defined" in message
    assert "hint: nodes must be in topological order" in message
    assert_node_context(message, nodes[2], "%r2: f32[N,4] = Relu(%r1)")


def test_input_not_in_the_graph() -> None:
    g, nodes = chain()
    stray = Value("stray", f32("N", 4))
    nodes[1].set_input(0, stray)
    message = verify_error(g)
    assert (
        "input 0 %stray is used before it is defined" in message and "hint: the value is not in this graph" in message
    )
    assert_node_context(message, nodes[1], "= Relu(%stray)")


def test_use_list_lacks_an_input() -> None:
    g, nodes = chain()
    del nodes[0].output()._uses[Usage(nodes[1], 0)]
    message = verify_error(g)
    assert "use list of %r0 lacks input 0" in message and "hint: edit inputs with set_input()" in message
    assert_node_context(message, nodes[1], "%r1: f32[N,4] = Relu(%r0)")


def test_output_not_pointing_back_to_its_node() -> None:
    g, nodes = chain()
    nodes[1].output()._index = 3
    message = verify_error(g)
    assert "output 0 %r1 does not point back to this node" in message
    assert_node_context(message, nodes[1], "%r1: f32[N,4] = Relu(%r0)")


def test_value_used_by_a_node_outside_the_graph() -> None:
    g, nodes = chain()
    g.outputs = [nodes[1].output()]
    g._nodes.remove(nodes[2])  # dropped without Graph.erase, so %r1 still lists it as a user
    nodes[2].graph = None
    message = verify_error(g)
    assert message.startswith("%r1 is used by Relu node 'relu3', which is not in the graph")
    assert "hint: erase nodes with Graph.erase()" in message


def test_use_list_names_the_wrong_input() -> None:
    g, nodes = chain()
    nodes[0].output()._uses[Usage(nodes[2], 0)] = None
    message = verify_error(g)
    assert "use list of %r0 says input 0, which is not %r0" in message
    assert_node_context(message, nodes[2], "%r2: f32[N,4] = Relu(%r1)")


def test_graph_output_not_defined() -> None:
    g, _ = chain()
    g.outputs.append(Value("ghost"))
    assert verify_error(g) == "graph output 1 %ghost is not defined in the graph"


# ---- quantization types --------------------------------------------------------------------------------------


def chain_with_quant(q: QuantSpec | QuantType, vtype: TensorType | None = None) -> tuple[Graph, Node]:
    g, nodes = chain()
    out = nodes[0].output()
    out.quant = q
    if vtype is not None:
        out.type = vtype
    return g, nodes[0]


def test_quant_on_a_non_float_value() -> None:
    g, node = chain_with_quant(QuantSpec(DType.I8), TensorType(DType.I32, ("N", 4)))
    message = verify_error(g)
    assert "%r0 has a quantization type but is not a float tensor" in message
    assert message.startswith("Relu node 'conv1' (from layer1.conv: torch.nn.Conv2d): ")
    assert_node_context(message, node, "%r0: i32[N,4] !qspec<i8 sym per_tensor")


def test_quant_axis_out_of_range() -> None:
    g, node = chain_with_quant(QuantSpec(DType.I8, granularity=Granularity.per_channel(2)))
    message = verify_error(g)
    assert "%r0: quantization axis 2 is out of range for rank 2" in message
    assert_node_context(message, node, "per_channel(2)")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_scales_must_be_finite_and_positive(bad: float) -> None:
    g, node = chain_with_quant(quant(bad))
    message = verify_error(g)
    assert "%r0: scales must be finite and > 0; found [" in message
    assert "hint: a zero scale usually means the tensor was constant during calibration" in message
    assert_node_context(message, node, "!q<i8 sym per_tensor scale=")


def test_qmin_must_be_below_qmax() -> None:
    g, node = chain_with_quant(quant(0.5, qmin=5, qmax=5))
    message = verify_error(g)
    assert "%r0: qmin 5 must be below qmax 5" in message
    assert_node_context(message, node, "qmin=5 qmax=5")


def test_range_must_fit_the_storage_type() -> None:
    g, node = chain_with_quant(quant(0.5, qmin=-200, qmax=127))
    message = verify_error(g)
    assert "%r0: range [-200, 127] does not fit i8 [-128, 127]" in message
    assert_node_context(message, node, "qmin=-200 qmax=127")


def test_zero_point_within_range() -> None:
    g, node = chain_with_quant(quant(0.5, 300, dtype=DType.U8, scheme=Scheme.ASYM, qmin=0, qmax=255))
    message = verify_error(g)
    assert "%r0: zero point outside [0, 255]: [300]" in message
    assert_node_context(message, node, "zp=300")


def test_symmetric_signed_needs_zero_point_zero() -> None:
    g, node = chain_with_quant(quant(0.5, 3))
    message = verify_error(g)
    assert "%r0: symmetric signed quantization needs zero point 0" in message
    assert_node_context(message, node, "zp=3")


def test_per_tensor_takes_one_scale() -> None:
    g, node = chain_with_quant(quant([0.5, 0.25]))
    message = verify_error(g)
    assert "%r0: per_tensor quantization has 2 scales" in message
    assert_node_context(message, node, "scale=[0.5, 0.25]")


def test_per_channel_scale_count() -> None:
    g, node = chain_with_quant(quant([0.5, 0.25], granularity=Granularity.per_channel(1)))
    message = verify_error(g)
    assert "%r0: per_channel(1) needs 4 scales, found shape (2,)" in message
    assert_node_context(message, node, "per_channel(1) scale=[0.5, 0.25]")


def test_per_group_scale_shape() -> None:
    g, node = chain_with_quant(quant(np.full((3, 3), 0.5), granularity=Granularity.per_group(1, 2)), f32(3, 4))
    message = verify_error(g)
    assert "%r0: per_group(1, 2) needs scales of shape [3, 2], found [3, 3]" in message
    assert_node_context(message, node, "per_group(1, 2)")


def test_shared_scales() -> None:
    g = Graph("concat")
    a = Value("a", f32(2), quant=quant(0.5, 0))
    b = Value("b", f32(2), quant=quant(0.25, 0))
    g.inputs = [a, b]
    node = g.append(
        Node(
            "Concat",
            [a, b],
            [Value("c", f32(4))],
            attrs={"axis": Attr.of(0)},
            name="cat",
            source=SourceInfo("model.cat", "Concat"),
        )
    )
    g.outputs = [node.output()]
    message = verify_error(g)
    assert "Concat needs one shared scale and zero point on its quantized inputs and output" in message
    assert "hint: run compute_qparams, which unifies shared scales" in message
    assert_node_context(message, node, "%c: f32[4] = Concat(%a, %b) {axis=0}")


def test_context_shows_neighbouring_lines() -> None:
    g, nodes = chain()
    nodes[1].output()._index = 3
    lines = verify_error(g).splitlines()
    context = [line for line in lines if " | " in line]
    assert [line.split(" | ")[0].strip() for line in context] == ["3", ">> 4", "5"]
