"""The pass contract and the pass manager.

A pass is a frozen dataclass whose fields are its options, with `name: ClassVar[str]` and
`run(graph, ctx) -> PassResult`. The manager verifies after every pass, can print the IR after each pass
or after each change, names the failing pass and the pipeline that ran before it, and can write a
reproducer (input IR + pipeline) when a pass fails. Pipelines can be written as strings:
`canonicalize,annotate{backend=onnx_qdq},calibrate`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TextIO, TypeVar, cast, runtime_checkable

import numpy as np

from quantir.backends.contract import LegalizeReport, OpDecision
from quantir.ir import CalibrationError, ConfigError, Graph, Node, PassError, QuantirError, textio, verify
from quantir.ir.printer import print_graph

__all__ = [
    "Pass",
    "PassContext",
    "PassManager",
    "PassRecord",
    "PassResult",
    "parse_pipeline",
    "register_pass",
    "registered_passes",
]

PrintMode = Literal["all", "change"]


@dataclass(frozen=True, slots=True)
class PassResult:
    """What a pass reports: whether it changed the graph."""

    changed: bool


Range = tuple[np.ndarray, np.ndarray]


@dataclass(slots=True)
class PassContext:
    """State shared by the passes of one pipeline run (never module-level state); every field is typed."""

    notes: list[str] = field(default_factory=list)
    """Human-readable remarks passes leave for the report."""
    decisions: dict[str, OpDecision] = field(default_factory=dict)
    """Per node, by its name (`node_label`), whether it is quantized and why (annotate, later passes overwrite)."""
    ranges: dict[str, Range] = field(default_factory=dict)
    """Calibrated (min, max) of activations by value name, read by compute-qparams."""
    channel_ranges: dict[str, Range] = field(default_factory=dict)
    """Per-channel (last axis) ranges of activations SmoothQuant may smooth, by value name."""
    smooth_targets: dict[str, list[Node]] = field(default_factory=dict)
    """Activation name -> the quantized MatMul/Gemm readers smooth-quant scales (chosen on the annotated graph)."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """The manifest's calibration record: samples, seconds, observer bytes, output steps."""
    reduce_range: bool = False
    """Whether weights use the 7-bit range (annotate decides it from the config and the CPU)."""
    legalize_report: LegalizeReport | None = None
    """What the legalize pass kept quantized, removed and changed, and why."""


@runtime_checkable
class Pass(Protocol):
    name: ClassVar[str]

    def run(self, graph: Graph, ctx: PassContext) -> PassResult: ...


@dataclass(frozen=True, slots=True)
class PassRecord:
    name: str
    changed: bool
    seconds: float


_REGISTRY: dict[str, type[Pass]] = {}
P = TypeVar("P", bound=type)


def register_pass(cls: P) -> P:
    """Class decorator: make a pass available to string pipelines under its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} must be a dataclass with a `name: ClassVar[str]`")
    if name in _REGISTRY and _REGISTRY[name] is not cast(type[Pass], cls):
        raise TypeError(f"two passes are registered as {name!r}")
    _REGISTRY[name] = cast(type[Pass], cls)
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    return dict(_REGISTRY)


_STEP = re.compile(r"\s*([A-Za-z_][\w-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def _convert(raw: str, annotation: Any, where: str) -> Any:
    text = str(annotation)
    if "bool" in text:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise PassError(f"{where}: expected true or false, found {raw!r}")
    for typ in (int, float):
        if typ.__name__ in text and "str" not in text:
            try:
                return typ(raw)
            except ValueError:
                raise PassError(f"{where}: expected {typ.__name__}, found {raw!r}") from None
    return raw


def parse_pipeline(text: str) -> list[Pass]:
    """`a,b{opt=1,flag=true}` -> pass instances, options checked against each pass's fields."""
    import quantir.compiler.passes  # noqa: F401  (registers the built-in passes)

    passes: list[Pass] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None or m.end() == pos:
            raise PassError(f"cannot parse pipeline {text!r} at column {pos + 1}: expected name or name{{opt=value}}")
        name, opts = m.group(1), m.group(2)
        cls = _REGISTRY.get(name)
        if cls is None:
            known = ", ".join(sorted(_REGISTRY)) or "(none registered)"
            raise PassError(f"unknown pass {name!r} in pipeline; known passes: {known}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in (opts or "").split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                allowed = ", ".join(fields) or "none"
                raise PassError(f"pass {name!r} has no option {key!r}; options: {allowed}")
            kwargs[key] = _convert(raw.strip(), fields[key].type, f"option {name}{{{key}}}")
        passes.append(cls(**kwargs))
        pos = m.end()
    return passes


class PassManager:
    """Runs passes in order with verification, IR printing and failure reporting."""

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        verify_each: bool = True,
        print_ir_after: PrintMode | None = None,
        stream: TextIO | None = None,
        reproducer_dir: str | Path | None = None,
    ) -> None:
        self.passes = list(passes)
        self.verify_each = verify_each
        self.print_ir_after = print_ir_after
        self.stream = stream
        self.reproducer_dir = Path(reproducer_dir) if reproducer_dir is not None else None

    @property
    def pipeline(self) -> str:
        return ",".join(p.name for p in self.passes)

    def run(self, graph: Graph, ctx: PassContext | None = None) -> list[PassRecord]:
        ctx = ctx if ctx is not None else PassContext()
        records: list[PassRecord] = []
        for i, p in enumerate(self.passes):
            snapshot = self._snapshot(graph, i)
            t0 = time.perf_counter()
            try:
                result = p.run(graph, ctx)
                if not isinstance(result, PassResult):
                    raise PassError(f"pass {p.name!r} returned {type(result).__name__}, not PassResult")
                if self.verify_each:
                    verify(graph)
            except (ConfigError, CalibrationError):
                raise  # the user's input is wrong, not the pass: the error already says what and where
            except Exception as e:
                raise self._failure(i, e, snapshot) from e
            records.append(PassRecord(p.name, result.changed, time.perf_counter() - t0))
            self._maybe_print(graph, p, result)
        return records

    def _snapshot(self, graph: Graph, index: int) -> Path | None:
        if self.reproducer_dir is None:
            return None
        self.reproducer_dir.mkdir(parents=True, exist_ok=True)
        path = self.reproducer_dir / "input.qir"
        textio.save(graph, path)
        (self.reproducer_dir / "pipeline.txt").write_text(",".join(p.name for p in self.passes[index:]) + "\n")
        return path

    def _failure(self, index: int, error: Exception, snapshot: Path | None) -> PassError:
        p = self.passes[index]
        before = " -> ".join(q.name for q in self.passes[:index]) or "(nothing)"
        kind = (
            "left the IR invalid" if isinstance(error, QuantirError) and "Verify" in type(error).__name__ else "failed"
        )
        lines = [f"pass {p.name!r} {kind}: {error}", f"  passes run before it: {before}"]
        if snapshot is not None:
            lines.append(f"  reproducer: quantir ir opt {snapshot} -p {self._remaining(index)}")
        return PassError("\n".join(lines))

    def _remaining(self, index: int) -> str:
        return ",".join(q.name for q in self.passes[index:])

    def _maybe_print(self, graph: Graph, p: Pass, result: PassResult) -> None:
        mode = self.print_ir_after
        if mode is None or (mode == "change" and not result.changed):
            return
        out = self.stream or sys.stderr
        out.write(f"// -----// IR after {p.name}{'' if result.changed else ' (unchanged)'} //----- //\n")
        out.write(print_graph(graph))
