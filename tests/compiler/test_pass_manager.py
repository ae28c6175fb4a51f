"""Pass manager: verification between passes, IR printing, failure naming, reproducers, string pipelines."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest

from quantir.compiler.pass_manager import PassContext, PassManager, PassRegistry, PassResult, parse_pipeline
from quantir.compiler.passes import EliminateDeadCode, builtin_registry
from quantir.compiler.qparams.scales import Convention
from quantir.ir import DType, Graph, Node, PassError, Tensor, TensorType, Value, textio


def _graph() -> Graph:
    g = Graph("g", opset_imports={"": 17})
    x = Value("x", TensorType(DType.F32, ("N", 4)))
    g.inputs.append(x)
    g.add_constant("unused.weight", Tensor.from_numpy(np.ones((4, 4), np.float32)))
    r = g.append(Node("Relu", [x], [Value("r", TensorType(DType.F32, ("N", 4)))], name="relu"))
    g.append(Node("Sigmoid", [x], [Value("dead", TensorType(DType.F32, ("N", 4)))], name="dead"))
    g.outputs.append(r.output())
    return g


@dataclass(frozen=True, slots=True)
class _BreakUseLists:
    """A deliberately buggy pass: it rewires an input behind the IR's back."""

    name: ClassVar[str] = "break-use-lists"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        node = graph.nodes[0]
        node._inputs = (Value("ghost", TensorType(DType.F32, ("N", 4))),)  # bypasses set_input on purpose
        return PassResult(True)


@dataclass(frozen=True, slots=True)
class _Crash:
    name: ClassVar[str] = "crash"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise RuntimeError("division by zero in the scale table")


def test_dce_removes_dead_nodes_and_constants() -> None:
    g = _graph()
    records = PassManager([EliminateDeadCode()]).run(g)
    assert [n.name for n in g.nodes] == ["relu"]
    assert g.constants == {}
    assert records[0].name == "dce" and records[0].changed


def test_print_ir_after_change_skips_unchanged_passes() -> None:
    out = io.StringIO()
    PassManager([EliminateDeadCode(), EliminateDeadCode()], print_ir_after="change", stream=out).run(_graph())
    text = out.getvalue()
    assert text.count("// -----// IR after dce //----- //") == 1
    assert "Sigmoid" not in text and "Relu(" in text


def test_print_ir_after_all_prints_every_pass() -> None:
    out = io.StringIO()
    PassManager([EliminateDeadCode(), EliminateDeadCode()], print_ir_after="all", stream=out).run(_graph())
    assert out.getvalue().count("// -----// IR after dce") == 2
    assert "IR after dce (unchanged)" in out.getvalue()


def test_verifier_catches_a_pass_that_corrupts_the_ir() -> None:
    with pytest.raises(PassError) as err:
        PassManager([EliminateDeadCode(), _BreakUseLists()]).run(_graph())
    msg = str(err.value)
    assert "pass 'break-use-lists' left the IR invalid" in msg
    assert "passes run before it: dce" in msg
    assert "%ghost" in msg


def test_crash_names_pass_and_writes_reproducer(tmp_path: Path) -> None:
    with pytest.raises(PassError) as err:
        PassManager([EliminateDeadCode(), _Crash()], reproducer_dir=tmp_path).run(_graph())
    msg = str(err.value)
    assert "pass 'crash' failed: division by zero in the scale table" in msg
    assert f"reproducer: quantir ir opt {tmp_path / 'input.qir'} -p crash" in msg
    reproduced = textio.load(tmp_path / "input.qir")
    assert [n.name for n in reproduced.nodes] == ["relu"]  # the IR the failing pass received
    assert (tmp_path / "pipeline.txt").read_text() == "crash\n"


def test_parse_pipeline_options_and_errors() -> None:
    (p,) = parse_pipeline("dce{remove_custom_domains=true}", builtin_registry())
    assert isinstance(p, EliminateDeadCode) and p.remove_custom_domains
    with pytest.raises(
        PassError, match=r"unknown pass 'fold-everything' in pipeline; known passes: .*canonicalize.*dce"
    ):
        parse_pipeline("dce,fold-everything", builtin_registry())
    with pytest.raises(PassError, match="pass 'dce' has no option 'aggressive'; options: remove_custom_domains"):
        parse_pipeline("dce{aggressive=1}", builtin_registry())
    with pytest.raises(PassError, match="expected true or false, found 'maybe'"):
        parse_pipeline("dce{remove_custom_domains=maybe}", builtin_registry())


LOCAL = PassRegistry()


@LOCAL.register
@dataclass(frozen=True, slots=True)
class Tune:
    """A test-only pass with one option of each type a pipeline string can set, and one it cannot."""

    name: ClassVar[str] = "tune"
    steps: int = 1
    ratio: float = 0.5
    mode: Literal["fast", "exact"] = "fast"
    limit: int | None = None
    convention: Convention = Convention.ORT
    data: object = None

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(False)


@dataclass(frozen=True, slots=True)
class NeedsNodes:
    name: ClassVar[str] = "needs-nodes"

    def precondition(self, graph: Graph, ctx: PassContext) -> list[str]:
        return [] if graph.nodes else ["the graph has no nodes"]

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(False)

    def postcondition(self, graph: Graph, ctx: PassContext) -> list[str]:
        return ["a note was promised"] if not ctx.notes else []


def test_a_pipeline_reads_the_registry_it_is_given() -> None:
    local = LOCAL
    (t,) = parse_pipeline("tune{steps=3,ratio=0.25,mode=exact,limit=none,convention=openvino}", local)
    assert (t.steps, t.ratio, t.mode, t.limit, t.convention) == (3, 0.25, "exact", None, Convention.OPENVINO)
    (t,) = parse_pipeline("tune{limit=7}", local)
    assert t.limit == 7
    with pytest.raises(PassError, match=r"known passes: tune$"):
        parse_pipeline("dce", local)  # the built-in passes are not in this registry
    with pytest.raises(PassError, match=r"option tune\{steps\}: expected int, found 'many'"):
        parse_pipeline("tune{steps=many}", local)
    with pytest.raises(PassError, match=r"option tune\{mode\}: expected one of fast, exact, found 'slow'"):
        parse_pipeline("tune{mode=slow}", local)
    with pytest.raises(PassError, match=r"option tune\{data\}: an option of type object cannot be set"):
        parse_pipeline("tune{data=x}", local)
    assert "tune" not in builtin_registry().names() and "annotate" in builtin_registry().names()


def test_pre_and_postconditions_name_the_pass() -> None:
    empty = Graph("empty")
    with pytest.raises(PassError, match=r"pass 'needs-nodes' precondition failed: the graph has no nodes"):
        PassManager([NeedsNodes()]).run(empty)
    g = _graph()
    with pytest.raises(PassError, match=r"pass 'needs-nodes' broke its postcondition: a note was promised"):
        PassManager([NeedsNodes()]).run(g)
    PassManager([NeedsNodes()]).run(g, PassContext(notes=["kept"]))  # both hold: no error
