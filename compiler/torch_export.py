"""`export(model, example_inputs, dynamic_shapes=None)`: the mirror of Intel Neural Compressor's
`neural_compressor.torch.export`. It returns a `torch.export.ExportedProgram` that `prepare`/`quantize` accept
directly (no example inputs needed then), so the INC flow reads the same:

    exported = export(model, example_inputs)
    prepared = prepare(exported, quant_config)
    run_fn(prepared)
    q_model = convert(prepared)
"""

from __future__ import annotations

from typing import Any

from quantir.frontends.torch import export_program

__all__ = ["export"]


def export(model: Any, example_inputs: Any, dynamic_shapes: Any = None) -> Any:
    """Export `model` (an nn.Module; switched to eval mode with a warning if training) with `torch.export.export`
    (non-strict). `example_inputs`: a tensor, a tuple of positional inputs or a dict of keyword inputs.
    `dynamic_shapes` as for torch.export; None marks dim 0 of each tensor input `Dim.AUTO`.
    Raises `FrontendError` naming the cause (data-dependent control flow, wrong arity, ...)."""
    return export_program(model, example_inputs, dynamic_shapes=dynamic_shapes)
