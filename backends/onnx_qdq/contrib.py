"""The two steps every rewrite into an ONNX Runtime contrib kernel (`com.microsoft`) shares: put one node in place of
a chain of nodes, keeping the chain's output name, and drop the Q/DQ nodes and constants the chain no longer reads.
"""

from __future__ import annotations

from collections.abc import Sequence

from quantir.ir import Attr, Graph, Node, Value

__all__ = ["MSFT_DOMAIN", "remove_unread", "replace_with_contrib"]

MSFT_DOMAIN = "com.microsoft"


def replace_with_contrib(graph: Graph, chain: Sequence[Node], op: str, inputs: Sequence[Value | None],
                         attrs: dict[str, Attr] | None = None) -> Node:  # fmt: skip
    """A `com.microsoft` `op` node, named and sourced like `chain[0]`, inserted before it, that takes over the last
    node's output (its name included); the chain's nodes are erased, last first."""
    first, last = chain[0], chain[-1]
    out = last.outputs[0]
    assert out is not None
    new_out = Value(f"{out.name}__{op}", out.type)
    node = Node(op, list(inputs), [new_out], attrs=attrs, domain=MSFT_DOMAIN, name=first.name, source=first.source)
    graph.insert_before(first, node)
    name = out.name
    out.replace_all_uses_with(new_out, graph_outputs=graph)
    for old in reversed(chain):
        graph.erase(old)
    new_out.name = name
    return node


def remove_unread(graph: Graph, nodes: Sequence[Node]) -> None:
    """Erase each of `nodes` (in order) whose outputs nothing reads, with the constants only it read."""
    for dead in nodes:
        outs = [o for o in dead.outputs if o is not None]
        if dead in graph.nodes and all(not o.uses() and not graph.is_output(o) for o in outs):
            inputs = [v for v in dead.inputs if v is not None]
            graph.erase(dead)
            for v in inputs:
                if v.is_constant and not v.uses():
                    graph.remove_constant(v)
