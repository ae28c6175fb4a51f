"""Deep copies of graphs: new values and nodes, the same (immutable) constant payloads.

Backends lower a copy, so the caller's IR is never changed by emission.
"""

from __future__ import annotations

from quantir.ir.core import Graph, Node, Value

__all__ = ["clone_graph"]


def clone_graph(graph: Graph) -> tuple[Graph, dict[Value, Value]]:
    """A structurally equal copy of `graph`, and the map from each original value to its copy."""
    new = Graph(graph.name, opset_imports=graph.opset_imports, ir_version=graph.ir_version)
    vmap: dict[Value, Value] = {}

    def copy(v: Value) -> Value:
        c = Value(v.name, v.type, quant=v.quant)
        vmap[v] = c
        return c

    new.inputs = [copy(v) for v in graph.inputs]
    for name, v in graph.constants.items():
        assert v.const is not None
        vmap[v] = new.add_constant(name, v.const, quant=v.quant)
    for node in graph.nodes:
        ins = [None if v is None else vmap[v] for v in node.inputs]
        outs = [None if v is None else copy(v) for v in node.outputs]
        new.append(Node(node.op_type, ins, outs, attrs=dict(node.attrs), domain=node.domain, name=node.name,
                        source=node.source))  # fmt: skip
    new.outputs = [vmap[v] for v in graph.outputs]
    return new, vmap
