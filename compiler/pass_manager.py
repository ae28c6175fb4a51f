"""The pass contract and the pass manager.

A pass is a frozen dataclass whose fields are its options, with `name: ClassVar[str]` and
`run(graph, ctx) -> PassResult`. The manager verifies after every pass, can print the IR after each pass
or after each change, names the failing pass and the pipeline that ran before it, and can write a
reproducer (input IR + pipeline) when a pass fails. Pipelines can be written as strings:
`canonicalize,annotate{backend=onnx_qdq},calibrate`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import sys
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TextIO, TypeVar, cast, runtime_checkable

import numpy as np

from quantir.backends.contract import LegalizeReport, OpDecision
from quantir.ir import CalibrationError, ConfigError, Graph, Node, PassError, VerifyError, textio, verify
from quantir.ir.printer import print_graph

__all__ = [
    "Pass",
    "PassContext",
    "PassManager",
    "PASSES",
    "PassRecord",
    "PassRegistry",
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
    recipes: list[str] = field(default_factory=list)
    """Model-wide choices made for the config (e.g. SmoothQuant turned on by transformer blocks), with reasons."""
    decisions: dict[str, OpDecision] = field(default_factory=dict)
    """Per node, by its name (`node_label`), whether it is quantized and why (annotate, later passes overwrite)."""
    ranges: dict[str, Range] = field(default_factory=dict)
    """Calibrated (min, max) of activations by value name, read by compute-qparams."""
    channel_ranges: dict[str, Range] = field(default_factory=dict)
    """Per-channel (last axis) ranges of activations SmoothQuant may smooth, by value name."""
    smooth_targets: dict[str, list[Node]] = field(default_factory=dict)
    """Activation name -> the quantized MatMul/Gemm readers smooth-quant scales (chosen on the annotated graph)."""
    hessians: dict[str, Any] = field(default_factory=dict)
    channel_means: dict[str, Any] = field(default_factory=dict)
    """AWQ: input value name -> mean |x| per input channel over its calibration rows."""
    """GPTQ: input value name -> the Hessian 2/n Σ xᵀx of its calibration rows (a [K, K] float64 array)."""
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


class PassRegistry:
    """Pass name -> pass class, for string pipelines. `parse_pipeline` takes one explicitly."""

    def __init__(self) -> None:
        self._passes: dict[str, type[Pass]] = {}

    def register(self, cls: P) -> P:
        """Class decorator: make a pass available under its `name`."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} must be a dataclass with a `name: ClassVar[str]`")
        known = self._passes.get(name)
        if known is not None and known is not cast(type[Pass], cls):
            raise TypeError(f"two passes are registered as {name!r}")
        self._passes[name] = cast(type[Pass], cls)
        return cls

    def get(self, name: str) -> type[Pass] | None:
        return self._passes.get(name)

    def names(self) -> list[str]:
        return sorted(self._passes)

    def as_dict(self) -> dict[str, type[Pass]]:
        return dict(self._passes)


P = TypeVar("P", bound=type)

PASSES = PassRegistry()
"""The registry the built-in passes register into (`quantir.compiler.passes.builtin_registry()` returns it with every
built-in pass loaded)."""


def register_pass(cls: P) -> P:
    """Class decorator: register a pass in `PASSES`."""
    return PASSES.register(cls)


def registered_passes() -> dict[str, type[Pass]]:
    return PASSES.as_dict()


_STEP = re.compile(r"\s*([A-Za-z_][\w-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")
_TRUE, _FALSE, _NONE = ("true", "1", "yes"), ("false", "0", "no"), ("none", "null")


def _parse_option(raw: str, typ: Any, where: str) -> Any:
    """`raw` as a value of the resolved type `typ`: bool, int, float, str, an Enum, a Literal, or `X | None`."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (types.UnionType, typing.Union):
        if type(None) in args and raw.lower() in _NONE:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _parse_option(raw, rest[0], where)
        raise PassError(f"{where}: a union of {', '.join(map(str, rest))} cannot be set from a pipeline string")
    if origin is Literal:
        for choice in args:
            if str(choice) == raw or (isinstance(choice, bool) and raw.lower() in (_TRUE if choice else _FALSE)):
                return choice
        raise PassError(f"{where}: expected one of {', '.join(map(str, args))}, found {raw!r}")
    if typ is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise PassError(f"{where}: expected true or false, found {raw!r}")
    if typ in (int, float):
        try:
            return typ(raw)
        except ValueError:
            raise PassError(f"{where}: expected {typ.__name__}, found {raw!r}") from None
    if typ is str:
        return raw
    if isinstance(typ, type) and issubclass(typ, enum.Enum):
        for member in typ:
            if raw in (member.name, str(member.value)) or raw.upper() == member.name:
                return member
        raise PassError(f"{where}: expected one of {', '.join(m.name.lower() for m in typ)}, found {raw!r}")
    raise PassError(f"{where}: an option of type {getattr(typ, '__name__', typ)} cannot be set from a pipeline string")


def parse_pipeline(text: str, registry: PassRegistry) -> list[Pass]:
    """`a,b{opt=1,flag=true}` -> pass instances from `registry`; each option is parsed by its field's type."""
    passes: list[Pass] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None or m.end() == pos:
            raise PassError(f"cannot parse pipeline {text!r} at column {pos + 1}: expected name or name{{opt=value}}")
        name, opts = m.group(1), m.group(2)
        cls = registry.get(name)
        if cls is None:
            known = ", ".join(registry.names()) or "(none registered)"
            raise PassError(f"unknown pass {name!r} in pipeline; known passes: {known}")
        fields = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in (opts or "").split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                allowed = ", ".join(fields) or "none"
                raise PassError(f"pass {name!r} has no option {key!r}; options: {allowed}")
            kwargs[key] = _parse_option(raw.strip(), hints[key], f"option {name}{{{key}}}")
        passes.append(cls(**kwargs))
        pos = m.end()
    return passes


def _conditions(p: Pass, kind: str, graph: Graph, ctx: PassContext) -> list[str]:
    """The problems the pass's optional `precondition`/`postcondition(graph, ctx) -> list[str]` reports."""
    check = getattr(p, kind, None)
    return list(check(graph, ctx)) if callable(check) else []


class _ConditionFailed(PassError):
    """A pass's declared pre- or postcondition does not hold."""


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
                if problems := _conditions(p, "precondition", graph, ctx):
                    raise _ConditionFailed(f"precondition failed: {'; '.join(problems)}")
                result = p.run(graph, ctx)
                if not isinstance(result, PassResult):
                    raise PassError(f"pass {p.name!r} returned {type(result).__name__}, not PassResult")
                if self.verify_each:
                    verify(graph)
                if problems := _conditions(p, "postcondition", graph, ctx):
                    raise _ConditionFailed(f"broke its postcondition: {'; '.join(problems)}")
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
        if isinstance(error, _ConditionFailed):
            head = f"pass {p.name!r} {error}"
        else:
            head = f"pass {p.name!r} {'left the IR invalid' if isinstance(error, VerifyError) else 'failed'}: {error}"
        lines = [head, f"  passes run before it: {before}"]
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
