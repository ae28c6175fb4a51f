"""A readable structural diff of two IR graphs: the first structural difference in words, then a
unified diff of their canonical text, then constants whose contents differ under equal text.
"""

from __future__ import annotations

import difflib

import numpy as np

from quantir.ir import Graph, first_difference
from quantir.ir.equality import tensors_equal
from quantir.ir.printer import print_graph

__all__ = ["diff_graphs"]


def diff_graphs(a: Graph, b: Graph, *, name_a: str = "a", name_b: str = "b", context: int = 2) -> str | None:
    """None if the graphs are structurally equal, else a report of how they differ."""
    first = first_difference(a, b)
    if first is None:
        return None
    lines = [f"first difference: {first}"]
    text_a = print_graph(a).splitlines(keepends=True)
    text_b = print_graph(b).splitlines(keepends=True)
    udiff = list(difflib.unified_diff(text_a, text_b, fromfile=name_a, tofile=name_b, n=context))
    if udiff:
        lines.append("".join(udiff).rstrip("\n"))
    for name, va in a.constants.items():
        vb = b.constants.get(name)
        if vb is None or va.const is None or vb.const is None or va.type != vb.type:
            continue
        if not tensors_equal(va.const, vb.const):
            x = va.const.numpy()
            y = vb.const.numpy()
            detail = ""
            if x.dtype.kind in "fiu" and x.size:
                delta = np.abs(x.astype(np.float64) - y.astype(np.float64))
                where = np.unravel_index(int(np.argmax(delta)), x.shape) if x.ndim else ()
                detail = f": max |diff| {float(delta.max()):.6g} at {tuple(int(i) for i in where)}"
            lines.append(f"constant %{name} contents differ{detail}")
    return "\n".join(lines)
