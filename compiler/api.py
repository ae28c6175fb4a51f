"""The public API, mirroring Intel Neural Compressor 3.x: `prepare` -> call with data -> `convert`, or
`quantize` in one call. Models are ONNX paths, ModelProtos, IR graphs, torch `nn.Module`s (with `example_inputs`,
optionally `dynamic_shapes`) or `torch.export.ExportedProgram`s (through `quantir.frontends.torch`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from quantir.compiler.calib_data import validate_batch
from quantir.compiler.config import StaticQuantConfig
from quantir.compiler.model_io import load_graph
from quantir.compiler.output_steps import float_output_steps
from quantir.compiler.pass_manager import Pass, PassContext, PassManager, PrintMode
from quantir.compiler.passes import Annotate, Canonicalize, ComputeQParams, EliminateDeadCode, FoldConstants
from quantir.compiler.passes.calibrate import RANGES_KEY, Calibrator, calibrate_stream
from quantir.compiler.passes.smooth_quant import CHANNEL_RANGES_KEY, TARGETS_KEY, SmoothQuant, select_smoothing_targets
from quantir.compiler.quantized_model import QuantizedModel
from quantir.compiler.targets import target
from quantir.frontends.onnx import import_onnx
from quantir.ir import ConfigError, Graph, QuantirError
from quantir.ir.clone import clone_graph

__all__ = ["PreparedModel", "convert", "prepare", "quantize"]


def _is_torch(model: Any) -> bool:
    """An nn.Module or an ExportedProgram, recognized without importing torch for ONNX users."""
    if type(model).__name__ == "ExportedProgram" and (type(model).__module__ or "").startswith("torch"):
        return True
    return hasattr(model, "forward") and hasattr(model, "state_dict")


def _load(model: Any, example_inputs: Any = None, dynamic_shapes: Any = None) -> Graph:
    if _is_torch(model):
        if type(model).__name__ != "ExportedProgram" and example_inputs is None:
            raise ConfigError(
                f"a torch.nn.Module ({type(model).__name__}) needs example_inputs to be exported: "
                "prepare(model, cfg, example_inputs=x) with x a tensor, a tuple or a dict of kwargs"
            )
        from quantir.frontends.torch import import_torch  # with torch models only: ONNX users never load it

        return import_torch(model, example_inputs, dynamic_shapes=dynamic_shapes)
    if isinstance(model, Graph):
        return clone_graph(model)[0]
    if isinstance(model, (str, os.PathLike)):
        return load_graph(model)
    if type(model).__name__ == "ModelProto":
        return import_onnx(model)
    raise QuantirError(f"cannot quantize a {type(model).__name__}; expected an ONNX path, a ModelProto, an IR Graph, "
                       "a torch.nn.Module or a torch.export.ExportedProgram")  # fmt: skip


class PreparedModel:
    """A model annotated for quantization. Calling it runs the float model and calibrates on the inputs."""

    def __init__(
        self,
        graph: Graph,
        config: StaticQuantConfig,
        backend: str,
        ctx: PassContext,
        print_ir_after: PrintMode | None = None,
    ) -> None:
        self.graph = graph
        self.config = config
        self.backend = backend
        self.ctx = ctx
        self.print_ir_after = print_ir_after
        """prepare's `print_ir_after`, which `convert` applies to its own passes too."""
        self._calibrator: Calibrator | None = None

    @property
    def calibrator(self) -> Calibrator:
        if self._calibrator is None:
            targets = self.ctx.data.get(TARGETS_KEY, {})
            assert isinstance(targets, dict)
            self._calibrator = Calibrator(self.graph, percentile=self.config.percentile, per_channel=list(targets))
        return self._calibrator

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        item: Any = kwargs if kwargs else (args[0] if len(args) == 1 else tuple(args))
        feed = validate_batch(item, self.graph, self.calibrator.samples)
        outputs = [self._to_caller(o, item) for o in self.calibrator.observe(feed)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def calibrate(self, data: Any, *, sampling_size: int | None = None, progress: bool = True) -> PreparedModel:
        """Feed calibration data (any form `quantize` accepts) until `sampling_size` samples; a progress line shows
        on stderr when it is a terminal (`progress=False`: never)."""
        size = sampling_size if sampling_size is not None else self.config.calibration_sampling_size
        calibrate_stream(self.calibrator, data, self.graph, size, progress=progress)
        return self

    @staticmethod
    def _to_caller(out: np.ndarray, item: Any) -> Any:
        sample = next(iter(item.values())) if isinstance(item, dict) else (item[0] if isinstance(item, tuple) else item)
        if hasattr(sample, "detach"):  # torch in, torch out
            import torch

            return torch.from_numpy(out)
        return out


def prepare(
    model: Any,
    quant_config: StaticQuantConfig | None = None,
    *,
    backend: str = "onnx_qdq",
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
    print_ir_after: str | None = None,
) -> PreparedModel:
    """Import, canonicalize and annotate `model`; returns a callable that calibrates on what it is given.

    A torch `nn.Module` needs `example_inputs` (a tensor, a tuple or a dict of kwargs) and may take
    `dynamic_shapes` (torch.export's; None makes dim 0 of each tensor input dynamic where the model allows it).
    """
    cfg = quant_config or StaticQuantConfig()
    if not isinstance(cfg, StaticQuantConfig):
        raise ConfigError(f"quant_config must be a StaticQuantConfig, got {type(cfg).__name__}")
    target(backend)  # an unknown backend fails here, before any work
    graph = _load(model, example_inputs, dynamic_shapes)
    ctx = PassContext()
    mode: PrintMode | None = "all" if print_ir_after == "all" else "change" if print_ir_after == "change" else None
    passes: list[Pass] = [Canonicalize(), FoldConstants(), EliminateDeadCode(), Annotate(backend=backend, config=cfg)]
    PassManager(passes, print_ir_after=mode).run(graph, ctx)
    if cfg.smooth_quant:
        ctx.data[TARGETS_KEY] = select_smoothing_targets(graph)
    prepared = PreparedModel(graph, cfg, backend, ctx, print_ir_after=mode)
    if example_inputs is not None:
        validate_batch(example_inputs, graph)
    return prepared


def convert(prepared: PreparedModel) -> QuantizedModel:
    """Compute scales from what the prepared model observed; returns the callable, savable quantized model."""
    if not isinstance(prepared, PreparedModel):
        raise QuantirError(f"convert() takes the result of prepare(), got {type(prepared).__name__}")
    ctx = prepared.ctx
    ctx.data[RANGES_KEY] = prepared.calibrator.ranges()
    ctx.data["calibration"] = prepared.calibrator.stats()
    caps = target(prepared.backend)
    passes: list[Pass] = [ComputeQParams(convention=caps.convention.name.lower())]
    if prepared.config.smooth_quant:
        ctx.data[CHANNEL_RANGES_KEY] = prepared.calibrator.channel_ranges()
        passes.insert(0, SmoothQuant(alpha=prepared.config.smooth_quant_alpha))
    PassManager(passes, print_ir_after=prepared.print_ir_after).run(prepared.graph, ctx)
    steps = float_output_steps(prepared.graph, prepared.calibrator.output_ranges(), caps.convention)
    if steps:
        ctx.data["calibration"]["output_steps"] = steps
    return QuantizedModel(prepared.graph, prepared.backend, prepared.config, ctx)


def quantize(
    model: Any,
    quant_config: StaticQuantConfig | None = None,
    calib_data: Iterable[Any] | str | os.PathLike[str] | None = None,
    *,
    run_fn: Callable[[PreparedModel], Any] | None = None,
    backend: str = "onnx_qdq",
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
) -> QuantizedModel:
    """prepare -> calibrate (on `calib_data`, or by `run_fn(prepared)`) -> convert, in one call. `example_inputs`
    and `dynamic_shapes` are for torch modules, as in `prepare`."""
    prepared = prepare(model, quant_config, backend=backend, example_inputs=example_inputs,
                       dynamic_shapes=dynamic_shapes)  # fmt: skip
    if run_fn is not None:
        run_fn(prepared)
    elif calib_data is not None:
        prepared.calibrate(calib_data)
    else:
        raise QuantirError("quantize() needs calib_data or run_fn to calibrate with")
    return convert(prepared)
