"""Property tests of the text form: print -> parse is structurally equal, print -> parse -> print is identical."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from strategies import graphs, tensors

from quantir.ir import Graph, first_difference, load, parse, print_graph, save
from quantir.ir.equality import tensors_equal
from quantir.ir.printer import print_graph_with_tensors
from quantir.ir.tensor import Tensor

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(graphs())
def test_print_parse_is_structurally_equal(g: Graph) -> None:
    text = print_graph(g, inline_limit=1 << 20)
    back = parse(text)
    assert first_difference(g, back) is None, text
    assert print_graph(back, inline_limit=1 << 20) == text


@SETTINGS
@given(graphs())
def test_round_trip_with_sidecar_tensors(g: Graph) -> None:
    # A tiny inline limit sends most constants, tensor attributes and scale arrays to the sidecar.
    text, side = print_graph_with_tensors(g, inline_limit=2)
    back = parse(text, tensors=side)
    assert first_difference(g, back) is None, text
    again, side_again = print_graph_with_tensors(back, inline_limit=2)
    assert again == text
    assert side.keys() == side_again.keys()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(graphs())
def test_save_load_round_trip(tmp_path: Path, g: Graph) -> None:
    path = tmp_path / "g.qir"
    save(g, path, inline_limit=3)
    back = load(path)
    assert first_difference(g, back) is None, path.read_text(encoding="utf-8")


@settings(max_examples=100, deadline=None)
@given(tensors(max_size=40))
def test_every_tensor_round_trips_inline(t: Tensor) -> None:
    g = Graph("t")
    v = g.add_constant("c", t)
    g.outputs = [v]
    back = parse(print_graph(g, inline_limit=64))
    c = back.constants["c"].const
    assert c is not None and tensors_equal(c, t)
    if t.dtype.storage.kind in "iub":  # bit patterns of ints, bools and minifloat codes must be identical
        assert c.numpy().tobytes() == t.numpy().tobytes()
