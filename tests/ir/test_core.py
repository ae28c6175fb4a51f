"""Graph API: use lists, erase refusal, constants, traits and structural equality (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantir.ir import (
    Attr,
    AttrKind,
    DType,
    Granularity,
    Graph,
    IRError,
    Node,
    QuantType,
    Scheme,
    Tensor,
    TensorType,
    UseListError,
    Value,
    first_difference,
    structurally_equal,
    verify,
    weight_inputs,
)

F32 = DType.F32


def _t(*shape: int | str) -> TensorType:
    return TensorType(F32, tuple(shape))


def _chain(n: int = 3) -> tuple[Graph, list[Node]]:
    g = Graph("chain", opset_imports={"": 17})
    x = Value("x", _t("N", 4))
    g.inputs.append(x)
    nodes: list[Node] = []
    cur = x
    for i in range(n):
        out = Value(f"r{i}", _t("N", 4))
        nodes.append(g.append(Node("Relu", [cur], [out], name=f"relu{i}")))
        cur = out
    g.outputs.append(cur)
    return g, nodes


def test_uses_are_ordered_and_track_set_input() -> None:
    g, (a, b, _c) = _chain()
    x = g.inputs[0]
    add = g.append(Node("Add", [a.output(), x], [Value("s", _t("N", 4))]))
    assert [u.node for u in x.uses()] == [a, add]
    add.set_input(1, b.output())
    assert [u.node for u in x.uses()] == [a]
    assert [(u.node, u.idx) for u in b.output().uses()] == [(g.nodes[2], 0), (add, 1)]
    verify(g)


def test_same_value_used_twice_by_one_node() -> None:
    g, (a, *_rest) = _chain(1)
    mul = g.append(Node("Mul", [a.output(), a.output()], [Value("sq", _t("N", 4))]))
    assert [u.idx for u in a.output().uses()] == [0, 1]
    assert a.output().users() == [mul]


def test_erase_refuses_while_used_and_names_users() -> None:
    g, (a, b, c) = _chain()
    with pytest.raises(UseListError, match=r"cannot erase Relu node 'relu0': its output %r0 is still used by Relu"):
        g.erase(a)
    with pytest.raises(UseListError, match="is a graph output"):
        g.erase(c)
    b.output().replace_all_uses_with(a.output())
    g.erase(b)
    assert c.inputs[0] is a.output()
    assert len(g) == 2
    verify(g)


def test_replace_all_uses_with_updates_graph_outputs() -> None:
    g, (a, _b, c) = _chain()
    c.output().replace_all_uses_with(a.output(), graph_outputs=g)
    assert g.outputs == [a.output()]
    g.erase(c)
    verify(g)


def test_node_cannot_join_two_graphs_or_claim_produced_value() -> None:
    _g, (a, *_rest) = _chain(1)
    with pytest.raises(IRError, match="already belongs"):
        Graph("other").append(a)
    with pytest.raises(IRError, match="already produced"):
        Node("Relu", [], [a.output()])


def test_remove_constant_refused_while_used() -> None:
    g = Graph("c")
    x = Value("x", _t(2, 4))
    g.inputs.append(x)
    w = g.add_constant("fc.weight", Tensor.from_numpy(np.ones((4, 3), np.float32)))
    mm = g.append(Node("MatMul", [x, w], [Value("y", _t(2, 3))]))
    g.outputs.append(mm.output())
    assert w.type == TensorType(F32, (4, 3))
    with pytest.raises(UseListError, match="still used by MatMul"):
        g.remove_constant(w)
    with pytest.raises(IRError, match="already has a constant"):
        g.add_constant("fc.weight", Tensor.from_numpy(np.zeros(1, np.float32)))
    assert weight_inputs(mm) == {1: 1}


def test_weight_traits_follow_attributes() -> None:
    g = Graph("t")
    a = Value("a", _t(2, 4))
    g.inputs.append(a)
    w = g.add_constant("w", Tensor.from_numpy(np.ones((3, 4), np.float32)))
    gemm = g.append(Node("Gemm", [a, w], [Value("y", _t(2, 3))], attrs={"transB": Attr.of(1)}))
    assert weight_inputs(gemm) == {1: 0}
    gemm.attrs["transB"] = Attr.of(0)
    assert weight_inputs(gemm) == {1: 1}


def test_attr_kinds_are_checked() -> None:
    assert Attr.of([1, 2]).kind is AttrKind.INTS
    assert Attr.of([1, 2.5]).kind is AttrKind.FLOATS
    assert Attr.of([]).kind is AttrKind.INTS
    with pytest.raises(TypeError, match="not of kind float"):
        Attr(AttrKind.FLOAT, 1)


def test_quant_type_equality_compares_arrays() -> None:
    def qt(scale: list[float]) -> QuantType:
        return QuantType(DType.I8, Scheme.SYM, Granularity.per_channel(0), np.array(scale), np.zeros(2), -127, 127)

    assert qt([0.1, 0.2]) == qt([0.1, 0.2])
    assert qt([0.1, 0.2]) != qt([0.1, 0.3])


def test_structural_equality_reports_first_difference() -> None:
    g1, _ = _chain()
    g2, n2 = _chain()
    assert structurally_equal(g1, g2)
    n2[1].attrs["alpha"] = Attr.of(0.5)
    assert first_difference(g1, g2) == "node 1 (Relu 'relu1'): attributes [] vs ['alpha']"
    g3, n3 = _chain()
    n3[2].set_input(0, n3[0].output())
    assert first_difference(g3, g1) == "node 2 (Relu 'relu2'): input 0 is %r0 vs %r1"


# Random edit sequences: whatever mix of API edits is applied, use lists stay exact.

_EDITS = st.lists(
    st.tuples(st.sampled_from(["set_input", "rauw", "add", "erase_dead"]), st.integers(0, 10_000)),
    max_size=40,
)


def _expected_uses(g: Graph) -> dict[int, list[tuple[int, int]]]:
    expected: dict[int, list[tuple[int, int]]] = {id(v): [] for v in g.values()}
    for node in g.nodes:
        for i, v in enumerate(node.inputs):
            if v is not None:
                expected[id(v)].append((id(node), i))
    return expected


@settings(max_examples=150, deadline=None)
@given(_EDITS)
def test_random_edits_keep_use_lists_consistent(edits: list[tuple[str, int]]) -> None:
    g, _ = _chain(4)
    counter = 0
    for op, seed in edits:
        nodes = list(g.nodes)
        if not nodes:
            break
        node = nodes[seed % len(nodes)]
        pos = nodes.index(node)
        earlier = [g.inputs[0]] + [n.output() for n in nodes[:pos]]
        if op == "set_input":
            node.set_input(0, earlier[seed % len(earlier)])
        elif op == "rauw" and pos > 0:
            victim = nodes[(seed // 7) % pos].output()
            later_ok = all(g.nodes.index(u.node) > g.nodes.index(victim.producer) for u in victim.uses())
            if later_ok and victim.producer is not None:
                victim.replace_all_uses_with(g.inputs[0], graph_outputs=g)
        elif op == "add":
            counter += 1
            a = earlier[seed % len(earlier)]
            b = earlier[(seed // 3) % len(earlier)]
            g.insert_before(node, Node("Add", [a, b], [Value(f"add{counter}", _t("N", 4))]))
        elif op == "erase_dead":
            for n in reversed(g.nodes):
                if not any(v.has_uses() or g.is_output(v) for v in n.outputs if v is not None):
                    g.erase(n)
                    break
        expected = _expected_uses(g)
        for v in g.values():
            assert sorted((id(u.node), u.idx) for u in v.uses()) == sorted(expected[id(v)])
        verify(g)


def test_clone_is_structurally_equal_and_independent() -> None:
    from quantir.ir.clone import clone_graph

    g, nodes = _chain()
    copy, vmap = clone_graph(g)
    assert structurally_equal(g, copy)
    assert vmap[nodes[0].output()] is copy.nodes[0].output()
    copy.nodes[1].attrs["alpha"] = Attr.of(1.0)
    assert "alpha" not in nodes[1].attrs
    copy.nodes[2].set_input(0, copy.inputs[0])
    assert nodes[2].inputs[0] is nodes[1].output()
    verify(g)
    verify(copy)
