"""Export a PyTorch model to the quantir IR: `torch.export.export` (non-strict) -> `torch.onnx.export(dynamo=True,
optimize=False)` -> the ONNX frontend, with module names kept as provenance.

Choices:
- A module in training mode is switched to eval mode, with a `UserWarning`, and is left in eval mode afterwards
  (as Intel Neural Compressor's `export` does): quantization calibrates and runs the inference graph.
- Without `dynamic_shapes`, dim 0 of every tensor input of rank >= 1 is marked `Dim.AUTO`: the batch axis is dynamic
  whenever the model allows it, and silently stays static when the model specializes it (e.g. `view(4, -1)`) or
  when the example batch is 1 (torch.export specializes sizes 0 and 1). Pass `dynamic_shapes` to be explicit.
- Every export failure becomes a `FrontendError` in the user's terms, chained to the torch exception as
  `__cause__`: data-dependent control flow, example inputs that do not fit `forward`, ops with no ONNX lowering.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from quantir.frontends.onnx import import_onnx
from quantir.ir import Graph
from quantir.ir.errors import FrontendError

__all__ = ["export_program", "import_torch", "to_onnx"]

_NOISY_LOGGERS = ("torch.onnx", "torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes")


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise FrontendError("the torch frontend needs PyTorch: pip install torch onnxscript") from e
    return torch


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, deprecation warnings and graph dumps (errors still propagate)."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        # torch.export prints the partial graph to stdout when tracing fails; the FrontendError says what matters
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A single tensor, a tuple/list of positional inputs, or a dict of keyword inputs -> (args, kwargs)."""
    if example_inputs is None:
        raise FrontendError("exporting a torch.nn.Module needs example_inputs (a tensor, a tuple, or a dict of kwargs)")
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _check_arity(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Bind the example inputs to `forward`'s signature; a mismatch names what forward expects and what was given."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):  # builtins or C extensions: let torch.export judge
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        required = [p.name for p in params if p.default is p.empty]
        optional = [p.name for p in params if p.default is not p.empty]
        expected = f"{len(required)} required input(s) ({', '.join(required) or 'none'})"
        if optional:
            expected += f" and {len(optional)} optional ({', '.join(optional)})"
        given = f"{len(args)} positional" + (f" and keyword {', '.join(sorted(kwargs))}" if kwargs else "")
        raise FrontendError(
            f"example_inputs do not fit {type(model).__name__}.forward{sig}: it expects {expected}, "
            f"but {given} input(s) were given ({e})"
        ) from e


def _default_dynamic_shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Dim.AUTO on dim 0 of every tensor of rank >= 1 (None for everything else), shaped like the inputs."""
    torch = _torch()

    def spec(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() >= 1:
            return {0: torch.export.Dim.AUTO}
        return None

    if kwargs and not args:
        return {k: spec(v) for k, v in kwargs.items()}
    if args and not kwargs:
        return tuple(spec(a) for a in args)
    return None  # mixed args and kwargs: leave shapes static rather than guess names


def _is_data_dependent(exc: BaseException) -> bool:
    names = {type(c).__name__ for c in _chain(exc)}
    text = " ".join(str(c) for c in _chain(exc))
    return bool(names & {"GuardOnDataDependentSymNode", "DataDependentOutputException"}) or (
        "data-dependent" in text or "data dependent" in text
    )


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _first_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _source_line(exc: BaseException) -> str:
    """Where in the user's code a data-dependent guard was hit, when torch says so."""
    for c in _chain(exc):
        m = re.search(r'File "?([^",\n]+)"?, line (\d+)', str(c)) or re.search(r"File: ([^\n]+?):(\d+) in", str(c))
        if m and "site-packages" not in m.group(1):
            return f" (at {m.group(1)}:{m.group(2)})"
    return ""


def export_program(model: Any, example_inputs: Any = None, *, dynamic_shapes: Any = None) -> Any:
    """`torch.export.export(model, ..., strict=False)` with quantir's checks; returns the `ExportedProgram`.

    `example_inputs`: a tensor, a tuple of positional inputs, or a dict of keyword inputs. `dynamic_shapes`: as for
    `torch.export.export`; None marks dim 0 of each tensor input `Dim.AUTO` (see the module docstring).
    """
    torch = _torch()
    if isinstance(model, torch.export.ExportedProgram):
        return model
    if not isinstance(model, torch.nn.Module):
        raise FrontendError(f"cannot export a {type(model).__name__}; expected a torch.nn.Module or ExportedProgram")
    args, kwargs = _split_inputs(example_inputs)
    _check_arity(model, args, kwargs)
    if model.training:
        warnings.warn(
            f"{type(model).__name__} is in training mode; quantir switched it to eval mode (model.eval()) to export "
            "the inference graph (dropout off, BatchNorm on running statistics); it stays in eval mode",
            UserWarning,
            stacklevel=3,
        )
        model.eval()
    shapes = _default_dynamic_shapes(args, kwargs) if dynamic_shapes is None else dynamic_shapes
    try:
        with _quiet():
            return torch.export.export(model, args, kwargs or None, dynamic_shapes=shapes, strict=False)
    except Exception as e:
        raise _export_error(model, e) from e


def _export_error(model: Any, exc: Exception) -> FrontendError:
    name = type(model).__name__
    if _is_data_dependent(exc):
        return FrontendError(
            f"torch.export cannot trace {name}: its forward has data-dependent control flow{_source_line(exc)} "
            "(a Python `if`/`while` or `.item()` on a tensor's values). Rewrite the branch with torch.cond (or "
            "torch.where), or run torch.export.draft_export(model, example_inputs) to locate every such spot. "
            f"torch said: {_first_line(str(exc))}"
        )
    text = str(exc)
    from torch.fx.experimental.symbolic_shapes import ConstraintViolationError

    if isinstance(exc, ConstraintViolationError) or "Constraints violated" in text or "dynamic_shapes" in text:
        return FrontendError(
            f"torch.export rejected the dynamic shapes of {name}: {_first_line(text)}. The model specializes a "
            "dimension marked dynamic; fix dynamic_shapes (e.g. Dim.STATIC for that axis) or the model"
        )
    return FrontendError(f"torch.export could not export {name} ({type(exc).__name__}): {_first_line(text)}")


def _module_of(program: Any, node_name: str) -> str:
    """The module path (and class) that produced FX node `node_name`, from its nn_module_stack."""
    for node in program.graph.nodes:
        if node.name == node_name:
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
                return f" in module {path or '<root>'!r} ({cls_name.rsplit('.', 1)[-1]})"
    return ""


def _dispatch_error() -> tuple[type[BaseException], ...]:
    """torch.onnx's DispatchError (no ONNX function for an op); a private class, so () if torch moved it."""
    try:
        from torch.onnx._internal.exporter._errors import DispatchError
    except ImportError:
        return ()
    return (DispatchError,)


def _conversion_error(program: Any, exc: Exception) -> FrontendError:
    """Summarize torch.onnx's multi-page ConversionError in one paragraph: which op, where, and why."""
    chain = _chain(exc)
    node = op = reason = None
    for c in chain:
        text = str(c)
        m = re.search(r"Error when translating node %(\w+) : .*?target=([\w.]+)", text)
        if m and node is None:
            node, op = m.group(1), m.group(2)
        if isinstance(c, _dispatch_error()) or text.startswith("No ONNX function found"):
            reason = _first_line(text, 400)
    if node and op:
        where = _module_of(program, node)
        return FrontendError(
            f"the ONNX exporter cannot translate {op}{where}: {reason or 'see the chained exception'}. This op has "
            "no ONNX lowering in this torch/onnxscript version; replace it in the model (or register an ONNX "
            "function for it with torch.onnx custom_translation_table)"
        )
    return FrontendError(f"torch.onnx.export failed ({type(exc).__name__}): {_first_line(str(exc))}")


def to_onnx(
    program: Any, *, input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None
) -> Any:
    """An `ExportedProgram` -> ONNX ModelProto with the dynamo exporter, keeping module names (optimize=False and the
    exporter's own opset: forcing an opset runs a version converter that drops the provenance metadata)."""
    torch = _torch()
    try:
        with _quiet():
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                optimize=False,
                verbose=False,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
            )
    except Exception as e:
        raise _conversion_error(program, e) from e
    if onnx_program is None:  # pragma: no cover - the dynamo path always returns a program
        raise FrontendError("torch.onnx.export returned no program")
    return onnx_program.model_proto


def import_torch(
    model_or_exported_program: Any,
    example_inputs: Any = None,
    *,
    dynamic_shapes: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> Graph:
    """Import an `nn.Module` (with `example_inputs`) or a `torch.export.ExportedProgram` into the quantir IR.

    Every IR node's `source` is its torch module path and class; constants keep their parameter names.
    Raises `FrontendError` (with the torch exception as `__cause__`) when the model cannot be exported.
    """
    program = export_program(model_or_exported_program, example_inputs, dynamic_shapes=dynamic_shapes)
    proto = to_onnx(program, input_names=input_names, output_names=output_names)
    return import_onnx(proto)
